"""The replay memory: budget, herding, Parquet round trip, class-balanced repetition, mixed into increments."""

from __future__ import annotations

import torch
from text_models import text_dataset, tiny_bert, tokenizer, training_args

from hf_incr import IncrementConfig, train_increment
from hf_incr.replay import ReplayMemory


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
    config = IncrementConfig(warmup_epochs=1, replay_per_label=2)
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


def test_balanced_repeat_evens_label_frequencies_up_to_a_cap():
    from hf_incr.replay import MAX_REPLAY_REPEAT, balanced_repeat

    memory = ReplayMemory([{"text": f"t{i}", "labels": [str(i % 7)]} for i in range(70)])  # 10 per old label
    assert balanced_repeat(memory, new_rows=30, num_new_labels=1) == 3
    assert balanced_repeat(memory, new_rows=400, num_new_labels=1) == MAX_REPLAY_REPEAT
    assert balanced_repeat(memory, new_rows=40, num_new_labels=8) == 1
    assert balanced_repeat(ReplayMemory(), new_rows=40, num_new_labels=1) == 1
