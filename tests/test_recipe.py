"""The recipe's path for a classifier hf_incr did not train (no saved statistics): its trained rows are kept, the
new rows are fitted beside them, and the statistics saved make the next increment continue the same way."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from datasets import concatenate_datasets
from text_models import as_label_lists, text_dataset, tiny_bert, tokenizer, training_args
from transformers import AutoModelForSequenceClassification

import hf_incr
from hf_incr import IncrementConfig, train_increment
from hf_incr.heads import LinearHead

OLD = ["refund", "delivery", "login"]


def _head(model) -> tuple[torch.Tensor, torch.Tensor]:
    linear = hf_incr.find_classifier_head(model).linear
    return linear.weight.detach().clone(), linear.bias.detach().clone()


def test_new_rows_only_keep_every_trained_row_bit_for_bit_and_save_kept_statistics(tmp_path):
    model = tiny_bert(OLD, seed=3)
    weight, bias = _head(model)
    with pytest.warns(UserWarning, match="no saved statistics.*kept bit for bit"):
        result = train_increment(model, tokenizer(), text_dataset(["repair"], 6), config=IncrementConfig(),
                                 args=training_args(tmp_path, output_dir=str(tmp_path / "v2")))
    grown_weight, grown_bias = _head(model)
    assert torch.equal(grown_weight[:3], weight) and torch.equal(grown_bias[:3], bias)
    assert grown_weight[3].abs().sum() > 0 and "new_rows_s" in result.timings
    assert "warmup" not in result.train_metrics and "closed_form_s" not in result.timings
    stats = LinearHead.load(tmp_path / "v2", multi_label=False)
    assert stats.statistics.num_rows == 6 and stats.num_labels == 4 and stats.kept.tolist() == [True] * 4

    # The next increment of the saved model continues on the same path: every row it has stays.
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "v2")
    before_weight, before_bias = _head(reloaded)
    again = train_increment(reloaded, tokenizer(), text_dataset(["colour"], 6), config=IncrementConfig(),
                            args=training_args(tmp_path, output_dir=str(tmp_path / "v3")))
    after_weight, after_bias = _head(reloaded)
    assert again.new_labels == ["colour"]
    assert torch.equal(after_weight[:4], before_weight) and torch.equal(after_bias[:4], before_bias)
    stats = LinearHead.load(tmp_path / "v3", multi_label=False)
    assert stats.statistics.num_rows == 12 and stats.kept.tolist() == [True] * 5


def test_the_new_label_is_learned_beside_the_kept_rows(tmp_path):
    # A base that really separates its labels: the closed-form head of a tiny encoder, saved without statistics.
    model = tiny_bert(OLD, seed=1)
    train_increment(model, tokenizer(), text_dataset(OLD, 8), config=IncrementConfig(finetune_layers=0),
                    args=training_args(tmp_path), save=False, kind="base")
    test = text_dataset([*OLD, "repair"], 4, offset=40)
    # The kept rows' Linear (`head=linear`); the layer LDA beside them is tested in test_heads_beside_kept.py (8 rows
    # of one new label are too few for its gate: it sent 11 of 12 old texts to the new label here).
    with pytest.warns(UserWarning, match="no saved statistics"):
        result = train_increment(model, tokenizer(), text_dataset(["repair"], 8), test,
                                 config=IncrementConfig(head="linear"), args=training_args(tmp_path), save=False)
    # Chance among 4 labels is 0.25; BANKING77-sized figures are in docs/benchmarks.md.
    assert result.metrics_after["new_accuracy"] > 0.25
    # Kept rows, no calibration possible: not the collapse to 0 that training the head on new rows alone gives.
    assert result.metrics_after["old_accuracy"] > 0.25


def test_multi_label_old_predictions_stay_bit_for_bit(tmp_path):
    model = tiny_bert(OLD, problem_type="multi_label_classification", seed=2)
    test = text_dataset([*OLD, "repair"], 3, offset=30).map(lambda row: {"labels": [row["label"]]})
    test = test.remove_columns("label")
    batch = tokenizer()(list(test["text"]), padding=True, return_tensors="pt")
    before = model(**batch).logits.detach().clone()
    train = text_dataset(["repair", "refund"], 6).map(lambda row: {"labels": [row["label"]]}).remove_columns("label")
    train_increment(model, tokenizer(), train, config=IncrementConfig(label_column="labels"),
                    args=training_args(tmp_path), save=False)
    after = model(**batch).logits.detach()
    assert after.shape[1] == 4
    # The old rows are the same tensors: the old labels' decisions are identical, their logits equal up to the last
    # float32 bits of a matmul four outputs wide instead of three.
    assert torch.equal(after[:, :3] > 0, before > 0)
    torch.testing.assert_close(after[:, :3], before, rtol=0, atol=1e-6)


def test_rows_of_every_label_and_nothing_new_replace_a_worse_head_and_hand_over_to_the_closed_form(tmp_path):
    # A random head is a worse summary of the labels than a refit on their rows: the held-out check picks the refit,
    # nothing is marked kept, and the next increment solves the head in closed form.
    model = tiny_bert(OLD, seed=4)
    config = IncrementConfig()
    first = train_increment(model, tokenizer(), text_dataset(OLD, 8), config=config,
                            args=training_args(tmp_path), save=False)
    assert first.new_labels == [] and first.heads["linear"].kept.tolist() == [False] * 3
    second = train_increment(model, tokenizer(), text_dataset(["repair"], 8), config=config,
                             args=training_args(tmp_path), save=False, heads=first.heads)
    assert "closed_form_s" in second.timings and "new_rows_s" not in second.timings
    weight, _, _ = second.heads["linear"].solution()
    torch.testing.assert_close(model.classifier.weight.double(), weight, atol=1e-5, rtol=1e-4)


def test_multi_label_new_label_on_every_row_is_refused_without_statistics(tmp_path, snapshot, assert_unchanged):
    from hf_incr import DataError

    model = tiny_bert(OLD, problem_type="multi_label_classification", seed=2)
    before = snapshot(model)
    only_new = text_dataset(["repair"], 6).map(lambda row: {"labels": [row["label"]]}).remove_columns("label")
    with pytest.raises(DataError, match=r"carried by every row.*Add rows that do not carry them"):
        train_increment(model, tokenizer(), only_new, config=IncrementConfig(label_column="labels"),
                        args=training_args(tmp_path), save=False)
    assert_unchanged(model, before)


def test_multi_label_new_rows_beside_kept_ones_get_a_tuned_threshold(tmp_path):
    model = tiny_bert(OLD, problem_type="multi_label_classification", seed=2)
    train = text_dataset(["repair", "refund"], 6).map(lambda row: {"labels": [row["label"]]}).remove_columns("label")
    # The warning says what happens to a multi-label model's old labels (nothing) and how to decide the new ones.
    advice = r"kept bit for bit, so their predictions do not change.*`head=kernel` \(`kernel_features=5000`\)"
    with pytest.warns(UserWarning, match=advice):
        result = train_increment(model, tokenizer(), train, config=IncrementConfig(label_column="labels",
                                                                                    head="linear"),
                                 args=training_args(tmp_path), save=False)
    assert result.record["head_rows"] == "kept" and list(result.record["thresholds"]) == ["repair"]


def test_multi_label_rows_that_all_carry_new_labels_are_warned_about_and_texts_without_them_are_negatives(
        tmp_path):
    model = tiny_bert(OLD, problem_type="multi_label_classification", seed=2)
    train = as_label_lists(text_dataset(["repair", "colour"], 6))
    advice = r"Every row of this increment carries one of the new labels.*an empty label list `\[\]`"
    with pytest.warns(UserWarning, match=advice):
        alone = train_increment(copy.deepcopy(model), tokenizer(), train,
                                config=IncrementConfig(label_column="labels"), args=training_args(tmp_path),
                                save=False)
    # Texts that carry none of the new labels ([] or only old labels) are the new labels' negatives: no warning,
    # and the new labels' thresholds are chosen against them too.
    none = text_dataset(OLD, 2, offset=20).map(lambda row: {"labels": []}).remove_columns("label")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train_increment(model, tokenizer(), concatenate_datasets([train, none.cast(train.features)]),
                                 config=IncrementConfig(label_column="labels"), args=training_args(tmp_path),
                                 save=False)
    assert not [w for w in caught if "Every row of this increment" in str(w.message)]
    assert result.record["head_rows"] == "kept" and sorted(result.record["thresholds"]) == ["colour", "repair"]
    assert result.record["thresholds"] != alone.record["thresholds"]


def _encoder(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.bert.named_parameters()}


def test_rows_of_every_old_label_adapt_the_encoder_and_hand_over_to_the_closed_form(tmp_path):
    # The user's full data (every old label as many rows as the new one): the encoder is fine-tuned once and the head
    # solved from its statistics, which cover every label: the model is then an hf_incr model.
    model = tiny_bert(OLD, seed=5)
    encoder = _encoder(model)
    config = IncrementConfig(adapt_learning_rate=1e-3)
    result = train_increment(model, tokenizer(), text_dataset([*OLD, "repair"], 8), config=config,
                             args=training_args(tmp_path, output_dir=str(tmp_path / "v2")))
    assert result.record["head_rows"] == "adapted" and result.record["adaptation"]["kept"] is False
    assert "adapt_s" in result.timings and "adapt" in result.train_metrics
    assert any(not torch.equal(encoder[n], p) for n, p in model.bert.named_parameters())
    stats = LinearHead.load(tmp_path / "v2", multi_label=False)
    assert stats.statistics.num_rows == 32 and stats.kept.tolist() == [False] * 4
    assert "| encoder adapted, then solved |" in (tmp_path / "v2" / "README.md").read_text()
    # The head is the closed-form solution of the adapted encoder's statistics (written in float32).
    weight, _, _ = stats.solution()
    torch.testing.assert_close(model.classifier.weight.double(), weight, atol=1e-5, rtol=1e-4)
    # Every weight is trainable again as the caller had it, and the next increment takes the closed-form path.
    assert all(p.requires_grad for p in model.parameters())
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "v2")
    again = train_increment(reloaded, tokenizer(), text_dataset(["colour"], 8), config=config,
                            args=training_args(tmp_path, output_dir=str(tmp_path / "v3")))
    assert again.record["head_rows"] == "solved" and "adapt_s" not in again.timings


def test_adapting_that_does_worse_on_the_eval_data_is_undone(tmp_path):
    # A base whose trained head separates its labels, then an adaptation at a learning rate that wrecks the encoder:
    # the eval check restores every weight, and the increment ends as if it had kept the trained rows.
    model = tiny_bert(OLD, seed=1, dropout=0.0)
    train_increment(model, tokenizer(), text_dataset(OLD, 8), config=IncrementConfig(finetune_layers=0, head="linear"),
                    args=training_args(tmp_path), save=False, kind="base")
    kept_model = copy.deepcopy(model)
    data, test = text_dataset([*OLD, "repair"], 8), text_dataset([*OLD, "repair"], 4, offset=40)
    kept = train_increment(kept_model, tokenizer(), data, test,
                           config=IncrementConfig(adapt_trained_elsewhere=False, head="linear"),
                           args=training_args(tmp_path), save=False)
    assert kept.record["head_rows"] in ("kept", "refitted") and "adaptation" not in kept.record
    result = train_increment(model, tokenizer(), data, test,
                             config=IncrementConfig(adapt_learning_rate=50.0, head="linear"),
                             args=training_args(tmp_path), save=False)
    adaptation = result.record["adaptation"]
    assert adaptation["kept"] is True and result.record["head_rows"] == kept.record["head_rows"]
    assert adaptation["eval_adapted"]["accuracy"] < adaptation["eval_kept_rows"]["accuracy"]
    for (name, param), (_, reference) in zip(model.named_parameters(), kept_model.named_parameters(), strict=True):
        assert torch.equal(param, reference), name
    assert result.metrics_after == kept.metrics_after
    assert result.heads["linear"].kept.tolist() == kept.heads["linear"].kept.tolist()


def test_a_few_rows_per_old_label_do_not_adapt_the_encoder(tmp_path):
    model = tiny_bert(OLD, seed=5)
    encoder = _encoder(model)
    data = concatenate_datasets([text_dataset(OLD, 2), text_dataset(["repair"], 8)])
    result = train_increment(model, tokenizer(), data, config=IncrementConfig(), args=training_args(tmp_path),
                             save=False)
    assert "adaptation" not in result.record and "new_rows_s" in result.timings
    assert all(torch.equal(encoder[n], p) for n, p in model.bert.named_parameters())
