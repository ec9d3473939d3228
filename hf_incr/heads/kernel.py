"""The kernel LDA head (KLDA, Momeni, Mazumder & Liu, 2025): LDA on random Fourier features of the encoder's pooled
top layers, updated increment by increment. Its inference code is :mod:`.modeling_hf_incr_kernel` (shipped with the
model); this module is what an increment adds: the statistics, the bandwidth choice, the solve and the files.

A frozen encoder's vector ``x`` (its top 4 layers, each mean-pooled, or pooled as a sentence-transformers model was
trained, L2-normalised, concatenated) is expanded into ``D`` random Fourier features
``z(x) = sqrt(2 / D) cos(x W + b)``, ``W ~ N(0, 1 / sigma^2)``, so that ``z(x) . z(y)`` approximates the Gaussian
kernel ``exp(-|x - y|^2 / (2 sigma^2))``. The head keeps the shared-covariance LDA statistics of ``z``
(:class:`~hf_incr.heads.statistics.ClassStatistics`, float64) and is solved with uniform priors. The bandwidth is
fixed at the first increment: ``factor x median pairwise distance`` of its rows, the factor chosen on a held-out
tenth of them, the smoothest within one standard error of the fewest errors (:func:`choose_bandwidth`).

A multi-label head reads the pooled layers themselves (no random features): each label its own discriminant against
the rows without it, with its F1-optimal threshold folded in; labels an increment's rows do not annotate keep their
rows, and labels a classifier trained elsewhere came with keep its Linear's logits (``linear_labels``).

Files: ``hf_incr_kernel_lda.safetensors`` (inference: projections and solved rows, float32, ~30 MB for MiniLM) and
``hf_incr_kernel_lda_statistics.safetensors`` (what the next increment continues: per member the label sums and the
scatter's upper triangle, float32: the solved head moved by 1e-5 relative and no prediction changed against float64).
Several members (an ensemble, earlier versions' option) are still read and continued.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from transformers.utils import logging

from ..distributed import distributed_launch, gather_variable_rows
from ..errors import ConfigError, DataError, HeadConfigMismatchError, SavedStateError
from ..features import Capture
from ..layers import encoder_layers
from . import modeling_hf_incr_kernel as modeling
from .base import Head
from .files import FileReader, write_tensors
from .lda import multi_label_discriminants, solve_lda
from .statistics import ClassStatistics, check_features, check_labels, check_targets

logger = logging.get_logger(__name__)

KERNEL_FILENAME = modeling.KERNEL_FILENAME
KERNEL_STATISTICS_FILENAME = "hf_incr_kernel_lda_statistics.safetensors"
STATISTICS_FORMAT = "hf_incr.kernel_lda.statistics"
# Chosen, not settings (docs/benchmarks.md): the top four layers (BERT's best feature-based recipe, 0.4-1.2 points
# above the last layer alone on frozen MiniLM), one member (ensembles: +0.1-0.3 on CLINC150 at 3-5x the time), the
# statistics saved in float32 (half the file; 1e-5 relative on the solved head).
KERNEL_LAYERS = 4
BANDWIDTH_FACTORS = (0.5, 1.0, 2.0)
STATISTICS_FILE_DTYPE = torch.float32
# Rows pooled before a statistics update: one (rows x D) @ (D x rows) product per chunk is much faster than one per
# encoder batch (the scatter update is the cost of the whole head).
UPDATE_CHUNK = 2048
# The settings that identify a head's projections (what a statistics file is checked against).
_FINGERPRINT_KEYS = ("in_features", "num_features", "num_members", "bandwidth", "bandwidth_factor", "seed",
                     "normalize", "pooling", "layers", "combine", "multi_label")
INFERENCE_LOST, INFERENCE_FIX = "the kernel LDA head cannot score", "Restore the file from where the model came from."
STATISTICS_LOST = "the next increment cannot continue the kernel LDA statistics (the old labels would be lost)"
STATISTICS_FIX = "Restore the statistics file saved with this model, or refit from all labels' rows."


def sentence_pooling(model) -> tuple[str, bool]:
    """``(pooling, normalize)`` the model's encoder was trained with, when it is a sentence-transformers model saved
    in a local folder (``1_Pooling/config.json``; ``modules.json`` lists a ``Normalize`` module); otherwise
    ``("mean", True)``, the best of the representations measured (docs/benchmarks.md)."""
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


def block_paths(model, layers: int) -> list[str]:
    """The dotted paths, inside ``model.base_model``, of the ``layers - 1`` blocks below the encoder's top one."""
    base = modeling.base_model_of(model)
    blocks = encoder_layers(base)
    if len(blocks) < layers:
        raise HeadConfigMismatchError(
            f"The kernel LDA head pools the top {layers} layers, but the encoder has {len(blocks)}. Was it saved with "
            "another model?"
        )
    names = {id(module): name for name, module in base.named_modules()}
    return [names[id(block)] for block in blocks[len(blocks) - layers : -1]]


