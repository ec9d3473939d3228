"""Forgetting controls: the exact closed-form head, the replay memory, distillation, weight aligning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from text_models import text_dataset, tiny_bert, tokenizer, training_args
from torch import nn

from hf_incr import IncrementConfig, align_weights, train_increment
from hf_incr.closed_form import RIDGE_FILENAME, RidgeStatistics
from hf_incr.losses import distillation_loss
from hf_incr.replay import ReplayMemory


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


def test_replay_memory_budget_selection_and_parquet_round_trip(tmp_path):
    texts = [f"text {i}" for i in range(30)]
    labels = [["a"]] * 10 + [["b"]] * 10 + [["a", "b"]] * 10
    features = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    memory = ReplayMemory().update(texts, labels, budget=3, features=features, selection="herding")
    assert memory.labels() == ["a", "b"]
    counts = {name: sum(name in row["labels"] for row in memory.rows) for name in ("a", "b")}
    assert 3 <= counts["a"] <= 6 and 3 <= counts["b"] <= 6 and len(memory) <= 6
    # Labels already held are not re-sampled by a later increment.
    memory.update(["x1", "x2", "more a"], [["c"], ["c"], ["a"]], budget=3, selection="random")
    assert sum("c" in row["labels"] for row in memory.rows) == 2
    assert not any(row["text"] == "more a" for row in memory.rows)
    memory.save(tmp_path)
    assert (tmp_path / "replay_memory" / "memory.parquet").is_file()
    assert ReplayMemory.load(tmp_path).rows == memory.rows


def test_herding_picks_the_example_closest_to_the_mean_first():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    memory = ReplayMemory().update(["left", "up", "middle"], [["a"]] * 3, budget=1, features=features)
    assert [row["text"] for row in memory.rows] == ["middle"]


def test_replay_memory_is_saved_and_mixed_into_the_next_increment(tmp_path):
    tok = tokenizer()
    model = tiny_bert(["refund", "delivery"])
    config = IncrementConfig(warmup_epochs=1, replay_per_label=2, replay_selection="random")
    train_increment(model, tok, text_dataset(["refund", "delivery"], 6), config=config,
                    args=training_args(tmp_path, output_dir=str(tmp_path / "a")))
    assert len(ReplayMemory.load(tmp_path / "a")) == 4
    from transformers import AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a")
    result = train_increment(reloaded, tok, text_dataset(["login"], 6), config=config,
                             args=training_args(tmp_path, output_dir=str(tmp_path / "b")))
    # Class-balanced replay: 2 stored rows per old label beside 6 rows of the new label -> the memory 3 times.
    assert result.record["metrics"]["replayed_examples"] == 12
    assert ReplayMemory.load(tmp_path / "b").labels() == ["delivery", "login", "refund"]


def test_distillation_loss_values():
    teacher = torch.tensor([[2.0, 0.0]])
    assert distillation_loss(teacher.clone(), teacher, multi_label=False).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.tensor([[0.0, 2.0]])
    t = 2.0
    p, q = F.softmax(teacher / t, -1), F.softmax(student / t, -1)
    expected = (p * (p.log() - q.log())).sum() * t * t
    assert distillation_loss(student, teacher, multi_label=False, temperature=t).item() == pytest.approx(
        expected.item()
    )
    multi = distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), multi_label=True).item()
    assert multi == pytest.approx(math.log(2))


def test_distillation_keeps_old_outputs_closer(tmp_path):
    """Training on new data only, the old labels' logits drift less with distillation than without."""
    tok = tokenizer()
    probe = tok(list(text_dataset(["refund", "delivery"], 4, offset=20)["text"]), padding=True, return_tensors="pt")
    drifts = {}
    for weight in (0.0, 5.0):
        model = tiny_bert(["refund", "delivery"], dropout=0.0)
        with torch.no_grad():
            before = model(**probe).logits
        config = IncrementConfig(warmup_epochs=0, finetune_layers=-1, finetune_epochs=3, finetune_learning_rate=3e-3,
                                 closed_form_head=False, finetune_increments=True,
                                 distill_weight=weight, init="zeros", replay_per_label=0, weight_align=False)
        train_increment(model, tok, text_dataset(["login"], 8), config=config, args=training_args(tmp_path),
                        save=False)
        with torch.no_grad():
            after = model(**probe).logits[:, :2]
        drifts[weight] = (F.softmax(after, -1) - F.softmax(before, -1)).abs().mean().item()
    assert drifts[5.0] < drifts[0.0]


def test_align_weights_rescales_new_rows_to_the_old_mean_norm():
    model = tiny_bert(["a", "b", "c"])
    with torch.no_grad():
        model.classifier.weight[2] *= 10
    factor = align_weights(model, [2])
    norms = model.classifier.weight.detach().norm(dim=1)
    assert norms[2].item() == pytest.approx(norms[:2].mean().item(), rel=1e-5)
    assert factor < 1


def test_balanced_repeat_evens_label_frequencies_up_to_a_cap():
    from hf_incr.replay import MAX_REPLAY_REPEAT, balanced_repeat

    memory = ReplayMemory([{"text": f"t{i}", "labels": [str(i % 7)]} for i in range(70)])  # 10 per old label
    assert balanced_repeat(memory, new_rows=30, num_new_labels=1) == 3
    assert balanced_repeat(memory, new_rows=400, num_new_labels=1) == MAX_REPLAY_REPEAT
    assert balanced_repeat(memory, new_rows=40, num_new_labels=8) == 1
    assert balanced_repeat(ReplayMemory(), new_rows=40, num_new_labels=1) == 1


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
