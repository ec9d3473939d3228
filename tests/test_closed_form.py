"""Closed-form heads from accumulated statistics: ridge and LDA, exact over increments, saved and continued."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from text_models import as_label_lists, text_dataset, tiny_bert, tokenizer, training_args
from torch import nn

from hf_incr import IncrementConfig, train_increment
from hf_incr.closed_form import RIDGE_FILENAME, RidgeStatistics


def _joint_ridge(x, y, lam):
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    solution = torch.linalg.solve(xb.T @ xb + lam * torch.eye(xb.shape[1], dtype=x.dtype), xb.T @ y)
    return solution[:-1].T, solution[-1]


def test_incremental_ridge_equals_joint_ridge():
    generator = torch.Generator().manual_seed(0)
    dim, sizes = 24, [(3, 40), (2, 30), (4, 50)]  # (new labels, rows) per increment
    stats = RidgeStatistics.empty(dim, 0)
    all_x, all_ids, seen = [], [], 0
    for new, rows in sizes:
        x = torch.randn(rows, dim, generator=generator, dtype=torch.float64)
        ids = torch.randint(seen, seen + new, (rows,), generator=generator)
        seen += new
        stats.grow(seen).update(x, F.one_hot(ids, seen).double())
        all_x.append(x)
        all_ids.append(ids)
    x, y = torch.cat(all_x), F.one_hot(torch.cat(all_ids), seen).double()
    w_inc, b_inc = stats.solve(0.5)
    w_joint, b_joint = _joint_ridge(x, y, 0.5)
    rel = ((w_inc - w_joint).norm() / w_joint.norm()).item()
    assert rel < 1e-6
    torch.testing.assert_close(b_inc, b_joint, rtol=1e-6, atol=1e-9)
    assert stats.count == sum(rows for _, rows in sizes)


def test_ridge_statistics_round_trip_through_safetensors(tmp_path):
    stats = RidgeStatistics.empty(4, 2).update(torch.randn(5, 4), torch.eye(2)[[0, 1, 0, 1, 1]])
    stats.save(tmp_path)
    loaded = RidgeStatistics.load(tmp_path)
    assert torch.equal(loaded.gram, stats.gram) and torch.equal(loaded.cross, stats.cross) and loaded.count == 5
    assert RidgeStatistics.load(tmp_path / "missing") is None


def test_closed_form_head_over_increments_saved_and_continued(tmp_path):
    tok = tokenizer()
    model = tiny_bert(["refund", "delivery"])
    config = IncrementConfig(closed_form_head=True, closed_form_solver="ridge", ridge_lambda=1.0, finetune_layers=0)
    first = train_increment(model, tok, text_dataset(["refund", "delivery"], 6), config=config,
                            args=training_args(tmp_path, output_dir=str(tmp_path / "a")), kind="increment")
    assert (tmp_path / "a" / RIDGE_FILENAME).is_file() and first.new_labels == []
    from transformers import AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a")
    train_increment(reloaded, tok, text_dataset(["login"], 6), config=config,
                    args=training_args(tmp_path, output_dir=str(tmp_path / "b")))
    stats = RidgeStatistics.load(tmp_path / "b")
    assert stats.count == 18 and stats.num_labels == 3
    # The head written into the model is the ridge solution over the statistics of all 18 rows.
    weight, bias = stats.solve(1.0)
    torch.testing.assert_close(reloaded.classifier.weight.double(), weight, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reloaded.classifier.bias.double(), bias, atol=1e-5, rtol=1e-4)


def test_lda_from_accumulated_statistics_matches_a_direct_fit():
    generator = torch.Generator().manual_seed(1)
    means = torch.randn(3, 5, generator=generator, dtype=torch.float64) * 3
    ids = torch.arange(60) % 3
    x = means[ids] + torch.randn(60, 5, generator=generator, dtype=torch.float64)
    stats = RidgeStatistics.empty(5, 0)
    for part in (slice(0, 20), slice(20, 60)):  # two increments; the second brings label 2 too
        stats.grow(3).update(x[part], F.one_hot(ids[part], 3).double())
    weight, bias = stats.solve_lda(shrinkage=0.0)
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


def test_lda_default_shrinkage_is_scikit_learns_oas_and_helps_with_fewer_rows_than_dimensions():
    from sklearn.covariance import oas

    from hf_incr.closed_form import oas_shrinkage

    generator = torch.Generator().manual_seed(2)
    dim, per_class, classes = 48, 6, 5  # 30 rows in 48 dimensions: the within-class covariance is singular
    means = torch.randn(classes, dim, generator=generator, dtype=torch.float64)

    def sample(n):
        ids = torch.arange(classes * n) % classes
        return means[ids] + 1.5 * torch.randn(classes * n, dim, generator=generator, dtype=torch.float64), ids

    x, ids = sample(per_class)
    stats = RidgeStatistics.empty(dim, classes).update(x, F.one_hot(ids, classes).double())
    centered = x - torch.stack([x[ids == c].mean(0) for c in range(classes)])[ids]
    _, expected = oas(centered.numpy(), assume_centered=True)
    shrinkage = oas_shrinkage(centered.T @ centered / (len(x) - classes), len(x))
    assert shrinkage == pytest.approx(expected, rel=1e-9) and 0 < shrinkage < 1
    torch.testing.assert_close(stats.solve_lda()[0], stats.solve_lda(shrinkage=shrinkage)[0])
    test_x, test_ids = sample(200)
    accuracy = {}
    for name, value in (("oas", None), ("none", 0.0)):
        weight, bias = stats.solve_lda(shrinkage=value)
        accuracy[name] = ((test_x @ weight.T + bias).argmax(1) == test_ids).double().mean().item()
    assert accuracy["oas"] > accuracy["none"] + 0.05, accuracy


def test_multi_label_ridge_head_decides_at_the_sigmoid_threshold():
    """A 0/1 ridge regression says "present" above 0.5; written as a multi-label head, its sigmoid must cross 0.5 at
    the same place. Written unmapped, absent labels (outputs near 0) came out present about half the time."""
    torch.manual_seed(0)
    centres = torch.randn(6, 16) * 3
    targets = (torch.rand(400, 6) < 0.25).double()
    x = targets.float() @ centres + 0.3 * torch.randn(400, 16)
    stats = RidgeStatistics.empty(16, 6).update(x, targets)
    weight, bias = stats.solve(1e-3)
    regression_says = (x.double() @ weight.T + bias) > 0.5

    mapped, unmapped = nn.Linear(16, 6), nn.Linear(16, 6)
    stats.write_into(mapped, 1e-3, "ridge", multi_label=True)
    stats.write_into(unmapped, 1e-3, "ridge")
    with torch.no_grad():
        predicted = torch.sigmoid(mapped(x)) > 0.5
        predicted_unmapped = torch.sigmoid(unmapped(x)) > 0.5
    assert (predicted == regression_says).float().mean() > 0.999
    assert (predicted == targets.bool()).float().mean() > 0.95
    assert (predicted_unmapped == targets.bool()).float().mean() < 0.8  # the bug this mapping fixes


# -- multi-label: each label against the rows without it, tuned thresholds, unannotated rows -------------------------


def _multi_label_rows(n: int, generator: torch.Generator, prevalence=(0.3, 0.2, 0.03), dim=12, scale=2.0):
    """Rows whose labels each shift the features along their own direction (label 2 is rare)."""
    centres = scale * torch.randn(len(prevalence), dim, generator=generator, dtype=torch.float64)
    targets = (torch.rand(n, len(prevalence), generator=generator) < torch.tensor(prevalence)).double()
    return targets @ centres + torch.randn(n, dim, generator=generator, dtype=torch.float64), targets


def test_binary_lda_is_each_labels_discriminant_against_the_rows_without_it():
    generator = torch.Generator().manual_seed(5)
    x, targets = _multi_label_rows(600, generator)
    stats = RidgeStatistics.empty(x.shape[1], 3).update(x, targets)
    weight, bias = stats.solve_binary_lda(shrinkage=0.0)
    for k in range(3):
        positive, negative = x[targets[:, k] == 1], x[targets[:, k] == 0]
        mu_p, mu_n = positive.mean(0), negative.mean(0)
        within = ((positive - mu_p).T @ (positive - mu_p) + (negative - mu_n).T @ (negative - mu_n)) / len(x)
        expected = torch.linalg.solve(within, mu_p - mu_n)
        share = len(positive) / len(x)
        torch.testing.assert_close(weight[k], expected, rtol=1e-6, atol=1e-8)
        expected_bias = -0.5 * expected @ (mu_p + mu_n) + torch.log(torch.tensor(share / (1 - share)))
        torch.testing.assert_close(bias[k], expected_bias.double(), rtol=1e-6, atol=1e-8)


def test_tuned_thresholds_make_a_rare_label_fire_and_fold_into_the_bias():
    # Labels that overlap (small shifts): a sigmoid's 0.5 then misses most rows of the rare label.
    x, targets = _multi_label_rows(3000, torch.Generator().manual_seed(6), scale=0.5)
    test_x, test_targets = x[1500:], targets[1500:]
    x, targets = x[:1500], targets[:1500]
    stats = RidgeStatistics.empty(x.shape[1], 3).update(x, targets)
    weight, bias = stats.solve_binary_lda()

    def f1(logits, k):
        predicted, actual = logits[:, k] > 0, test_targets[:, k] == 1
        true_positive = (predicted & actual).sum().item()
        return 2 * true_positive / (predicted.sum().item() + actual.sum().item())

    cuts = stats.decision_thresholds(weight, bias)
    assert cuts[2] < 0  # the rare label: predicted below posterior 0.5
    at_half, tuned = test_x @ weight.T + bias, test_x @ weight.T + bias - cuts
    assert f1(tuned, 2) > f1(at_half, 2) + 0.1
    # write_into folds the same thresholds into the bias; tuning the folded rows again moves nothing.
    linear = nn.Linear(x.shape[1], 3).double()
    folded = stats.write_into(linear, 1e-3, "lda", multi_label=True)
    assert list(folded) == [0, 1, 2]
    torch.testing.assert_close(torch.tensor(list(folded.values()), dtype=torch.float64), cuts)
    torch.testing.assert_close(linear.bias.detach(), bias - cuts)
    again = stats.decision_thresholds(linear.weight.detach(), linear.bias.detach())
    assert again.abs().max() < 0.05 * cuts.abs().max()


def test_a_separable_labels_threshold_sits_between_its_positive_and_negative_rows():
    # Far apart, every threshold in the gap gives F1 1.0 (in float64): the middle of that stretch is chosen, not its
    # first point just above the negatives (which the demo's data showed as a "probability 1e-21" threshold).
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(300, 4, generator=generator, dtype=torch.float64)
    targets = torch.zeros(300, 1, dtype=torch.float64)
    targets[:100, 0] = 1
    x[:100, 0] += 40.0
    stats = RidgeStatistics.empty(4, 1).update(x, targets)
    weight, bias = stats.solve_binary_lda()
    cut = float(stats.decision_thresholds(weight, bias)[0])
    logits = x @ weight.T + bias
    positive, negative = float(logits[:100].mean()), float(logits[100:].mean())
    assert abs(cut - (positive + negative) / 2) < 0.1 * (positive - negative), (cut, positive, negative)


def test_write_into_only_some_labels_leaves_the_other_rows_bit_for_bit():
    generator = torch.Generator().manual_seed(7)
    x, targets = _multi_label_rows(400, generator)
    stats = RidgeStatistics.empty(x.shape[1], 3).update(x, targets)
    linear = nn.Linear(x.shape[1], 3)
    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    thresholds = stats.write_into(linear, 1e-3, "lda", multi_label=True, labels=[2])
    assert list(thresholds) == [2]
    assert torch.equal(linear.weight[:2], weight[:2]) and torch.equal(linear.bias[:2], bias[:2])
    assert not torch.equal(linear.weight[2], weight[2])


def test_rows_that_do_not_annotate_a_label_are_neither_its_positives_nor_its_negatives(tmp_path):
    generator = torch.Generator().manual_seed(8)
    x, targets = _multi_label_rows(500, generator)
    first, second = slice(0, 300), slice(300, 500)
    # The second batch annotates only label 2: its label-0/1 columns are unknown (and given as 0).
    unknown = targets[second].clone()
    unknown[:, :2] = 0
    stats = RidgeStatistics.empty(x.shape[1], 3).update(x[first], targets[first])
    stats.add(RidgeStatistics.empty(x.shape[1], 3).update(x[second], unknown), annotated=[2])
    only_first = RidgeStatistics.empty(x.shape[1], 3).update(x[first], targets[first])
    count, total = stats.annotated_moments()
    first_count, first_total = only_first.annotated_moments()
    torch.testing.assert_close(count[:2], first_count[:2])
    torch.testing.assert_close(total[:2], first_total[:2])
    assert count[2] == 500  # label 2: every row annotates it
    # ... while every row describes the features' covariance, and the sums survive saving.
    assert stats.count == 500
    stats.save(tmp_path)
    loaded = RidgeStatistics.load(tmp_path)
    torch.testing.assert_close(loaded.unannotated, stats.unannotated)
    torch.testing.assert_close(loaded.solve_binary_lda()[0], stats.solve_binary_lda()[0])


OLD = ["refund", "delivery", "login"]


def _multi_label_base(tmp_path):
    model = tiny_bert(OLD, problem_type="multi_label_classification", seed=2)
    base = train_increment(model, tokenizer(), as_label_lists(text_dataset(OLD, 8)),
                           config=IncrementConfig(label_column="labels", finetune_layers=0),
                           args=training_args(tmp_path), save=False, kind="base")
    return model, base.ridge_statistics


def test_multi_label_increment_of_new_labels_keeps_old_rows_and_saves_its_thresholds(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model, statistics = _multi_label_base(tmp_path)
    assert set(model.config.hf_incr_lineage[-1]["thresholds"]) == set(OLD)  # the base tuned every label
    weight, bias = model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone()
    test = as_label_lists(text_dataset([*OLD, "repair"], 3, offset=30))
    batch = tokenizer()(list(test["text"]), padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).logits.clone()
    # Rows of the new label, half of them also carrying an old one (which 'new' annotation does not use).
    train = as_label_lists(text_dataset(["repair"], 8), extra="refund")
    with pytest.warns(UserWarning, match=r"rows carry old labels.*multi_label_annotation='all'"):
        result = train_increment(model, tokenizer(), train, config=IncrementConfig(label_column="labels"),
                                 args=training_args(tmp_path, output_dir=str(tmp_path / "v2")),
                                 ridge_statistics=statistics)
    assert torch.equal(model.classifier.weight[:3], weight) and torch.equal(model.classifier.bias[:3], bias)
    with torch.no_grad():
        after = model(**batch).logits
    assert torch.equal(after[:, :3] > 0, before > 0)
    assert list(result.record["thresholds"]) == ["repair"]
    # The statistics say no row of this increment annotated an old label.
    count, _ = result.ridge_statistics.annotated_moments()
    assert count.tolist() == [24.0, 24.0, 24.0, 32.0]
    # A plain transformers load applies the folded threshold: the same logits, no hf_incr needed.
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "v2").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, after)
    card = (tmp_path / "v2" / "README.md").read_text()
    assert "| Decides at |" in card and "`repair`" in card


def test_fully_annotated_multi_label_increment_refits_and_retunes_old_labels(tmp_path):
    model, statistics = _multi_label_base(tmp_path)
    weight = model.classifier.weight.detach().clone()
    train = as_label_lists(text_dataset(["repair", "refund"], 8), extra="refund")
    result = train_increment(model, tokenizer(), train,
                             config=IncrementConfig(label_column="labels", multi_label_annotation="all"),
                             args=training_args(tmp_path), save=False, ridge_statistics=statistics)
    assert not torch.equal(model.classifier.weight[:3], weight)
    assert set(result.record["thresholds"]) == {*OLD, "repair"}
    count, _ = result.ridge_statistics.annotated_moments()
    assert count.tolist() == [40.0] * 4


def test_multi_label_rows_without_a_new_label_under_new_annotation_are_refused(
    tmp_path, snapshot, assert_unchanged
):
    from hf_incr import DataError

    model, statistics = _multi_label_base(tmp_path)
    before = snapshot(model)
    with pytest.raises(DataError, match=r"brings no new label.*multi_label_annotation='all'"):
        train_increment(model, tokenizer(), as_label_lists(text_dataset(["refund"], 4)),
                        config=IncrementConfig(label_column="labels"), args=training_args(tmp_path), save=False,
                        ridge_statistics=statistics)
    assert_unchanged(model, before)
