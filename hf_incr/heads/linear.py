"""The Linear's closed form: LDA on what the model's output Linear receives, written into that Linear.

This is the head plain ``AutoModelForSequenceClassification.from_pretrained`` loads: its rows are the model's own
weights, so it ships no file for inference. Its statistics (``hf_incr_linear_statistics.safetensors``) make every
later increment the exact joint solve over every row seen, with no text stored. Single-label: LDA with the labels'
row shares as priors (:func:`~hf_incr.heads.lda.solve_lda`). Multi-label: each label its own discriminant against
the rows without it, with its F1-tuned threshold folded into its bias, so ``sigmoid > 0.5`` applies it; only the rows
of the labels an increment's rows annotate are written (the others stay bit for bit).

Labels whose rows were trained outside these statistics (a classifier hf_incr did not train) are marked *kept*:
while any label is, increments fit new rows beside the kept ones instead
(:class:`~hf_incr.heads.kept_rows.KeptRowsHead`, which continues these statistics and writes the same file).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers.utils import logging

from ..errors import SavedStateError, damaged_file_error
from ..head import ClassifierHead
from .base import Head
from .files import FileReader, write_tensors
from .lda import multi_label_discriminants, solve_lda
from .statistics import ClassStatistics

logger = logging.get_logger(__name__)

STATISTICS_FILENAME = "hf_incr_linear_statistics.safetensors"
STATISTICS_FORMAT, STATISTICS_VERSION = "hf_incr.linear.statistics", "2"
# What earlier versions wrote: the same statistics as raw moments over [head input, 1] (read, never written).
LEGACY_FILENAME = "hf_incr_ridge.safetensors"
LEGACY_FORMAT = "hf_incr ridge statistics over [head input, 1]"
# The random-feature head of earlier versions (removed: the kernel head was more accurate); its file is ignored.
RETIRED_FILENAME = "hf_incr_random_features.safetensors"

# What a user loses without the statistics file, and what to do: said by every error about it.
STATISTICS_LOST = (
    "the next increment cannot solve the old labels' rows of the head exactly (they are kept as trained instead)"
)
STATISTICS_FIX = (
    f"Restore {STATISTICS_FILENAME} from where the model came from (a copy, or the Hub); or delete it, and add a few "
    "rows of every old label to the next increment's data so that their statistics are collected again."
)


class LinearHead(Head):
    """LDA on the output Linear's inputs, solved from :class:`~hf_incr.heads.statistics.ClassStatistics` and written
    into the model's Linear. ``kept``: per label, whether its row is a trained row kept as it is."""

    name = "linear"
    title = "Linear's closed form"
    statistics_files = (STATISTICS_FILENAME,)
    legacy_files = (LEGACY_FILENAME, RETIRED_FILENAME)

    def __init__(self, statistics: ClassStatistics, kept: torch.Tensor | None = None):
        self.statistics = statistics
        self.kept = torch.zeros(statistics.num_labels, dtype=torch.bool) if kept is None else kept.bool().clone()
        self.share: ClassStatistics | None = None
        self.rows = None
        self.path: Path | None = None  # the file it was loaded from, for the errors that name it

    @classmethod
    def start(cls, model, location, *, config=None, multi_label, seed=0, kept_labels=()) -> LinearHead:
        head = cls(ClassStatistics(location.linear.in_features, multi_label))
        head.grow(len(kept_labels))
        head.kept[list(kept_labels)] = True
        return head

    @property
    def num_labels(self) -> int:
        return self.statistics.num_labels

    @property
    def keeps_trained_rows(self) -> bool:
        """Whether some label's row is a trained row kept as it is (not solvable from these statistics)."""
        return bool(self.kept.any())

    def grow(self, num_labels: int) -> None:
        self.statistics.grow(num_labels)
        extra = num_labels - self.kept.shape[0]
        if extra > 0:
            self.kept = torch.cat([self.kept, self.kept.new_zeros(extra)])

    def check_model(self, model, location: ClassifierHead) -> None:
        linear = location.linear
        if (self.num_labels, self.statistics.dim) != (linear.out_features, linear.in_features):
            raise damaged_file_error(
                self.path or STATISTICS_FILENAME,
                f"describes {self.num_labels} labels x {self.statistics.dim} head inputs, but the model's head has "
                f"{linear.out_features} x {linear.in_features}: it belongs to another model (or another version of "
                "it)", STATISTICS_LOST, STATISTICS_FIX,
            )

    # -- the frozen pass ------------------------------------------------------------------------------------------

    @property
    def head_rows(self) -> str:
        """How an increment solving this head made the Linear's rows (the lineage's ``head_rows``)."""
        return "solved"

    def begin(self, rows) -> None:
        self.rows = rows
        self.grow(rows.num_labels)
        self.share = self.statistics.empty_copy()

    def add(self, rows, features, targets) -> None:
        self.share.update(features, targets, self.rows.annotated)

    def end(self) -> None:
        self.statistics.merge(self.share.sum_over_processes())
        self.share = None

    # -- the solve ------------------------------------------------------------------------------------------------

    def solve(self, model, location: ClassifierHead) -> dict[int, float]:
        """Overwrite the model's output Linear with the closed-form solution (its dtype and device), in place. Only the
        rows of the labels this increment's rows annotate are written (multi-label); returns the thresholds folded in
        (multi-label), by label id."""
        return write_rows(location.linear, *self.solution(), self.rows.annotated)

    def solution(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The closed-form rows of every label: weight, bias (thresholds folded in), thresholds (multi-label)."""
        stats = self.statistics
        if stats.multi_label:
            return multi_label_discriminants(stats.moments())
        weight, bias, _ = solve_lda(stats.counts, stats.sums, stats.scatter, priors="counts", covariance="pooled")
        return weight, bias, None

    def logits(self, features, linear_logits):
        return linear_logits

    def attach(self, model, location, *, fewer_labels_ok=False) -> None:
        """Nothing to attach: the rows are the model's own weights."""

    @classmethod
    def detach(cls, model, location):
        return None

    @classmethod
    def attached(cls, model, location):
        return None

    # -- files ----------------------------------------------------------------------------------------------------

    def save(self, folder, *, statistics: bool = True) -> list[Path]:
        if not statistics:
            return []
        tensors = self.statistics.to_tensors()
        tensors["kept"] = self.kept.to(torch.uint8)
        path = Path(folder) / STATISTICS_FILENAME
        write_tensors(path, tensors, format=STATISTICS_FORMAT, version=STATISTICS_VERSION,
                      metadata={"dim": self.statistics.dim, "multi_label": self.statistics.multi_label})
        return [path]

    @classmethod
    def load(cls, folder, *, multi_label: bool = False) -> LinearHead | None:
        """The head saved in ``folder`` (its ``kept`` flags say which rows are trained rows kept as they are), or
        ``None`` if the folder has no statistics. ``multi_label``: the model's kind (files of earlier versions do not
        record it).

        Raises:
            SavedStateError: the file is damaged (cut short, not safetensors, tensors missing or of the wrong shape).
        """
        folder = Path(folder)
        path = folder / STATISTICS_FILENAME
        if path.is_file():
            statistics, kept = _read(FileReader(path, STATISTICS_LOST, STATISTICS_FIX))
        elif (folder / LEGACY_FILENAME).is_file():
            path = folder / LEGACY_FILENAME
            statistics, kept = _read_legacy(FileReader(path, STATISTICS_LOST, STATISTICS_FIX), multi_label)
        else:
            return None
        if (folder / RETIRED_FILENAME).is_file():
            logger.warning(
                "%s holds %s, the random-feature head of an earlier hf_incr, which this version no longer uses: the "
                "model answers with its Linear (the closed form that plain transformers loads), and the next "
                "increment continues that. `--head kernel` from a new base gives the more accurate head.", folder,
                RETIRED_FILENAME,
            )
        head = cls(statistics, kept)
        head.path = path
        return head

    @classmethod
    def describe_files(cls, files: set[str]) -> str | None:
        return "yes" if STATISTICS_FILENAME in files or LEGACY_FILENAME in files else "no"


def write_rows(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor, thresholds: torch.Tensor | None,
               labels: list[int] | None = None) -> dict[int, float]:
    """Write the rows of ``labels`` (default: all) into ``linear`` in its dtype and device; the others stay bit for
    bit. Returns ``{label: threshold}`` of the rows written when ``thresholds`` are given (multi-label)."""
    if weight.shape != linear.weight.shape:
        raise SavedStateError(
            f"The closed-form statistics describe {weight.shape[0]} labels x {weight.shape[1]} head inputs but the "
            f"head is {tuple(linear.weight.shape)}: they belong to another model. {STATISTICS_FIX}"
        )
    rows = list(range(weight.shape[0])) if labels is None else list(labels)
    with torch.no_grad():
        linear.weight[rows] = weight[rows].to(linear.weight)
        if linear.bias is not None:
            linear.bias[rows] = bias[rows].to(linear.bias)
        elif rows:
            logger.warning("The head has no bias; the closed-form bias term is dropped.")
    if thresholds is None or linear.bias is None:
        return {}
    return {label: float(thresholds[label]) for label in rows}


def _read(reader: FileReader) -> tuple[ClassStatistics, torch.Tensor]:
    tensors, metadata = reader.read((STATISTICS_FORMAT,))
    dim, multi_label = int(reader.json(metadata, "dim")), bool(reader.json(metadata, "multi_label"))
    labels = tensors["counts"].shape[0] if "counts" in tensors else 0
    shapes = ClassStatistics(dim, multi_label).grow(labels).expected_shapes()
    reader.require(tensors, {**shapes, "kept": (labels,)})
    return ClassStatistics.from_tensors(tensors, dim, multi_label), tensors["kept"].bool()


def _read_legacy(reader: FileReader, multi_label: bool) -> tuple[ClassStatistics, torch.Tensor]:
    """Earlier versions' raw moments ``gram = sum [x,1][x,1]^T``, ``cross = sum [x,1] y^T`` (and, multi-label, the sum
    of [x, 1] over the rows that did not annotate a label), as the same statistics."""
    tensors, _ = reader.read((LEGACY_FORMAT,))
    reader.require(tensors, {"gram": 2, "cross": 2})
    gram, cross = tensors["gram"].double(), tensors["cross"].double()
    size, labels = gram.shape[0], cross.shape[1]
    reader.require(tensors, {"gram": (size, size), "cross": (size, labels),
                             **({"kept": (labels,)} if "kept" in tensors else {}),
                             **({"unannotated": (size, labels)} if "unannotated" in tensors else {})})
    statistics = ClassStatistics(size - 1, multi_label).grow(labels)
    statistics.counts, statistics.sums = cross[-1].clone(), cross[:-1].T.clone()
    second = gram[:-1, :-1]
    if multi_label:
        statistics.row_count = gram[-1, -1].clone()
        statistics.row_sum = gram[:-1, -1].clone()
        annotated = gram[:, -1:] - tensors.get("unannotated", torch.zeros_like(cross)).double()
        statistics.annotated_counts, statistics.annotated_sums = annotated[-1].clone(), annotated[:-1].T.clone()
    statistics.scatter = second - statistics.group_moments()
    kept = tensors["kept"].bool() if "kept" in tensors else torch.zeros(labels, dtype=torch.bool)
    return statistics, kept
