"""The random-feature (RanPAC) closed-form head and first-session adaptation (fine-tune the base only, then frozen
closed-form increments)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from text_models import text_dataset, tiny_bert, tokenizer, training_args
from transformers import AutoModelForSequenceClassification

import hf_incr
from hf_incr import ConfigError, HeadConfigMismatchError, IncrementConfig, train_base_classifier, train_increment
from hf_incr.closed_form import RIDGE_FILENAME, RidgeStatistics
from hf_incr.features import extract_head_inputs
from hf_incr.loading import load_statistics
from hf_incr.random_features import (
    RANDOM_FEATURES_FILENAME,
    RandomFeatureHead,
    attach_random_feature_head,
    attached_random_feature_head,
    detach_random_feature_head,
)


def test_random_feature_head_incremental_equals_joint():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(120, 16, generator=generator)
    ids = torch.cat([torch.randint(0, 3, (50,), generator=generator), torch.randint(3, 5, (70,), generator=generator)])
    incremental = RandomFeatureHead.new(16, 64, 3, seed=1)
    incremental.update(x[:50], F.one_hot(ids[:50], 3).double(), batch_size=7)
    incremental.grow(5).update(x[50:], F.one_hot(ids[50:], 5).double(), batch_size=7).solve(1e-3)
    joint = RandomFeatureHead.new(16, 64, 5, seed=1)
    joint.update(x, F.one_hot(ids, 5).double()).solve(1e-3)
    assert torch.equal(incremental.projection, joint.projection)
    rel = ((incremental.gram - joint.gram).norm() / joint.gram.norm()).item()
    assert rel < 1e-10
    torch.testing.assert_close(incremental.linear.weight, joint.linear.weight, rtol=1e-5, atol=1e-6)
    assert incremental.count == 120
    # More capacity than a linear ridge head on the same rows (random labels: only capacity separates them).
    linear = RidgeStatistics.empty(16, 5).update(x, F.one_hot(ids, 5).double())
    weight, bias = linear.solve(1e-3)
    linear_fit = ((x.double() @ weight.T + bias).argmax(1) == ids).float().mean()
    assert (incremental(x).argmax(1) == ids).float().mean() > linear_fit + 0.1


def test_attach_changes_logits_not_state_dict_and_detach_restores(tmp_path):
    model = tiny_bert(["a", "b"])
    batch = tokenizer()(["please help with refund"], return_tensors="pt")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(**batch).logits
    head = RandomFeatureHead.new(32, 40, 2)
    torch.nn.init.normal_(head.linear.weight)
    attach_random_feature_head(model, head)
    with torch.no_grad():
        expanded = model(**batch).logits
        pooled = model.bert(**batch).pooler_output
    torch.testing.assert_close(expanded, head(pooled))
    assert not torch.allclose(expanded, plain)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert attached_random_feature_head(model) is head
    assert detach_random_feature_head(model) is head and attached_random_feature_head(model) is None
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, plain)

    # add_labels replaces the output Linear: the stale random-feature head goes with the old module, and the grown
    # model answers with its own (plain) head until train_increment refits the random-feature head.
    attach_random_feature_head(model, head)
    hf_incr.add_labels(model, ["c"])
    assert attached_random_feature_head(model) is None
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits[:, :2], plain)
    # A head grown in place behind the hook's back is caught at the next forward pass.
    attach_random_feature_head(model, RandomFeatureHead.new(32, 40, 2))
    with pytest.raises(HeadConfigMismatchError, match="train_increment"):
        model(**batch)


def test_closed_form_increments_with_random_features_save_and_load(tmp_path):
    tok = tokenizer()
    config = IncrementConfig(closed_form_head=True, random_features=64, finetune_layers=0, replay_per_label=0,
                             distill_weight=0.0)
    model = tiny_bert(["refund", "delivery"])
    base = train_increment(model, tok, text_dataset(["refund", "delivery"], 6), config=config,
                           args=training_args(tmp_path, output_dir=str(tmp_path / "a")), kind="base")
    assert base.ridge_statistics.random_features is not None
    reloaded = hf_incr.load_model(str(tmp_path / "a"))
    assert attached_random_feature_head(reloaded) is not None
    test = text_dataset(["refund", "delivery", "login"], 3, offset=50)
    result = train_increment(reloaded, tok, text_dataset(["login"], 6), test, config=config,
                             args=training_args(tmp_path, output_dir=str(tmp_path / "b")))
    folder = tmp_path / "b"
    assert (folder / RANDOM_FEATURES_FILENAME).is_file() and (folder / RIDGE_FILENAME).is_file()
    card = (folder / "README.md").read_text()
    assert "This model has a random-feature head** (64 random" in card and "hf_incr.load_model(" in card
    stats = load_statistics(folder)
    assert stats.count == 18 and stats.random_features.count == 18 and stats.random_features.num_labels == 3
    # The "before" metrics came from the model as loaded, random-feature head included.
    assert result.metrics_before["old_accuracy"] is not None and "accuracy" in result.metrics_after

    batch = tok(["please help with password number 3", "please help with parcel number 1"], return_tensors="pt",
                padding=True)
    with torch.no_grad():
        in_memory = reloaded(**batch).logits
        from_hf_incr = hf_incr.load_model(str(folder))(**batch).logits
        plain_model, loading = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
        plain = plain_model(**batch).logits
        pooled = plain_model.bert(**batch).pooler_output
    torch.testing.assert_close(from_hf_incr, in_memory, rtol=1e-5, atol=1e-5)
    # Plain transformers loads every weight and serves the linear closed-form head (the model's own Linear).
    assert not any(loading.values()), loading
    torch.testing.assert_close(plain, plain_model.classifier(pooled))
    # The random-feature head is the ridge solution over the statistics of all 18 rows.
    weight = torch.linalg.solve(
        stats.random_features.gram + 1e-3 * stats.random_features.gram.diagonal().mean()
        * torch.eye(65, dtype=torch.float64), stats.random_features.cross)[:-1].T
    torch.testing.assert_close(stats.random_features.linear.weight.double(), weight, rtol=1e-4, atol=1e-5)


def test_first_session_adaptation_closed_form_statistics_describe_the_adapted_encoder(tmp_path, monkeypatch):
    import text_models

    tok = tokenizer()
    monkeypatch.setattr(
        "transformers.AutoModelForSequenceClassification.from_pretrained",
        lambda *a, **k: tiny_bert(list(k["id2label"].values()), dropout=0.0),
    )
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: tok)
    config = IncrementConfig(closed_form_head=True, finetune_layers=1, finetune_epochs=2, finetune_increments=False,
                             warmup_epochs=2, replay_per_label=0, distill_weight=0.0, finetune_learning_rate=1e-3)
    train = text_dataset(["refund", "delivery"], 6)
    model, _, base = train_base_classifier("tiny", train, config=config,
                                           args=training_args(tmp_path), save=False)
    encoder_after_base = {n: p.detach().clone() for n, p in model.named_parameters() if "classifier" not in n}
    pristine = tiny_bert(["refund", "delivery"], dropout=0.0)
    moved = [n for n, p in pristine.named_parameters() if n in encoder_after_base
             and not torch.equal(p, encoder_after_base[n])]
    assert any(".layer.1." in n for n in moved) and not any(".layer.0." in n for n in moved)
    assert "finetune" in base.train_metrics and "closed_form_s" in base.timings
    # The statistics are those of the fine-tuned encoder's features, and the head is their LDA solution.
    features = extract_head_inputs(model, tok, train["text"], show_progress=False).double()
    torch.testing.assert_close(base.ridge_statistics.gram[:-1, :-1], features.T @ features, rtol=1e-5, atol=1e-5)
    weight, _bias = base.ridge_statistics.solve_lda()
    torch.testing.assert_close(model.classifier.weight.double(), weight, rtol=1e-4, atol=1e-4)

    # A later increment keeps the encoder frozen (no fine-tuning) and solves the head in closed form.
    result = train_increment(model, tok, text_dataset(["login"], 6), config=config, args=training_args(tmp_path),
                             ridge_statistics=base.ridge_statistics, save=False)
    assert "finetune" not in result.train_metrics
    for name, param in model.named_parameters():
        if name in encoder_after_base:
            assert torch.equal(param, encoder_after_base[name]), name
    assert result.ridge_statistics.count == 18 and model.config.num_labels == 3
    del text_models


def test_closed_form_without_statistics_falls_back_and_inconsistent_statistics_are_refused(tmp_path, snapshot,
                                                                                 assert_unchanged):
    model = tiny_bert(["refund", "delivery"])
    before = snapshot(model)
    # No statistics and only new labels (a classifier trained without hf_incr): its trained rows are kept and the new
    # rows fitted beside them, with a warning naming the labels that nothing calibrates against and the fix; the
    # statistics of the new rows are kept, every row marked as a kept, trained row.
    config = IncrementConfig(closed_form_head=True, finetune_layers=0, warmup_epochs=1)
    fallback = tiny_bert(["refund", "delivery"])
    with pytest.warns(UserWarning,
                      match=r"lacks its label\(s\) \['refund', 'delivery'\].*Add a few training examples"):
        result = train_increment(fallback, tokenizer(), text_dataset(["login"], 4), config=config,
                                 args=training_args(tmp_path), save=False)
    assert "new_rows_s" in result.timings and "warmup" not in result.train_metrics
    assert "closed_form_s" not in result.timings
    assert result.ridge_statistics.kept.tolist() == [True] * 3 and fallback.config.num_labels == 3
    stats = RidgeStatistics.empty(32, 2)
    with pytest.raises(ConfigError, match="no random-feature head"):
        train_increment(model, tokenizer(), text_dataset(["login"], 4), args=training_args(tmp_path), save=False,
                        config=IncrementConfig(closed_form_head=True, finetune_layers=0, random_features=16),
                        ridge_statistics=stats)
    stats.random_features = RandomFeatureHead.new(32, 8, 2)
    with pytest.raises(ConfigError, match="random_features=8"):
        train_increment(model, tokenizer(), text_dataset(["login"], 4), args=training_args(tmp_path), save=False,
                        config=IncrementConfig(closed_form_head=True, finetune_layers=0, random_features=16),
                        ridge_statistics=stats)
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(closed_form_head=False, random_features=100), "closed_form_head=True"),
        (dict(closed_form_head=True, finetune_layers=2, finetune_increments=True), "finetune_increments=False"),
        (dict(closed_form_head=True, finetune_layers=0, random_features=10, random_features_lambda=0.0),
         "random_features_lambda"),
        (dict(closed_form_solver="svm"), "'auto', 'ridge' or 'lda'"),
    ],
)
def test_config_refuses_inconsistent_closed_form_settings(values, message):
    with pytest.raises(ConfigError, match=message):
        IncrementConfig(**values)


def test_multi_label_random_feature_head_decides_at_the_sigmoid_threshold():
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 3
    targets = (torch.rand(300, 4) < 0.3).double()
    x = targets.float() @ centres + 0.3 * torch.randn(300, 16)
    head = RandomFeatureHead.new(16, 256, 4, seed=0).update(x, targets)
    head.solve(1e-3, multi_label=True)
    with torch.no_grad():
        predicted = torch.sigmoid(head(x)) > 0.5
    assert (predicted == targets.bool()).float().mean() > 0.95
    head.solve(1e-3)  # the raw regression: absent labels hover around logit 0
    with torch.no_grad():
        assert ((torch.sigmoid(head(x)) > 0.5) == targets.bool()).float().mean() < 0.8
