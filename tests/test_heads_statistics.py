"""hf_incr.heads.statistics (ClassStatistics: exact merging, multi-label annotation, the tensor checks) and
hf_incr.heads.lda (solve_lda, OAS shrinkage, each label's discriminant, F1-tuned thresholds)."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import gaussian_classes, relative_error

from hf_incr.errors import DataError
from hf_incr.heads import ClassStatistics, LinearHead
from hf_incr.heads import statistics as statistics_module
from hf_incr.heads.lda import binary_discriminants, f1_thresholds, oas_shrinkage, solve_lda


def _multi_label_rows(n: int, generator: torch.Generator, prevalence=(0.3, 0.2, 0.03), dim=12, scale=2.0):
    """Rows whose labels each shift the features along their own direction (label 2 is rare)."""
    centres = scale * torch.randn(len(prevalence), dim, generator=generator, dtype=torch.float64)
    targets = (torch.rand(n, len(prevalence), generator=generator) < torch.tensor(prevalence)).double()
    return targets @ centres + torch.randn(n, dim, generator=generator, dtype=torch.float64), targets


# -- exact merging: the statistics of any sequence of batches are those of all rows at once ---------------------------


def test_incremental_statistics_equal_joint():
    x, y = gaussian_classes()
    joint = ClassStatistics(5)
    joint.update(x, y)
    incremental = ClassStatistics(5)
    # three increments of two labels each, every increment in uneven batches
    for labels in ((0, 1), (2, 3), (4, 5)):
        rows = torch.isin(y, torch.tensor(labels)).nonzero().flatten()
        for batch in (rows[:5], rows[5:6], rows[6:]):
            incremental.update(x[batch], y[batch])
    assert torch.equal(incremental.counts, joint.counts)
    assert relative_error(incremental.sums, joint.sums) <= 1e-10
    assert relative_error(incremental.scatter, joint.scatter) <= 1e-10
    # the scatter is the within-label scatter of all rows
    means = torch.stack([x[y == c].mean(0) for c in range(6)])
    centered = x - means[y]
    assert relative_error(joint.scatter, centered.T @ centered) <= 1e-10


def test_merging_shares_equals_one_accumulator_and_raw_moments_add_up(monkeypatch):
    x, y = gaussian_classes()
    joint = ClassStatistics(5)
    joint.update(x, y)
    # Two shares of the rows (as two processes see them): merged pairwise, or summed as raw moments.
    first, second = ClassStatistics(5), ClassStatistics(5)
    first.update(x[::2], y[::2])
    second.update(x[1::2], y[1::2])
    merged = ClassStatistics(5)
    merged.update(x[:3], y[:3])  # a head that already has rows
    merged.merge(first)
    merged.merge(second)
    reference = ClassStatistics(5)
    reference.update(torch.cat([x[:3], x]), torch.cat([y[:3], y]))
    assert torch.equal(merged.counts, reference.counts) and relative_error(merged.scatter, reference.scatter) < 1e-12
    # A distributed launch of two processes: each sends its counts, sums and raw second moments, and every process
    # gets their sums back (the all-reduce), from which sum_over_processes recovers the scatter.
    monkeypatch.setattr(statistics_module, "distributed_launch", lambda: True)
    sent = []
    monkeypatch.setattr(statistics_module, "sum_over_processes",
                        lambda *tensors: sent.append([t.clone() for t in tensors]))
    for share in (first, second):
        copy.deepcopy(share).sum_over_processes()

    def all_reduce(*tensors):
        for tensor, mine, theirs in zip(tensors, *sent):
            tensor.copy_(mine + theirs)

    monkeypatch.setattr(statistics_module, "sum_over_processes", all_reduce)
    summed = first.sum_over_processes()
    assert torch.equal(summed.counts, joint.counts)
    assert relative_error(summed.scatter, joint.scatter) < 1e-12 and relative_error(summed.sums, joint.sums) < 1e-14


# -- multi-label: rows annotate some labels ---------------------------------------------------------------------------


def test_rows_that_do_not_annotate_a_label_are_neither_its_positives_nor_its_negatives(tmp_path):
    generator = torch.Generator().manual_seed(8)
    x, targets = _multi_label_rows(500, generator)
    first, second = slice(0, 300), slice(300, 500)
    # The second batch annotates only label 2: its label-0/1 columns are unknown (and given as 0).
    unknown = targets[second].clone()
    unknown[:, :2] = 0
    stats = ClassStatistics(x.shape[1], multi_label=True).update(x[first], targets[first])
    stats.merge(ClassStatistics(x.shape[1], multi_label=True).update(x[second], unknown, annotated=[2]))
    only_first = ClassStatistics(x.shape[1], multi_label=True).update(x[first], targets[first])
    count, total = stats.annotated_counts, stats.annotated_sums
    first_count, first_total = only_first.annotated_counts, only_first.annotated_sums
    torch.testing.assert_close(count[:2], first_count[:2])
    torch.testing.assert_close(total[:2], first_total[:2])
    assert count[2] == 500  # label 2: every row annotates it
    # ... while every row describes the features' covariance, and the sums survive saving.
    assert stats.num_rows == 500
    LinearHead(stats).save(tmp_path)
    loaded = LinearHead.load(tmp_path, multi_label=True).statistics
    torch.testing.assert_close(loaded.annotated_counts, stats.annotated_counts)
    torch.testing.assert_close(loaded.annotated_sums, stats.annotated_sums)
    torch.testing.assert_close(binary_discriminants(loaded.moments())[0], binary_discriminants(stats.moments())[0])


def test_a_label_added_later_counts_every_earlier_row_as_its_negative():
    generator = torch.Generator().manual_seed(3)
    x, targets = _multi_label_rows(90, generator)
    stats = ClassStatistics(x.shape[1], multi_label=True).update(x[:40], targets[:40, :2])
    stats.grow(3)  # label 2 is new: its name did not exist when the first 40 rows were labelled
    later = targets[40:].clone()
    later[:, :2] = 0
    stats.update(x[40:], later, annotated=[2])
    moments = stats.moments([2])
    assert moments.positives.tolist() == [targets[40:, 2].sum().item()]
    assert moments.negatives.tolist() == [90 - targets[40:, 2].sum().item()]
    assert stats.annotated_counts.tolist() == [40.0, 40.0, 90.0]


# -- the tensor checks ------------------------------------------------------------------------------------------------


def test_bad_features_labels_and_targets_are_refused_saying_what_and_how():
    x, y = gaussian_classes()
    stats = ClassStatistics(5)
    with pytest.raises(DataError, match=r"expected features of shape \(rows, 5\).*Fix"):
        stats.update(x[:, :4], y)
    with pytest.raises(DataError, match=r"one label id per feature row \(72\).*Fix"):
        stats.update(x, y[:10])
    with pytest.raises(DataError, match="integer tensor"):
        stats.update(x, y.float())
    with pytest.raises(DataError, match=r"must lie in \[0\), got \[-1, 4\].*Fix"):
        stats.update(x, y - 1)
    with pytest.raises(DataError, match=r"NaN or inf.*Fix"):
        stats.update(torch.full((2, 5), float("nan")), y[:2])
    multi = ClassStatistics(5, multi_label=True)
    with pytest.raises(DataError, match=r"multi-hot matrix of shape \(rows=72, labels\).*Fix"):
        multi.update(x, y)
    with pytest.raises(DataError, match="0/1"):
        multi.update(x, torch.full((72, 3), 0.5))
    with pytest.raises(DataError, match=r"expected statistics of 5 features \(single-label\), got 5 \(multi-label\)"):
        stats.merge(multi)
    assert stats.num_labels == 0 and stats.num_rows == 0  # nothing was merged


# -- solve_lda: class means and one shared covariance -----------------------------------------------------------------


def test_lda_from_accumulated_statistics_matches_a_direct_fit():
    generator = torch.Generator().manual_seed(1)
    means = torch.randn(3, 5, generator=generator, dtype=torch.float64) * 3
    ids = torch.arange(60) % 3
    x = means[ids] + torch.randn(60, 5, generator=generator, dtype=torch.float64)
    stats = ClassStatistics(5)
    for part in (slice(0, 20), slice(20, 60)):  # two increments; the second brings label 2 too
        stats.update(x[part], ids[part])
    weight, bias, _ = solve_lda(stats.counts, stats.sums, stats.scatter, priors="counts", covariance="pooled",
                                shrinkage=0.0)
    mu = torch.stack([x[ids == c].mean(0) for c in range(3)])
    centered = x - mu[ids]
    covariance = centered.T @ centered / (60 - 3)
    expected_w = torch.linalg.solve(covariance, mu.T).T
    torch.testing.assert_close(weight, expected_w, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(bias,
                               -0.5 * (expected_w * mu).sum(1)
                               + torch.log(torch.full((3,), 1 / 3.0, dtype=torch.float64)),
                               rtol=1e-6, atol=1e-8)
    assert ((x @ weight.T + bias).argmax(1) == ids).double().mean() > 0.9


def test_solved_head_equals_direct_lda():
    x, y = gaussian_classes()
    stats = ClassStatistics(5)
    stats.update(x, y)
    weight, bias, rho = solve_lda(stats.counts, stats.sums, stats.scatter, shrinkage=0.0, priors="counts",
                                  covariance="rows")
    assert rho == 0.0
    # direct fit: pooled covariance of all rows, class means, priors from counts
    means = torch.stack([x[y == c].mean(0) for c in range(6)])
    covariance = (x - means[y]).T @ (x - means[y]) / len(y)
    direct_weight = torch.linalg.solve(covariance, means.T).T
    direct_bias = -0.5 * (means * direct_weight).sum(1) + torch.log(torch.bincount(y).double() / len(y))
    assert relative_error(weight, direct_weight) <= 1e-10
    assert relative_error(bias, direct_bias) <= 1e-10
    discriminant_analysis = pytest.importorskip("sklearn.discriminant_analysis")
    lda = discriminant_analysis.LinearDiscriminantAnalysis(solver="lsqr").fit(x.numpy(), y.numpy())
    ours = (x @ weight.T + bias).numpy()
    assert abs(ours - lda.decision_function(x.numpy())).max() <= 1e-8


def test_oas_shrinkage_is_applied():
    x, y = gaussian_classes(rows_per_label=3, dim=5)
    stats = ClassStatistics(5)
    stats.update(x, y)
    weight, _, rho = solve_lda(stats.counts, stats.sums, stats.scatter, priors="uniform", covariance="rows")
    assert 0.0 < rho <= 1.0
    covariance = stats.covariance()
    target = torch.trace(covariance) / 5
    shrunk = (1 - rho) * covariance + rho * target * torch.eye(5, dtype=torch.float64)
    means = stats.sums / stats.counts[:, None]
    assert relative_error(weight, torch.linalg.solve(shrunk, means.T).T) <= 1e-8


def test_lda_default_shrinkage_is_scikit_learns_oas_and_helps_with_fewer_rows_than_dimensions():
    from sklearn.covariance import oas

    generator = torch.Generator().manual_seed(2)
    dim, per_class, classes = 48, 6, 5  # 30 rows in 48 dimensions: the within-class covariance is singular
    means = torch.randn(classes, dim, generator=generator, dtype=torch.float64)

    def sample(n):
        ids = torch.arange(classes * n) % classes
        return means[ids] + 1.5 * torch.randn(classes * n, dim, generator=generator, dtype=torch.float64), ids

    x, ids = sample(per_class)
    stats = ClassStatistics(dim).update(x, ids)

    def solve(**kwargs):
        return solve_lda(stats.counts, stats.sums, stats.scatter, priors="counts", covariance="pooled", **kwargs)

    centered = x - torch.stack([x[ids == c].mean(0) for c in range(classes)])[ids]
    _, expected = oas(centered.numpy(), assume_centered=True)
    shrinkage = oas_shrinkage(centered.T @ centered / (len(x) - classes), len(x))
    assert shrinkage == pytest.approx(expected, rel=1e-9) and 0 < shrinkage < 1
    torch.testing.assert_close(solve()[0], solve(shrinkage=shrinkage)[0])
    test_x, test_ids = sample(200)
    accuracy = {}
    for name, value in (("oas", None), ("none", 0.0)):
        weight, bias, _ = solve(shrinkage=value)
        accuracy[name] = ((test_x @ weight.T + bias).argmax(1) == test_ids).double().mean().item()
    assert accuracy["oas"] > accuracy["none"] + 0.05, accuracy


def test_a_label_without_rows_cannot_be_solved():
    x, y = gaussian_classes()
    stats = ClassStatistics(5)
    stats.update(x[y == 1], y[y == 1])
    with pytest.raises(DataError, match=r"label id\(s\) \[0\] have none in the statistics.*Fix"):
        solve_lda(stats.counts, stats.sums, stats.scatter)


# -- multi-label: each label against the rows without it, tuned thresholds --------------------------------------------


def test_binary_lda_is_each_labels_discriminant_against_the_rows_without_it():
    generator = torch.Generator().manual_seed(5)
    x, targets = _multi_label_rows(600, generator)
    stats = ClassStatistics(x.shape[1], multi_label=True).update(x, targets)
    weight, bias = binary_discriminants(stats.moments(), shrinkage=0.0)
    for k in range(3):
        positive, negative = x[targets[:, k] == 1], x[targets[:, k] == 0]
        mu_p, mu_n = positive.mean(0), negative.mean(0)
        within = ((positive - mu_p).T @ (positive - mu_p) + (negative - mu_n).T @ (negative - mu_n)) / len(x)
        expected = torch.linalg.solve(within, mu_p - mu_n)
        share = len(positive) / len(x)
        torch.testing.assert_close(weight[k], expected, rtol=1e-6, atol=1e-8)
        expected_bias = -0.5 * expected @ (mu_p + mu_n) + torch.log(torch.tensor(share / (1 - share)))
        torch.testing.assert_close(bias[k], expected_bias.double(), rtol=1e-6, atol=1e-8)


def test_a_separable_labels_threshold_sits_between_its_positive_and_negative_rows():
    # Far apart, every threshold in the gap gives F1 1.0 (in float64): the middle of that stretch is chosen, not its
    # first point just above the negatives (which the demo's data showed as a "probability 1e-21" threshold).
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(300, 4, generator=generator, dtype=torch.float64)
    targets = torch.zeros(300, 1, dtype=torch.float64)
    targets[:100, 0] = 1
    x[:100, 0] += 40.0
    stats = ClassStatistics(4, multi_label=True).update(x, targets)
    weight, bias = binary_discriminants(stats.moments())
    cut = float(f1_thresholds(weight, bias, stats.moments())[0])
    logits = x @ weight.T + bias
    positive, negative = float(logits[:100].mean()), float(logits[100:].mean())
    assert abs(cut - (positive + negative) / 2) < 0.1 * (positive - negative), (cut, positive, negative)
