"""New labels beside the kept rows of a single-label classifier trained elsewhere (:mod:`hf_incr.heads.beside_kept`):
the gate's and the fusion's fits on data with known answers, and the head in the recipe (chosen in place of the kernel
head, the kept rows bit for bit, the logits those of its formula, saved, reloaded and loaded through remote code)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from test_remote_code import _as_user
from text_models import text_dataset, tiny_bert, tokenizer, training_args
from transformers import AutoModelForSequenceClassification

import hf_incr
from hf_incr import DataError, IncrementConfig, train_increment
from hf_incr import model_card as model_card_module
from hf_incr.heads import BesideKeptHead
from hf_incr.heads import modeling_hf_incr_kernel as modeling
from hf_incr.heads.beside_kept import fit_fusion, fit_gate
from hf_incr.heads.lda import shrunk
from hf_incr.heads.modeling_hf_incr_kernel import pool
from hf_incr.info import model_info

OLD = ["refund", "delivery", "login"]
TEXTS = ["please help with password number 3", "refund number 40", "shipping of my parcel",
         "please help with fix my bike number 7", "paint it red please", "money back number 12"]


@pytest.fixture(autouse=True)
def _this_checkouts_template(monkeypatch):
    template = Path(__file__).resolve().parents[1] / "model_cards" / model_card_module.TEMPLATE_NAME
    monkeypatch.setattr(model_card_module, "template_path", lambda: template)


def _clusters(labels: int, rows: int, dim: int, offset: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    centres = offset + 3.0 * torch.randn(labels, dim, generator=generator, dtype=torch.float64)
    y = torch.arange(labels).repeat_interleave(rows)
    return centres[y] + torch.randn(len(y), dim, generator=generator, dtype=torch.float64), y


def _old_logits(x, num_old, seed=0):
    # A kept Linear that is confident on its own labels' inputs (the first num_old dimensions carry them).
    return 4.0 * x[:, :num_old]


def test_the_gate_keeps_its_recall_on_held_out_new_rows_and_sends_far_texts_to_the_old_labels():
    x_new, y_new = _clusters(4, 40, 8, 0.0, seed=1)
    x_old, _ = _clusters(3, 40, 8, 12.0, seed=2)
    gate = fit_gate(x_new, torch.randn(len(x_new), 3, dtype=torch.float64), y_new, 4, new_recall=0.8)
    assert set(gate) == {"weight", "bias", "quadratic", "linear", "const", "scale"}
    assert gate["weight"].shape == (4, 8) and gate["quadratic"].shape == (8, 8)
    test_new, test_y = _clusters(4, 200, 8, 0.0, seed=1)  # same centres, fresh noise (the seed draws centres first)
    test_new = test_new + 0.0
    for x, to_new in [(test_new, True), (x_old, False)]:
        logits = modeling.gated_logits(x, torch.randn(len(x), 3, dtype=torch.float64), gate, 1e6)
        sent = (logits.argmax(1) >= 3).double().mean().item()
        # The threshold keeps about 80 % of held-out new rows; texts far from every new label go to the old ones.
        assert (0.6 < sent < 0.97) if to_new else sent < 0.05
    kept = modeling.gated_logits(test_new, torch.zeros(len(test_new), 3, dtype=torch.float64), gate, 1e6)
    chosen = kept.argmax(1) >= 3
    assert (kept.argmax(1)[chosen] - 3 == test_y[chosen]).double().mean() > 0.9


def test_the_relative_distance_is_the_nearest_new_mean_less_the_one_gaussian():
    x, y = _clusters(3, 30, 5, 0.0, seed=3)
    gate = fit_gate(x, torch.zeros(len(x), 2, dtype=torch.float64), y, 3)
    means = torch.stack([x[y == k].mean(0) for k in range(3)])
    # Both covariances by hand: the pooled within-label one and that of all rows, each OAS-shrunk.
    centred = x - means[y]
    precision = torch.linalg.inv(shrunk(centred.T @ centred / (len(x) - 3), len(x))[0])
    background = torch.linalg.inv(shrunk(torch.cov(x.T), len(x))[0])
    probe = torch.randn(7, 5, dtype=torch.float64)
    nearest = torch.stack([((probe - m) @ precision * (probe - m)).sum(1) for m in means]).min(0).values
    centred = probe - x.mean(0)
    expected = -(nearest - (centred @ background * centred).sum(1))
    _, relative, _ = modeling.gate_parts(probe, torch.zeros(7, 2), {k: v.double() for k, v in gate.items()})
    torch.testing.assert_close(relative, expected, rtol=1e-4, atol=1e-3)


def test_the_gate_refuses_a_recall_outside_zero_one_and_a_label_with_one_row():
    x, y = _clusters(2, 6, 3, 0.0, seed=4)
    with pytest.raises(DataError, match="gate_new_recall must be between 0 and 1"):
        fit_gate(x, torch.zeros(len(x), 2), y, 2, new_recall=1.0)
    with pytest.raises(DataError, match="at least 2 rows"):
        fit_gate(torch.cat([x, x[:1]]), torch.zeros(13, 2), torch.cat([y, torch.tensor([2])]), 3)


def test_the_fusion_uses_the_kept_logits_for_old_labels_with_few_rows():
    # Old labels: 3 rows each in the layer space, but the kept Linear's logits know them well.
    x_old, y_old = _clusters(3, 3, 6, 0.0, seed=5)
    x_new, y_new = _clusters(3, 30, 6, 0.0, seed=6)
    x = torch.cat([x_old, x_new])
    y = torch.cat([y_old, y_new + 3])
    old = torch.nn.functional.one_hot(y.clamp(max=3), 4)[:, :3].double() * 6.0 - 3.0
    old = old + 0.5 * torch.randn(old.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    fused = fit_fusion(x, old, y, 6)
    assert fused["weight"].shape == (6, 6 + 3) and fused["scale"].shape == (3,)
    assert fused["scale"][1].item() in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    logits = modeling.fused_logits(x, old, fused)
    assert (logits.argmax(1) == y).double().mean() > 0.9


# -- in the recipe -------------------------------------------------------------------------------------------------


def _logits(model, texts=TEXTS):
    batch = tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def _pooled_and_linear(model, texts=TEXTS):
    """What the head reads, straight from ``hidden_states`` and the Linear: both layers mean-pooled, each
    L2-normalised, concatenated; and the Linear's logits."""
    batch = tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.bert(**batch, output_hidden_states=True)
        # The Linear's own logits (calling the module would run the head's hook).
        linear = torch.nn.functional.linear(out.pooler_output, model.classifier.weight, model.classifier.bias)
    parts = [torch.nn.functional.normalize(pool(h, batch["attention_mask"], "mean"), dim=1)
             for h in out.hidden_states[-2:]]
    return torch.cat(parts, 1), linear


