"""The plan of an increment, decided before anything changes: a pure function of the model's labels, the saved heads,
the settings and the data's labels (no model, no encoder pass)."""

from __future__ import annotations

import pytest
import torch

from hf_incr import DataError, IncrementConfig
from hf_incr.heads import ClassStatistics, KeptRowsHead, KernelHead, LinearHead
from hf_incr.heads.modeling_hf_incr_kernel import KernelConfig
from hf_incr.plan import plan

OLD = ["refund", "delivery", "login"]


def linear(kept: bool = False) -> LinearHead:
    statistics = ClassStatistics(4).grow(3)
    return KeptRowsHead(statistics, torch.ones(3, dtype=torch.bool)) if kept else LinearHead(statistics)


def kernel(num_features: int = 5000, statistics: bool = True) -> KernelHead:
    head = KernelHead(KernelConfig(in_features=8, num_features=num_features, bandwidth=1.0))
    head.statistics = [ClassStatistics(num_features)] if statistics else []
    return head


def rows(*labels, repeat: int = 1) -> list[list[str]]:
    return [[name] for name in labels for _ in range(repeat)]


def make(saved=None, config=None, row_labels=None, multi_label=False, kind="increment", data_labels=None):
    """A plan; the settings default to the Linear alone (the kernel head, the product's default, is planned in the
    tests that name it)."""
    row_labels = rows("repair") if row_labels is None else row_labels
    data = data_labels or sorted({name for names in row_labels for name in names})
    return plan(OLD, multi_label, saved or {}, config or IncrementConfig(head="linear"), data, row_labels, kind=kind)


def test_a_base_warms_up_fine_tunes_and_starts_the_linear_head():
    base = make(kind="base", row_labels=rows(*OLD))
    assert (base.path, base.heads, base.starts, base.answering) == ("solve", ("linear",), ("linear",), "linear")
    assert base.fine_tune and base.warm_up and base.cache_features and not base.teacher
    assert (base.num_old, base.num_labels, base.new_labels, base.new_ids) == (0, 3, tuple(OLD), [0, 1, 2])
    assert "warmed up" in base.describe()
    with pytest.raises(DataError, match=r"lacks the label\(s\) \['repair'\]"):
        make(kind="base", row_labels=rows("repair"))


def test_saved_statistics_solve_the_increment_and_nothing_else_runs():
    step = make({"linear": linear()})
    assert (step.path, step.heads, step.starts, step.new_labels) == ("solve", ("linear",), (), ("repair",))
    assert not (step.fine_tune or step.warm_up or step.cache_features or step.warnings)
    assert step.new_ids == [3] and step.features == ("the output Linear's inputs",)
    assert "solved from the statistics" in step.describe()


def test_a_classifier_trained_elsewhere_keeps_its_rows_and_is_warned_about_old_labels_without_rows():
    step = make({})
    assert (step.path, step.starts) == ("kept_rows", ("linear",))
    assert len(step.warnings) == 1 and "kept bit for bit" in step.warnings[0] and "['refund', 'delivery'" in \
        step.warnings[0]
    assert make({"linear": linear(kept=True)}).path == "kept_rows"  # its statistics keep marking the kept rows
    with_old = make({}, row_labels=rows("repair", *OLD))
    assert with_old.path == "adapt" and not with_old.warnings  # every old label as well as the new one: adapted once
    assert make({}, IncrementConfig(adapt_trained_elsewhere=False, head="linear"), rows("repair", *OLD)).path == \
        "kept_rows"
    few_old = make({}, row_labels=rows("repair", repeat=10) + rows(*OLD))
    assert few_old.path == "kept_rows"  # a few rows per old label do not represent them


def test_the_kernel_head_starts_with_a_base_or_beside_multi_label_kept_rows_and_continues_its_statistics():
    config = IncrementConfig(head="kernel")
    base = make({}, config, rows(*OLD), kind="base")
    assert base.heads == ("linear", "kernel") and base.starts == ("linear", "kernel") and base.answering == "kernel"
    continued = make({"linear": linear(), "kernel": kernel()}, config)
    assert continued.starts == () and "pooled top layers" in continued.features[1] and not continued.dropped
    beside = make({}, config, [["repair"], []], multi_label=True)
    assert beside.path == "kept_rows" and beside.starts == ("linear", "kernel")
    adapted = make({}, config, rows("repair", *OLD))
    assert adapted.path == "adapt" and adapted.starts == ("linear", "kernel")  # every label's rows: it can start
    # A head trained with another size keeps its own (kernel_features only sizes a head that starts).
    assert make({"linear": linear(), "kernel": kernel(64)}, config).answering == "kernel"


