"""The kernel LDA head at unit level (hf_incr.heads.kernel, hf_incr.heads.modeling_hf_incr_kernel): the bandwidth
rule, statistics over increments equal to the joint ones, multi-label per-label discriminants, the two files, the
fingerprint check, and heads of several members (earlier versions) still read and continued. The head wired into the
recipe is tested in test_kernel_attach.py."""

from __future__ import annotations

import shutil

import pytest
import torch
from tiny_models import gaussian_classes, relative_error

from hf_incr.errors import DataError, SavedStateError
from hf_incr.heads import ClassStatistics, KernelHead, LinearHead, PassRows
from hf_incr.heads.kernel import (
    KERNEL_FILENAME,
    KERNEL_STATISTICS_FILENAME,
    choose_bandwidth,
    draw_projection,
    fingerprint,
    smoothest_within_one_standard_error,
)
from hf_incr.heads.modeling_hf_incr_kernel import KernelConfig


def _config(**values) -> KernelConfig:
    # The unit tests' 5-dimensional rows are not normalised (the head's own default normalises pooled layers).
    return KernelConfig(**{"in_features": 5, "normalize": False, **values})


def _with_bandwidth(config: KernelConfig) -> KernelHead:
    """A head whose bandwidth is set already, its members' projections drawn and its statistics empty: what a head
    holds after its first increment chose the bandwidth (member i draws with seed ``seed + i``)."""
    projections = [None] if config.num_features == 0 else [
        draw_projection(config.in_features, config.num_features, config.bandwidth, config.seed + i)
        for i in range(config.num_members)]
    statistics = [ClassStatistics(config.num_features or config.in_features, config.multi_label) for _ in projections]
    return KernelHead(config, projections=projections, statistics=statistics)


def _pass(head: KernelHead, x, y, *, num_labels=None, annotated=None, batches=(None,)):
    """One increment's frozen pass into the head: ``x`` float32 in the given batches (slices of the rows)."""
    if num_labels is None:
        num_labels = y.shape[1] if head.config.multi_label else int(y.max()) + 1
    head.begin(PassRows(num_old=0, num_labels=num_labels, annotated=annotated, own=len(x), total=len(x)))
    for batch in batches:
        rows = torch.arange(len(x))[batch if batch is not None else slice(None)]
        head.add(rows.tolist(), x[rows].float(), y[rows])
    head.end()
    return head


# -- single-label ---------------------------------------------------------------------------------------------------


def test_random_feature_head_incremental_equals_joint():
    x, y = gaussian_classes()
    config = dict(num_features=64, num_members=2, bandwidth=3.0, seed=1)
    joint = _pass(_with_bandwidth(_config(**config)), x, y)
    incremental = _with_bandwidth(_config(**config))
    for labels in ((0, 1, 2), (3, 4, 5)):
        rows = torch.isin(y, torch.tensor(labels))
        _pass(incremental, x[rows], y[rows])
    for a, b in zip(incremental.statistics, joint.statistics):
        assert relative_error(a.scatter, b.scatter) <= 1e-10
    assert torch.allclose(incremental.solve_classifier()(x.float()), joint.solve_classifier()(x.float()), atol=1e-5)


def test_save_load_round_trip_and_inference_file_alone(tmp_path):
    x, y = gaussian_classes()
    head = KernelHead(_config(num_features=32, num_members=3, seed=2, labels=list("abcdef")))
    first = y < 3
    _pass(head, x[first], y[first])  # bandwidth set from these rows
    assert head.config.bandwidth > 0
    classifier = head.classifier = head.solve_classifier()
    head.save(tmp_path)
    alone_folder = tmp_path / "inference_only"
    alone_folder.mkdir()
    shutil.copy(tmp_path / KERNEL_FILENAME, alone_folder)
    alone = KernelHead.load_inference(alone_folder)  # no statistics file involved
    assert torch.equal(alone.classifier(x.float()), classifier(x.float()))
    assert alone.config.labels == list("abcdef")
    # Without its statistics file the head still answers, but cannot continue.
    inference_only = KernelHead.load(alone_folder)
    assert not inference_only.can_continue and torch.equal(inference_only.classifier(x.float()), classifier(x.float()))
    # continue the next increment from the two files: as continuing the head in memory (up to the file's float32
    # scatter)
    resumed = KernelHead.load(tmp_path)
    assert resumed.can_continue
    _pass(resumed, x[~first], y[~first])
    _pass(head, x[~first], y[~first])
    for a, b in zip(resumed.statistics, head.statistics):
        assert torch.equal(a.counts, b.counts) and torch.equal(a.sums, b.sums)
        assert relative_error(a.scatter, b.scatter) < 1e-6
    ours, theirs = resumed.solve_classifier()(x.float()), head.solve_classifier()(x.float())
    assert torch.equal(ours.argmax(1), theirs.argmax(1))
    assert relative_error(ours, theirs) < 1e-4


