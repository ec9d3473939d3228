"""The kernel LDA head (:mod:`hf_incr.kernel_head`) on a transformers classifier: what it reads, how it is attached,
how the recipe feeds it, and its two files.

The head reads the encoder's best sentence vector rather than the output Linear's input (BERT's pooler, which a
frozen encoder never trained for the task): the attention-mask weighted mean of the hidden states, or what a
sentence-transformers model was trained with (its ``1_Pooling/config.json`` and ``modules.json``: pooling mode, L2
normalisation), chosen per model by :func:`sentence_pooling`, of each of the encoder's top ``layers`` layers,
concatenated (:class:`PooledCapture`); both are recorded in the head's configuration.

Like the random-feature head it is an extra module that transformers' classes do not have, attached with hooks so
that the state dict is untouched: plain ``from_pretrained`` keeps loading the model's own (linear closed-form) head,
and :func:`hf_incr.load_model` attaches the kernel head from its file. Forward hooks carry it:

- on the base model (``model.base_model``, e.g. ``model.bert``): pools its last hidden states (and the outputs of the
  blocks below, handed over by one more hook on each) with the attention mask it was called with, and keeps the
  vector for the head;
- on the output Linear: replaces its output by the kernel head's logits of that vector.

Files, so that a Hub user downloads only what inference needs:

- :data:`KERNEL_FILENAME`: projections (float32, with their seeds) and solved weights, what inference needs;
- :data:`KERNEL_STATISTICS_FILENAME`: the statistics the next increment continues (per member a D x D scatter,
  float32 by default: ``kernel_statistics_dtype``), optional on the Hub (``kernel_push_statistics``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers.utils import logging

from .distributed import distributed_launch, gather_variable_rows, sum_over_processes
from .errors import ConfigError, HeadConfigMismatchError
from .head import ClassifierHead, find_classifier_head
from .kernel_head import (
    KernelLDAClassifier,
    KernelLDAConfig,
    KernelLDAHead,
    MultiLabelStatistics,
    choose_bandwidth,
    load_head,
    load_inference,
    save_inference,
    save_statistics,
)
from .layers import encoder_layers

logger = logging.get_logger(__name__)

KERNEL_FILENAME = "hf_incr_kernel_lda.safetensors"
KERNEL_STATISTICS_FILENAME = "hf_incr_kernel_lda_statistics.safetensors"
POOLING_CHOICES = ("auto", "mean", "cls")
# Rows pooled before a statistics update: one (rows x D) @ (D x rows) product per chunk is much faster than one per
# encoder batch of 64 (the scatter update is the cost of the whole head).
UPDATE_CHUNK = 2048

# Pooling ------------------------------------------------------------------------------------------------------------


def sentence_pooling(model) -> tuple[str, bool]:
    """``(pooling, normalize)`` the model's encoder was trained with, when it is a sentence-transformers model saved
    in a local folder (``1_Pooling/config.json``; ``modules.json`` lists a ``Normalize`` module); otherwise
    ``("mean", True)``, the best of the representations measured (docs/benchmarks.md, "Kernel LDA")."""
    source = getattr(model.config, "_name_or_path", None) or ""
    folder = Path(source) if source else None
    if folder is None or not (folder / "modules.json").is_file():
        return "mean", True
    try:
        modules = json.loads((folder / "modules.json").read_text())
        types = [str(m.get("type", "")) for m in modules]
        pooling_dirs = [m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Pooling")]
        pooling = "mean"
        if pooling_dirs and (folder / pooling_dirs[0] / "config.json").is_file():
            settings = json.loads((folder / pooling_dirs[0] / "config.json").read_text())
            if settings.get("pooling_mode_cls_token") and not settings.get("pooling_mode_mean_tokens"):
                pooling = "cls"
    except (OSError, ValueError, AttributeError):
        return "mean", True  # an unreadable sentence-transformers folder: the measured default
    return pooling, any(t.endswith("Normalize") for t in types)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """One vector per text from the last hidden states ``(batch, tokens, hidden)``: the attention-mask weighted mean
    (``mean``) or the first token's state (``cls``); float32."""
    hidden = hidden.float()
    if mode == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(1)
    mask = attention_mask[:, : hidden.shape[1]].to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def base_model_of(model: nn.Module) -> nn.Module:
    """The encoder whose last hidden states are pooled (``model.base_model``: ``bert``, ``roberta``, ...)."""
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        raise ConfigError(
            f"The kernel LDA head pools the encoder's last hidden states, but {type(model).__name__} exposes no "
            "separate encoder (`model.base_model`). Expected a transformers `*ForSequenceClassification` model; "
            "use `kernel_features=0` (the linear or random-feature head) for this one."
        )
    return base


