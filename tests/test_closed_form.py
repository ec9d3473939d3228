"""Closed-form heads from accumulated statistics: ridge and LDA, exact over increments, saved and continued."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from text_models import text_dataset, tiny_bert, tokenizer, training_args
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


def test_lda_solver_is_refused_for_multi_label(tmp_path):
    from hf_incr import ConfigError

    model = tiny_bert(["a", "b"], problem_type="multi_label_classification")
    config = IncrementConfig(closed_form_head=True, closed_form_solver="lda", finetune_layers=0, label_column="labels")
    from datasets import Dataset

    data = Dataset.from_dict({"text": ["x y", "z w"], "labels": [["a"], ["b"]]})
    with pytest.raises(ConfigError, match="single-label"):
        train_increment(model, tokenizer(), data, config=config, args=training_args(tmp_path), save=False)
    assert model.config.num_labels == 2


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
