"""The increment recipe: phases, what trains, label alignment, metrics, lineage, saving."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from text_models import text_dataset, tiny_bert, tokenizer, training_args
from transformers import AutoModelForSequenceClassification

import hf_incr.recipe
from hf_incr import DataError, IncrementConfig, add_labels, train_increment
from hf_incr.layers import parameter_depths
from hf_incr.lineage import LINEAGE_FILENAME, get_lineage

OLD = ["refund", "delivery", "login"]


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_cached_warmup_trains_only_the_output_linear(tmp_path, tok, monkeypatch):
    model = tiny_bert(OLD)
    before = _params(model)
    old_rows = model.classifier.weight.detach().clone()
    # The new row as the head grew (imprinted from its examples' cached features), before the warm-up trained it.
    grown = []

    def spy(model, new_labels, **kwargs):
        ids = add_labels(model, new_labels, **kwargs)
        grown.append(model.classifier.weight[ids].detach().clone())
        return ids

    monkeypatch.setattr(hf_incr.recipe, "add_labels", spy)
    # The gradient warm-up (head="trained"): the head is trained by gradient on the cached features.
    config = IncrementConfig(warmup_epochs=3, warmup_learning_rate=1e-2, finetune_layers=0, head="trained")
    result = train_increment(
        model, tok, text_dataset(["repair"], 8), text_dataset(OLD + ["repair"], 4, offset=50),
        config=config, args=training_args(tmp_path), save=False,
    )
    assert result.new_labels == ["repair"] and result.new_label_ids == [3]
    assert model.config.id2label[3] == "repair" and model.num_labels == 4
    after = _params(model)
    for name in before:
        if name.startswith("classifier."):
            continue
        assert torch.equal(before[name], after[name]), f"{name} trained in a frozen-encoder warm-up"
    assert model.classifier.weight.shape == (4, 32)
    [start] = grown
    assert start.shape == (1, 32) and not torch.equal(start[0], torch.zeros(32))  # imprinted, not zeros
    assert not torch.equal(model.classifier.weight[3], start[0]), "the new row did not train"
    assert not torch.equal(model.classifier.weight[:3], old_rows), "the old rows did not train"
    # The result is a normal model: every parameter trainable again.
    assert all(p.requires_grad for p in model.parameters())
    # Metrics: before = the old model on the old labels; after = all / old / new.
    for key in ("accuracy", "old_accuracy", "new_accuracy", "macro_f1"):
        assert 0.0 <= result.metrics_after[key] <= 1.0
    assert result.metrics_before["num_old"] == 12 and result.metrics_after["num_new"] == 4
    assert result.forgetting == pytest.approx(
        result.metrics_before["old_accuracy"] - result.metrics_after["old_accuracy"]
    )


def test_finetune_phase_trains_top_layers_with_layerwise_lr(tmp_path, tok):
    model = tiny_bert(OLD)
    before = _params(model)
    config = IncrementConfig(warmup_epochs=1, finetune_layers=1, finetune_epochs=2, finetune_learning_rate=1e-3,
                             head="trained", finetune_increments=True)
    train_increment(model, tok, text_dataset(["repair"], 8), config=config, args=training_args(tmp_path), save=False)
    after = _params(model)
    depths = parameter_depths(model)
    for name, depth in depths.items():
        changed = not torch.equal(before[name], after[name])
        if depth <= 1:  # embeddings and the lower block stay frozen
            assert not changed, name
    assert any(not torch.equal(before[n], after[n]) for n, d in depths.items() if d == 2)


def test_classlabel_in_another_order_and_string_labels_align(tmp_path, tok):
    model = tiny_bert(OLD)
    data = text_dataset(OLD + ["repair"], 4, class_label=True)
    config = IncrementConfig(warmup_epochs=1)
    result = train_increment(model, tok, data, config=config, args=training_args(tmp_path), save=False)
    assert result.new_labels == ["repair"]
    assert [model.config.id2label[i] for i in range(4)] == OLD + ["repair"]


def test_only_old_labels_continues_without_growing(tmp_path, tok):
    model = tiny_bert(OLD)
    result = train_increment(
        model, tok, text_dataset(OLD, 4), config=IncrementConfig(warmup_epochs=1), args=training_args(tmp_path),
        save=False,
    )
    assert result.new_labels == [] and model.config.num_labels == 3


def test_declared_new_labels_reject_other_unknown_labels(tmp_path, tok):
    model = tiny_bert(OLD)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DataError, match=r"\['colour'\].*not among `new_labels`"):
        train_increment(
            model, tok, text_dataset(["repair", "colour"], 2), config=IncrementConfig(new_labels=["repair"]),
            args=training_args(tmp_path), save=False,
        )
    assert model.config.num_labels == 3
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (Dataset.from_dict({"text": ["a", None], "label": ["repair", "repair"]}), r"no text .*rows \[1\]"),
        (Dataset.from_dict({"text": ["a", "b"]}), r"no label column 'label'.*columns are \['text'\]"),
        (Dataset.from_dict({"sentence": ["a"], "label": ["repair"]}), r"no text column 'text'"),
        (Dataset.from_dict({"text": [], "label": []}), r"empty"),
    ],
)
def test_bad_data_gets_a_clear_error_and_leaves_the_model(tmp_path, tok, data, message):
    model = tiny_bert(OLD)
    with pytest.raises(DataError, match=message):
        train_increment(model, tok, data, args=training_args(tmp_path), save=False)
    assert model.config.num_labels == 3 and model.classifier.out_features == 3


def test_multi_label_increment(tmp_path, tok):
    model = tiny_bert(OLD, problem_type="multi_label_classification")
    rows = {"text": [], "labels": []}
    for i, text in enumerate(text_dataset(["repair"], 8)["text"]):
        rows["text"].append(text)
        rows["labels"].append(["repair", "refund"] if i % 2 else ["repair"])
    for text in text_dataset(["refund"], 4)["text"]:  # rows without the new label: what it is told apart from
        rows["text"].append(text)
        rows["labels"].append(["refund"])
    eval_rows = {"text": text_dataset(OLD, 2, offset=30)["text"], "labels": [[n] for n in OLD for _ in range(2)]}
    config = IncrementConfig(label_column="labels", warmup_epochs=2)
    result = train_increment(
        model, tok, Dataset.from_dict(rows), Dataset.from_dict(eval_rows), config=config,
        args=training_args(tmp_path), save=False,
    )
    assert result.new_labels == ["repair"]
    assert model.config.problem_type == "multi_label_classification"
    assert {"micro_f1", "old_micro_f1", "new_micro_f1", "macro_f1"} <= set(result.metrics_after)


def test_single_label_model_refuses_list_labels(tmp_path, tok):
    model = tiny_bert(OLD)
    data = Dataset.from_dict({"text": ["a b", "c d"], "labels": [["repair"], ["refund"]]})
    with pytest.raises(DataError, match="single-label"):
        train_increment(model, tok, data, config=IncrementConfig(label_column="labels"), args=training_args(tmp_path))


def test_save_writes_lineage_that_survives_from_pretrained(tmp_path, tok):
    model = tiny_bert(OLD)
    args = training_args(tmp_path)
    result = train_increment(
        model, tok, text_dataset(["repair"], 6), text_dataset(OLD + ["repair"], 2, offset=40),
        config=IncrementConfig(warmup_epochs=1), args=args,
    )
    folder = tmp_path / "out"
    assert result.output_dir == str(folder)
    lineage = json.loads((folder / LINEAGE_FILENAME).read_text())
    assert len(lineage) == 1 and lineage[0]["labels_added"] == ["repair"] and lineage[0]["label_ids"] == [3]
    assert lineage[0]["recipe"]["warmup_epochs"] == 1
    assert set(lineage[0]["metrics"]["after"]) >= {"accuracy", "old_accuracy", "new_accuracy"}
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder)
    assert get_lineage(reloaded) == lineage
    assert reloaded.config.id2label[3] == "repair"
    # A second increment from the reloaded model extends the lineage.
    train_increment(
        reloaded, tok, text_dataset(["colour"], 6), config=IncrementConfig(warmup_epochs=1),
        args=training_args(tmp_path, output_dir=str(tmp_path / "out2")),
    )
    lineage2 = json.loads((tmp_path / "out2" / LINEAGE_FILENAME).read_text())
    assert [r["labels_added"] for r in lineage2] == [["repair"], ["colour"]]
    assert [r["increment"] for r in lineage2] == [0, 1]
    assert lineage2[1]["base_model"] == f"./{folder.name}"  # a local path never reaches the Hub