class PooledCapture:
    """Forward hook (with kwargs) on the encoder: keeps the sentence vector of the last batch in :attr:`pooled`.

    With ``layers > 1`` the vector is the concatenation, bottom to top, of the pooled outputs of the top ``layers``
    layers (the blocks below the top one hand theirs over through :class:`_LayerOutput` hooks; the top one is the
    encoder's last hidden state), each L2-normalised first when ``normalize`` so that no layer outweighs another.
    Concatenating the last four layers is BERT's best feature-based recipe (Devlin et al. 2019, table 7); on frozen
    MiniLM it is 0.4-1.2 points above the last layer alone under kernel LDA (docs/benchmarks.md, "Kernel LDA").
    """

    def __init__(self, mode: str, layers: int = 1, normalize: bool = False):
        self.mode, self.layers, self.normalize = mode, layers, normalize
        self.lower: list[torch.Tensor] = []  # this forward pass's outputs of the blocks below the top one
        self.pooled: torch.Tensor | None = None

    def __call__(self, module, args, kwargs, output) -> None:
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
            mask = args[1]  # BERT-style forward(input_ids, attention_mask, ...) called positionally
        # The latest outputs: a pass that failed half-way may have left some of its own behind.
        states, self.lower = [*self.lower[len(self.lower) - (self.layers - 1) :], hidden], []
        if len(states) != self.layers:
            raise HeadConfigMismatchError(
                f"The kernel LDA head pools the top {self.layers} layers but saw {len(states)} in this forward pass. "
                "Attach it with `hf_incr.attach_kernel_head` (which hooks those layers), not by hand."
            )
        pooled = [pool(state, mask, self.mode) for state in states]
        if self.layers > 1 and self.normalize:
            pooled = [nn.functional.normalize(vector, dim=1) for vector in pooled]
        self.pooled = torch.cat(pooled, dim=1)


class _LayerOutput:
    """Forward hook on one of the blocks below the top one: hands its output to the :class:`PooledCapture`."""

    def __init__(self, capture: PooledCapture):
        self.capture = capture

    def __call__(self, module, args, output) -> None:
        self.capture.lower.append(output[0] if isinstance(output, tuple) else output)


def capture_pooled(model: nn.Module, config: KernelLDAConfig) -> tuple[PooledCapture, list]:
    """Hook ``model``'s encoder so that every forward pass leaves the head's input vector in the returned capture's
    ``pooled``; also returns the hooks' handles (``handle.remove()`` undoes it)."""
    base = base_model_of(model)
    capture = PooledCapture(config.pooling, config.layers, config.normalize)
    handles = [base.register_forward_hook(capture, with_kwargs=True)]
    if config.layers > 1:
        blocks = encoder_layers(base)
        if len(blocks) < config.layers:
            raise HeadConfigMismatchError(
                f"The kernel LDA head pools the top {config.layers} layers, but the encoder has {len(blocks)}. "
                f"Set `kernel_layers` to at most {len(blocks)}."
            )
        handles += [block.register_forward_hook(_LayerOutput(capture)) for block in blocks[-config.layers : -1]]
    return capture, handles


# Attaching ----------------------------------------------------------------------------------------------------------


