"""Forgetting controls of the gradient path (``head="trained"``): distillation from the model before the increment,
weight aligning (the replay memory is in test_replay.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from text_models import text_dataset, tiny_bert, tokenizer, training_args

from hf_incr import IncrementConfig, align_weights, train_increment
from hf_incr.losses import distillation_loss


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
                                 head="trained", finetune_increments=True,
                                 distill_weight=weight, replay_per_label=0, weight_align=False)
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


def test_the_teacher_is_kept_only_for_gradient_phases(tmp_path):
    """A copy of the model before the increment is distilled from only where a gradient phase runs: the gradient path
    (with old labels, new labels and a distillation weight), not a head solved in closed form."""
    tok = tokenizer()
    base = tiny_bert(["refund", "delivery"], dropout=0.0)
    solved = train_increment(base, tok, text_dataset(["refund", "delivery"], 4), config=IncrementConfig(
        warmup_epochs=0, finetune_layers=0), args=training_args(tmp_path), save=False, kind="base")
    cases = {
        ("linear", 1.0): False,  # solved from statistics: no gradient phase
        ("trained", 1.0): True,
        ("trained", 0.0): False,  # distillation off
    }
    for (head, weight), teacher in cases.items():
        model = tiny_bert(["refund", "delivery"], dropout=0.0)
        model.load_state_dict(base.state_dict())
        config = IncrementConfig(head=head, warmup_epochs=1, finetune_layers=0, distill_weight=weight)
        result = train_increment(model, tok, text_dataset(["login"], 4), config=config, args=training_args(tmp_path),
                                 save=False, heads=solved.heads if head == "linear" else None)
        assert result.plan.path == ("solve" if head == "linear" else "gradient")
        assert result.plan.teacher is teacher, (head, weight)


@pytest.mark.parametrize("align", [True, False])
def test_weight_aligning_rescales_the_trained_new_rows_to_the_old_mean_norm(tmp_path, align):
    tok = tokenizer()
    model = tiny_bert(["refund", "delivery", "login"], dropout=0.0)
    config = IncrementConfig(head="trained", warmup_epochs=2, finetune_layers=0, distill_weight=0.0,
                             weight_align=align)
    result = train_increment(model, tok, text_dataset(["repair", "colour"], 6), config=config,
                             args=training_args(tmp_path), save=False)
    assert result.new_label_ids == [3, 4]
    norms = model.classifier.weight.detach().norm(dim=1)
    old_mean = norms[:3].mean().item()
    if align:
        assert norms[3:].tolist() == pytest.approx([old_mean, old_mean], rel=1e-5)
    else:
        assert norms[3:].tolist() != pytest.approx([old_mean, old_mean], rel=1e-3)
