"""The frozen pass (hf_incr.features): batches by length, every consumer fed from the same forward pass, cached rows,
and a datasets column read a chunk at a time."""

from __future__ import annotations

import pytest
import torch
from datasets import load_dataset
from datasets.arrow_dataset import Column
from text_models import text_dataset, tiny_bert, tokenizer, training_args

from hf_incr import IncrementConfig, features, train_increment
from hf_incr.data import check_texts
from hf_incr.errors import DataError
from hf_incr.features import (
    RowCache,
    encode_for_heads,
    extract_head_inputs,
    frozen_pass,
    length_sorted_batches,
)
from hf_incr.head import find_classifier_head
from hf_incr.heads import ClassStatistics, KernelHead, LinearHead, PassRows

LABELS = ["refund", "delivery", "login"]


class _Recorder:
    """A consumer that keeps the batches as the pass feeds them."""

    feature_key = features.HEAD_INPUTS

    def __init__(self):
        self.batches = []

    def capture(self, model, location):
        return features.HeadInputsCapture(model, location)

    def feed(self, rows, batch_features, targets):
        self.batches.append((rows, batch_features, targets))


def _relative_error(ours, reference):
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def _linear_head(num_labels, rows):
    head = LinearHead(ClassStatistics(32))
    head.begin(PassRows(num_old=0, num_labels=num_labels, annotated=None, own=rows, total=rows))
    return head


def test_batches_cover_every_row_once_longest_first():
    tok = tokenizer()
    texts = ["a b c d e f", "a", "a b c", "a b", "a b c d"]
    batches, read = length_sorted_batches(tok, texts, range(len(texts)), 2, 128)
    assert [len(index) for index in batches] == [2, 2, 1]
    assert read(batches[0]) == [texts[i] for i in batches[0]]
    recorder = _Recorder()
    encoded = frozen_pass(tiny_bert(LABELS), tok, texts, [recorder], batch_size=2, show_progress=False)
    seen, lengths = [], []
    for index, inputs, targets in recorder.batches:
        assert inputs.shape == (len(index), 32) and inputs.dtype == torch.float32 and targets is None
        seen += index
        lengths += [len(tok(texts[i])["input_ids"]) for i in index]
    assert encoded == len(texts)
    assert sorted(seen) == list(range(len(texts))) and lengths == sorted(lengths, reverse=True)
    assert [list(index) for index, _, _ in recorder.batches] == [index.tolist() for index in batches]


def test_one_pass_feeds_every_head_what_it_reads_and_the_statistics_equal_those_of_the_cached_features(
    monkeypatch,
):
    model, tok = tiny_bert(LABELS), tokenizer()
    data = text_dataset(LABELS, 7)
    labels = torch.tensor([LABELS.index(name) for name in data["label"]])
    cached = extract_head_inputs(model, tok, data["text"], batch_size=4, show_progress=False)
    reference = ClassStatistics(32).update(cached, labels)

    streamed = _linear_head(3, len(data))
    location = find_classifier_head(model)
    kernel = KernelHead.start(model, location, config=IncrementConfig(head="kernel", kernel_features=20),
                              multi_label=False, seed=1)
    kernel.begin(streamed.rows)
    model.train()
    encoded = frozen_pass(model, tok, data["text"], [streamed, kernel], lambda index: labels[index], batch_size=4,
                          show_progress=False)
    assert model.training  # the model's mode is restored
    streamed.end()
    kernel.end()
    assert encoded == len(data) and streamed.statistics.num_rows == reference.num_rows == len(data)
    for ours, theirs in ((streamed.statistics.sums, reference.sums), (streamed.statistics.scatter, reference.scatter)):
        assert _relative_error(ours, theirs) <= 1e-10
    # The kernel head read the pooled top layers in the same pass: its statistics are those of the same rows' pooled
    # layers, read for every head at once (what each head reads, by head name).
    monkeypatch.setattr(features, "BATCH_SIZE", 4)
    inputs = encode_for_heads(model, tok, data["text"], {"linear": streamed, "kernel": kernel}, show_progress=False)
    assert torch.equal(inputs["linear"], cached) and inputs["kernel"].shape == (len(data), 64)
    again = KernelHead.start(model, location, config=IncrementConfig(head="kernel", kernel_features=20),
                             multi_label=False, seed=1)
    again.begin(streamed.rows)
    again.add(list(range(len(data))), inputs["kernel"], labels)
    again.end()
    assert again.config.bandwidth == kernel.config.bandwidth
    assert _relative_error(kernel.statistics[0].scatter, again.statistics[0].scatter) <= 1e-10
    assert _relative_error(kernel.statistics[0].sums, again.statistics[0].sums) <= 1e-10