def test_a_head_without_random_features_loaded_from_its_float32_file_predicts_the_same(tmp_path):
    x, y = gaussian_classes()
    head = _pass(_with_bandwidth(_config(num_features=0, num_members=1)), x, y)
    head.save(tmp_path)
    assert KernelHead.load_inference(tmp_path).projections == [None]
    resumed = KernelHead.load(tmp_path)
    assert resumed.statistics[0].scatter.dtype == torch.float64  # accumulated in float64, saved in float32
    assert torch.equal(resumed.solve_classifier()(x.float()).argmax(1), head.solve_classifier()(x.float()).argmax(1))


def test_statistics_of_another_head_are_refused(tmp_path):
    x, y = gaussian_classes()
    for seed in (0, 1):
        (tmp_path / str(seed)).mkdir()
        _pass(_with_bandwidth(_config(num_features=16, num_members=1, bandwidth=2.0, seed=seed)), x, y).save(
            tmp_path / str(seed))
    shutil.copy(tmp_path / "1" / KERNEL_STATISTICS_FILENAME, tmp_path / "0" / KERNEL_STATISTICS_FILENAME)
    with pytest.raises(SavedStateError, match="another kernel LDA head"):
        KernelHead.load(tmp_path / "0")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / KERNEL_FILENAME).write_bytes(b"not a file")
    with pytest.raises(SavedStateError, match=r"hf_incr_kernel_lda\.safetensors"):
        KernelHead.load_inference(tmp_path / "bad")


def test_bad_shapes_raise_data_error():
    x, y = gaussian_classes()
    for features, labels, match in (
        (x[:, :4], y, r"expected features of shape \(rows, 5\).*Fix"),
        (x, y[:10], r"one label id per feature row \(72\).*Fix"),
        (x, y.float(), "integer"),
        (x, y - 1, r"label ids must lie in \[0"),
    ):
        head = KernelHead(_config(num_features=8, num_members=1))
        head.begin(PassRows(num_old=0, num_labels=6, annotated=None, own=72, total=72))
        with pytest.raises(DataError, match=match):
            # features are checked as they come; the first increment's labels where its bandwidth is chosen
            head.add(list(range(72)), features.float(), labels)
            head.end()
    head = _pass(KernelHead(_config(num_features=8, num_members=1)), x, y)
    with pytest.raises(ValueError, match=r"reads 5-dimensional pooled vectors, got shape \(72, 3\)"):
        head.solve_classifier()(x[:, :3].float())


def test_the_smoothest_factor_within_one_standard_error_is_chosen():
    # An easy first increment: the factors differ by a row or two, so the smoothest kernel is taken.
    assert smoothest_within_one_standard_error({0.5: 0, 1.0: 0, 2.0: 0}) == (2.0, 1.0)
    assert smoothest_within_one_standard_error({0.5: 1, 1.0: 1, 2.0: 2})[0] == 2.0
    # A clear difference is kept: 3 errors against 9 (allowed: 3 + 2 = 5).
    assert smoothest_within_one_standard_error({0.5: 3, 1.0: 4, 2.0: 9}) == (1.0, 5.0)
    assert smoothest_within_one_standard_error({0.5: 3, 1.0: 6, 2.0: 9})[0] == 0.5


def test_bandwidth_choice_with_one_row_per_label_takes_the_smoothest_factor():
    x, y = gaussian_classes(rows_per_label=1)
    config = _config(num_features=32, num_members=1, seed=0)
    _, report = choose_bandwidth(x, y, config, factors=(0.5, 1.0, 2.0))
    assert report["held_out_rows"] == 0 and report["chosen_factor"] == 2.0