class _KernelHook:
    """Forward hook on the output Linear: its output is replaced by the kernel head's logits of the pooled vector.

    ``fewer_labels_ok``: while the recipe scores the model as it was before an increment grew the head, the old
    kernel head has fewer labels; the new ones get very low logits (they are not scored then)."""

    def __init__(self, classifier: KernelLDAClassifier, capture: PooledCapture, fewer_labels_ok: bool = False):
        self.classifier, self.capture, self.fewer_labels_ok = classifier, capture, fewer_labels_ok

    def __call__(self, module: nn.Linear, args, output: torch.Tensor) -> torch.Tensor:
        missing = module.out_features - self.classifier.num_labels
        if missing and not (self.fewer_labels_ok and missing > 0):
            raise HeadConfigMismatchError(
                f"The kernel LDA head has {self.classifier.num_labels} labels but the model's head has "
                f"{module.out_features}. Run `hf_incr.train_increment` to refit it after adding labels, or remove it "
                "with `hf_incr.detach_kernel_head(model)`."
            )
        pooled = self.capture.pooled
        if pooled is None or pooled.shape[0] != output.shape[0]:
            raise HeadConfigMismatchError(
                "The kernel LDA head found no pooled encoder output for this batch (expected one vector per row from "
                "the hook on `model.base_model`). Call the model itself (`model(**batch)`), not its output Linear, "
                "or detach the kernel head with `hf_incr.detach_kernel_head(model)`."
            )
        if self.classifier.device != pooled.device:
            self.classifier.to(pooled.device)
        logits = self.classifier(pooled)
        if missing:
            logits = torch.cat([logits, logits.new_full((logits.shape[0], missing), -1e4)], dim=1)
        if output.dim() == 3:
            # A decoder's score Linear runs on every token and the model then picks the last real one: every
            # position gets its text's logits, so whichever is picked answers for the text.
            logits = logits[:, None, :].expand(-1, output.shape[1], -1)
        logits = logits.to(output.dtype)
        linear = self.classifier.config.linear_labels
        if linear:  # labels of a classifier trained elsewhere: the Linear's own logits (every position's), bit for bit
            logits = logits.clone()
            logits[..., linear] = output[..., linear]
        return logits


def _hooks(module: nn.Module, kind: type) -> list:
    # Found by type among the module's forward hooks: nothing is stored on the module, so deepcopy and save_pretrained
    # see the plain model.
    return [(key, hook) for key, hook in module._forward_hooks.items() if isinstance(hook, kind)]


def attach_kernel_head(
    model: nn.Module,
    classifier: KernelLDAClassifier,
    classifier_head: ClassifierHead | None = None,
    *,
    fewer_labels_ok: bool = False,
) -> None:
    """Make ``model``'s logits come from the kernel LDA ``classifier`` (replacing one attached before). The state dict
    does not change; :func:`detach_kernel_head` restores the model's own Linear."""
    classifier_head = classifier_head or find_classifier_head(model)
    detach_kernel_head(model, classifier_head)
    hidden = getattr(model.config, "hidden_size", None)
    layers = classifier.config.layers
    if hidden is not None and hidden * layers != classifier.config.in_features:
        raise HeadConfigMismatchError(
            f"The kernel LDA head reads {classifier.config.in_features}-dimensional pooled states ({layers} layer(s)) "
            f"but the model's encoder has hidden size {hidden}. Was it saved with another model?"
        )
    capture, _ = capture_pooled(model, classifier.config)
    classifier_head.linear.register_forward_hook(_KernelHook(classifier, capture, fewer_labels_ok))


def detach_kernel_head(model: nn.Module, classifier_head: ClassifierHead | None = None) -> KernelLDAClassifier | None:
    """Remove the kernel LDA head (the model's own Linear gives the logits again); returns it, or ``None``."""
    linear = (classifier_head or find_classifier_head(model)).linear
    found = _hooks(linear, _KernelHook)
    for key, _ in found:
        del linear._forward_hooks[key]
    base = getattr(model, "base_model", None)
    if base is not None and base is not model:
        for key, _ in _hooks(base, PooledCapture):
            del base._forward_hooks[key]
        for block in encoder_layers(base):
            for key, _ in _hooks(block, _LayerOutput):
                del block._forward_hooks[key]
    return found[-1][1].classifier if found else None


def attached_kernel_head(model: nn.Module) -> KernelLDAClassifier | None:
    """The kernel LDA head attached to ``model``, or ``None``."""
    found = _hooks(find_classifier_head(model).linear, _KernelHook)
    return found[-1][1].classifier if found else None


# State carried between increments -------------------------------------------------------------------------------


