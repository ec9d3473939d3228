"""Data alignment: label names, ClassLabels in any order, multi-label lists, files, and clear errors."""

from __future__ import annotations

import json

import pytest
from datasets import ClassLabel, Dataset, Features, List, Value

from hf_incr import DataError
from hf_incr.data import (
    encode_labels,
    find_new_labels,
    label_names_in,
    load_text_data,
    map_style,
    materialize_stream,
    tokenize,
)


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


def _stream(texts, labels):
    return Dataset.from_dict({"text": texts, "label": labels}).to_iterable_dataset(num_shards=2)


def test_a_stream_is_written_once_with_its_rows_and_a_fingerprint_of_its_content(tmp_path):
    texts, labels = [f"text {i}" for i in range(10)], ["a", "b"] * 5
    written = materialize_stream(_stream(texts, labels), tmp_path / "one")
    assert written["text"] == texts and written["label"] == labels
    # The same rows give the same fingerprint; one changed row another (datasets alone would see the same code).
    same = materialize_stream(_stream(texts, labels), tmp_path / "two")
    changed = materialize_stream(_stream(texts[:-1] + ["text x"], labels), tmp_path / "three")
    assert written._fingerprint == same._fingerprint != changed._fingerprint
    assert len(written._fingerprint) == 16


def test_a_used_folder_and_an_empty_stream_are_refused(tmp_path):
    materialize_stream(_stream(["a", "b"], ["x", "y"]), tmp_path / "used")
    with pytest.raises(DataError, match=r"not empty.*fresh folder"):
        materialize_stream(_stream(["c", "d"], ["x", "y"]), tmp_path / "used")
    with pytest.raises(DataError, match="yielded no rows"):
        materialize_stream(_stream(["a", "b"], ["x", "y"]).filter(lambda row: False), tmp_path / "empty")


def test_map_style_writes_streams_to_a_temporary_folder_deleted_on_exit(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    in_memory = Dataset.from_dict({"text": ["kept"], "label": ["x"]})
    with map_style(_stream(["a", "b"], ["x", "y"]), in_memory, None, names=("training data", "eval data", "x")) as (
        train, evaluation, nothing,
    ):
        assert isinstance(train, Dataset) and train["text"] == ["a", "b"]
        assert evaluation is in_memory and nothing is None
        assert len(list((tmp_path / "cache").iterdir())) == 1
    assert list((tmp_path / "cache").iterdir()) == []
