"""Data alignment: label names, ClassLabels in any order, multi-label lists, files, and clear errors."""

from __future__ import annotations

import json

import pytest
from datasets import ClassLabel, Dataset, Features, List, Value

from hf_incr import DataError
from hf_incr.data import encode_labels, find_new_labels, label_names_in, load_text_data, tokenize


def test_classlabel_in_another_order_maps_onto_the_model_ids():
    feature = ClassLabel(names=["z", "x", "y"])
    data = Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 2]},
                             features=Features({"text": Value("string"), "label": feature}))
    assert label_names_in(data) == ["z", "x", "y"]
    assert find_new_labels(data, {"x": 0, "y": 1}) == ["z"]
    encoded = encode_labels(data, {"x": 0, "y": 1, "z": 2})
    assert encoded["labels"] == [2, 0, 1]


def test_string_labels_and_labels_differing_by_case_stay_distinct():
    data = Dataset.from_dict({"text": ["a", "b"], "label": ["Refund", "refund"]})
    assert encode_labels(data, {"refund": 0, "Refund": 1})["labels"] == [1, 0]


def test_multilabel_lists_become_multi_hot_floats():
    data = Dataset.from_dict({"text": ["a", "b"], "label": [["x", "z"], ["y"]]})
    encoded = encode_labels(data, {"x": 0, "y": 1, "z": 2})
    assert encoded["labels"] == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    assert encoded.features["labels"] == List(Value("float32"))


def test_unknown_labels_are_listed():
    data = Dataset.from_dict({"text": ["a", "b"], "label": ["x", "q"]})
    with pytest.raises(DataError, match=r"\['q'\] missing from the model's labels"):
        encode_labels(data, {"x": 0})


def test_declared_new_labels():
    data = Dataset.from_dict({"text": ["a", "b"], "label": ["x", "new"]})
    assert find_new_labels(data, {"x": 0}, new_labels=["new", "later"]) == ["new", "later"]
    with pytest.raises(DataError, match="not among `new_labels`"):
        find_new_labels(data, {"x": 0}, new_labels=["other"])


def test_lists_on_a_single_label_model_are_refused():
    data = Dataset.from_dict({"text": ["a"], "label": [["x"]]})
    with pytest.raises(DataError, match="multi_label=True"):
        encode_labels(data, {"x": 0}, multi_label=False)


def test_rows_without_label_are_refused():
    data = Dataset.from_dict({"text": ["a", "b"], "label": ["x", None]})
    with pytest.raises(DataError, match=r"no label .*rows \[1\]"):
        encode_labels(data, {"x": 0})


def test_csv_and_jsonl_files(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\nhello there,greet\nbye now,leave\n")
    rows = [{"text": "hi", "labels": ["greet", "leave"]}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert load_text_data(tmp_path / "d.csv")["label"] == ["greet", "leave"]
    assert load_text_data(tmp_path / "d.jsonl")["labels"] == [["greet", "leave"]]
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"expected a \.csv"):
        load_text_data(tmp_path / "d.xlsx")


def test_tokenize_truncates_long_texts():
    from text_models import tokenizer

    data = Dataset.from_dict({"text": ["word " * 500]})
    assert len(tokenize(data, tokenizer(), max_length=16)["input_ids"][0]) == 16