@pytest.mark.parametrize("old_rows, mode", [(0, "gate"), (3, "fuse")])
def test_a_classifier_trained_elsewhere_answers_its_new_labels_beside_its_kept_rows(tmp_path, old_rows, mode):
    model = tiny_bert(OLD, seed=2, dropout=0.0)
    linear = hf_incr.find_classifier_head(model).linear
    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    data = text_dataset(["repair", "colour"], 10)
    if old_rows:
        from datasets import concatenate_datasets

        data = concatenate_datasets([data, text_dataset(OLD, old_rows, offset=50)])
    # Without old rows, a warning says the old labels have none (what a few would buy).
    with pytest.warns(UserWarning, match="old label") if not old_rows else contextlib.nullcontext():
        result = train_increment(model, tokenizer(), data, config=IncrementConfig(finetune_layers=0),
                                 args=training_args(tmp_path, output_dir=str(tmp_path / "b")))
    plan = result.plan
    assert plan.path == "kept_rows" and plan.answering == "beside_kept" and plan.heads == ("linear", "beside_kept")
    assert result.record["beside_kept"]["mode"] == mode and result.record["head_rows"] == "kept"
    # The kept rows, bit for bit: what plain transformers loads for the old labels.
    grown = hf_incr.find_classifier_head(model).linear
    assert torch.equal(grown.weight[:3], weight) and torch.equal(grown.bias[:3], bias)
    head = BesideKeptHead.attached(model, hf_incr.find_classifier_head(model))
    assert head is not None and head.classifier.config.beside == mode and head.classifier.config.num_old == 3
    # The model's logits are the head's formula on the pooled layers and the Linear's logits.
    pooled, linear_logits = _pooled_and_linear(model)
    after = _logits(model)
    torch.testing.assert_close(after, head.classifier.answer(pooled, linear_logits), rtol=1e-5, atol=1e-5)
    if mode == "gate":
        # Each side's log-probabilities plus the gate's log share: the two shares sum to one.
        shares = torch.logsumexp(after[:, :3], 1).exp() + torch.logsumexp(after[:, 3:], 1).exp()
        torch.testing.assert_close(shares, torch.ones(len(TEXTS)), rtol=1e-4, atol=1e-4)
    # Saved, it reloads the same through hf_incr and through remote code without hf_incr; plain loading: the Linear.
    folder = tmp_path / "b"
    assert (folder / modeling.BESIDE_KEPT_FILENAME).is_file() and (folder / "modeling_hf_incr_kernel.py").is_file()
    torch.testing.assert_close(_logits(hf_incr.load_model(str(folder))), after, rtol=0, atol=0)
    user = _as_user(folder, tmp_path, texts=TEXTS)
    torch.testing.assert_close(torch.tensor(user["remote"]), after, rtol=1e-5, atol=1e-5)
    plain = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    torch.testing.assert_close(torch.tensor(user["plain"]), _logits(plain), rtol=1e-5, atol=1e-5)
    assert model_info(str(folder))["heads"]["beside_kept"] == "yes"
    card = (folder / "README.md").read_text()
    assert "New labels beside the kept rows" in card and "trust_remote_code=True" in card