def draw_projection(in_features: int, num_features: int, bandwidth: float,
                    seed: int) -> modeling.RandomFourierFeatures:
    """A member's random Fourier features: ``W ~ N(0, 1 / bandwidth^2)`` (d, D), ``b ~ U[0, 2 pi)``, drawn in float64
    from ``torch.Generator().manual_seed(seed)``."""
    generator = torch.Generator().manual_seed(int(seed))
    weight = torch.randn(in_features, num_features, generator=generator, dtype=torch.float64) / float(bandwidth)
    offset = torch.rand(num_features, generator=generator, dtype=torch.float64) * (2 * math.pi)
    return modeling.RandomFourierFeatures(weight, offset)


def median_pairwise_distance(features: torch.Tensor, max_rows: int = 1000, seed: int = 0) -> float:
    """Median Euclidean distance between distinct rows of (a sample of up to ``max_rows`` of) ``features``."""
    if features.shape[0] < 2:
        raise DataError(f"median_pairwise_distance: expected at least 2 rows, got {features.shape[0]}. Fix: pass the "
                        "first increment's rows.")
    x = features.to(torch.float64)
    if x.shape[0] > max_rows:
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_rows]]
    distances = torch.cdist(x, x)
    upper = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    return float(distances[upper[0], upper[1]].median())


def smoothest_within_one_standard_error(errors: dict[float, int]) -> tuple[float, float]:
    """The largest bandwidth factor whose held-out error count is at most ``fewest + sqrt(fewest + 1)`` (one Poisson
    standard error above the fewest, one added so that zero errors still allow a row of noise), and that bound."""
    fewest = min(errors.values())
    allowed = fewest + math.sqrt(fewest + 1)
    return max(f for f, e in errors.items() if e <= allowed), allowed


def member_features(config: modeling.KernelConfig, projection, pooled: torch.Tensor) -> torch.Tensor:
    """A member's features of pooled vectors, float64 (so that a row's features do not depend on its batch)."""
    x = modeling.prepare(pooled, config.normalize, torch.float64)
    return projection(x, torch.float64) if projection is not None else x


def solve_member(config: modeling.KernelConfig, statistics: ClassStatistics):
    """Single-label: a member's LDA rows (uniform priors, covariance over the rows), float64."""
    weight, bias, _ = solve_lda(statistics.counts, statistics.sums, statistics.scatter, priors="uniform",
                                covariance="rows")
    return weight, bias


