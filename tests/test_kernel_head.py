"""Kernel LDA head (hf_incr.kernel_head): exact incremental statistics, direct LDA equivalence, files."""

from __future__ import annotations

import pytest
import torch

from hf_incr.errors import DataError, SavedStateError
from hf_incr.kernel_head import (
    KernelLDAConfig,
    KernelLDAHead,
    LDAStatistics,
    choose_bandwidth,
    load_head,
    load_inference,
    save_inference,
    save_statistics,
    smoothest_within_one_standard_error,
    solve_lda,
)


def _data(rows_per_label=12, labels=6, dim=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(labels, dim, generator=generator, dtype=torch.float64) * 2
    y = torch.arange(labels).repeat_interleave(rows_per_label)
    x = centers[y] + torch.randn(len(y), dim, generator=generator, dtype=torch.float64)
    return x, y


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_incremental_statistics_equal_joint():
    x, y = _data()
    joint = LDAStatistics(5)
    joint.update(x, y)
    incremental = LDAStatistics(5)
    # three increments of two labels each, every increment in uneven batches; label 1 also comes back later
    for labels in ((0, 1), (2, 3), (4, 5)):
        rows = torch.isin(y, torch.tensor(labels)).nonzero().flatten()
        for batch in (rows[:5], rows[5:6], rows[6:]):
            incremental.update(x[batch], y[batch])
    assert torch.equal(incremental.counts, joint.counts)
    assert _rel(incremental.sums, joint.sums) <= 1e-10
    assert _rel(incremental.scatter, joint.scatter) <= 1e-10
    # the scatter is the within-label scatter of all rows
    means = torch.stack([x[y == c].mean(0) for c in range(6)])
    centered = x - means[y]
    assert _rel(joint.scatter, centered.T @ centered) <= 1e-10


def test_random_feature_head_incremental_equals_joint():
    x, y = _data()
    config = dict(in_features=5, num_features=64, num_members=2, bandwidth=3.0, seed=1)
    joint = KernelLDAHead(KernelLDAConfig(**config))
    joint.update(x, y)
    incremental = KernelLDAHead(KernelLDAConfig(**config))
    for labels in ((0, 1, 2), (3, 4, 5)):
        rows = torch.isin(y, torch.tensor(labels))
        incremental.update(x[rows], y[rows])
    for a, b in zip(incremental.statistics, joint.statistics):
        assert _rel(a.scatter, b.scatter) <= 1e-10
    assert torch.allclose(incremental.solve()(x), joint.solve()(x), atol=1e-5)


def test_solved_head_equals_direct_lda():
    x, y = _data()
    stats = LDAStatistics(5)
    stats.update(x, y)
    weight, bias, rho = solve_lda(stats, shrinkage=0.0, priors="counts")
    assert rho == 0.0
    # direct fit: pooled covariance of all rows, class means, priors from counts
    means = torch.stack([x[y == c].mean(0) for c in range(6)])
    covariance = (x - means[y]).T @ (x - means[y]) / len(y)
    direct_weight = torch.linalg.solve(covariance, means.T).T
    direct_bias = -0.5 * (means * direct_weight).sum(1) + torch.log(torch.bincount(y).double() / len(y))
    assert _rel(weight, direct_weight) <= 1e-10
    assert _rel(bias, direct_bias) <= 1e-10
    discriminant_analysis = pytest.importorskip("sklearn.discriminant_analysis")
    lda = discriminant_analysis.LinearDiscriminantAnalysis(solver="lsqr").fit(x.numpy(), y.numpy())
    ours = (x @ weight.T + bias).numpy()
    assert abs(ours - lda.decision_function(x.numpy())).max() <= 1e-8


def test_oas_shrinkage_is_applied():
    x, y = _data(rows_per_label=3, dim=5)
    stats = LDAStatistics(5)
    stats.update(x, y)
    weight, _, rho = solve_lda(stats)
    assert 0.0 < rho <= 1.0
    covariance = stats.covariance()
    target = torch.trace(covariance) / 5
    shrunk = (1 - rho) * covariance + rho * target * torch.eye(5, dtype=torch.float64)
    assert _rel(weight, torch.linalg.solve(shrunk, stats.means().T).T) <= 1e-8


def test_save_load_round_trip_and_inference_file_alone(tmp_path):
    x, y = _data()
    head = KernelLDAHead(KernelLDAConfig(in_features=5, num_features=32, num_members=3, seed=2, labels=list("abcdef")))
    first = y < 3
    head.update(x[first].float(), y[first])  # bandwidth set from these rows
    assert head.config.bandwidth > 0
    classifier = head.solve()
    save_inference(tmp_path / "inference.safetensors", classifier)
    save_statistics(tmp_path / "statistics.safetensors", head)
    alone = load_inference(tmp_path / "inference.safetensors")  # no statistics file involved
    assert torch.equal(alone(x.float()), classifier(x.float()))
    assert alone.config.labels == list("abcdef")
    # continue the next increment from the two files: same as continuing the head in memory
    resumed = load_head(tmp_path / "inference.safetensors", tmp_path / "statistics.safetensors")
    resumed.update(x[~first].float(), y[~first])
    head.update(x[~first].float(), y[~first])
    assert torch.equal(resumed.solve()(x.float()), head.solve()(x.float()))


def test_float32_statistics_file_and_linear_head(tmp_path):
    x, y = _data()
    head = KernelLDAHead(KernelLDAConfig(in_features=5, num_features=0, num_members=1, statistics_dtype="float32"))
    head.update(x, y)
    assert head.statistics[0].scatter.dtype == torch.float32
    save_inference(tmp_path / "i.safetensors", head.solve())
    save_statistics(tmp_path / "s.safetensors", head)
    resumed = load_head(tmp_path / "i.safetensors", tmp_path / "s.safetensors")
    assert torch.equal(resumed.solve().predict(x), head.solve().predict(x))


def test_statistics_of_another_head_are_refused(tmp_path):
    x, y = _data()
    heads = [KernelLDAHead(KernelLDAConfig(in_features=5, num_features=16, num_members=1, bandwidth=2.0, seed=s))
             for s in (0, 1)]
    for head in heads:
        head.update(x, y)
    save_inference(tmp_path / "i.safetensors", heads[0].solve())
    save_statistics(tmp_path / "s.safetensors", heads[1])
    with pytest.raises(SavedStateError, match="another kernel LDA head"):
        load_head(tmp_path / "i.safetensors", tmp_path / "s.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(SavedStateError, match=r"bad\.safetensors"):
        load_inference(tmp_path / "bad.safetensors")


def test_bad_shapes_raise_data_error():
    head = KernelLDAHead(KernelLDAConfig(in_features=5, num_features=8, num_members=1, bandwidth=1.0))
    x, y = _data()
    with pytest.raises(DataError, match=r"expected features of shape \(rows, 5\).*Fix"):
        head.update(x[:, :4], y)
    with pytest.raises(DataError, match=r"expected a 1-d tensor of 72 label indices.*Fix"):
        head.update(x, y[:10])
    with pytest.raises(DataError, match="integer label indices"):
        head.update(x, y.float())
    with pytest.raises(DataError, match="label indices >= 0"):
        head.update(x, y - 1)
    head.update(x, y)
    with pytest.raises(DataError, match=r"expected features of shape \(rows, 5\)"):
        head.solve()(x[:, :3])
    stats = LDAStatistics(5)
    stats.update(x[y == 1], y[y == 1])
    with pytest.raises(DataError, match=r"label id\(s\) \[0\] have no rows.*Fix"):
        solve_lda(stats)
    with pytest.raises(DataError, match="set num_members=1"):
        KernelLDAConfig(in_features=5, num_features=0, num_members=3)


def test_the_smoothest_factor_within_one_standard_error_is_chosen():
    # An easy first increment: the factors differ by a row or two, so the smoothest kernel is taken.
    assert smoothest_within_one_standard_error({0.5: 0, 1.0: 0, 2.0: 0}) == (2.0, 1.0)
    assert smoothest_within_one_standard_error({0.5: 1, 1.0: 1, 2.0: 2})[0] == 2.0
    # A clear difference is kept: 3 errors against 9 (allowed: 3 + 2 = 5).
    assert smoothest_within_one_standard_error({0.5: 3, 1.0: 4, 2.0: 9}) == (1.0, 5.0)
    assert smoothest_within_one_standard_error({0.5: 3, 1.0: 6, 2.0: 9})[0] == 0.5


def test_bandwidth_choice_with_one_row_per_label_takes_the_smoothest_factor():
    x, y = _data(rows_per_label=1)
    config = KernelLDAConfig(in_features=5, num_features=32, num_members=1, seed=0)
    _, report = choose_bandwidth(x, y, config, factors=(0.5, 1.0, 2.0))
    assert report["held_out_rows"] == 0 and report["chosen_factor"] == 2.0


def test_bandwidth_is_fixed_after_the_first_increment():
    x, y = _data()
    config = KernelLDAConfig(in_features=5, num_features=32, num_members=1, seed=0)
    bandwidth, report = choose_bandwidth(x[y < 3], y[y < 3], config, factors=(0.5, 1.0))
    assert report["chosen_factor"] in (0.5, 1.0) and bandwidth == config.bandwidth
    errors = {f: r["errors"] for f, r in report["factors"].items()}
    assert report["chosen_factor"] == smoothest_within_one_standard_error(errors)[0]
    assert all(r["accuracy"] == 1 - r["errors"] / report["held_out_rows"] for r in report["factors"].values())
    head = KernelLDAHead(config)
    head.update(x[y < 3], y[y < 3])
    with pytest.raises(DataError, match="cannot change after the first increment"):
        head.set_bandwidth(x)
    head.update(x[y >= 3], y[y >= 3])
    assert head.config.bandwidth == bandwidth
    assert (head.solve().predict(x) == y).float().mean() > 0.9


# Multi-label ---------------------------------------------------------------------------------------------------------


def _multi_label_data(rows=60, labels=4, dim=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    y = (torch.rand(rows, labels, generator=generator) < 0.35).double()
    directions = torch.randn(labels, dim, generator=generator, dtype=torch.float64) * 2
    x = y @ directions + torch.randn(rows, dim, generator=generator, dtype=torch.float64)
    return x, y




def test_multi_label_statistics_equal_the_closed_form_heads_per_label_discriminants():
    from hf_incr.closed_form import RidgeStatistics

    x, y = _multi_label_data()
    # Two increments: labels 0-1 on the first 30 rows, then labels 2-3 added on the next 30 rows, which annotate only
    # the new labels (their old labels' targets are 0 and unknown), in uneven batches.
    first, second = y[:30, :2], y[30:].clone()
    second[:, :2] = 0.0
    head = KernelLDAHead(KernelLDAConfig(in_features=5, num_features=0, num_members=1, multi_label=True))
    head.update(x[:17], first[:17])
    head.update(x[17:30], first[17:])
    head.update(x[30:51], second[:21], annotated=[2, 3])
    head.update(x[51:], second[21:], annotated=[2, 3])
    ridge = RidgeStatistics.empty(5, 2).update(x[:30], first)
    ridge.add(RidgeStatistics.empty(5, 4).update(x[30:], second), annotated=[2, 3])
    stats = head.statistics[0]
    mine, theirs = stats.moments(), ridge.label_moments()
    assert torch.equal(mine.positives, theirs.positives) and torch.equal(mine.negatives, theirs.negatives)
    assert mine.negatives.tolist() == [30 - y[:30, 0].sum().item(), 30 - y[:30, 1].sum().item(),
                                       60 - y[30:, 2].sum().item(), 60 - y[30:, 3].sum().item()]
    for a, b in ((mine.covariance, theirs.covariance), (mine.positive_mean, theirs.positive_mean),
                 (mine.negative_mean, theirs.negative_mean)):
        assert _rel(a, b) < 1e-12
    classifier = head.solve()
    weight, bias = ridge.solve_binary_lda()
    cuts = ridge.decision_thresholds(weight, bias)
    assert _rel(classifier.weights[0].double(), weight) < 1e-6
    assert _rel(classifier.biases[0].double(), bias - cuts) < 1e-6
    assert sorted(head.thresholds) == [0, 1, 2, 3]
    # The solved decisions separate the labels on these rows well (sigmoid > 0.5 applies the thresholds).
    predicted = classifier.predict(x.float())
    assert predicted.dtype == torch.bool and float((predicted == y.bool()).double().mean()) > 0.85


def test_multi_label_rows_of_labels_not_annotated_stay_bit_for_bit():
    x, y = _multi_label_data(rows=80)
    config = KernelLDAConfig(in_features=5, num_features=32, num_members=2, bandwidth=3.0, multi_label=True)
    head = KernelLDAHead(config)
    head.update(x[:40], y[:40, :3])
    before = head.solve()
    later = y[40:].clone()
    later[:, :3] = 0.0
    head.update(x[40:], later, annotated=[3])
    after = head.solve(before, labels=[3])
    for old, new in zip(before.weights + before.biases, after.weights + after.biases):
        assert torch.equal(new[:3], old[:3])
    assert list(head.thresholds) == [3]
    assert torch.equal(after.predict(x.float())[:, :3], before.predict(x.float()))
    # Without `labels` every row is solved again (a fully annotated increment), so old rows may move.
    assert not torch.equal(head.solve().weights[0][:3], before.weights[0][:3])


def test_multi_label_members_average_probabilities_and_one_member_keeps_its_logits():
    x, y = _multi_label_data()
    one, two = (KernelLDAHead(KernelLDAConfig(in_features=5, num_features=16, num_members=members, bandwidth=3.0,
                                              multi_label=True)) for members in (1, 2))
    for head in (one, two):
        head.update(x, y)
    single, pair = one.solve(), two.solve()
    assert torch.equal(single(x.float()), single.member_logits(x.float())[0])
    members = pair.member_logits(x.float())
    expected = torch.logit((torch.sigmoid(members[0].double()) + torch.sigmoid(members[1].double())) / 2)
    torch.testing.assert_close(pair(x.float()).double(), expected, rtol=1e-5, atol=1e-5)


def test_multi_label_head_files_round_trip_and_continue(tmp_path):
    x, y = _multi_label_data(rows=80)
    config = KernelLDAConfig(in_features=5, num_features=24, num_members=2, bandwidth=2.5, multi_label=True,
                             labels=["a", "b", "c", "d"])
    head = KernelLDAHead(config)
    head.update(x[:50], y[:50])
    classifier = head.solve()
    save_inference(tmp_path / "inference.safetensors", classifier)
    save_statistics(tmp_path / "statistics.safetensors", head)
    loaded = load_inference(tmp_path / "inference.safetensors")
    assert loaded.config.multi_label
    assert torch.equal(loaded(x.float()), classifier(x.float()))
    continued = load_head(tmp_path / "inference.safetensors", tmp_path / "statistics.safetensors")
    continued.update(x[50:], y[50:])
    head.update(x[50:], y[50:])
    for a, b in zip(continued.statistics, head.statistics):
        for name in ("positive_counts", "positive_sums", "annotated_counts", "annotated_sums"):
            assert torch.equal(getattr(a, name), getattr(b, name))
        assert torch.equal(a.rows.scatter, b.rows.scatter)
    assert torch.equal(continued.solve()(x.float()), head.solve()(x.float()))
    # A single-label file keeps its fingerprint: `multi_label` enters it only when set.
    single = KernelLDAConfig(in_features=5, num_features=24, num_members=1, bandwidth=2.5)
    assert "multi_label" in single.inference_dict() and not single.inference_dict()["multi_label"]


def test_multi_label_targets_must_be_a_matrix():
    head = KernelLDAHead(KernelLDAConfig(in_features=5, num_features=0, num_members=1, multi_label=True))
    with pytest.raises(DataError, match=r"\(rows, labels\) tensor of 0/1 targets"):
        head.update(torch.zeros(3, 5), torch.tensor([0, 1, 0]))


def test_a_head_of_several_members_continues_from_its_files_exactly(tmp_path):
    # Each member must get its own counts when loaded: shared, the second member counted every later row twice.
    x, y = _data()
    config = KernelLDAConfig(in_features=5, num_features=16, num_members=2, bandwidth=3.0)
    head = KernelLDAHead(config)
    head.update(x[:36], y[:36])
    save_inference(tmp_path / "inference.safetensors", head.solve())
    save_statistics(tmp_path / "statistics.safetensors", head)
    continued = load_head(tmp_path / "inference.safetensors", tmp_path / "statistics.safetensors")
    for part in (continued, head):
        part.update(x[36:], y[36:])
    for a, b in zip(continued.statistics, head.statistics):
        assert torch.equal(a.counts, b.counts) and _rel(a.scatter, b.scatter) < 1e-12  # the file keeps one triangle


def test_merging_shares_equals_one_accumulator_and_raw_moments_add_up():
    x, y = _data()
    joint = LDAStatistics(5)
    joint.update(x, y)
    # Two shares of the rows (as two processes see them): merged pairwise, or summed as raw moments.
    first, second = LDAStatistics(5), LDAStatistics(5)
    first.update(x[::2], y[::2])
    second.update(x[1::2], y[1::2])
    merged = LDAStatistics(5)
    merged.update(x[:3], y[:3])  # a head that already has rows
    merged.merge(first)
    merged.merge(second)
    reference = LDAStatistics(5)
    reference.update(torch.cat([x[:3], x]), torch.cat([y[:3], y]))
    assert torch.equal(merged.counts, reference.counts) and _rel(merged.scatter, reference.scatter) < 1e-12
    summed = LDAStatistics(5)
    summed.grow(first.num_labels)
    summed.counts = first.counts + second.counts
    summed.sums = first.sums + second.sums
    summed.set_raw_moments(first.raw_moments() + second.raw_moments())
    assert _rel(summed.scatter, joint.scatter) < 1e-12 and _rel(summed.sums, joint.sums) < 1e-14
