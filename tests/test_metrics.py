"""The shipped metric modules: figures by hand, the old/new split, loading through evaluate offline."""

from __future__ import annotations

import math

import evaluate
import numpy as np
import pytest
from transformers import EvalPrediction

from hf_incr.metrics import IncrementalAccuracy, IncrementalMultilabelF1, make_compute_metrics, metric_path


def test_single_label_figures_by_hand():
    result = IncrementalAccuracy().compute(predictions=[0, 1, 2, 2, 0], references=[0, 1, 1, 2, 2],
                                           old_label_ids=[0, 1])
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["num_old"] == 3 and result["num_new"] == 2
    assert result["old_accuracy"] == pytest.approx(2 / 3)
    assert result["new_accuracy"] == pytest.approx(1 / 2)
    # F1 per label over all rows: label0 2*1/(2+1+0)=2/3, label1 2/(2+0+1)=2/3, label2 2/(2+1+1)=1/2
    assert result["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)


def test_no_old_labels_gives_nan_not_a_crash():
    result = IncrementalAccuracy().compute(predictions=[1], references=[1], old_label_ids=[])
    assert math.isnan(result["old_accuracy"]) and result["new_accuracy"] == 1.0


def test_multilabel_figures_by_hand():
    scores = [[0.9, 0.2, 0.7], [0.1, 0.8, 0.6], [0.6, 0.1, 0.1]]
    truth = [[1, 0, 1], [0, 1, 0], [0, 0, 1]]
    result = IncrementalMultilabelF1().compute(predictions=scores, references=truth, old_label_ids=[0, 1])
    # predicted positives: (0,0) (0,2) (1,1) (1,2) (2,0); tp = (0,0) (0,2) (1,1) = 3, fp = 2, fn = (2,2) = 1
    assert result["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert result["exact_match"] == pytest.approx(1 / 3)
    # old columns 0,1: tp 2, fp 1 (2,0), fn 0 -> 4/5 ; new column 2: tp 1, fp 1, fn 1 -> 1/2
    assert result["old_micro_f1"] == pytest.approx(4 / 5)
    assert result["new_micro_f1"] == pytest.approx(1 / 2)


def test_threshold_changes_predictions():
    low = IncrementalMultilabelF1().compute(predictions=[[0.4]], references=[[1]], threshold=0.3)
    high = IncrementalMultilabelF1().compute(predictions=[[0.4]], references=[[1]], threshold=0.5)
    assert low["micro_f1"] == 1.0 and high["micro_f1"] == 0.0


@pytest.mark.parametrize("name", ["incremental_accuracy", "incremental_multilabel_f1"])
def test_modules_load_through_evaluate_offline(name):
    metric = evaluate.load(metric_path(name))
    if name == "incremental_accuracy":
        assert metric.compute(predictions=[0, 1], references=[0, 0], old_label_ids=[0])["accuracy"] == 0.5
    else:
        assert metric.compute(predictions=[[0.9, 0.1]], references=[[1, 0]], old_label_ids=[0])["micro_f1"] == 1.0


def test_compute_metrics_restricted_to_old_labels_scores_the_model_before():
    logits = np.array([[1.0, 0.0, 5.0], [0.0, 2.0, 1.0]])
    labels = np.array([0, 2])
    full = make_compute_metrics([0, 1])(EvalPrediction(predictions=logits, label_ids=labels))
    old_only = make_compute_metrics([0, 1], restrict_to=[0, 1])(EvalPrediction(predictions=logits, label_ids=labels))
    assert full["accuracy"] == 0.0  # row 0 predicted as the new label 2
    assert old_only["old_accuracy"] == 1.0 and old_only["new_accuracy"] == 0.0


def test_compute_metrics_multilabel_reports_accuracy_as_micro_f1():
    logits = np.array([[3.0, -3.0], [-3.0, 3.0]])
    labels = np.array([[1.0, 0.0], [0.0, 1.0]])
    result = make_compute_metrics([0], multi_label=True)(EvalPrediction(predictions=logits, label_ids=labels))
    assert result["accuracy"] == result["micro_f1"] == 1.0
    assert result["old_accuracy"] == 1.0 and result["new_accuracy"] == 1.0
