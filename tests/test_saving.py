"""Atomic saves: a failure while saving leaves the previous model folder as it was."""

from __future__ import annotations

import pytest
from text_models import tiny_bert, tokenizer
from transformers import AutoModelForSequenceClassification

from hf_incr import add_labels
from hf_incr.lineage import append_record, get_lineage, make_record
from hf_incr.saving import save_increment


def test_failed_save_keeps_the_previous_folder(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    first = tiny_bert(["a", "b"])
    save_increment(first, folder, tokenizer())
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "keep.txt").write_text("resume me")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

    grown = tiny_bert(["a", "b"])
    add_labels(grown, ["c"])

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("hf_incr.saving.write_model_card", broken)
    with pytest.raises(OSError, match="disk full"):
        save_increment(grown, folder, tokenizer())
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert after == before
    assert AutoModelForSequenceClassification.from_pretrained(folder).config.num_labels == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.")], "a temporary folder was left behind"

    monkeypatch.undo()
    save_increment(grown, folder, tokenizer())
    assert AutoModelForSequenceClassification.from_pretrained(folder).config.num_labels == 3
    assert (folder / "checkpoints" / "keep.txt").read_text() == "resume me"


def test_lineage_is_not_duplicated_by_a_rerun():
    model = tiny_bert(["a"])
    record = make_record(kind="increment", labels_added=["b"], label_ids=[1], base_model="x", recipe={},
                         metrics={"after": {"accuracy": float("nan")}}, num_labels=2, data_fingerprint="abc")
    append_record(model, record)
    append_record(model, dict(record))
    lineage = get_lineage(model)
    assert len(lineage) == 1 and lineage[0]["increment"] == 0
    assert lineage[0]["metrics"]["after"]["accuracy"] is None  # NaN is not JSON: stored as null
    other = dict(record, data_fingerprint="def", labels_added=["c"])
    append_record(model, other)
    assert [r["increment"] for r in get_lineage(model)] == [0, 1]
