"""The one statistics core every head accumulates: what an LDA solve needs, merged exactly batch by batch.

:class:`ClassStatistics` holds, in float64, per label the count and the feature sum of the rows that carry it, and
one scatter matrix:

- single-label: the within-label scatter ``S = sum_c sum_{i in c} (x_i - mu_c)(x_i - mu_c)^T``;
- multi-label: the scatter of all rows about their mean, their count and sum, and per label the count and sum of the
  rows that *annotate* it (carry it or are known not to). A row annotates the labels of its batch's ``annotated``
  list (default: all); a label added later counts every earlier row as annotated, a negative: its name did not
  exist when they were labelled.

A batch is merged exactly (Chan et al.'s pairwise update: a group already seen adds the rank-one term
``n m / (n + m) (mu_old - mu_batch)(mu_old - mu_batch)^T``), so the statistics after any sequence of increments are
those of all their rows at once, and no text or feature row is kept. Across processes the raw second moments add up
(:meth:`ClassStatistics.sum_over_processes`). The tensor checks of every head's inputs live here too.
"""

from __future__ import annotations

import torch

from ..distributed import distributed_launch, sum_over_processes
from ..errors import DataError
from .lda import LabelMoments


def check_features(features, dim: int | None, what: str, min_rows: int = 0) -> torch.Tensor:
    """A finite floating-point ``(rows, dim)`` tensor with at least ``min_rows`` rows, or a
    :class:`~hf_incr.DataError` saying what was found and what to pass."""
    if not isinstance(features, torch.Tensor):
        raise DataError(f"{what}: expected a torch.Tensor of shape (rows, {dim or 'features'}), got "
                        f"{type(features).__name__}. Fix: pass the features as a tensor (torch.as_tensor(...)).")
    if features.ndim != 2 or (dim is not None and features.shape[1] != dim):
        raise DataError(f"{what}: expected features of shape (rows, {dim or 'features'}), got "
                        f"{tuple(features.shape)}. Fix: pass one vector per row, as the head reads them.")
    if not features.is_floating_point():
        raise DataError(f"{what}: expected floating-point features, got dtype {features.dtype}. Fix: cast with "
                        ".float().")
    if features.shape[0] < min_rows:
        raise DataError(f"{what}: expected a non-empty (rows, features) matrix, found {features.shape[0]} rows. Fix: "
                        "pass the features of the increment's rows.")
    if not torch.isfinite(features).all():
        raise DataError(f"{what}: the features contain NaN or inf. Fix: recompute them in float32.")
    return features


def check_labels(labels, rows: int, num_labels: int | None, what: str) -> torch.Tensor:
    """A 1-d integer tensor of ``rows`` label ids in ``[0, num_labels)``."""
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != rows or labels.is_floating_point() or labels.dtype == torch.bool:
        raise DataError(f"{what}: expected a 1-d integer tensor with one label id per feature row ({rows}), got "
                        f"dtype {labels.dtype}, shape {tuple(labels.shape)}. Fix: map label names to ids "
                        "(config.label2id) and pass a LongTensor.")
    labels = labels.long()
    if rows and (int(labels.min()) < 0 or (num_labels is not None and int(labels.max()) >= num_labels)):
        bound = "" if num_labels is None else f", {num_labels}"
        raise DataError(f"{what}: label ids must lie in [0{bound}), got [{int(labels.min())}, {int(labels.max())}]. "
                        "Fix: map every label name to its id in the grown head (old ids first, then the new ones).")
    return labels


def check_targets(targets, rows: int, num_labels: int | None, what: str) -> torch.Tensor:
    """A ``(rows, labels)`` 0/1 matrix (multi-hot targets), float64."""
    if not isinstance(targets, torch.Tensor):
        targets = torch.as_tensor(targets)
    if targets.ndim != 2 or targets.shape[0] != rows or (num_labels is not None and targets.shape[1] != num_labels):
        want = f"(rows={rows}, labels{'' if num_labels is None else '=' + str(num_labels)})"
        raise DataError(f"{what}: expected a multi-hot matrix of shape {want}, got {tuple(targets.shape)}. Fix: pass "
                        "one row per feature row and one column per label (old labels first).")
    if not ((targets == 0) | (targets == 1)).all():
        raise DataError(f"{what}: targets must be 0/1 (multi-hot); found other values. Fix: binarise the label sets.")
    return targets.to(torch.float64)


def pack_upper(matrix: torch.Tensor) -> torch.Tensor:
    """The upper triangle of a symmetric matrix, row by row (half the bytes on disk)."""
    rows, columns = torch.triu_indices(matrix.shape[0], matrix.shape[0])
    return matrix[rows, columns].contiguous()


