"""Exact closed-form heads from sufficient statistics: ridge regression and linear discriminant analysis.

:class:`RidgeStatistics` accumulates the Gram matrix of the head's inputs and their cross-products with the labels,
increment by increment, and solves the head exactly as if fitted on all the rows seen at once; no text is stored.
The random-feature head (:mod:`hf_incr.random_features`) keeps the same statistics over its expanded features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers.utils import logging

from .errors import DataError, SavedStateError, damaged_file_error

logger = logging.get_logger(__name__)

RIDGE_FILENAME = "hf_incr_ridge.safetensors"


def oas_shrinkage(covariance: torch.Tensor, num_rows: float) -> float:
    """Oracle Approximating Shrinkage intensity of a ``(d, d)`` sample covariance from ``num_rows`` rows (the
    formula scikit-learn's ``OAS`` uses): near 0 with many rows per dimension, up to 1 with few."""
    dim = covariance.shape[0]
    mu = torch.trace(covariance) / dim
    alpha = (covariance**2).mean()
    denominator = (num_rows + 1) * (alpha - mu**2 / dim)
    if denominator <= 0:
        return 1.0
    return float(min(((alpha + mu**2) / denominator).item(), 1.0))


# A ridge regression of 0/1 targets says "label present" where its output passes 0.5, but a multi-label head applies a
# sigmoid and its threshold of 0.5 sits at logit 0: written as they are, its outputs near 0 for absent labels come out
# present about half the time (GoEmotions: 11.6 % micro-F1). Mapping r -> SCALE * (r - 0.5) puts the decision where
# the regression puts it and spreads the probabilities (r = 1 -> 0.98, r = 0 -> 0.02).
MULTI_LABEL_RIDGE_SCALE = 8.0


def _shrunk(covariance: torch.Tensor, num_rows: float, shrinkage: float | None) -> torch.Tensor:
    """``covariance`` shrunk towards ``trace / d * I`` (OAS intensity when ``shrinkage`` is None), plus a tiny ridge
    that keeps the solve defined when features are collinear and shrinkage is 0."""
    dim = covariance.shape[0]
    eye = torch.eye(dim, dtype=torch.float64)
    mu = torch.trace(covariance) / dim
    if shrinkage is None:
        shrinkage = oas_shrinkage(covariance, num_rows)
    return (1 - shrinkage) * covariance + shrinkage * mu * eye + 1e-9 * mu.clamp_min(1e-12) * eye


def ridge_solution(gram: torch.Tensor, cross: torch.Tensor, penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``(gram + penalty * I) W = cross`` over ``[features, 1]``: weight (num_labels, d) and bias, float64."""
    eye = torch.eye(gram.shape[0], dtype=torch.float64)
    solution = torch.linalg.solve(gram + penalty * eye, cross)
    return solution[:-1].T.contiguous(), solution[-1].contiguous()


def ridge_to_multi_label_logits(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Linear whose sigmoid crosses 0.5 where the 0/1 ridge regression ``(weight, bias)`` crosses 0.5."""
    return weight * MULTI_LABEL_RIDGE_SCALE, (bias - 0.5) * MULTI_LABEL_RIDGE_SCALE


@dataclass
class LabelMoments:
    """What a per-label (multi-label) discriminant reads from a set of rows: their count ``n``, the covariance of all
    their features ``(d, d)`` (over every row, biased), and per label (in some order) the counts of rows that carry
    it and of rows that annotate it without carrying it, with the means of the two groups ``(labels, d)``."""

    n: float
    covariance: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor
    positive_mean: torch.Tensor
    negative_mean: torch.Tensor


def binary_discriminants(moments: LabelMoments, shrinkage: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each label its own linear discriminant against the rows that do not carry it: weight ``(labels, d)`` and bias.

    Per label ``k``: the mean of its positive rows ``mu_k+`` and of its negative rows ``mu_k-``, the label's share
    ``p_k`` of its annotated rows, and one covariance shared by every label: the covariance of all rows' features
    (shrunk, OAS), less label k's between-class part ``p_k (1 - p_k) d_k d_k^T`` (``d_k = mu_k+ - mu_k-``). Then
    ``w_k = Sigma_k^-1 d_k`` (one solve for every label: Sherman-Morrison turns the rank-one correction into a scale)
    and ``b_k = -w_k (mu_k+ + mu_k-) / 2 + log(p_k / (1 - p_k))``: the logit of the label's posterior under
    Gaussian classes.

    Raises:
        DataError: a label lacks positive or negative rows.
    """
    m = moments
    lacking = torch.nonzero((m.positives <= 0) | (m.negatives <= 0)).flatten().tolist()
    if lacking:
        raise DataError(
            f"Each label of a multi-label head needs rows that carry it and rows that do not; label id(s) "
            f"{lacking[:10]} lack one of the two in the statistics. Add rows with and without those labels."
        )
    difference = m.positive_mean - m.negative_mean
    share = m.positives / (m.positives + m.negatives)
    rho = oas_shrinkage(m.covariance, m.n) if shrinkage is None else float(shrinkage)
    shrunk = _shrunk(m.covariance, m.n, rho)
    direction = torch.linalg.solve(shrunk, difference.T).T
    # Label k's within covariance, shrunk like the total one: (1 - rho)(S - c d d^T) + rho tr/d I = S_rho - (1 - rho)
    # c d d^T, and (S_rho - a d d^T)^-1 d = S_rho^-1 d / (1 - a d^T S_rho^-1 d): positive, as S_rho holds (1 - rho)
    # times the between-class part plus the ridge. (Leaving out (1 - rho) rescaled some labels' logits by up to 1e6;
    # the decisions are the same, the probabilities were not.)
    scale = 1.0 / (1.0 - (1 - rho) * share * (1 - share) * (direction * difference).sum(1)).clamp_min(1e-6)
    weight = direction * scale[:, None]
    bias = -0.5 * (weight * (m.positive_mean + m.negative_mean)).sum(1) + torch.log(share / (1 - share))
    return weight.contiguous(), bias.contiguous()


def f1_thresholds(weight: torch.Tensor, bias: torch.Tensor, moments: LabelMoments) -> torch.Tensor:
    """Per label, the logit above which predicting it maximises that label's F1 on the rows the moments describe.

    A sigmoid's 0.5 (logit 0) maximises accuracy, not F1: a label carried by 2 % of the rows then almost never
    fires. With the rows' moments the logit ``w_k x + b_k`` of label k's positive rows has mean
    ``w_k mu_k+ + b_k`` and of its negative rows ``w_k mu_k- + b_k``, and both the within-label variance
    ``w_k^T Sigma_k w_k``; taking them as two normal distributions, the threshold maximising the expected
    ``F1 = 2 TP / (TP + P + FP)`` is found on a grid. No row is held out and no text is kept, so an increment
    can set the threshold of any label its rows annotate. ``weight`` and ``bias`` are the rows of the moments'
    labels, in their order.
    """
    weight, bias = weight.double(), bias.double()
    positives, negatives = moments.positives.clamp_min(1e-12), moments.negatives.clamp_min(1e-12)
    share = positives / (positives + negatives)
    high = (weight * moments.positive_mean).sum(1) + bias
    low = (weight * moments.negative_mean).sum(1) + bias
    variance = ((weight @ moments.covariance) * weight).sum(1) - share * (1 - share) * (high - low) ** 2
    spread = variance.clamp_min(1e-12).sqrt()
    steps = torch.linspace(0.0, 1.0, 2001, dtype=torch.float64)
    start, stop = torch.minimum(low, high) - 4 * spread, torch.maximum(low, high) + 4 * spread
    grid = start[:, None] + (stop - start)[:, None] * steps  # (labels, points)
    true_positive = positives[:, None] * torch.special.ndtr((high[:, None] - grid) / spread[:, None])
    false_positive = negatives[:, None] * torch.special.ndtr((low[:, None] - grid) / spread[:, None])
    f1 = 2 * true_positive / (true_positive + positives[:, None] + false_positive)
    # Far apart, the two normals give the best F1 (1.0 in float64) over a whole stretch of the grid; its first
    # point sits just above the negative rows. The middle of the stretch leaves the most room on both sides.
    top = f1 >= f1.max(1, keepdim=True).values * (1 - 1e-12)
    points = torch.arange(grid.shape[1])
    first = torch.where(top, points, grid.shape[1]).min(1).values
    last = torch.where(top, points, -1).max(1).values
    return grid.gather(1, ((first + last) // 2)[:, None]).squeeze(1)


class RidgeStatistics:
    """Sufficient statistics of a ridge head over ``[phi, 1]``: ``gram = sum x x^T`` and ``cross = sum x y^T``.

    Adding increments is exact: the solution after any sequence of :meth:`update` calls equals the ridge head fitted
    jointly on all rows seen (float64), and no text is stored. Labels never seen in a row count as 0 targets, so a
    label added later gets zero cross-products from earlier rows, exactly as in a joint fit.

    ``random_features`` optionally carries a :class:`~hf_incr.random_features.RandomFeatureHead` (the RanPAC head
    and its own statistics) along with these statistics; it is saved with them (its own file) and loaded by
    :func:`hf_incr.loading.load_statistics`.
    """

    def __init__(
        self,
        gram: torch.Tensor,
        cross: torch.Tensor,
        count: int = 0,
        random_features=None,
        kept: torch.Tensor | None = None,
        unannotated: torch.Tensor | None = None,
    ):
        self.gram = gram.double()
        self.cross = cross.double()
        self.count = int(count)
        self.random_features = random_features
        # Multi-label: per label, the sum of [x, 1] over rows that did NOT annotate it (an increment whose rows carry
        # only its new labels says nothing about the old ones). Those rows count in the covariance (a property of
        # the encoder, not of the labels) but are neither positives nor negatives of that label.
        self.unannotated = torch.zeros_like(self.cross) if unannotated is None else unannotated.double().clone()
        # The kernel LDA head (hf_incr.kernel_attach.KernelHeadState), carried and saved the same way.
        self.kernel_lda = None
        # Labels whose head rows were trained outside these statistics (a classifier hf_incr did not train) and are
        # kept as they are: while any label is kept, increments fit new rows beside the kept ones instead of
        # re-solving the head (see hf_incr.new_rows).
        self.kept = torch.zeros(self.cross.shape[1], dtype=torch.bool) if kept is None else kept.bool().clone()

    @classmethod
    def empty(cls, in_features: int, num_labels: int) -> RidgeStatistics:
        return cls(torch.zeros(in_features + 1, in_features + 1), torch.zeros(in_features + 1, num_labels))

    @property
    def num_labels(self) -> int:
        return self.cross.shape[1]

    def grow(self, num_labels: int) -> RidgeStatistics:
        """Extend to ``num_labels`` columns (new labels have had no positive rows so far)."""
        extra = num_labels - self.num_labels
        if extra > 0:
            self.cross = torch.cat([self.cross, self.cross.new_zeros(self.cross.shape[0], extra)], dim=1)
            # A label added now counts every earlier row as annotated (a negative): its name did not exist then.
            self.unannotated = torch.cat([self.unannotated, self.unannotated.new_zeros(self.cross.shape[0], extra)], 1)
            self.kept = torch.cat([self.kept, self.kept.new_zeros(extra)])
        return self

    @property
    def keeps_trained_rows(self) -> bool:
        """Whether some label's head row is a trained row kept as it is (not solvable from these statistics)."""
        return bool(self.kept.any())

    def add(self, other: RidgeStatistics, annotated: list[int] | None = None) -> RidgeStatistics:
        """Add the rows another accumulator saw (same features; its labels a prefix of these); ``kept`` stays.

        ``annotated``: the label ids those rows annotate (multi-label; default every label). For any other label the
        rows are recorded as unannotated, and their targets in that column must be 0 (see
        :func:`annotated_targets`)."""
        self.grow(other.num_labels)
        self.gram += other.gram
        self.cross[:, : other.num_labels] += other.cross
        self.unannotated[:, : other.num_labels] += other.unannotated
        if annotated is not None:
            missing = torch.ones(self.num_labels, dtype=torch.bool)
            missing[list(annotated)] = False
            self.unannotated[:, missing] += other.gram[:, -1:]  # the sum of [x, 1] over the other's rows
        self.count += other.count
        return self

    def update(self, features: torch.Tensor, targets: torch.Tensor) -> RidgeStatistics:
        """Add rows: ``features`` (n, d) and ``targets`` (n, num_labels) one-/multi-hot."""
        x = torch.cat([features.double(), features.new_ones(len(features), 1).double()], dim=1)
        self.gram += x.T @ x
        self.cross += x.T @ targets.double()
        self.count += len(features)
        return self

    def solve(self, ridge_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The ridge head: weight (num_labels, d) and bias (num_labels,), in float64."""
        return ridge_solution(self.gram, self.cross, ridge_lambda)

    def solve_lda(self, shrinkage: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear discriminant analysis from the same statistics (single-label only): class means and a shared
        covariance, ``weight_c = S^-1 mu_c`` and ``bias_c = -mu_c S^-1 mu_c / 2 + log prior_c``.

        The one-hot cross-products hold each class's count (bias row) and feature sums, and ``gram`` the second
        moment, so no extra statistic is needed. The covariance is shrunk towards ``trace(S) / d * I`` by
        ``shrinkage``; ``None`` picks it from the statistics with the Oracle Approximating Shrinkage estimator
        (Chen et al., 2010), which keeps LDA usable when there are fewer rows than feature dimensions: BANKING77,
        frozen MiniLM pooler, 4 rows per label: 65.8 % against 57.2 % unshrunk; all 10,003 rows: 87.2 % against 87.8 %.
        """
        counts = self.cross[-1]
        if (counts <= 0).any():
            raise DataError("LDA needs at least one row of every label; some labels have none in the statistics.")
        n = float(counts.sum())
        means = (self.cross[:-1] / counts).T
        within = self.gram[:-1, :-1] - (means.T * counts) @ means
        covariance = _shrunk(within / max(n - len(counts), 1.0), n, shrinkage)
        weight = torch.linalg.solve(covariance, means.T).T
        bias = -0.5 * (weight * means).sum(1) + torch.log(counts / n)
        return weight.contiguous(), bias.contiguous()

    def annotated_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per label: how many rows annotate it, ``(labels,)``, and the sum of their features, ``(labels, d)``."""
        totals = self.gram[:, -1:] - self.unannotated  # sum of [x, 1] over annotated rows, per label
        return totals[-1], totals[:-1].T

    def label_moments(self, labels: list[int] | None = None) -> LabelMoments:
        """What a per-label discriminant reads, for ``labels`` (default: all)."""
        columns = list(range(self.num_labels)) if labels is None else list(labels)
        n = float(self.gram[-1, -1])
        mean = self.gram[:-1, -1] / n
        covariance = self.gram[:-1, :-1] / n - torch.outer(mean, mean)
        count, total = self.annotated_moments()
        cross = self.cross[:, columns]
        positives = cross[-1]
        negatives = count[columns] - positives
        positive_mean = (cross[:-1] / positives.clamp_min(1e-12)).T
        negative_mean = (total[columns] - cross[:-1].T) / negatives.clamp_min(1e-12)[:, None]
        return LabelMoments(n, covariance, positives, negatives, positive_mean, negative_mean)

    def solve_binary_lda(self, shrinkage: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A multi-label head, each label its own linear discriminant against the rows that do not carry it
        (:func:`binary_discriminants` on these statistics' moments). Rows of every increment count, so a new label's
        negatives include the old labels' rows though no text of them is kept."""
        n = float(self.gram[-1, -1])
        if n <= 1:
            raise DataError("A multi-label closed-form head needs rows; the statistics hold none.")
        return binary_discriminants(self.label_moments(), shrinkage)

    def decision_thresholds(
        self, weight: torch.Tensor, bias: torch.Tensor, labels: list[int] | None = None
    ) -> torch.Tensor:
        """Per label, the logit above which predicting it maximises that label's F1 on the rows seen
        (:func:`f1_thresholds`). ``weight`` and ``bias`` are the rows of ``labels`` (default: every label), in that
        order."""
        return f1_thresholds(weight, bias, self.label_moments(labels))

    def write_into(
        self,
        linear: nn.Linear,
        ridge_lambda: float,
        solver: str = "ridge",
        multi_label: bool = False,
        labels: list[int] | None = None,
    ) -> dict[int, float]:
        """Overwrite a model's output Linear with the closed-form solution (in its dtype and device), in place.

        Multi-label: ``lda`` fits each label against the rest (:meth:`solve_binary_lda`), ``ridge`` maps the 0/1
        regression onto logits; then each label's F1-optimal threshold (:meth:`decision_thresholds`) is folded into
        its bias, so a plain pipeline's sigmoid > 0.5 decides as tuned. Only the rows of ``labels`` are written
        (default: all); the others stay bit for bit. Returns the thresholds folded in, by label id (multi-label).
        """
        if multi_label:
            weight, bias = self.solve_binary_lda() if solver == "lda" else ridge_to_multi_label_logits(
                *self.solve(ridge_lambda)
            )
        else:
            weight, bias = self.solve(ridge_lambda) if solver == "ridge" else self.solve_lda()
        if weight.shape != linear.weight.shape:
            raise SavedStateError(
                f"The closed-form statistics describe {weight.shape[0]} labels x {weight.shape[1]} head inputs but "
                f"the head is {tuple(linear.weight.shape)}: they belong to another model. {STATISTICS_FIX}"
            )
        rows = list(range(weight.shape[0])) if labels is None else list(labels)
        thresholds: dict[int, float] = {}
        if multi_label and rows and linear.bias is not None:
            cuts = self.decision_thresholds(weight[rows], bias[rows], rows)
            bias = bias.clone()
            bias[rows] -= cuts
            thresholds = {label: float(cut) for label, cut in zip(rows, cuts, strict=True)}
        with torch.no_grad():
            linear.weight[rows] = weight[rows].to(linear.weight)
            if linear.bias is not None:
                linear.bias[rows] = bias[rows].to(linear.bias)
            else:
                logger.warning("The head has no bias; the closed-form bias term is dropped.")
        return thresholds

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / RIDGE_FILENAME
        save_file(
            {"gram": self.gram.contiguous(), "cross": self.cross.contiguous(), "kept": self.kept.to(torch.uint8),
             "unannotated": self.unannotated.contiguous()},
            str(path),
            metadata={"count": str(self.count), "format": "hf_incr ridge statistics over [head input, 1]"},
        )
        if self.random_features is not None:
            self.random_features.save(directory)
        if self.kernel_lda is not None:
            self.kernel_lda.save(directory)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> RidgeStatistics | None:
        """The statistics saved in a model folder (without a random-feature head), or ``None`` if it has none.

        Raises:
            SavedStateError: the file is damaged (cut short, not safetensors, tensors missing or of the wrong shape).
        """
        path = Path(directory) / RIDGE_FILENAME
        if not path.is_file():
            return None
        tensors, count = read_statistics_file(
            path, ("gram", "cross"), STATISTICS_LOST, STATISTICS_FIX, optional=("kept", "unannotated")
        )
        gram, cross, kept = tensors["gram"], tensors["cross"], tensors.get("kept")
        unannotated = tensors.get("unannotated")
        if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or cross.dim() != 2 or cross.shape[0] != gram.shape[0]:
            raise damaged_file_error(
                path, f"holds tensors of inconsistent shapes (gram {tuple(gram.shape)}, cross {tuple(cross.shape)}; "
                "expected (d+1, d+1) and (d+1, labels))", STATISTICS_LOST, STATISTICS_FIX,
            )
        if kept is not None and tuple(kept.shape) != (cross.shape[1],):
            raise damaged_file_error(
                path, f"has a `kept` flag per label of shape {tuple(kept.shape)} for {cross.shape[1]} labels",
                STATISTICS_LOST, STATISTICS_FIX,
            )
        if unannotated is not None and unannotated.shape != cross.shape:
            raise damaged_file_error(
                path, f"has unannotated sums of shape {tuple(unannotated.shape)} for cross {tuple(cross.shape)}",
                STATISTICS_LOST, STATISTICS_FIX,
            )
        return cls(gram, cross, count, kept=kept, unannotated=unannotated)


# What a user loses without the statistics file, and what to do: said by every error about it.
STATISTICS_LOST = (
    "the next increment cannot solve the old labels' rows of the head exactly (they are kept as trained instead)"
)
STATISTICS_FIX = (
    f"Restore {RIDGE_FILENAME} from where the model came from (a copy, or the Hub); or delete it, and add a few rows "
    "of every old label to the next increment's data so that their statistics are collected again."
)


def read_statistics_file(
    path: Path, names: tuple[str, ...], lost: str, fix: str, optional: tuple[str, ...] = ()
) -> tuple[dict[str, torch.Tensor], int]:
    """The named float tensors and the row count of a statistics file hf_incr saved, checked: a file that is cut
    short, not safetensors, lacks a tensor, or holds non-finite numbers raises a
    :class:`~hf_incr.errors.SavedStateError` naming it, what is ``lost`` without it, and the ``fix``."""
    try:
        with safe_open(str(path), framework="pt") as f:  # one read for the tensors and the row count
            keys = set(f.keys())
            missing = [name for name in names if name not in keys]
            if missing:
                raise damaged_file_error(path, f"lacks the tensor(s) {missing}", lost, fix)
            tensors = {name: f.get_tensor(name) for name in (*names, *(o for o in optional if o in keys))}
            count = int((f.metadata() or {}).get("count", 0))
    except SavedStateError:
        raise
    except Exception as error:  # safetensors raises its own error type for a damaged header or a short file
        raise damaged_file_error(path, f"could not be read ({type(error).__name__}: {error})", lost, fix) from error
    if count < 0 or any(t.is_floating_point() and not torch.isfinite(t).all() for t in tensors.values()):
        raise damaged_file_error(path, "holds a negative row count or non-finite numbers", lost, fix)
    return tensors, count
