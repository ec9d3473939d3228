"""Accuracy and macro-F1 of a single-label classifier, split into the labels it had before an increment and the
labels the increment added.

An evaluate metric module: ``evaluate.load(path_to_this_file)`` works offline, and hf_incr imports the class.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Accuracy and macro-F1 over all labels, and separately over the rows whose true label is old
(``old_label_ids``) and new (every other id): the figures that show forgetting after a class-incremental step."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted label ids.
    references (`list` of `int`): true label ids.
    old_label_ids (`list` of `int`, optional): the ids the model had before the increment; default none (all new).
Returns:
    accuracy, macro_f1: over all rows.
    old_accuracy, old_macro_f1: over the rows whose true label is old (NaN where there are none).
    new_accuracy, new_macro_f1: over the rows whose true label is new (NaN where there are none).
    num_old, num_new: how many rows of each.
Examples:
    >>> metric = evaluate.load("hf_incr/metrics/incremental_accuracy.py")
    >>> metric.compute(predictions=[0, 1, 2], references=[0, 1, 1], old_label_ids=[0])["old_accuracy"]
    1.0
"""


def _macro_f1(predictions, references, label_ids):
    """Macro-F1 over ``label_ids`` (the labels present in the references), computed from counts."""
    scores = []
    for label in label_ids:
        tp = np.sum((predictions == label) & (references == label))
        fp = np.sum((predictions == label) & (references != label))
        fn = np.sum((predictions != label) & (references == label))
        denominator = 2 * tp + fp + fn
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class IncrementalAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, old_label_ids=None):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        old = np.isin(references, np.asarray(sorted(old_label_ids or []), dtype=np.int64))
        result = {
            "accuracy": float(np.mean(predictions == references)) if len(references) else float("nan"),
            "macro_f1": _macro_f1(predictions, references, np.unique(references)),
            "num_old": int(old.sum()),
            "num_new": int((~old).sum()),
        }
        for name, mask in (("old", old), ("new", ~old)):
            if mask.any():
                result[f"{name}_accuracy"] = float(np.mean(predictions[mask] == references[mask]))
                result[f"{name}_macro_f1"] = _macro_f1(predictions, references, np.unique(references[mask]))
            else:
                result[f"{name}_accuracy"] = float("nan")
                result[f"{name}_macro_f1"] = float("nan")
        return result
