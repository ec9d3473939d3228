"""The losses of the gradient phases: the classification loss transformers' heads use, and distillation on the old
labels' outputs (Learning without Forgetting)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Cross-entropy for single-label ids, binary cross-entropy for multi-hot targets (as transformers' heads do)."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return F.cross_entropy(logits.float(), labels.long())


def distillation_loss(
    student_old_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    multi_label: bool,
    temperature: float = 2.0,
) -> torch.Tensor:
    """Distillation on the old labels' outputs (Learning without Forgetting).

    Single-label: KL divergence between the softened softmaxes, scaled by ``temperature**2`` (Hinton et al.).
    Multi-label: binary cross-entropy of the student's sigmoid against the teacher's sigmoid targets.
    """
    teacher_logits = teacher_logits.detach().float()
    student_old_logits = student_old_logits.float()
    if multi_label:
        return F.binary_cross_entropy_with_logits(student_old_logits, torch.sigmoid(teacher_logits))
    t = temperature
    return F.kl_div(
        F.log_softmax(student_old_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean", log_target=True,
    ) * (t * t)


def increment_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    multi_label: bool,
    teacher_logits: torch.Tensor | None = None,
    distill_weight: float = 0.0,
    temperature: float = 2.0,
) -> torch.Tensor:
    """The loss of a gradient phase: the classification loss plus, with a teacher, ``distill_weight`` times the
    distillation loss on the old labels' outputs (the first ``teacher_logits.shape[-1]`` logits)."""
    loss = classification_loss(logits, labels, multi_label)
    if teacher_logits is not None and distill_weight > 0:
        old = teacher_logits.shape[-1]
        loss = loss + distill_weight * distillation_loss(logits[:, :old], teacher_logits, multi_label, temperature)
    return loss