def test_a_row_cache_keeps_every_rows_features_in_row_order():
    model, tok = tiny_bert(LABELS), tokenizer()
    texts = list(text_dataset(LABELS, 3)["text"])
    cache = RowCache(len(texts))
    frozen_pass(model, tok, texts, [cache], batch_size=2, show_progress=False)
    cached = cache.end()
    assert cached is cache.features and cached.shape == (len(texts), 32)
    one_by_one = torch.cat([extract_head_inputs(model, tok, [text], show_progress=False) for text in texts])
    torch.testing.assert_close(cached, one_by_one, rtol=1e-5, atol=1e-6)


def test_a_memory_mapped_data_set_gives_the_same_head_as_an_in_memory_one(tmp_path):
    tok = tokenizer()
    base = IncrementConfig(head="linear", finetune_layers=0, distill_weight=0.0)
    in_memory = text_dataset(["repair", "colour"], 6)
    in_memory.to_json(str(tmp_path / "new.jsonl"))
    on_disk = load_dataset("json", data_files=str(tmp_path / "new.jsonl"), split="train")  # Arrow, memory-mapped
    heads = []
    for data in (in_memory, on_disk):
        model = tiny_bert(LABELS)
        first = train_increment(model, tok, text_dataset(LABELS, 5), config=base, args=training_args(tmp_path),
                                save=False, kind="base")
        train_increment(model, tok, data, config=base, args=training_args(tmp_path), save=False, heads=first.heads)
        heads.append(model.classifier.weight.detach().clone())
    torch.testing.assert_close(heads[0], heads[1], rtol=1e-6, atol=1e-7)


def _labelled(labels, n):
    data = text_dataset(labels, n)
    return data.add_column("labels", [labels.index(name) for name in data["label"]])


def test_a_column_is_read_in_chunks_and_gives_exactly_the_statistics_of_a_list(monkeypatch):
    model, tok = tiny_bert(LABELS), tokenizer()
    data = _labelled(LABELS, 7)
    labels = torch.tensor(data["labels"])
    listed = _linear_head(3, len(data))
    frozen_pass(model, tok, list(data["text"]), [listed], lambda index: labels[index], batch_size=4,
                show_progress=False)
    listed.end()

    def no_full_read(self):
        raise AssertionError("the column was read whole into Python")

    # Small length chunks, and a column that must not be turned into a list: the texts come from Arrow by chunk.
    monkeypatch.setattr(features, "_LENGTH_CHUNK", 5)
    monkeypatch.setattr(Column, "__iter__", no_full_read)
    chunked = _linear_head(3, len(data))
    frozen_pass(model, tok, data["text"], [chunked], lambda index: labels[index], batch_size=4, show_progress=False)
    chunked.end()
    for name in ("counts", "sums", "scatter"):
        assert torch.equal(getattr(chunked.statistics, name), getattr(listed.statistics, name)), name
    assert chunked.statistics.num_rows == listed.statistics.num_rows == len(data)


def test_a_streamed_data_set_is_refused_where_a_map_style_one_is_needed():
    data = _labelled(LABELS, 2)
    with pytest.raises(DataError, match=r"IterableDataset.*materialize_stream"):
        check_texts(data.to_iterable_dataset(), what="eval data")
