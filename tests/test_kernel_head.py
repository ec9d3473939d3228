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


def test_bandwidth_is_fixed_after_the_first_increment():
    x, y = _data()
    config = KernelLDAConfig(in_features=5, num_features=32, num_members=1, seed=0)
    bandwidth, report = choose_bandwidth(x[y < 3], y[y < 3], config, factors=(0.5, 1.0))
    assert report["chosen_factor"] in (0.5, 1.0) and bandwidth == config.bandwidth
    head = KernelLDAHead(config)
    head.update(x[y < 3], y[y < 3])
    with pytest.raises(DataError, match="cannot change after the first increment"):
        head.set_bandwidth(x)
    head.update(x[y >= 3], y[y >= 3])
    assert head.config.bandwidth == bandwidth
    assert (head.solve().predict(x) == y).float().mean() > 0.9
