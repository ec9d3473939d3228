"""Micro- and macro-F1 of a multi-label classifier at a threshold, split into the labels it had before an
increment (old) and the labels the increment added (new).

An evaluate metric module: ``evaluate.load(path_to_this_file)`` works offline, and hf_incr imports the class.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Micro-F1, macro-F1 and exact-match accuracy of multi-label predictions (scores above `threshold`
are positive), over all label columns and separately over the old and the new label columns."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): per-label scores (probabilities, or logits with threshold 0).
    references (`list` of `list` of `int`): multi-hot true labels.
    old_label_ids (`list` of `int`, optional): the label columns the model had before the increment.
    threshold (`float`): a score above it is a positive prediction; default 0.5.
Returns:
    micro_f1, macro_f1, exact_match: over all label columns.
    old_micro_f1, old_macro_f1 / new_micro_f1, new_macro_f1: over the old / new label columns (NaN if none).
Examples:
    >>> metric = evaluate.load("hf_incr/metrics/incremental_multilabel_f1.py")
    >>> metric.compute(predictions=[[0.9, 0.1]], references=[[1, 0]], old_label_ids=[0])["old_micro_f1"]
    1.0
"""


def _f1_from_counts(tp, fp, fn):
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def _scores(predicted, truth):
    tp = (predicted & truth).sum(0)
    fp = (predicted & ~truth).sum(0)
    fn = (~predicted & truth).sum(0)
    micro = float(_f1_from_counts(tp.sum(), fp.sum(), fn.sum()))
    # Macro-F1 over the labels that occur in the references, as for the single-label metric.
    present = truth.any(0)
    macro = float(_f1_from_counts(tp, fp, fn)[present].mean()) if present.any() else float("nan")
    return micro, macro


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class IncrementalMultilabelF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references, old_label_ids=None, threshold=0.5):
        predicted = np.asarray(predictions, dtype=np.float64) > threshold
        truth = np.asarray(references).astype(bool)
        old = np.zeros(truth.shape[1], dtype=bool)
        old[np.asarray(sorted(old_label_ids or []), dtype=np.int64)] = True
        micro, macro = _scores(predicted, truth)
        result = {"micro_f1": micro, "macro_f1": macro, "exact_match": float((predicted == truth).all(1).mean())}
        for name, columns in (("old", old), ("new", ~old)):
            if columns.any():
                micro, macro = _scores(predicted[:, columns], truth[:, columns])
            else:
                micro, macro = float("nan"), float("nan")
            result[f"{name}_micro_f1"] = micro
            result[f"{name}_macro_f1"] = macro
        return result
