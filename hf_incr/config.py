"""The recipe's settings: one dataclass, usable from Python and (through ``HfArgumentParser``) from the CLI.

Everything Trainer already does (batch size, precision, logging, saving, ``report_to``, ``seed``,
``resume_from_checkpoint``) stays in the user's ``TrainingArguments``; this dataclass only holds what the
increment recipe adds on top.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .head import INIT_METHODS


@dataclass
class IncrementConfig:
    """Settings of one class-incremental step: grow the head, warm it up on a frozen encoder, optionally fine-tune
    the top layers with layer-wise learning rates, and keep the old labels.

    > Data
        text_column, label_column, new_labels, multi_label, max_length
    > New rows of the head
        init
    > Phase 1, warm-up (encoder frozen)
        warmup_epochs, warmup_learning_rate, warmup_scope, cache_features, feature_batch_size, cached_batch_size
    > Phase 2, fine-tuning (top layers unfrozen)
        finetune_layers, finetune_epochs, finetune_learning_rate, layer_lr_decay, finetune_increments
    > A classifier trained elsewhere (no saved statistics)
        adapt_trained_elsewhere, adapt_epochs, adapt_learning_rate
    > Keeping the old labels
        replay_per_label, replay_selection, replay_balance, distill_weight, distill_temperature, weight_align,
        closed_form_head,        ridge_lambda, closed_form_solver, random_features, random_features_lambda
    > Kernel LDA head
        kernel_features, kernel_members, kernel_pooling, kernel_layers, kernel_statistics_dtype, kernel_push_statistics
    > Evaluation
        threshold

    Every field's meaning is in its ``help`` (``hf-incr increment --help`` prints them).
    """

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
    max_length: int = field(
        default=128, metadata={"help": "Maximum number of tokens per text (longer texts are truncated)."}
    )

    # New rows
    init: str = field(
        default="imprint",
        metadata={
            "help": "How the new rows of the head start: the model's own init, zeros, the mean of the old rows, or "
            "imprinted from the mean representation of the new labels' training examples.",
            "choices": list(INIT_METHODS),
        },
    )

    # Phase 1: warm-up with the encoder frozen
    warmup_epochs: float = field(
        default=30.0, metadata={"help": "Epochs of the warm-up phase (encoder frozen, head trained). 0 skips it."}
    )
    warmup_learning_rate: float = field(default=1e-2, metadata={"help": "Learning rate of the warm-up phase."})
    warmup_scope: str = field(
        default="output",
        metadata={
            "help": "What the warm-up trains: `output` = only the Linear that outputs the logits (fast path with "
            "cached features possible); `head` = everything above the last encoder block (e.g. BERT's pooler too).",
            "choices": ["output", "head"],
        },
    )
    cache_features: bool = field(
        default=True,
        metadata={
            "help": "With warmup_scope=output: run the frozen encoder once over the training texts and train the "
            "head on the cached representations (much faster than re-encoding every epoch)."
        },
    )
    feature_batch_size: int = field(default=64, metadata={"help": "Batch size of the feature-caching pass."})
    cached_batch_size: int = field(
        default=128,
        metadata={
            "help": "Training batch size of the warm-up on cached features (a step is one small matmul, so larger "
            "batches than the encoder's pay off; TrainingArguments' batch size applies to every other phase)."
        },
    )

    # Phase 2: fine-tune the top layers
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
            "help": "Run the fine-tuning phase in every increment (True), or only when training the base classifier "
            "and keep the encoder frozen in later increments (False: adapt the encoder once, then every increment is "
            "a cheap frozen-encoder step; a closed-form head needs this once it has statistics)."
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

    # Keeping the old labels
    replay_per_label: int = field(
        default=0,
        metadata={
            "help": "Examples stored per label in a replay memory saved with the model and mixed into later "
            "increments (0: no replay memory)."
        },
    )
    replay_selection: str = field(
        default="herding",
        metadata={
            "help": "How replay examples are chosen: at random, or by herding (closest to the label's mean "
            "representation).",
            "choices": ["random", "herding"],
        },
    )
    replay_balance: bool = field(
        default=True,
        metadata={
            "help": "Repeat the replayed examples so an old label has about as many training rows as a new one "
            "(class-balanced replay)."
        },
    )
    distill_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the distillation loss from the model before the increment on the old labels' "
            "outputs (0: off)."
        },
    )
    distill_temperature: float = field(
        default=2.0, metadata={"help": "Softmax temperature of the distillation loss (single-label models)."}
    )
    weight_align: bool = field(
        default=False,
        metadata={
            "help": "After training, rescale the new rows of the head to the old rows' mean norm (weight aligning). "
            "Not applied to a closed-form head, whose rows are already the exact ridge solution."
        },
    )
    closed_form_head: bool = field(
        default=True,
        metadata={
            "help": "Solve the head in closed form (see closed_form_solver) from statistics accumulated over every "
            "increment and saved with the model: exact for every label seen, needs no stored text. Replaces the "
            "warm-up's gradient training of the output Linear (the base still warms up before fine-tuning). A model "
            "without statistics (trained without hf_incr) given only new labels falls back to the gradient warm-up, "
            "with a warning."
        },
    )
    ridge_lambda: float = field(
        default=1e-3,
        metadata={"help": "Ridge penalty of the closed-form ridge head (docs/benchmarks.md: how it was chosen)."},
    )
    closed_form_solver: str = field(
        default="auto",
        metadata={
            "help": "Closed-form head from the accumulated statistics: ridge regression onto the labels, or linear "
            "discriminant analysis (more accurate than ridge in our benchmarks; multi-label: each label against the "
            "rows without it). auto: LDA. Multi-label heads get each label's F1-tuned threshold folded into its bias.",
            "choices": ["auto", "ridge", "lda"],
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
    random_features: int = field(
        default=0,
        metadata={
            "help": "With closed_form_head: also solve a ridge head on this many fixed random ReLU features of the "
            "head's input (RanPAC), more accurate than a linear head. That head is an extra layer: plain transformers "
            "loads the model with its linear closed-form head, `hf_incr.load_model` with the random-feature head. "
            "Its statistics take (N+1)^2 float64 numbers on disk (5000: 200 MB). 0: off."
        },
    )
    random_features_lambda: float = field(
        default=1e-3,
        metadata={
            "help": "Ridge penalty of the random-feature head, relative to the mean diagonal of its Gram matrix (so "
            "it does not depend on the number of rows or the features' scale)."
        },
    )

    # Kernel LDA head (hf_incr.kernel_attach): an extra head on the encoder's pooled last hidden states
    kernel_features: int = field(
        default=0,
        metadata={
            "help": "With closed_form_head: also solve a kernel LDA head (KLDA) on this many random Fourier features "
            "of the encoder's pooled last hidden states (see kernel_pooling), the most accurate head on a frozen "
            "encoder (docs/benchmarks.md, 'Kernel LDA'; 5000 is what was measured). The Gaussian kernel's bandwidth "
            "is chosen from the first increment's rows and kept. Like random_features it is an extra module: "
            "plain transformers loads the linear closed-form head, `hf_incr.load_model` the kernel head. Files: "
            "hf_incr_kernel_lda.safetensors (inference, ~9 MB per member at 5000) and "
            "hf_incr_kernel_lda_statistics.safetensors (next increment, ~50 MB per member in float32). Multi-label: "
            "each label its own discriminant on the pooled top layers themselves (no random features, one member: "
            "measured better there), with its F1-tuned threshold folded in; labels the rows do not annotate keep "
            "their rows. A multi-label classifier trained elsewhere can start one at any increment: its own labels "
            "keep the Linear's logits, the kernel head decides the labels added from then on. 0: off."
        },
    )
    kernel_members: int = field(
        default=1,
        metadata={
            "help": "Ensemble members of the kernel LDA head (each its own random features, seeds seed, seed+1, ...; "
            "their probabilities are averaged). Time and files grow with it."
        },
    )
    kernel_pooling: str = field(
        default="auto",
        metadata={
            "help": "Sentence vector the kernel LDA head reads, L2-normalised: the attention-mask weighted mean of "
            "the last hidden states (`mean`), the first token's (`cls`), or `auto`: what a sentence-transformers "
            "model saved in a local folder was trained with (its 1_Pooling config), else `mean`. Recorded in the "
            "head's file.",
            "choices": ["auto", "mean", "cls"],
        },
    )
    kernel_layers: int = field(
        default=4,
        metadata={
            "help": "How many of the encoder's top layers the kernel LDA head reads: each pooled (kernel_pooling) "
            "and L2-normalised, then concatenated. 4, BERT's best feature-based recipe (concatenate the last four "
            "layers), was 0.4-1.2 points above the last layer alone on frozen MiniLM (docs/benchmarks.md, 'Kernel "
            "LDA'); 1 reads the last layer only. Capped at the encoder's depth; a head continued from a saved model "
            "keeps what it was trained with. The inference file grows with it (its projection is "
            "kernel_layers x hidden x kernel_features floats)."
        },
    )
    kernel_statistics_dtype: str = field(
        default="float32",
        metadata={
            "help": "Precision of the saved kernel LDA statistics (they are accumulated in float64): float32 halves "
            "the file; measured effect on the solved head 1e-5 relative, no prediction changed "
            "(docs/benchmarks.md). float64 continues increments exactly.",
            "choices": ["float32", "float64"],
        },
    )
    kernel_push_statistics: bool = field(
        default=True,
        metadata={
            "help": "Upload the kernel LDA statistics file with a push. False: the Hub gets only what inference "
            "needs; the statistics stay in the local folder, which the next increment must start from."
        },
    )

    # Evaluation
    threshold: float = field(
        default=0.5, metadata={"help": "Multi-label: a label is predicted when its sigmoid exceeds this."}
    )

    def __post_init__(self) -> None:
        if self.init not in INIT_METHODS:
            raise ConfigError(f"`init` should be one of {list(INIT_METHODS)}, got {self.init!r}.")
        if self.warmup_scope not in ("output", "head"):
            raise ConfigError(f"`warmup_scope` should be 'output' or 'head', got {self.warmup_scope!r}.")
        if self.replay_selection not in ("random", "herding"):
            raise ConfigError(f"`replay_selection` should be 'random' or 'herding', got {self.replay_selection!r}.")
        if not 0 < self.layer_lr_decay <= 1:
            raise ConfigError(f"`layer_lr_decay` should be in (0, 1], got {self.layer_lr_decay}.")
        for name in ("feature_batch_size", "cached_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name}` should be >= 1, got {getattr(self, name)}.")
        for name in ("warmup_epochs", "finetune_epochs", "adapt_epochs", "adapt_learning_rate", "replay_per_label",
                     "distill_weight", "ridge_lambda", "random_features"):
            if getattr(self, name) < 0:
                raise ConfigError(f"`{name}` should be >= 0, got {getattr(self, name)}.")
        if self.max_length < 1:
            raise ConfigError(f"`max_length` should be >= 1, got {self.max_length}.")
        if self.closed_form_head and self.ridge_lambda <= 0:
            raise ConfigError("`closed_form_head=True` needs `ridge_lambda > 0` so the ridge system is solvable.")
        if self.closed_form_solver not in ("auto", "ridge", "lda"):
            raise ConfigError(
                f"`closed_form_solver` should be 'auto', 'ridge' or 'lda', got {self.closed_form_solver!r}."
            )
        if self.multi_label_annotation not in ("new", "all"):
            raise ConfigError(
                f"`multi_label_annotation` should be 'new' (rows annotate only the labels the increment adds) or "
                f"'all' (rows are fully annotated), got {self.multi_label_annotation!r}."
            )
        if self.closed_form_head and self.finetune_layers != 0 and self.finetune_increments:
            raise ConfigError(
                "`closed_form_head=True` keeps statistics of the frozen encoder's representations across increments; "
                "fine-tuning layers in every increment would make them stale. Fine-tune only the base "
                "(`finetune_increments=False`, `--finetune_increments false`), not at all (`--finetune_layers 0`), "
                "or train the head by gradient to fine-tune in every increment (`--closed_form_head false`)."
            )
        if self.random_features and not self.closed_form_head:
            raise ConfigError(
                f"`random_features={self.random_features}` is a closed-form head over random features: set "
                "`closed_form_head=True` (`--closed_form_head`) with it, or `random_features=0`."
            )
        self._check_kernel_fields()
        if self.random_features_lambda <= 0:
            raise ConfigError(f"`random_features_lambda` should be > 0, got {self.random_features_lambda}.")
        if self.new_labels is not None:
            self.new_labels = list(self.new_labels)

    def _check_kernel_fields(self) -> None:
        if self.kernel_features < 0 or self.kernel_members < 1:
            raise ConfigError(
                f"`kernel_features` should be >= 0 and `kernel_members` >= 1, got {self.kernel_features} and "
                f"{self.kernel_members}."
            )
        if self.kernel_layers < 1:
            raise ConfigError(f"`kernel_layers` should be >= 1 (the top layers read), got {self.kernel_layers}.")
        if self.kernel_pooling not in ("auto", "mean", "cls"):
            raise ConfigError(f"`kernel_pooling` should be 'auto', 'mean' or 'cls', got {self.kernel_pooling!r}.")
        if self.kernel_statistics_dtype not in ("float32", "float64"):
            raise ConfigError(
                f"`kernel_statistics_dtype` should be 'float32' or 'float64', got {self.kernel_statistics_dtype!r}."
            )
        if self.kernel_features and not self.closed_form_head:
            raise ConfigError(
                f"`kernel_features={self.kernel_features}` is a closed-form head: set `closed_form_head=True` "
                "(`--closed_form_head`) with it, or `kernel_features=0`."
            )
        if self.kernel_features and self.random_features:
            raise ConfigError(
                f"`kernel_features={self.kernel_features}` and `random_features={self.random_features}` are two "
                "extra heads and a model answers with one: keep one of them (the kernel LDA head was the more "
                "accurate in docs/benchmarks.md), set the other to 0."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, as recorded in the lineage."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> IncrementConfig:
        """Build from a dict, refusing unknown keys with a message that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Unknown recipe setting(s) {unknown}; the known ones are {sorted(known)}.")
        return cls(**values)