def test_bandwidth_is_fixed_after_the_first_increment():
    x, y = gaussian_classes()
    config = _config(num_features=32, num_members=1, seed=0)
    bandwidth, report = choose_bandwidth(x[y < 3], y[y < 3], config, factors=(0.5, 1.0))
    assert report["chosen_factor"] in (0.5, 1.0) and bandwidth == config.bandwidth
    errors = {f: r["errors"] for f, r in report["factors"].items()}
    assert report["chosen_factor"] == smoothest_within_one_standard_error(errors)[0]
    assert all(r["accuracy"] == 1 - r["errors"] / report["held_out_rows"] for r in report["factors"].values())
    # A new head chooses its bandwidth on its first increment's rows (the rule above, over the default factors) ...
    head = _pass(KernelHead(_config(num_features=32, num_members=1, seed=0)), x[y < 3], y[y < 3])
    chosen = head.config.bandwidth
    assert chosen == choose_bandwidth(x[y < 3].float(), y[y < 3], _config(num_features=32, num_members=1, seed=0))[0]
    assert head.bandwidth_report["chosen_factor"] == head.config.bandwidth_factor
    # ... and keeps it in every later one.
    _pass(head, x[y >= 3], y[y >= 3])
    assert head.config.bandwidth == chosen
    assert (head.solve_classifier()(x.float()).argmax(1) == y).float().mean() > 0.9


def test_a_head_of_several_members_continues_from_its_files_exactly(tmp_path):
    # Each member must get its own counts when loaded: shared, the second member counted every later row twice.
    x, y = gaussian_classes()
    head = _pass(_with_bandwidth(_config(num_features=16, num_members=2, bandwidth=3.0)), x[:36], y[:36])
    head.save(tmp_path)
    continued = KernelHead.load(tmp_path)
    assert len(continued.statistics) == 2
    for part in (continued, head):
        _pass(part, x[36:], y[36:])
    for a, b in zip(continued.statistics, head.statistics):
        # the file keeps one triangle of the scatter, in float32
        assert torch.equal(a.counts, b.counts) and relative_error(a.scatter, b.scatter) < 1e-6


# -- multi-label ----------------------------------------------------------------------------------------------------