def choose_bandwidth(features: torch.Tensor, labels, config: modeling.KernelConfig, factors=BANDWIDTH_FACTORS,
                     held_out_fraction: float = 0.1) -> tuple[float, dict]:
    """Choose ``bandwidth_factor`` among ``factors`` on held-out rows of the first increment (one member, the config's
    ``num_features``); sets ``config.bandwidth`` (factor x median pairwise distance of all of ``features``) and
    ``config.bandwidth_factor``, and returns the bandwidth and a report.

    The rule is the one-standard-error rule (Breiman et al. 1984; Hastie et al., *Elements of Statistical Learning*,
    7.10): the largest factor (the smoothest kernel) whose held-out errors exceed the fewest by at most one standard
    error. A first increment of ten labels is easy, so its held-out rows separate the factors by a row or two, while
    the kernel must serve every later label too; on BANKING77 and CLINC150 over three label orders the factor 0.5 was
    the worst at the end each time, yet the held-out rows could not tell it from the others. The mean log-likelihood
    (LDA's posteriors are overconfident) is reported, not used."""
    features = check_features(features, config.in_features, "choose_bandwidth")
    labels = check_labels(labels, features.shape[0], None, "choose_bandwidth")
    generator = torch.Generator().manual_seed(config.seed)
    held = torch.zeros(features.shape[0], dtype=torch.bool)
    for label in labels.unique():  # a tenth of every label's rows, at least one, never all
        rows = (labels == label).nonzero().flatten()
        if rows.numel() >= 2:
            k = max(1, round(held_out_fraction * rows.numel()))
            held[rows[torch.randperm(rows.numel(), generator=generator)[:k]]] = True
    median = median_pairwise_distance(modeling.prepare(features, config.normalize), seed=config.seed)
    held_out_rows = int(held.sum())
    report = {"median_distance": median, "held_out_rows": held_out_rows, "factors": {}}
    for factor in sorted(factors):
        trial = modeling.KernelConfig(**{**config.to_dict(), "num_members": 1, "bandwidth": factor * median,
                                         "bandwidth_factor": factor, "labels": []})
        projection = draw_projection(trial.in_features, trial.num_features, trial.bandwidth, trial.seed)
        statistics = ClassStatistics(trial.num_features or trial.in_features)
        statistics.update(member_features(trial, projection, features[~held]), labels[~held])
        weight, bias = solve_member(trial, statistics)
        scores = modeling.KernelClassifier(trial, [projection], [weight], [bias])(features[held])
        errors = int((scores.argmax(1) != labels[held]).sum())
        log_likelihood = float(torch.log_softmax(scores.double(), 1).gather(1, labels[held, None]).mean())
        # With one row per label nothing is held out: every factor scores 0 errors and the smoothest is taken.
        report["factors"][factor] = {"accuracy": 1 - errors / max(held_out_rows, 1), "errors": errors,
                                     "log_likelihood": log_likelihood}
    chosen, allowed = smoothest_within_one_standard_error({f: r["errors"] for f, r in report["factors"].items()})
    config.bandwidth_factor = chosen
    config.bandwidth = chosen * median
    report["errors_allowed"], report["chosen_factor"], report["bandwidth"] = allowed, chosen, config.bandwidth
    return config.bandwidth, report