def unpack_upper(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """The symmetric ``(dim, dim)`` matrix of :func:`pack_upper`."""
    rows, columns = torch.triu_indices(dim, dim)
    matrix = torch.empty(dim, dim, dtype=packed.dtype)
    matrix[rows, columns] = packed
    matrix[columns, rows] = packed
    return matrix


def _chan_merge(scatter, counts, sums, other_scatter, other_counts, other_sums, groups) -> None:
    """Add another set of rows' scatter about its group means to ``scatter`` (in place), with the rank-one terms of
    the ``groups`` both sides have rows of."""
    scatter += other_scatter
    seen = groups[counts[groups] > 0]
    if seen.numel():
        n, m = counts[seen], other_counts[seen]
        delta = sums[seen] / n[:, None] - other_sums[seen] / m[:, None]
        scatter += (delta * (n * m / (n + m))[:, None]).T @ delta


class ClassStatistics:
    """Counts, sums and scatter of feature rows with their labels (see the module docstring), float64.

    Args:
        dim: Feature dimension.
        multi_label: Rows carry any number of labels (``update`` takes multi-hot targets).
    """

    def __init__(self, dim: int, multi_label: bool = False):
        self.dim, self.multi_label = int(dim), bool(multi_label)
        self.counts = torch.zeros(0, dtype=torch.float64)
        self.sums = torch.zeros(0, self.dim, dtype=torch.float64)
        self.scatter = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        # Multi-label only: every row's count and sum, and per label those of the rows that annotate it.
        self.row_count = torch.zeros((), dtype=torch.float64)
        self.row_sum = torch.zeros(self.dim, dtype=torch.float64)
        self.annotated_counts = torch.zeros(0, dtype=torch.float64)
        self.annotated_sums = torch.zeros(0, self.dim, dtype=torch.float64)

    @property
    def num_labels(self) -> int:
        return self.counts.shape[0]

    @property
    def num_rows(self) -> float:
        return float(self.row_count) if self.multi_label else float(self.counts.sum())

    def empty_copy(self) -> ClassStatistics:
        """Empty statistics of the same kind and size (a process's share of a pass)."""
        return ClassStatistics(self.dim, self.multi_label).grow(self.num_labels)

    def grow(self, num_labels: int) -> ClassStatistics:
        """Make room for labels ``< num_labels``: no rows yet (multi-label: every row so far a negative)."""
        extra = num_labels - self.num_labels
        if extra > 0:
            self.counts = torch.cat([self.counts, self.counts.new_zeros(extra)])
            self.sums = torch.cat([self.sums, self.sums.new_zeros(extra, self.dim)])
            self.annotated_counts = torch.cat([self.annotated_counts, self.row_count.expand(extra).clone()])
            self.annotated_sums = torch.cat([self.annotated_sums, self.row_sum.expand(extra, -1).clone()])
        return self

    def update(self, features: torch.Tensor, targets, annotated: list[int] | None = None) -> ClassStatistics:
        """Merge a batch: ``features`` ``(rows, dim)`` with label ids ``(rows,)`` (single-label) or 0/1 targets
        ``(rows, labels)`` and the label ids the rows annotate (multi-label; their targets of other labels are 0)."""
        features = check_features(features, self.dim, "ClassStatistics.update")
        rows = features.shape[0]
        if self.multi_label:
            targets = check_targets(targets, rows, None, "ClassStatistics.update")
            self.grow(targets.shape[1])
        else:
            targets = check_labels(targets, rows, None, "ClassStatistics.update")
            if rows:
                self.grow(int(targets.max()) + 1)
        if rows == 0:
            return self
        batch = self.empty_copy()
        x = features.to(torch.float64)
        if self.multi_label:
            mean = x.mean(0)
            batch.scatter = (x - mean).T @ (x - mean)
            batch.row_count += rows
            batch.row_sum += x.sum(0)
            batch.counts[: targets.shape[1]] += targets.sum(0)
            batch.sums[: targets.shape[1]] += targets.T @ x
            columns = list(range(self.num_labels)) if annotated is None else list(annotated)
            batch.annotated_counts[columns] += float(rows)
            batch.annotated_sums[columns] += x.sum(0)
        else:
            batch.counts.index_add_(0, targets, torch.ones(rows, dtype=torch.float64))
            batch.sums.index_add_(0, targets, x)
            centered = x - (batch.sums / batch.counts.clamp_min(1.0)[:, None])[targets]
            batch.scatter = centered.T @ centered
        return self.merge(batch)

    def merge(self, other: ClassStatistics) -> ClassStatistics:
        """Add the rows another accumulator saw (same features; its labels a prefix of these, or grown here)."""
        if other.multi_label != self.multi_label or other.dim != self.dim:
            raise DataError(f"ClassStatistics.merge: expected statistics of {self.dim} features "
                            f"({'multi' if self.multi_label else 'single'}-label), got {other.dim} "
                            f"({'multi' if other.multi_label else 'single'}-label).")
        self.grow(other.num_labels)
        k = other.num_labels
        if self.multi_label:
            if float(other.row_count) > 0:
                _chan_merge(self.scatter, self.row_count[None], self.row_sum[None], other.scatter,
                            other.row_count[None], other.row_sum[None], torch.zeros(1, dtype=torch.long))
            self.row_count += other.row_count
            self.row_sum += other.row_sum
            self.annotated_counts[:k] += other.annotated_counts
            self.annotated_sums[:k] += other.annotated_sums
        else:
            present = torch.nonzero(other.counts > 0).flatten()
            if present.numel() == 0:
                return self
            _chan_merge(self.scatter, self.counts, self.sums, other.scatter, other.counts, other.sums, present)
        self.counts[:k] += other.counts
        self.sums[:k] += other.sums
        return self

    def group_moments(self) -> torch.Tensor:
        """``sum_g s_g s_g^T / n_g`` over the groups the scatter is centred on."""
        if self.multi_label:
            n = float(self.row_count)
            return torch.outer(self.row_sum, self.row_sum) / n if n > 0 else torch.zeros_like(self.scatter)
        seen = self.counts > 0
        return (self.sums[seen] / self.counts[seen][:, None]).T @ self.sums[seen]

    def sum_over_processes(self) -> ClassStatistics:
        """Under a distributed launch, make this process's share of a pass (fresh statistics of the rows it encoded)
        the statistics of every process's rows: counts, sums and raw second moments add up across processes (a
        scatter about each share's own means does not), and the scatter is recovered from them."""
        if not distributed_launch():
            return self
        moments = self.scatter + self.group_moments()
        sum_over_processes(self.counts, self.sums, moments, self.row_count, self.row_sum, self.annotated_counts,
                           self.annotated_sums)
        self.scatter = moments - self.group_moments()
        return self

    # -- what the solvers read ----------------------------------------------------------------------------------

    def covariance(self) -> torch.Tensor:
        """The scatter over the rows (biased): within-label (single-label) or of all rows (multi-label)."""
        return self.scatter / max(self.num_rows, 1.0)

    def moments(self, labels: list[int] | None = None) -> LabelMoments:
        """Multi-label: the per-label moments of ``labels`` (default: all) for
        :func:`~hf_incr.heads.lda.binary_discriminants`."""
        columns = list(range(self.num_labels)) if labels is None else list(labels)
        positives = self.counts[columns]
        negatives = self.annotated_counts[columns] - positives
        positive_mean = self.sums[columns] / positives.clamp_min(1e-12)[:, None]
        negative_mean = (self.annotated_sums[columns] - self.sums[columns]) / negatives.clamp_min(1e-12)[:, None]
        return LabelMoments(self.num_rows, self.covariance(), positives, negatives, positive_mean, negative_mean)

    # -- files ----------------------------------------------------------------------------------------------------

    def to_tensors(self, prefix: str = "", scatter_dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
        """The tensors of a statistics file (the scatter's upper triangle, in ``scatter_dtype``)."""
        tensors = {"counts": self.counts, "sums": self.sums,
                   "scatter_upper": pack_upper(self.scatter).to(scatter_dtype)}
        if self.multi_label:
            tensors.update(row_count=self.row_count.reshape(1), row_sum=self.row_sum,
                           annotated_counts=self.annotated_counts, annotated_sums=self.annotated_sums)
        return {prefix + name: tensor.contiguous() for name, tensor in tensors.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], dim: int, multi_label: bool,
                     prefix: str = "") -> ClassStatistics:
        """Statistics from :meth:`to_tensors`' tensors (shapes checked by the caller's reader)."""
        # Every tensor a copy of its own: a file's tensor may serve several members, and merges add in place.
        statistics = cls(dim, multi_label)
        statistics.counts = tensors[prefix + "counts"].double().clone()
        statistics.sums = tensors[prefix + "sums"].double().clone()
        statistics.scatter = unpack_upper(tensors[prefix + "scatter_upper"].double(), dim)
        if multi_label:
            statistics.row_count = tensors[prefix + "row_count"].double().reshape(()).clone()
            statistics.row_sum = tensors[prefix + "row_sum"].double().clone()
            statistics.annotated_counts = tensors[prefix + "annotated_counts"].double().clone()
            statistics.annotated_sums = tensors[prefix + "annotated_sums"].double().clone()
        return statistics

    def expected_shapes(self, prefix: str = "") -> dict[str, tuple[int, ...]]:
        """The shapes :meth:`to_tensors` writes, for a reader's damage check."""
        labels, dim = self.num_labels, self.dim
        shapes = {"counts": (labels,), "sums": (labels, dim), "scatter_upper": (dim * (dim + 1) // 2,)}
        if self.multi_label:
            shapes.update(row_count=(1,), row_sum=(dim,), annotated_counts=(labels,), annotated_sums=(labels, dim))
        return {prefix + name: shape for name, shape in shapes.items()}
