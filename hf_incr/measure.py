"""The metrics of an increment on its eval data, split into old / new labels, before and after it.

With the encoder frozen through the whole increment (every path but the base's fine-tuning and the adaptation of a
classifier trained elsewhere), what each head reads of the eval texts is computed once (:class:`EvalFeatures`, one
frozen pass), and every measurement is a matter of the heads' logits on those features: the model before the
increment (the old rows; the extra head it answered with), after it, and its plain Linear. Otherwise the model is
evaluated by Trainer (:func:`hf_incr.trainer.evaluate_model`). Both give the same figures: the same metric modules
(:func:`hf_incr.metrics.make_compute_metrics`) on the same logits, and the loss Trainer reports (the mean over rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import EvalPrediction

from .features import HeadInputs, encode_for_heads
from .metrics import make_compute_metrics


def metrics_of(logits: torch.Tensor, labels: torch.Tensor, *, old_ids: list[int], multi_label: bool,
               threshold: float = 0.5, only_old: bool = False) -> dict[str, float]:
    """The old / new / all metrics of ``logits`` against ``labels`` (ids, or multi-hot rows), as
    :func:`~hf_incr.trainer.evaluate_model` reports them; ``only_old``: scored as the model before the increment (only
    the old labels' logits; no loss)."""
    compute = make_compute_metrics(old_ids, multi_label, threshold, restrict_to=old_ids if only_old else None)
    metrics = {k: float(v) for k, v in compute(EvalPrediction(predictions=logits.numpy(),
                                                              label_ids=labels.numpy())).items()}
    if not only_old:
        loss = (F.binary_cross_entropy_with_logits(logits.float(), labels.float()) if multi_label
                else F.cross_entropy(logits.float(), labels.long()))
        metrics["loss"] = float(loss)
    return metrics


@dataclass
class EvalFeatures:
    """What every head reads of the eval texts (by head name; the Linear's inputs under ``"linear"``), and their
    labels, from one frozen pass."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor

    @classmethod
    def compute(cls, model, tokenizer, texts, labels, heads: dict, *, location, max_length: int, device,
                show_progress: bool) -> EvalFeatures:
        readers = {"linear": HeadInputs(), **{name: head for name, head in heads.items() if name != "linear"}}
        features = encode_for_heads(model, tokenizer, texts, readers, location=location, max_length=max_length,
                                    device=device, show_progress=show_progress, desc="Encoding the eval data")
        return cls(features, torch.as_tensor(np.asarray(labels)))

    def logits(self, linear: nn.Linear, head=None) -> torch.Tensor:
        """The model's logits on the eval texts: its output Linear's as it is now, or ``head``'s (an extra head, which
        sees the Linear's beside its own features)."""
        with torch.no_grad():
            inputs = self.features["linear"]
            plain = inputs @ linear.weight.detach().float().cpu().T
            if linear.bias is not None:
                plain = plain + linear.bias.detach().float().cpu()
            if head is None:
                return plain
            scores = head.logits(self.features[head.name], plain)
            missing = plain.shape[1] - scores.shape[1]  # the model before the increment: fewer labels
            if missing > 0:
                scores = torch.cat([scores, scores.new_full((scores.shape[0], missing), -1e4)], dim=1)
            return scores.float().cpu()