class KernelHeadState:
    """The incremental head (projections and statistics) and its solved classifier, carried on the closed-form
    statistics between increments (``RidgeStatistics.kernel_lda``) and saved as two files."""

    def __init__(self, head: KernelLDAHead, classifier: KernelLDAClassifier | None = None,
                 file_dtype: str = "float32"):
        self.head, self.classifier, self.file_dtype = head, classifier, file_dtype
        # How the bandwidth was chosen (held-out accuracy per factor), set by the increment that chose it.
        self.bandwidth_report: dict | None = None

    def lineage_entry(self) -> dict:
        """What the lineage records of the head: its settings, the bandwidth (fixed at the first increment) and, in
        the record of the increment that chose it, how it was chosen."""
        c = self.config
        entry = {"num_features": c.num_features, "num_members": c.num_members, "pooling": c.pooling,
                 "layers": c.layers, "normalize": c.normalize, "bandwidth": c.bandwidth,
                 "bandwidth_factor": c.bandwidth_factor}
        if c.linear_labels:
            entry["linear_labels"] = list(c.linear_labels)
        if self.bandwidth_report is not None:
            entry["bandwidth_choice"] = {
                "median_distance": self.bandwidth_report["median_distance"],
                "held_out_accuracy": {str(k): v["accuracy"] for k, v in self.bandwidth_report["factors"].items()},
                "held_out_errors": {str(k): v["errors"] for k, v in self.bandwidth_report["factors"].items()},
                "held_out_rows": self.bandwidth_report["held_out_rows"],
                "rule": "the largest factor with at most fewest + sqrt(fewest + 1) errors",
            }
        return entry

    @property
    def config(self) -> KernelLDAConfig:
        return self.head.config

    def save(self, directory: str | Path, statistics: bool = True) -> list[Path]:
        """Write the inference file and (``statistics``) the statistics file into ``directory``."""
        if self.classifier is None:
            self.classifier = self.head.solve()
        paths = [Path(directory) / KERNEL_FILENAME]
        save_inference(paths[0], self.classifier)
        if statistics:
            paths.append(Path(directory) / KERNEL_STATISTICS_FILENAME)
            save_statistics(paths[1], self.head, getattr(torch, self.file_dtype))
        return paths

    @classmethod
    def load(cls, directory: str | Path) -> KernelHeadState | None:
        """The head saved in a model folder with its statistics, or ``None`` if the folder has no kernel head, or
        only its inference file (pushed with ``kernel_push_statistics=False``): then a warning says that the next
        increment cannot continue it (and an increment with ``kernel_features`` refuses to start).

        Raises:
            SavedStateError: a file is damaged, or the statistics belong to another head.
        """
        inference, statistics = Path(directory) / KERNEL_FILENAME, Path(directory) / KERNEL_STATISTICS_FILENAME
        if not inference.is_file():
            return None
        if not statistics.is_file():
            logger.warning(
                "%s has %s but not %s (pushed without statistics?): the kernel LDA head serves predictions, but the "
                "next increment cannot continue it. Start increments from the folder the model was trained in.",
                directory, KERNEL_FILENAME, KERNEL_STATISTICS_FILENAME,
            )
            return None
        head = load_head(inference, statistics)
        return cls(head, load_inference(inference), file_dtype=_stored_dtype(statistics))


