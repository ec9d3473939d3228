"""The recipe's settings: one dataclass of what a user decides, usable from Python and (through ``HfArgumentParser``)
from the CLI.

Everything Trainer already does (batch size, precision, logging, saving, ``report_to``, ``seed``,
``resume_from_checkpoint``) stays in the user's ``TrainingArguments``. What is an implementation choice (the warm-up's
cached features and batch sizes, replay selection and balance, the distillation temperature, the kernel head's
layers, pooling and statistics precision) is chosen, not exposed; settings of earlier versions that were removed are
refused by name with what replaced them (:data:`REMOVED`).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

# `config.problem_type` of a sigmoid (multi-label) classifier in transformers.
MULTI_LABEL = "multi_label_classification"
# The gradient path: the Linear trained by gradient in every increment (warm-up, fine-tune), with the forgetting
# controls. Every other value of `head` names a registered head solved from statistics (hf_incr.heads).
TRAINED = "trained"

# Settings of earlier versions, and what replaced them (said when a saved YAML or a flag still has one).
REMOVED = {
    "closed_form_head": "`head`: `head: kernel` (the default) or `head: linear` solve the head in closed form, "
    "`head: trained` trains it by gradient",
    "closed_form_solver": "nothing: the closed form is always LDA (more accurate than ridge in every benchmark)",
    "ridge_lambda": "nothing: the closed form is LDA, which has no ridge penalty",
    "random_features": "`head: kernel` (the kernel LDA head was more accurate than the random-feature head)",
    "random_features_lambda": "`head: kernel` (the random-feature head was removed)",
    "kernel_members": "nothing: the kernel head has one member (ensembles added 0.1-0.3 points at 3-5x the time)",
    "kernel_pooling": "nothing: the kernel head pools as a sentence-transformers encoder was trained, else the mean",
    "kernel_layers": "nothing: the kernel head reads the encoder's top 4 layers",
    "kernel_statistics_dtype": "nothing: the kernel head's statistics are saved in float32",
    "kernel_push_statistics": "`push_statistics`",
    "warmup_scope": "nothing: the warm-up trains the output Linear on cached features",
    "cache_features": "nothing: the warm-up trains the output Linear on cached features",
    "feature_batch_size": "nothing: the frozen pass batches 64 texts",
    "cached_batch_size": "nothing: the cached warm-up batches 128 rows",
    "replay_selection": "nothing: replayed examples are chosen by herding",
    "replay_balance": "nothing: replayed examples are repeated to balance old and new labels",
    "distill_temperature": "nothing: distillation runs at temperature 2",
    "init": "nothing: the gradient path imprints the new rows from their examples",
}


@dataclass
class IncrementConfig:
    """Settings of one class-incremental step: grow the head, solve it from the frozen encoder's statistics (or train
    it by gradient), optionally fine-tune the top layers with layer-wise learning rates, and keep the old labels.

    > Data
        text_column, label_column, new_labels, multi_label, multi_label_annotation, max_length
    > The head
        head, kernel_features
    > Warm-up (a Trainer run on the frozen encoder's cached features, output Linear only)
        warmup_epochs, warmup_learning_rate
    > Fine-tuning of the top layers (layer-wise learning rates)
        finetune_layers, finetune_epochs, finetune_learning_rate, layer_lr_decay, finetune_increments
    > A classifier trained elsewhere (no saved statistics)
        adapt_trained_elsewhere, adapt_epochs, adapt_learning_rate, gate_new_recall
    > Keeping the old labels on the gradient path (``head="trained"``)
        replay_per_label, distill_weight, weight_align
    > Sharing and evaluation
        push_statistics, threshold

    Every field's meaning is in its ``help`` (``hf-incr increment --help`` prints them).
    """

    _argument_group_name = "The recipe (hf_incr.IncrementConfig)"  # its heading in --help

    # Data
    text_column: str = field(default="text", metadata={"help": "Column holding the input texts."})
    label_column: str = field(
        default="label",
        metadata={"help": "Column holding the labels: names, a ClassLabel, or lists of names for multi-label."},
    )
    new_labels: list[str] | None = field(
        default=None,
        metadata={
            "help": "Names of the labels this increment adds. Default: every label in the training data the model "
            "lacks. When given, any other unknown label in the data is an error."
        },
    )
    multi_label: bool = field(
        default=False,
        metadata={
            "help": "Train a multi-label (sigmoid) classifier. Only read when a base classifier is created; an "
            "increment keeps the model's own `problem_type`."
        },
    )
    multi_label_annotation: str = field(
        default="new",
        metadata={
            "help": "Multi-label: which labels the increment's rows annotate. `new`: only the labels it adds (an old "
            "label missing from a row is unknown, not absent): old labels' rows, thresholds and predictions stay bit "
            "for bit as they were. `all`: every label (a label missing from a row is absent): old labels are refitted "
            "too, with the new rows as their negatives.",
            "choices": ["new", "all"],
        },
    )
    max_length: int = field(
        default=128, metadata={"help": "Maximum number of tokens per text (longer texts are truncated)."}
    )

    # The head
    head: str = field(
        default="kernel",
        metadata={
            "help": "What answers. `kernel` (the default): the kernel LDA head on the encoder's pooled top layers, "
            "the most accurate (docs/benchmarks.md); `hf_incr.load_model` and `from_pretrained(..., "
            "trust_remote_code=True)` load it, plain `from_pretrained` the Linear beside it. Beside the kept rows of "
            "a single-label classifier trained elsewhere, `beside_kept` (the new labels read from the encoder's "
            "layers) answers in its place. Where it cannot start or continue, the increment uses the Linear and says "
            "so. `linear`: only the model's own output Linear, "
            "solved in closed form (LDA) from statistics saved with the model (exact for every label seen, no stored "
            "text); the plain model. `trained`: the Linear trained by gradient in every increment (warm-up, "
            "fine-tuning) with replay, distillation and weight aligning. Heads registered with "
            "`hf_incr.heads.register_head` are accepted by name."
        },
    )
    kernel_features: int = field(
        default=5000,
        metadata={
            "help": "Random Fourier features of a kernel head that starts (single-label; a multi-label head reads the "
            "pooled layers themselves); a continued head keeps its own. Its inference file holds 4 x hidden x this "
            "many floats."
        },
    )

    # Warm-up
    warmup_epochs: float = field(
        default=30.0,
        metadata={"help": "Epochs of the warm-up (encoder frozen, output Linear trained on cached features). 0 skips "
                  "it. A solved head needs none, except before the base's fine-tuning."},
    )
    warmup_learning_rate: float = field(default=1e-2, metadata={"help": "Learning rate of the warm-up."})

    # Fine-tuning
    finetune_layers: int = field(
        default=2,
        metadata={
            "help": "Number of top encoder layers to unfreeze after the warm-up (0: no fine-tuning phase; -1: the "
            "whole model)."
        },
    )
    finetune_epochs: float = field(default=5.0, metadata={"help": "Epochs of the fine-tuning phase."})
    finetune_learning_rate: float = field(
        default=1e-4, metadata={"help": "Learning rate of the head in the fine-tuning phase (layers below decay)."}
    )
    layer_lr_decay: float = field(
        default=0.8,
        metadata={"help": "Learning-rate factor per layer going down in the fine-tuning phase (1.0: no decay)."},
    )
    finetune_increments: bool = field(
        default=False,
        metadata={
            "help": "Run the fine-tuning phase in every increment (True; needs `head=trained`), or only when training "
            "the base classifier and keep the encoder frozen in later increments (False: adapt the encoder once, "
            "then every increment is a cheap frozen-encoder step)."
        },
    )

    # A classifier trained elsewhere
    adapt_trained_elsewhere: bool = field(
        default=True,
        metadata={
            "help": "For a single-label model hf_incr did not train (no saved statistics) whose data holds the old "
            "labels about as well as the new ones (rows of every old label, the median old label at least half as "
            "many as the median new label: the user's full data): fine-tune the whole model once on all rows (a "
            "joint fine-tune warm-started from the trained model), then solve the head from the adapted encoder's "
            "statistics, as for a base that hf_incr trains. With eval_dataset it is kept only if it is at least as "
            "accurate there as keeping the trained rows, on the old labels and on all. False: keep the trained rows "
            "and the encoder."
        },
    )
    adapt_epochs: float = field(
        default=1.0, metadata={"help": "Epochs of that fine-tune (a joint fine-tune from scratch needs several)."}
    )
    adapt_learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of that fine-tune."})
    gate_new_recall: float = field(
        default=0.8,
        metadata={
            "help": "Given no rows of the old labels, a single-label classifier trained elsewhere answers its new "
            "labels through a gate on the encoder's layers (`beside_kept` head, in place of `kernel`): the share of "
            "held-out new-label rows the gate sends to the new labels. Higher favours the new labels, lower the old "
            "ones (BANKING77, old / new accuracy: 0.9 gave 83.1 / 88.6, 0.8 gave 88.8 / 82.4, 0.7 gave 91.5 / 74.8)."
        },
    )

    # Keeping the old labels on the gradient path
    replay_per_label: int = field(
        default=0,
        metadata={
            "help": "Examples stored per label in a replay memory saved with the model and mixed into later "
            "increments, chosen by herding and repeated to balance old and new labels (0: no replay memory)."
        },
    )
    distill_weight: float = field(
        default=1.0,
        metadata={
            "help": "`head=trained`: weight of the distillation loss from the model before the increment on the old "
            "labels' outputs (0: off)."
        },
    )
    weight_align: bool = field(
        default=False,
        metadata={
            "help": "`head=trained`: after training, rescale the new rows of the head to the old rows' mean norm "
            "(weight aligning)."
        },
    )

    # Sharing and evaluation
    push_statistics: bool = field(
        default=True,
        metadata={
            "help": "Upload the heads' statistics files (what only the next increment reads; the kernel head's are "
            "~50 MB) with a push. False: the Hub gets what inference needs; the next increment must start from the "
            "local folder."
        },
    )
    threshold: float = field(
        default=0.5, metadata={"help": "Multi-label evaluation: a label is predicted when its sigmoid exceeds this."}
    )

    def __post_init__(self) -> None:
        from .heads import HEADS  # the registry, filled when hf_incr is imported

        heads = sorted([*HEADS, TRAINED])
        if self.head not in heads:
            raise ConfigError(f"`head` should be one of {heads}, got {self.head!r}.")
        if self.multi_label_annotation not in ("new", "all"):
            raise ConfigError(
                f"`multi_label_annotation` should be 'new' (rows annotate only the labels the increment adds) or "
                f"'all' (rows are fully annotated), got {self.multi_label_annotation!r}."
            )
        if not 0 < self.layer_lr_decay <= 1:
            raise ConfigError(f"`layer_lr_decay` should be in (0, 1], got {self.layer_lr_decay}.")
        for name in ("warmup_epochs", "finetune_epochs", "adapt_epochs", "adapt_learning_rate", "replay_per_label",
                     "distill_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"`{name}` should be >= 0, got {getattr(self, name)}.")
        if self.max_length < 1:
            raise ConfigError(f"`max_length` should be >= 1, got {self.max_length}.")
        if not 0 < self.gate_new_recall < 1:
            raise ConfigError(f"`gate_new_recall` should be between 0 and 1 (the share of new-label rows the gate "
                              f"keeps), got {self.gate_new_recall}. 0.8 is the default.")
        if self.kernel_features < 1:
            raise ConfigError(f"`kernel_features` should be >= 1 (the kernel head's random features), got "
                              f"{self.kernel_features}.")
        if self.head != TRAINED and self.finetune_layers != 0 and self.finetune_increments:
            raise ConfigError(
                f"`head={self.head!r}` keeps statistics of the frozen encoder's representations across increments; "
                "fine-tuning layers in every increment would make them stale. Fine-tune only the base "
                "(`finetune_increments=False`, `--finetune_increments false`), not at all (`--finetune_layers 0`), "
                "or train the head by gradient to fine-tune in every increment (`--head trained`)."
            )
        if self.new_labels is not None:
            self.new_labels = list(self.new_labels)

    @property
    def solved(self) -> bool:
        """Whether the head is solved from statistics (every head but the gradient path's)."""
        return self.head != TRAINED

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, as recorded in the lineage."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> IncrementConfig:
        """Build from a dict, refusing removed settings (saying what replaced them) and unknown keys (listing the
        known ones)."""
        check_removed(values, "the settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Unknown recipe setting(s) {unknown}; the known ones are {sorted(known)}.")
        return cls(**values)


def check_removed(names, where: str) -> None:
    """Refuse settings of earlier versions that were removed, saying what replaced each."""
    removed = [name for name in names if name in REMOVED]
    if removed:
        lines = "; ".join(f"`{name}` -> {REMOVED[name]}" for name in removed)
        raise ConfigError(f"{where} set(s) {removed}, removed from hf_incr: {lines}. Remove them (nothing was run).")


def _refuse_removed(init):
    """``IncrementConfig(kernel_members=2)`` says what replaced a removed setting instead of a bare TypeError."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        check_removed(kwargs, "IncrementConfig()")
        init(self, *args, **kwargs)

    return __init__


IncrementConfig.__init__ = _refuse_removed(IncrementConfig.__init__)