def _multi_label_data(rows=60, labels=4, dim=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    y = (torch.rand(rows, labels, generator=generator) < 0.35).double()
    directions = torch.randn(labels, dim, generator=generator, dtype=torch.float64) * 2
    x = y @ directions + torch.randn(rows, dim, generator=generator, dtype=torch.float64)
    return x, y


def test_multi_label_statistics_equal_the_closed_form_heads_per_label_discriminants():
    x, y = _multi_label_data()
    # Two increments: labels 0-1 on the first 30 rows, then labels 2-3 added on the next 30 rows, which annotate only
    # the new labels (their old labels' targets are 0 and unknown), in uneven batches.
    first, second = y[:30, :2], y[30:].clone()
    second[:, :2] = 0.0
    head = KernelHead(_config(num_features=0, num_members=1, multi_label=True))
    _pass(head, x[:30], first, batches=(slice(0, 17), slice(17, 30)))
    _pass(head, x[30:], second, annotated=[2, 3], batches=(slice(0, 21), slice(21, 30)))
    linear = LinearHead(ClassStatistics(5, multi_label=True))
    for rows, targets, annotated, num_old in ((slice(0, 30), first, None, 0), (slice(30, 60), second, [2, 3], 2)):
        linear.begin(PassRows(num_old=num_old, num_labels=targets.shape[1], annotated=annotated, own=30, total=30))
        linear.add(list(range(30)), x[rows].float(), targets)
        linear.end()
    stats = head.statistics[0]
    mine, theirs = stats.moments(), linear.statistics.moments()
    assert torch.equal(mine.positives, theirs.positives) and torch.equal(mine.negatives, theirs.negatives)
    assert mine.negatives.tolist() == [30 - y[:30, 0].sum().item(), 30 - y[:30, 1].sum().item(),
                                       60 - y[30:, 2].sum().item(), 60 - y[30:, 3].sum().item()]
    for a, b in ((mine.covariance, theirs.covariance), (mine.positive_mean, theirs.positive_mean),
                 (mine.negative_mean, theirs.negative_mean)):
        assert relative_error(a, b) < 1e-12
    classifier = head.solve_classifier()
    weight, bias, _ = linear.solution()  # the thresholds folded into the bias
    assert relative_error(classifier.weights[0].double(), weight) < 1e-6
    assert relative_error(classifier.biases[0].double(), bias) < 1e-6
    assert sorted(head.thresholds) == [0, 1, 2, 3]
    # The solved decisions separate the labels on these rows well (sigmoid > 0.5 applies the thresholds).
    predicted = classifier(x.float()) > 0
    assert predicted.dtype == torch.bool and float((predicted == y.bool()).double().mean()) > 0.85


def test_multi_label_rows_of_labels_not_annotated_stay_bit_for_bit():
    x, y = _multi_label_data(rows=80)
    head = _with_bandwidth(_config(num_features=32, num_members=2, bandwidth=3.0, multi_label=True))
    _pass(head, x[:40], y[:40, :3])
    before = head.solve_classifier()
    later = y[40:].clone()
    later[:, :3] = 0.0
    _pass(head, x[40:], later, annotated=[3])
    after = head.solve_classifier(before, labels=[3])
    for old, new in zip(before.weights + before.biases, after.weights + after.biases):
        assert torch.equal(new[:3], old[:3])
    assert list(head.thresholds) == [3]
    assert torch.equal((after(x.float()) > 0)[:, :3], before(x.float()) > 0)
    # Without `labels` every row is solved again (a fully annotated increment), so old rows may move.
    assert not torch.equal(head.solve_classifier().weights[0][:3], before.weights[0][:3])


def test_multi_label_members_average_probabilities_and_one_member_keeps_its_logits():
    x, y = _multi_label_data()
    one, two = (_pass(_with_bandwidth(_config(num_features=16, num_members=members, bandwidth=3.0, multi_label=True)),
                      x, y) for members in (1, 2))
    single, pair = one.solve_classifier(), two.solve_classifier()
    assert torch.equal(single(x.float()), single.member_logits(x.float())[0])
    members = pair.member_logits(x.float())
    expected = torch.logit((torch.sigmoid(members[0].double()) + torch.sigmoid(members[1].double())) / 2)
    torch.testing.assert_close(pair(x.float()).double(), expected, rtol=1e-5, atol=1e-5)


def test_multi_label_head_files_round_trip_and_continue(tmp_path):
    x, y = _multi_label_data(rows=80)
    head = _with_bandwidth(_config(num_features=24, num_members=2, bandwidth=2.5, multi_label=True,
                                   labels=["a", "b", "c", "d"]))
    _pass(head, x[:50], y[:50])
    classifier = head.classifier = head.solve_classifier()
    head.save(tmp_path)
    loaded = KernelHead.load_inference(tmp_path)
    assert loaded.config.multi_label
    assert torch.equal(loaded.classifier(x.float()), classifier(x.float()))
    continued = KernelHead.load(tmp_path, multi_label=True)
    _pass(continued, x[50:], y[50:])
    _pass(head, x[50:], y[50:])
    for a, b in zip(continued.statistics, head.statistics):
        for name in ("counts", "sums", "annotated_counts", "annotated_sums", "row_count", "row_sum"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert relative_error(a.scatter, b.scatter) < 1e-6  # saved in float32
    ours, theirs = continued.solve_classifier()(x.float()), head.solve_classifier()(x.float())
    assert torch.equal(ours > 0, theirs > 0)
    assert relative_error(ours, theirs) < 1e-4
    # A single-label file keeps its fingerprint: `multi_label` enters it only when set.
    single = _config(num_features=24, num_members=1, bandwidth=2.5)
    assert "multi_label" in single.to_dict() and not single.to_dict()["multi_label"]
    projection = [draw_projection(5, 24, 2.5, 0)]
    assert fingerprint(single, projection) != fingerprint(_config(num_features=24, num_members=1, bandwidth=2.5,
                                                                  multi_label=True), projection)


def test_multi_label_targets_must_be_a_matrix():
    head = KernelHead(_config(num_features=0, num_members=1, multi_label=True))
    head.begin(PassRows(num_old=0, num_labels=2, annotated=None, own=3, total=3))
    with pytest.raises(DataError, match=r"expected a multi-hot matrix of shape \(rows=3, labels\)"):
        head.add([0, 1, 2], torch.zeros(3, 5), torch.tensor([0, 1, 0]))
