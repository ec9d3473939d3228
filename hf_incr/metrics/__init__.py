"""Metrics after every increment, as evaluate-compatible modules shipped in the package.

evaluate cannot fetch metric scripts offline, so the two modules live here: ``incremental_accuracy`` (single-label)
and ``incremental_multilabel_f1`` (multi-label). ``evaluate.load(metric_path(name))`` loads either, and
:func:`make_compute_metrics` builds a Trainer ``compute_metrics`` from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

METRIC_NAMES = ("incremental_accuracy", "incremental_multilabel_f1")


def metric_path(name: str) -> str:
    """Path of a shipped metric module, for ``evaluate.load(metric_path("incremental_accuracy"))``."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; hf_incr ships {list(METRIC_NAMES)}.")
    return str(Path(__file__).with_name(f"{name}.py"))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -500.0, 500.0)))


def make_compute_metrics(
    old_label_ids: Sequence[int],
    multi_label: bool = False,
    threshold: float = 0.5,
    restrict_to: Sequence[int] | None = None,
) -> Callable:
    """A Trainer ``compute_metrics`` that reports all / old / new figures from the shipped metric modules.

    Single-label: accuracy and macro-F1 (argmax of the logits). Multi-label: micro/macro-F1 and exact match, a label
    being predicted when its sigmoid exceeds ``threshold``. ``accuracy`` is also reported for multi-label (as
    micro-F1), so one key reads "how good" in tables for both kinds. ``restrict_to`` scores only those label ids'
    logits (the others can never be predicted): the model before an increment, read from the grown one.
    """
    old = [int(i) for i in old_label_ids]
    allowed = None if restrict_to is None else np.asarray(sorted(int(i) for i in restrict_to), dtype=np.int64)

    def compute_metrics(eval_prediction) -> dict[str, float]:
        # `evaluate` (which the metric modules build on) costs seconds to import: only when something is scored.
        from .incremental_accuracy import IncrementalAccuracy
        from .incremental_multilabel_f1 import IncrementalMultilabelF1

        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        references = eval_prediction.label_ids
        if allowed is not None:
            masked = np.full_like(np.asarray(logits, dtype=np.float64), -np.inf)
            masked[:, allowed] = np.asarray(logits, dtype=np.float64)[:, allowed]
            logits = masked
        if multi_label:
            result = IncrementalMultilabelF1().compute(
                predictions=_sigmoid(np.asarray(logits, dtype=np.float64)),
                references=np.asarray(references).round().astype(np.int64),
                old_label_ids=old,
                threshold=threshold,
            )
            result["accuracy"] = result["micro_f1"]
            result["old_accuracy"] = result["old_micro_f1"]
            result["new_accuracy"] = result["new_micro_f1"]
            return result
        return IncrementalAccuracy().compute(
            predictions=np.asarray(logits).argmax(-1), references=np.asarray(references), old_label_ids=old
        )

    return compute_metrics


def __getattr__(name: str):
    # The metric modules import `evaluate` (seconds): loaded when first asked for.
    if name == "IncrementalAccuracy":
        from .incremental_accuracy import IncrementalAccuracy

        return IncrementalAccuracy
    if name == "IncrementalMultilabelF1":
        from .incremental_multilabel_f1 import IncrementalMultilabelF1

        return IncrementalMultilabelF1
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METRIC_NAMES", "IncrementalAccuracy", "IncrementalMultilabelF1", "make_compute_metrics", "metric_path"]