def fingerprint(config: modeling.KernelConfig, projections) -> str:
    """What ties a statistics file to its inference file: the settings and the first entries of the projections."""
    settings = {k: v for k, v in config.to_dict().items() if k in _FINGERPRINT_KEYS}
    if settings["layers"] == 1:
        del settings["layers"]  # files written before `layers` existed pooled one layer: same fingerprint
    if not settings["multi_label"]:
        del settings["multi_label"]  # files written before multi-label heads existed: same fingerprint
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for projection in projections:
        if projection is not None:
            digest.update(projection.weight[:4, :16].cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class PooledLayersCapture(Capture):
    """The frozen pass's reading of the kernel head's input: the pooled top layers (hooks of the modeling file)."""

    def __init__(self, model, config: modeling.KernelConfig):
        self.capture, self.handles = modeling.capture_pooled(model, config)

    def read(self, batch) -> torch.Tensor:
        return self.capture.read().detach().float().cpu()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class KernelHead(Head):
    """The kernel LDA head: members' projections and statistics, and the solved :class:`KernelClassifier`
    (``classifier``) that answers through hooks. ``statistics`` is empty for a head loaded for inference only."""

    name = "kernel"
    title = "kernel LDA head"
    reads = "the encoder's pooled top layers"
    files = (KERNEL_FILENAME,)
    statistics_files = (KERNEL_STATISTICS_FILENAME,)
    modeling_file = Path(modeling.__file__)
    auto_class = modeling.HfIncrKernelForSequenceClassification.__name__
    lineage_key = "kernel_lda"
    # Beside the kept rows of a single-label classifier trained elsewhere (where this head cannot start).
    stand_in = "beside_kept"
    classifier_type: type = modeling.KernelClassifier

    def __init__(self, config: modeling.KernelConfig, projections=None, statistics=None, classifier=None):
        self.config = config
        self.projections = projections or []
        self.statistics: list[ClassStatistics] = statistics or []
        self.classifier: modeling.KernelClassifier | None = classifier
        self.thresholds: dict[int, float] = {}  # multi-label: each label's decision threshold (logit), last solved
        self.bandwidth_report: dict | None = None  # how the bandwidth was chosen, in the increment that chose it
        self.share: list[ClassStatistics] | None = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.rows = None

    @property
    def feature_key(self) -> str:
        c = self.config
        return f"pooled:{c.layers}:{c.pooling}:{int(c.normalize)}:{','.join(c.block_paths)}"

    @property
    def dim(self) -> int:
        return self.config.num_features or self.config.in_features

    @property
    def can_continue(self) -> bool:
        return bool(self.statistics) or self.config.bandwidth is None

    @classmethod
    def start(cls, model, location, *, config, multi_label, seed=0, kept_labels=()) -> KernelHead:
        pooling, normalize = sentence_pooling(model)
        layers = min(KERNEL_LAYERS, len(encoder_layers(modeling.base_model_of(model))) or 1)
        settings = modeling.KernelConfig(
            in_features=model.config.hidden_size * layers, num_features=0 if multi_label else config.kernel_features,
            num_members=1, seed=seed, normalize=normalize, pooling=pooling, layers=layers, multi_label=multi_label,
            linear_labels=list(kept_labels), block_paths=block_paths(model, layers), linear_path=location.path,
        )
        if settings.linear_labels and not multi_label:
            raise ConfigError("A single-label kernel head cannot leave labels to the Linear: a softmax cannot mix two "
                              "heads' logits.")
        return cls(settings)

    @classmethod
    def start_refusal(cls, *, every_label, keeps_rows, multi_label, inference_only) -> str | None:
        if keeps_rows and multi_label:
            return None  # a multi-label classifier trained elsewhere: its own labels keep the Linear's logits
        if keeps_rows and not inference_only:
            return ("The kernel LDA head cannot start beside the kept rows of a single-label classifier trained "
                    "elsewhere (one softmax over its labels would lack the old ones' statistics): this increment "
                    "answers with the Linear. Give the increment every old label's data as well (the encoder is then "
                    "adapted once and the kernel head starts).")
        if inference_only and not every_label:
            return (f"The model's kernel LDA head cannot continue: its statistics ({KERNEL_STATISTICS_FILENAME}) "
                    "were not saved or pushed with it. This increment answers with the Linear and drops the kernel "
                    "head; start from the folder it was trained in to keep it.")
        return super().start_refusal(every_label=every_label, keeps_rows=keeps_rows, multi_label=multi_label,
                                     inference_only=inference_only)

    def check_model(self, model, location) -> None:
        hidden = getattr(model.config, "hidden_size", None)
        if hidden is not None and hidden * self.config.layers != self.config.in_features:
            raise HeadConfigMismatchError(
                f"The kernel LDA head reads {self.config.in_features}-dimensional pooled states "
                f"({self.config.layers} layer(s)) but the model's encoder has hidden size {hidden}. Was it saved with "
                "another model?"
            )
        if not self.config.block_paths and self.config.layers > 1:
            self.config.block_paths = block_paths(model, self.config.layers)  # files of earlier versions
        if self.config.linear_path is None:
            self.config.linear_path = location.path

    # -- the frozen pass ------------------------------------------------------------------------------------------

    def capture(self, model, location) -> Capture:
        self.check_model(model, location)
        return PooledLayersCapture(model, self.config)

    def begin(self, rows) -> None:
        self.rows = rows
        self.bandwidth_report = None  # set again only by the increment that chooses the bandwidth
        # A head with a bandwidth accumulates this process's rows into a share; a new one keeps them until `end`.
        self.share = [s.empty_copy() for s in self.statistics] if self.statistics else None
        self._pending = []

    def add(self, rows, features, targets) -> None:
        features = check_features(features, self.config.in_features, "KernelHead.add")
        if self.config.multi_label:
            targets = check_targets(targets, features.shape[0], None, "KernelHead.add")
        self._pending.append((features.float(), targets))
        if self.share is not None and sum(len(f) for f, _ in self._pending) >= UPDATE_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        pooled = torch.cat([f for f, _ in self._pending])
        targets = torch.cat([t for _, t in self._pending])
        self._pending = []
        for projection, share in zip(self.projections, self.share):
            share.update(member_features(self.config, projection, pooled), targets, self.rows.annotated)

    def end(self) -> None:
        first = self.share is None
        if first:
            # Every process gets every row (gathered in process order under a distributed launch), so that all choose
            # the same bandwidth and accumulate the same statistics.
            pooled, targets = self._all_rows()
            if self.config.multi_label:
                # Held-out accuracy cannot rank bandwidths for per-label decisions: the median distance.
                median = median_pairwise_distance(modeling.prepare(pooled, self.config.normalize),
                                                  seed=self.config.seed)
                self.config.bandwidth = self.config.bandwidth_factor * median
            else:
                _, self.bandwidth_report = choose_bandwidth(pooled, targets, self.config)
            self._build()
            self.share = [s.empty_copy() for s in self.statistics]
            self._pending = [(pooled, targets)]
        self._flush()
        for share, statistics in zip(self.share, self.statistics):
            share.grow(self.rows.num_labels)
            if not first:
                share.sum_over_processes()
            statistics.merge(share)
        self.share = None

    def _all_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        multi = self.config.multi_label
        pooled = torch.cat([f for f, _ in self._pending]) if self._pending else torch.zeros(0, self.config.in_features)
        if self._pending:
            targets = torch.cat([t for _, t in self._pending])
        else:  # a process without rows still takes part in the gathering, with tensors of the right shape
            targets = torch.zeros(0, self.rows.num_labels, dtype=torch.float64) if multi else torch.zeros(
                0, dtype=torch.long)
        if not distributed_launch():
            return pooled, targets
        return gather_variable_rows(pooled), gather_variable_rows(targets)

    def _build(self) -> None:
        """The members' projections and empty statistics, once the bandwidth is set."""
        c = self.config
        self.projections = [None] if c.num_features == 0 else [
            draw_projection(c.in_features, c.num_features, c.bandwidth, c.seed + i) for i in range(c.num_members)]
        self.statistics = [ClassStatistics(self.dim, c.multi_label) for _ in self.projections]

    def solve(self, model, location) -> dict[int, float]:
        self.classifier = self.solve_classifier(self.classifier, self.rows.annotated if self.rows else None)
        self.attach(model, location)
        return {}

    def solve_classifier(self, previous=None, labels: list[int] | None = None) -> modeling.KernelClassifier:
        """Solve every member (float64) into the inference part.

        Multi-label: only the rows of ``labels`` (default: all) are solved, each with its threshold folded in; the
        other labels keep ``previous``'s rows bit for bit (an increment whose rows do not annotate them says nothing
        new about them). Labels of ``config.linear_labels`` are never solved (zero rows: the Linear answers)."""
        if not self.statistics:
            raise DataError("The kernel LDA head has no statistics to solve. Fix: pass an increment's rows first.")
        linear, multi = set(self.config.linear_labels), self.config.multi_label
        kept: list[int] = []
        if multi and previous is not None and labels is not None:
            annotated = set(labels)
            kept = [k for k in range(previous.num_labels) if k not in annotated and k not in linear]
        weights, biases, cuts = [], [], []
        for index, statistics in enumerate(self.statistics):
            if not multi:
                weight, bias = solve_member(self.config, statistics)
            else:
                solvable = [k for k in range(statistics.num_labels) if k not in linear]
                weight = torch.zeros(statistics.num_labels, self.dim)
                bias = torch.zeros(statistics.num_labels)
                cut = torch.zeros(statistics.num_labels, dtype=torch.float64)
                if solvable:
                    solved_weight, solved_bias, cut[solvable] = multi_label_discriminants(
                        statistics.moments(solvable))
                    weight[solvable], bias[solvable] = solved_weight.float(), solved_bias.float()
                if kept:
                    weight[kept] = previous.weights[index][kept].to(weight)
                    bias[kept] = previous.biases[index][kept].to(bias)
                cuts.append(cut)
            weights.append(weight)
            biases.append(bias)
        if cuts:
            solved = [k for k in range(self.statistics[0].num_labels) if k not in linear] if (
                labels is None or previous is None) else [k for k in labels if k not in linear]
            mean = torch.stack(cuts).mean(0)
            self.thresholds = {int(k): float(mean[k]) for k in solved}
        return modeling.KernelClassifier(self.config, self.projections, weights, biases)

    # -- inference ------------------------------------------------------------------------------------------------

    def logits(self, features, linear_logits):
        device = self.classifier.device
        return self.classifier.with_linear_labels(self.classifier(features.to(device)), linear_logits.to(device))

    def attach(self, model, location, *, fewer_labels_ok: bool = False) -> None:
        self.check_model(model, location)
        device = location.linear.weight.device
        if self.classifier.device != device:
            self.classifier.to(device)
        modeling.attach_kernel_head(model, location.linear, self.classifier, fewer_labels_ok=fewer_labels_ok)

    @classmethod
    def from_classifier(cls, classifier) -> KernelHead:
        """What inference needs of the head (no statistics)."""
        return cls(classifier.config, classifier.projections, classifier=classifier)

    @classmethod
    def detach(cls, model, location) -> KernelHead | None:
        """Remove the kernel head's hooks; returns what inference needed of it (no statistics), or ``None``."""
        classifier = modeling.detach_kernel_head(model, location.linear, cls.classifier_type)
        return None if classifier is None else cls.from_classifier(classifier)

    @classmethod
    def attached(cls, model, location) -> KernelHead | None:
        classifier = modeling.attached_kernel_head(location.linear, cls.classifier_type)
        return None if classifier is None else cls.from_classifier(classifier)

    # -- files ----------------------------------------------------------------------------------------------------

    def save(self, folder, *, statistics: bool = True) -> list[Path]:
        if self.classifier is None:
            self.classifier = self.solve_classifier()
        folder = Path(folder)
        paths = [write_tensors(folder / KERNEL_FILENAME, self.classifier.to_tensors(),
                               format=modeling.INFERENCE_FORMAT, version=modeling.FORMAT_VERSION,
                               metadata={"config": self.config.to_dict(),
                                         "fingerprint": fingerprint(self.config, self.projections)})]
        if statistics and self.statistics:
            tensors = {}
            for i, stats in enumerate(self.statistics):
                tensors.update(_statistics_tensors(stats, i))
            settings = {k: v for k, v in self.config.to_dict().items() if k != "labels"}
            paths.append(write_tensors(folder / KERNEL_STATISTICS_FILENAME, tensors, format=STATISTICS_FORMAT,
                                       version=modeling.FORMAT_VERSION,
                                       metadata={"config": settings,
                                                 "fingerprint": fingerprint(self.config, self.projections)}))
        return paths

    @classmethod
    def load_inference(cls, folder) -> KernelHead | None:
        path = Path(folder) / KERNEL_FILENAME
        if not path.is_file():
            return None
        reader = FileReader(path, INFERENCE_LOST, INFERENCE_FIX)
        tensors, metadata = reader.read((modeling.INFERENCE_FORMAT,))
        try:
            config = modeling.KernelConfig.from_dict(reader.json(metadata, "config"))
            classifier = modeling.KernelClassifier.from_tensors(config, tensors)
        except (KeyError, TypeError, ValueError) as error:
            raise reader.error(f"is incomplete ({error!r})") from error
        return cls(config, projections=classifier.projections, classifier=classifier)

    @classmethod
    def load(cls, folder, *, multi_label: bool = False) -> KernelHead | None:
        """The head saved in ``folder`` with its statistics; an inference-only head (``can_continue`` False) when the
        statistics file is absent (pushed without it); ``None`` without a kernel head.

        Raises:
            SavedStateError: a file is damaged, or the statistics belong to another head.
        """
        head = cls.load_inference(folder)
        path = Path(folder) / KERNEL_STATISTICS_FILENAME
        if head is None or not path.is_file():
            return head
        reader = FileReader(path, STATISTICS_LOST, STATISTICS_FIX)
        tensors, metadata = reader.read((STATISTICS_FORMAT,))
        if metadata.get("fingerprint") != fingerprint(head.config, head.projections):
            raise reader.error("belongs to another kernel LDA head (fingerprint differs from the inference file's)")
        try:
            head.statistics = [_member_statistics(tensors, i, head.dim, head.config.multi_label)
                               for i in range(head.config.num_members)]
        except (KeyError, RuntimeError) as error:
            raise reader.error(f"is incomplete ({error!r})") from error
        return head

    # -- what people read -----------------------------------------------------------------------------------------

    def lineage_entry(self, id2label) -> dict:
        """The head's settings, the bandwidth (fixed at the first increment) and, in the record of the increment that
        chose it, how it was chosen; multi-label: its decision thresholds by label."""
        c = self.config
        entry = {"num_features": c.num_features, "num_members": c.num_members, "pooling": c.pooling,
                 "layers": c.layers, "normalize": c.normalize, "bandwidth": c.bandwidth,
                 "bandwidth_factor": c.bandwidth_factor}
        if c.linear_labels:
            entry["linear_labels"] = list(c.linear_labels)
        if self.bandwidth_report is not None:
            report = self.bandwidth_report
            entry["bandwidth_choice"] = {
                "median_distance": report["median_distance"],
                "held_out_accuracy": {str(k): v["accuracy"] for k, v in report["factors"].items()},
                "held_out_errors": {str(k): v["errors"] for k, v in report["factors"].items()},
                "held_out_rows": report["held_out_rows"],
                "rule": "the largest factor with at most fewest + sqrt(fewest + 1) errors",
            }
        if c.multi_label:
            entry["thresholds"] = {id2label[i]: round(value, 4) for i, value in self.thresholds.items()}
        return entry

    @classmethod
    def card_section(cls, folder, config, model_id: str) -> str | None:
        summary = cls.card_summary(folder, config)
        return None if summary is None else card_section(summary, model_id)

    @classmethod
    def card_summary(cls, folder, config) -> dict | None:
        """The head's settings (from its file's metadata) and the sizes of the files a push uploads, against the
        model's own weights; ``None`` when the folder has no kernel head."""
        folder = Path(folder)
        inference, statistics = folder / KERNEL_FILENAME, folder / KERNEL_STATISTICS_FILENAME
        if not inference.is_file():
            return None
        reader = FileReader(inference, INFERENCE_LOST, INFERENCE_FIX)
        try:
            settings = reader.json(reader.metadata(), "config")
        except SavedStateError:  # a damaged file: load_model says so; the card still names the sizes
            settings = {}
        weights = sum(p.stat().st_size for p in folder.glob("*.safetensors") if not p.name.startswith("hf_incr_"))
        names = {int(i): str(name) for i, name in (getattr(config, "id2label", None) or {}).items()}
        bandwidth, layers = settings.get("bandwidth"), int(settings.get("layers", 1))
        return {
            "num_features": settings.get("num_features"),
            "num_members": settings.get("num_members"),
            "pooling": {"cls": "first-token"}.get(settings.get("pooling"), "mean-pooled")
            + (", L2-normalised" if settings.get("normalize") else "")
            + (" last hidden states" if layers == 1 else f" hidden states of its top {layers} layers, concatenated"),
            "bandwidth": None if bandwidth is None else f"{bandwidth:.4g}",
            "bandwidth_factor": settings.get("bandwidth_factor"),
            "inference_mb": _megabytes(inference.stat().st_size),
            "weights_mb": round(weights / 1e6, 1),
            "ratio": _rounded(inference.stat().st_size / weights, 2) if weights else None,
            "statistics_mb": _megabytes(statistics.stat().st_size) if statistics.is_file() else None,
            "statistics_pushed": _statistics_pushed(config),
            # Labels whose logits stay the Linear's (a multi-label classifier trained elsewhere), by name.
            "linear_labels": [names.get(i, str(i)) for i in settings.get("linear_labels", [])],
        }


def card_section(summary: dict, model_id: str) -> str:
    """The kernel head's part of the model card: what it is, how to load it, and the files a push uploads."""
    s = summary
    if s["num_features"]:
        what = (f"**This model has a kernel LDA head** ({s['num_members']} × {s['num_features']} random Fourier "
                f"features of the encoder's {s['pooling']}, Gaussian kernel bandwidth {s['bandwidth']} = "
                f"{s['bandwidth_factor']} × the first increment's median distance, in `{KERNEL_FILENAME}`), and")
    else:
        kept = ""
        if s["linear_labels"]:
            names = ", ".join(json.dumps(name) for name in s["linear_labels"])
            kept = (f"; the {len(s['linear_labels'])} label(s) the classifier came with, {names}, keep its Linear's "
                    "own logits")
        what = (f"**This model has a kernel LDA head** (per-label linear discriminants on the encoder's "
                f"{s['pooling']}, each label's F1-tuned threshold folded into its bias, in "
                f"`{KERNEL_FILENAME}`{kept}), and")
    rows = [
        "| file | what for | size |", "|---|---|---|",
        f"| model weights (`*.safetensors`) | both heads | {s['weights_mb']} MB |",
        f"| `{KERNEL_FILENAME}` | inference with the kernel head | {s['inference_mb']} MB ({s['ratio']} × the "
        "weights) |",
    ]
    if s["statistics_mb"] is not None:
        pushed = "" if s["statistics_pushed"] else " (not pushed to the Hub)"
        rows.append(f"| `{KERNEL_STATISTICS_FILENAME}` | the next increment only | {s['statistics_mb']} MB{pushed} |")
    return (f"{what} the metrics below were measured with it. `trust_remote_code=True` (or "
            f'`hf_incr.load_model("{model_id}")`) loads it; plain transformers loads the model with its linear '
            "closed-form head instead (less accurate).\n\n" + "\n".join(rows) + "\n")


def _statistics_pushed(config) -> bool:
    """Whether the last increment's recipe pushes the statistics (its ``push_statistics``)."""
    lineage = getattr(config, "hf_incr_lineage", None) or []
    recipe = (lineage[-1].get("recipe") or {}) if lineage and isinstance(lineage[-1], dict) else {}
    return bool(recipe.get("push_statistics", recipe.get("kernel_push_statistics", True)))


def _statistics_tensors(statistics: ClassStatistics, member: int) -> dict[str, torch.Tensor]:
    """A member's tensors in the statistics file's layout (multi-label: every row as one label, then per label)."""
    prefix = f"member{member}."
    tensors = statistics.to_tensors(scatter_dtype=STATISTICS_FILE_DTYPE)
    if statistics.multi_label:
        return {"counts": tensors["row_count"], prefix + "sums": tensors["row_sum"][None],
                prefix + "scatter_upper": tensors["scatter_upper"], prefix + "positive_counts": tensors["counts"],
                prefix + "positive_sums": tensors["sums"], prefix + "annotated_counts": tensors["annotated_counts"],
                prefix + "annotated_sums": tensors["annotated_sums"]}
    return {"counts": tensors["counts"], prefix + "sums": tensors["sums"],
            prefix + "scatter_upper": tensors["scatter_upper"]}


def _member_statistics(tensors: dict, member: int, dim: int, multi_label: bool) -> ClassStatistics:
    prefix = f"member{member}."
    if multi_label:
        layout = {"row_count": tensors["counts"], "row_sum": tensors[prefix + "sums"][0],
                  "scatter_upper": tensors[prefix + "scatter_upper"], "counts": tensors[prefix + "positive_counts"],
                  "sums": tensors[prefix + "positive_sums"], "annotated_counts": tensors[prefix + "annotated_counts"],
                  "annotated_sums": tensors[prefix + "annotated_sums"]}
    else:
        layout = {"counts": tensors["counts"], "sums": tensors[prefix + "sums"],
                  "scatter_upper": tensors[prefix + "scatter_upper"]}
    return ClassStatistics.from_tensors(layout, dim, multi_label)


def _megabytes(size: int) -> float:
    return _rounded(size / 1e6, 1)


def _rounded(value: float, decimals: int) -> float:
    # Two significant digits where the decimals would show 0 (a multi-label kernel head's file is tens of kB).
    return round(value, decimals) if value >= 10.0**-decimals else float(f"{value:.2g}")