def _stored_dtype(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        names = f.keys()  # safe_open is not iterable
        name = next((k for k in names if k.endswith("scatter_upper")), None)
        return "float64" if name is None or f.get_slice(name).get_dtype() == "F64" else "float32"


def load_kernel_classifier(directory: str | Path) -> KernelLDAClassifier | None:
    """The inference part saved in ``directory``, or ``None`` when it has none."""
    path = Path(directory) / KERNEL_FILENAME
    return load_inference(path) if path.is_file() else None


class KernelStatisticsAccumulator:
    """Feeds one frozen pass into the kernel head, as an accumulator of
    :func:`~hf_incr.features.accumulate_head_statistics`: ``update(features, targets)`` ignores the Linear's inputs
    ``features`` and takes the pooled vectors that the :class:`PooledCapture` hook recorded in the same forward pass.

    Rows are pooled into chunks of :data:`UPDATE_CHUNK` and added to this process's share of the increment (fresh
    statistics over the head's projections); :meth:`finish` sums the shares over the processes (a distributed
    launch) and merges them into the head. A head without a bandwidth yet (the first increment) keeps every pooled
    row (``hidden`` floats each) until :meth:`finish`, which gathers them from every process, chooses the bandwidth
    on a held-out tenth of them (:func:`~hf_incr.kernel_head.choose_bandwidth`), then accumulates them."""

    def __init__(self, state: KernelHeadState, capture: PooledCapture, annotated: list[int] | None = None):
        self.state, self.capture = state, capture
        # Multi-label: the label ids this increment's rows annotate (None: all); the targets of others are 0.
        self.annotated = annotated
        # A continued head: this process's rows go into a share of their own, which `finish` combines across
        # processes and merges into the head (the head's statistics are the same in every process).
        self.share = state.head.empty_copy() if state.head.statistics else None
        self.rows: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.pending = 0
        self.bandwidth_report: dict | None = None

    def update(self, features: torch.Tensor, targets: torch.Tensor) -> KernelStatisticsAccumulator:
        pooled = self.capture.pooled
        if pooled is None or pooled.shape[0] != targets.shape[0]:
            raise HeadConfigMismatchError(
                f"The kernel LDA statistics expected {targets.shape[0]} pooled rows from the encoder hook, got "
                f"{None if pooled is None else pooled.shape[0]}: the frozen pass did not run the model's encoder."
            )
        return self.add(pooled, targets)

    def add(self, pooled: torch.Tensor, targets: torch.Tensor) -> KernelStatisticsAccumulator:
        """Add rows whose pooled vectors were captured already (e.g. during another pass over the same texts)."""
        self.rows.append(pooled.detach().float().cpu())
        self.labels.append(targets.float() if self.state.config.multi_label else targets.argmax(1))
        self.pending += pooled.shape[0]
        if self.share is not None and self.pending >= UPDATE_CHUNK:
            self._flush()
        return self

    def _flush(self) -> None:
        if self.rows:
            self.share.update(torch.cat(self.rows), torch.cat(self.labels), self.annotated)
        self.rows, self.labels, self.pending = [], [], 0

    def finish(self, num_labels: int) -> KernelHeadState:
        """Fix the bandwidth (first increment only), add the remaining rows, and solve the head for ``num_labels``."""
        head = self.state.head
        gathered = self.share is None
        if gathered:
            # The first increment: every process gets every row (under a distributed launch they are gathered, in
            # process order), so that all choose the same bandwidth and accumulate the same statistics.
            rows, labels = self._all_rows(num_labels)
            if head.config.multi_label:
                # Held-out accuracy cannot rank bandwidths for per-label decisions: the median distance.
                head.set_bandwidth(rows)
            else:
                _, self.bandwidth_report = choose_bandwidth(rows, labels, head.config)
                head.build()
            self.share = head.empty_copy()
            self.rows, self.labels = [rows], [labels]
        self.state.bandwidth_report = self.bandwidth_report  # None unless this increment chose it
        self._flush()
        self.share.grow(num_labels)
        if not gathered:
            sum_shares_over_processes(self.share)
        head.grow(num_labels)
        head.merge(self.share)
        self.state.classifier = head.solve(self.state.classifier, self.annotated)
        return self.state

    def _all_rows(self, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's pooled rows and their labels, or every process's under a distributed launch."""
        rows = torch.cat(self.rows) if self.rows else torch.zeros(0, self.state.config.in_features)
        if self.labels:
            labels = torch.cat(self.labels)
        else:  # a process without rows still takes part in the gathering, with tensors of the right shape
            multi = self.state.config.multi_label
            labels = torch.zeros(0, num_labels) if multi else torch.zeros(0, dtype=torch.long)
        return gather_variable_rows(rows), gather_variable_rows(labels)


def sum_shares_over_processes(share: KernelLDAHead) -> None:
    """Under a distributed launch, make each process's share of an increment (the statistics of the rows it
    encoded) the statistics of every process's rows: counts, label sums and raw second moments add up across
    processes (the scatter, centred on each share's means, does not), and the scatter is recovered from them."""
    if not distributed_launch():
        return
    for stats in share.statistics:
        rows = stats.rows if isinstance(stats, MultiLabelStatistics) else stats
        moments = rows.raw_moments()
        sums = rows.sums.to(torch.float64)
        extra = [] if rows is stats else [stats.positive_counts, stats.positive_sums, stats.annotated_counts,
                                          stats.annotated_sums]
        sum_over_processes(rows.counts, sums, moments, *extra)
        rows.sums = sums.to(rows.dtype)
        rows.set_raw_moments(moments)
