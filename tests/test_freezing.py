"""Tests of hf_incr.freezing: encoder blocks, parameter depths, freezing and layer-wise learning rates."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as T
from tiny_models import ARCHITECTURES, tiny_batch, tiny_model

import hf_incr
from hf_incr import ConfigError
from hf_incr.layers import encoder_layer_paths

EXPECTED_LAYER_LISTS = {
    "albert": ["albert.encoder.albert_layer_groups"],
    "bart": ["model.encoder.layers", "model.decoder.layers"],
    "bert": ["bert.encoder.layer"],
    "deberta-v2": ["deberta.encoder.layer"],
    "distilbert": ["distilbert.transformer.layer"],
    "electra": ["electra.encoder.layer"],
    "gpt2": ["transformer.h"],
    "llama": ["model.layers"],
    "mistral": ["model.layers"],
    "modernbert": ["model.layers"],
    "mpnet": ["mpnet.encoder.layer"],
    "qwen2": ["model.layers"],
    "roberta": ["roberta.encoder.layer"],
    "xlm-roberta": ["roberta.encoder.layer"],
}
EXPECTED_NUM_LAYERS = {arch: {"albert": 1, "bart": 4}.get(arch, 2) for arch in ARCHITECTURES}

# Parameters above the last block, per architecture (what scope="head" trains).
EXPECTED_HEAD = {
    "bert": {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"},
    "distilbert": {"pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"},
    "roberta": {
        "classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias"
    },
    "gpt2": {"transformer.ln_f.weight", "transformer.ln_f.bias", "score.weight"},
    "llama": {"model.norm.weight", "score.weight"},
    "modernbert": {
        "model.final_norm.weight", "head.dense.weight", "head.norm.weight", "classifier.weight", "classifier.bias"
    },
}
EXPECTED_OUTPUT = {
    "bert": {"classifier.weight", "classifier.bias"},
    "roberta": {"classifier.out_proj.weight", "classifier.out_proj.bias"},
    "bart": {"classification_head.out_proj.weight", "classification_head.out_proj.bias"},
    "gpt2": {"score.weight"},
    "llama": {"score.weight"},
}


def trainable(model) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def block_param_names(model, blocks) -> set[str]:
    wanted = {id(p) for block in blocks for p in block.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in wanted}


# --------------------------------------------------------------------------------------------------------------
# encoder_layers / parameter_depths


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_encoder_layers_count_and_lists(arch):
    model = tiny_model(arch)
    assert encoder_layer_paths(model) == EXPECTED_LAYER_LISTS[arch]
    layers = hf_incr.encoder_layers(model)
    assert len(layers) == EXPECTED_NUM_LAYERS[arch]
    expected = [block for path in EXPECTED_LAYER_LISTS[arch] for block in model.get_submodule(path)]
    assert all(a is b for a, b in zip(layers, expected, strict=True))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_encoder_layers_are_in_forward_order(arch):
    model = tiny_model(arch)
    layers = hf_incr.encoder_layers(model)
    calls: list[int] = []
    handles = [
        block.register_forward_hook(lambda _m, _i, _o, index=index: calls.append(index))
        for index, block in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            model(**tiny_batch(arch))
    finally:
        for handle in handles:
            handle.remove()
    first_calls = list(dict.fromkeys(calls))  # ALBERT calls its one shared group once per hidden layer
    assert first_calls == list(range(len(layers)))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_parameter_depths(arch):
    model = tiny_model(arch)
    depths = hf_incr.parameter_depths(model)
    layers = hf_incr.encoder_layers(model)
    top = len(layers) + 1
    assert set(depths) == {name for name, _ in model.named_parameters()}
    assert set(depths.values()) == set(range(top + 1))
    for index, block in enumerate(layers):
        for name in block_param_names(model, [block]):
            assert depths[name] == index + 1, name
    for name in hf_incr.head_parameter_names(model, "output"):
        assert depths[name] == top
    embeddings = model.get_input_embeddings().weight
    (embedding_name,) = [name for name, p in model.named_parameters() if p is embeddings]
    assert depths[embedding_name] == 0


# --------------------------------------------------------------------------------------------------------------
# freeze_all_but_head / unfreeze_top_layers


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_freeze_all_but_head(arch):
    model = tiny_model(arch)
    depths = hf_incr.parameter_depths(model)
    top = max(depths.values())

    names = hf_incr.freeze_all_but_head(model, scope="output")
    output_path = hf_incr.find_classifier_head(model).path
    output = {f"{output_path}.weight"} | ({f"{output_path}.bias"} if "bias" in dict(
        model.get_submodule(output_path).named_parameters()) else set())
    assert set(names) == trainable(model) == output
    if arch in EXPECTED_OUTPUT:
        assert output == EXPECTED_OUTPUT[arch]

    names = hf_incr.freeze_all_but_head(model)  # scope="head"
    assert len(names) == len(set(names))
    assert set(names) == trainable(model) == {name for name, depth in depths.items() if depth == top}
    assert output < set(names)
    if arch in EXPECTED_HEAD:
        assert set(names) == EXPECTED_HEAD[arch]
    assert not any(block_param_names(model, hf_incr.encoder_layers(model)) & trainable(model))


def test_freeze_all_but_head_after_growing_and_unknown_scope():
    model = tiny_model("bert")
    hf_incr.add_labels(model, ["delta"])
    assert set(hf_incr.freeze_all_but_head(model, scope="output")) == {"classifier.weight", "classifier.bias"}
    assert model.classifier.weight.requires_grad and model.classifier.weight.shape[0] == 4
    with pytest.raises(ConfigError, match="`scope` should be 'output' or 'head', got 'all'") as raised:
        hf_incr.freeze_all_but_head(model, scope="all")
    assert isinstance(raised.value, ValueError)


def _unfreeze_cases():
    for arch in ARCHITECTURES:
        # BART: with n > 2 the top n blocks reach down into the encoder, and the parameters between the encoder's
        # last block and the decoder's first (encoder.layernorm_embedding, decoder.embed_positions) come along.
        for n in range(0, min(EXPECTED_NUM_LAYERS[arch], 2) + 1):
            yield arch, n


@pytest.mark.parametrize(("arch", "n"), list(_unfreeze_cases()))
def test_unfreeze_top_layers(arch, n):
    model = tiny_model(arch)
    hf_incr.freeze_all_but_head(model)
    layers = hf_incr.encoder_layers(model)
    names = hf_incr.unfreeze_top_layers(model, n)
    head = set(hf_incr.head_parameter_names(model, "head"))
    expected = head | block_param_names(model, layers[len(layers) - n:])
    assert set(names) == trainable(model) == expected
    if n < len(layers):
        assert not block_param_names(model, layers[: len(layers) - n]) & trainable(model)
    assert not model.get_input_embeddings().weight.requires_grad

    names = hf_incr.unfreeze_top_layers(model, n, scope="output")
    assert trainable(model) == set(hf_incr.head_parameter_names(model, "output")) | block_param_names(
        model, layers[len(layers) - n:]
    )


@pytest.mark.parametrize("arch", ["bert", "albert", "bart", "gpt2"])
@pytest.mark.parametrize("n", [-1, 99])
def test_unfreeze_everything(arch, n):
    model = tiny_model(arch)
    hf_incr.freeze_all_but_head(model)
    names = hf_incr.unfreeze_top_layers(model, n)
    everything = {name for name, _ in model.named_parameters()}
    assert set(names) == trainable(model) == everything


# --------------------------------------------------------------------------------------------------------------
# param_groups_layer_lr


def test_layer_lr_numbers_for_bert():
    model = tiny_model("bert")
    groups = hf_incr.param_groups_layer_lr(model, 1e-3, layer_lr_decay=0.5, weight_decay=0.01)
    lr_by_depth = {group["depth"]: group["lr"] for group in groups}
    assert lr_by_depth == {0: 1e-3 * 0.125, 1: 1e-3 * 0.25, 2: 1e-3 * 0.5, 3: 1e-3}
    by_name = {name: group for group in groups for name in group["names"]}
    assert by_name["bert.embeddings.word_embeddings.weight"]["lr"] == 1.25e-4
    assert by_name["bert.encoder.layer.0.attention.self.query.weight"]["lr"] == 2.5e-4
    assert by_name["bert.encoder.layer.1.output.dense.weight"]["lr"] == 5e-4
    assert by_name["classifier.weight"]["lr"] == 1e-3
    assert by_name["bert.pooler.dense.weight"]["lr"] == 1e-3
    for name in ("classifier.weight", "bert.encoder.layer.0.attention.self.query.weight"):
        assert by_name[name]["weight_decay"] == 0.01
    for name in (
        "classifier.bias",
        "bert.embeddings.LayerNorm.weight",
        "bert.embeddings.LayerNorm.bias",
        "bert.encoder.layer.1.output.LayerNorm.weight",
        "bert.encoder.layer.0.attention.self.query.bias",
    ):
        assert by_name[name]["weight_decay"] == 0.0, name


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_layer_lr_groups(arch):
    model = tiny_model(arch)
    base, decay = 2e-3, 0.8
    hf_incr.unfreeze_top_layers(model, 1)
    depths = hf_incr.parameter_depths(model)
    top = max(depths.values())
    groups = hf_incr.param_groups_layer_lr(model, base, layer_lr_decay=decay, weight_decay=0.05)

    seen = [id(p) for group in groups for p in group["params"]]
    assert len(seen) == len(set(seen)), "a parameter appears in two groups"
    params = dict(model.named_parameters())
    assert set(seen) == {id(p) for p in params.values() if p.requires_grad}
    assert len({(group["depth"], group["weight_decay"]) for group in groups}) == len(groups)
    for group in groups:
        assert group["lr"] == base * decay ** (top - group["depth"])
        assert len(group["names"]) == len(group["params"])
        for name, param in zip(group["names"], group["params"]):
            assert params[name] is param and param.requires_grad
            assert depths[name] == group["depth"]
            lowered = name.lower()
            if "bias" in lowered or "norm" in lowered or ".ln_" in lowered:  # Trainer's rule
                assert group["weight_decay"] == 0.0, name
            elif name.endswith("weight") and params[name].dim() == 2:
                assert group["weight_decay"] == 0.05, name
    assert max(group["lr"] for group in groups) == base
    # Only the top block and the head train: two depths, the head at `base`, the block one decay step below.
    assert {group["depth"] for group in groups} == {top - 1, top}
    assert {group["lr"] for group in groups} == {base, base * decay}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "modernbert"])
def test_norm_weights_take_no_weight_decay(arch):
    model = tiny_model(arch)
    groups = hf_incr.param_groups_layer_lr(model, 1e-3, weight_decay=0.1)
    no_decay = {name for group in groups if group["weight_decay"] == 0.0 for name in group["names"]}
    norms = {
        name
        for module_name, module in model.named_modules()
        if "norm" in type(module).__name__.lower()
        for name in (f"{module_name}.{p}" for p, _ in module.named_parameters(recurse=False))
    }
    assert norms and norms <= no_decay
    assert "score.weight" not in no_decay


def test_layer_lr_decay_one_and_custom_no_decay_names():
    model = tiny_model("bert")
    groups = hf_incr.param_groups_layer_lr(model, 1e-3, weight_decay=0.1, no_decay_names=["classifier.weight"])
    assert {group["lr"] for group in groups} == {1e-3}
    by_name = {name: group for group in groups for name in group["names"]}
    assert by_name["classifier.weight"]["weight_decay"] == 0.0
    assert by_name["classifier.bias"]["weight_decay"] == 0.1  # the custom list replaces Trainer's rule


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.0001, 2.0, math.nan])
def test_invalid_layer_lr_decay(decay):
    model = tiny_model("bert")
    with pytest.raises(ConfigError, match=r"`layer_lr_decay` should be in \(0, 1\]") as raised:
        hf_incr.param_groups_layer_lr(model, 1e-3, layer_lr_decay=decay)
    assert isinstance(raised.value, ValueError)


def test_param_groups_do_not_change_requires_grad():
    model = tiny_model("bert")
    hf_incr.unfreeze_top_layers(model, 1)
    before = trainable(model)
    hf_incr.param_groups_layer_lr(model, 1e-3, 0.5)
    assert trainable(model) == before


# --------------------------------------------------------------------------------------------------------------
# the groups inside a real Trainer run


class LayerLrTrainer(T.Trainer):
    def create_optimizer(self, model=None):
        if self.optimizer is None:
            groups = hf_incr.param_groups_layer_lr(self.model, self.args.learning_rate, 0.5, self.args.weight_decay)
            self.optimizer = torch.optim.AdamW(groups)
        return self.optimizer


def _tiny_dataset(n=8):
    import datasets

    batch = tiny_batch("bert", batch_size=n, length=6, seed=3)
    return datasets.Dataset.from_dict(
        {
            "input_ids": batch["input_ids"].tolist(),
            "attention_mask": batch["attention_mask"].tolist(),
            "labels": [i % 4 for i in range(n)],
        }
    )


@pytest.mark.parametrize("how", ["optimizers-argument", "create_optimizer-override"])
def test_layer_lr_groups_in_trainer(how, tmp_path):
    model = tiny_model("bert")
    hf_incr.add_labels(model, ["delta"])
    hf_incr.unfreeze_top_layers(model, 1)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    trained = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    assert frozen and trained

    args = T.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        weight_decay=0.01,
        lr_scheduler_type="constant",
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    if how == "optimizers-argument":
        groups = hf_incr.param_groups_layer_lr(model, 1e-2, 0.5, 0.01)
        trainer = T.Trainer(
            model=model, args=args, train_dataset=_tiny_dataset(), optimizers=(torch.optim.AdamW(groups), None)
        )
    else:
        trainer = LayerLrTrainer(model=model, args=args, train_dataset=_tiny_dataset())
    result = trainer.train()
    assert result.global_step == 2 and math.isfinite(result.training_loss)

    groups = trainer.optimizer.param_groups
    assert {(g["depth"], g["lr"], g["initial_lr"], g["weight_decay"]) for g in groups} == {
        (2, 5e-3, 5e-3, 0.01),
        (2, 5e-3, 5e-3, 0.0),
        (3, 1e-2, 1e-2, 0.01),
        (3, 1e-2, 1e-2, 0.0),
    }
    params = dict(model.named_parameters())
    for name, value in frozen.items():
        assert torch.equal(params[name], value), f"frozen {name} changed"
    for name, value in trained.items():
        assert not torch.equal(params[name], value), f"trainable {name} did not change"