def test_beside_the_kept_rows_of_a_single_label_classifier_trained_elsewhere_the_layer_lda_answers():
    # The kernel head cannot start there (no statistics of the old labels); its place is taken by the head made for
    # that case, started again in every such increment (it keeps no statistics).
    for saved in ({}, {"linear": linear(kept=True)}):
        step = make(saved, IncrementConfig(head="kernel"))
        assert step.path == "kept_rows" and step.heads == ("linear", "beside_kept")
        assert step.answering == "beside_kept" and "beside_kept" in step.starts and step.fallback is None
        assert "layer LDA beside the kept rows" in step.describe()
    # Multi-label: the kernel head itself starts beside the kept Linear; `head=linear` asks for the Linear alone.
    assert make({}, IncrementConfig(head="kernel"), [["repair"], []], multi_label=True).answering == "kernel"
    assert make({}, IncrementConfig(head="linear")).answering == "linear"


@pytest.mark.parametrize("saved, row_labels, reason", [
    ({"linear": linear()}, None, "its base was trained without it"),
    ({"linear": linear(), "kernel": kernel(statistics=False)}, None, "were not saved or pushed with it"),
])
def test_where_the_kernel_head_cannot_start_or_continue_the_linear_answers_and_one_line_says_why(saved, row_labels,
                                                                                                  reason):
    step = make(saved, IncrementConfig(head="kernel"), row_labels)
    assert step.answering == "linear" and step.heads == ("linear",) and "kernel" not in step.starts
    assert step.fallback is not None and reason in step.fallback and step.warnings[-1] == step.fallback
    assert f"the Linear answers: {step.fallback}" in step.describe()
    assert step.dropped == (("kernel",) if "kernel" in saved else ())


def test_a_saved_kernel_head_not_asked_for_is_dropped_with_a_warning():
    step = make({"linear": linear(), "kernel": kernel()})
    assert step.dropped == ("kernel",) and step.answering == "linear"
    assert any("it is dropped" in message for message in step.warnings)
    assert "is dropped" in step.describe()


def test_the_gradient_path_distills_only_when_it_adds_labels_to_old_ones():
    config = IncrementConfig(head="trained", finetune_layers=0)
    step = make({"linear": linear()}, config)
    assert (step.path, step.heads, step.warm_up, step.cache_features, step.teacher) == (
        "gradient", (), True, True, True)
    assert not make({}, config, rows(*OLD)).teacher  # nothing new to learn beside the old labels
    assert not make({}, IncrementConfig(head="trained", distill_weight=0.0)).teacher
    assert "trained by gradient after a warm-up" in step.describe()


def test_multi_label_rows_annotate_the_new_labels_and_old_labels_in_them_are_warned_about():
    step = make({"linear": linear()}, row_labels=[["repair", "refund"], ["repair"], []], multi_label=True)
    assert step.annotated == (3,) and "1 of 3 rows carry old labels" in step.warnings[0]
    assert make({"linear": linear()}, IncrementConfig(multi_label_annotation="all", head="linear"), [["repair"], []],
                multi_label=True).annotated is None
    with pytest.raises(DataError, match="brings no new label"):
        make({"linear": linear()}, row_labels=[["refund"]], multi_label=True)
    with pytest.raises(DataError, match=r"carried by every row"):
        make({}, row_labels=[["repair"], ["repair", "colour"]], multi_label=True)
    alone = make({}, row_labels=[["repair"], ["colour"]], multi_label=True)
    assert any("Every row of this increment carries one of the new labels" in m for m in alone.warnings)


def test_declared_new_labels_refuse_other_unknown_names():
    step = make({"linear": linear()}, IncrementConfig(new_labels=["repair", "colour"], head="linear"),
                rows("repair"))
    assert step.new_labels == ("repair", "colour") and step.num_labels == 5
    with pytest.raises(DataError, match=r"label\(s\) \['typo'\] that the model does not know"):
        make({"linear": linear()}, IncrementConfig(new_labels=["repair"], head="linear"), rows("repair", "typo"))


def test_the_plan_is_frozen():
    step = make({"linear": linear()})
    with pytest.raises(AttributeError):
        step.path = "gradient"
