"""The frozen pass: batches by length, cached features, and closed-form statistics streamed batch by batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, load_dataset
from datasets.arrow_dataset import Column
from text_models import text_dataset, tiny_bert, tokenizer, training_args

from hf_incr import IncrementConfig, features, train_increment
from hf_incr.closed_form import RidgeStatistics
from hf_incr.data import check_texts
from hf_incr.errors import DataError
from hf_incr.features import (
    accumulate_head_statistics,
    accumulate_streamed_head_statistics,
    extract_head_inputs,
    head_input_batches,
    streamed_head_input_batches,
)
from hf_incr.random_features import RandomFeatureHead

LABELS = ["refund", "delivery", "login"]


def test_batches_cover_every_row_once_longest_first():
    tok = tokenizer()
    texts = ["a b c d e f", "a", "a b c", "a b", "a b c d"]
    seen = []
    lengths = []
    for index, inputs in head_input_batches(tiny_bert(LABELS), tok, texts, batch_size=2, show_progress=False):
        assert inputs.shape == (len(index), 32)
        seen += index
        lengths += [len(tok(texts[i])["input_ids"]) for i in index]
    assert sorted(seen) == list(range(len(texts))) and lengths == sorted(lengths, reverse=True)


def test_streamed_statistics_equal_those_of_the_cached_features():
    model, tok = tiny_bert(LABELS), tokenizer()
    data = text_dataset(LABELS, 7)
    labels = torch.tensor([LABELS.index(name) for name in data["label"]])
    targets = F.one_hot(labels, 3).double()
    features = extract_head_inputs(model, tok, data["text"], batch_size=4, show_progress=False)
    cached = RidgeStatistics.empty(32, 3).update(features, targets)
    cached_random = RandomFeatureHead.new(32, 20, 3, seed=1).update(features, targets)

    streamed = RidgeStatistics.empty(32, 3)
    random_head = RandomFeatureHead.new(32, 20, 3, seed=1)
    random_share = random_head.accumulator()
    encoded = accumulate_head_statistics(
        model, tok, data["text"], lambda index: targets[index], [streamed, random_share], batch_size=4,
        show_progress=False,
    )
    assert encoded == len(data) and streamed.count == cached.count == len(data)
    for ours, reference in ((streamed.gram, cached.gram), (streamed.cross, cached.cross),
                            (random_share.statistics.gram, cached_random.gram)):
        assert ((ours - reference).abs().max() / reference.abs().max()) <= 1e-10


def test_a_memory_mapped_data_set_gives_the_same_head_as_an_in_memory_one(tmp_path):
    tok = tokenizer()
    base = IncrementConfig(closed_form_head=True, finetune_layers=0, distill_weight=0.0)
    in_memory = text_dataset(["repair", "colour"], 6)
    in_memory.to_json(str(tmp_path / "new.jsonl"))
    on_disk = load_dataset("json", data_files=str(tmp_path / "new.jsonl"), split="train")  # Arrow, memory-mapped
    heads = []
    for data in (in_memory, on_disk):
        model = tiny_bert(LABELS)
        first = train_increment(model, tok, text_dataset(LABELS, 5), config=base, args=training_args(tmp_path),
                                save=False, kind="base")
        train_increment(model, tok, data, config=base, args=training_args(tmp_path), save=False,
                        ridge_statistics=first.ridge_statistics)
        heads.append(model.classifier.weight.detach().clone())
    torch.testing.assert_close(heads[0], heads[1], rtol=1e-6, atol=1e-7)


def _labelled(labels, n):
    data = text_dataset(labels, n)
    return data.add_column("labels", [labels.index(name) for name in data["label"]])


def _one_hot(num_labels):
    return lambda batch: F.one_hot(torch.tensor(batch["labels"]), num_labels).double()


def test_a_column_is_read_in_chunks_and_gives_exactly_the_statistics_of_a_list(monkeypatch):
    model, tok = tiny_bert(LABELS), tokenizer()
    data = _labelled(LABELS, 7)
    targets = F.one_hot(torch.tensor(data["labels"]), 3).double()
    listed = RidgeStatistics.empty(32, 3)
    accumulate_head_statistics(model, tok, list(data["text"]), lambda index: targets[index], [listed], batch_size=4,
                               show_progress=False)

    def no_full_read(self):
        raise AssertionError("the column was read whole into Python")

    # Small length chunks, and a column that must not be turned into a list: the texts come from Arrow by chunk.
    monkeypatch.setattr(features, "_LENGTH_CHUNK", 5)
    monkeypatch.setattr(Column, "__iter__", no_full_read)
    chunked = RidgeStatistics.empty(32, 3)
    accumulate_head_statistics(model, tok, data["text"], lambda index: targets[index], [chunked], batch_size=4,
                               show_progress=False)
    assert torch.equal(chunked.gram, listed.gram) and torch.equal(chunked.cross, listed.cross)
    assert chunked.count == listed.count == len(data)


def _relative_error(ours, reference):
    return ((ours - reference).abs().max() / reference.abs().max()).item()


@pytest.mark.parametrize("window, batch_size, num_shards", [(1000, 4, 1), (5, 1, 3)])
def test_a_streamed_iterable_dataset_gives_the_statistics_and_head_of_the_in_memory_one(window, batch_size,
                                                                                        num_shards):
    model, tok = tiny_bert(LABELS), tokenizer()
    data = _labelled(LABELS, 7)
    targets = F.one_hot(torch.tensor(data["labels"]), 3).double()
    in_memory = RidgeStatistics.empty(32, 3)
    accumulate_head_statistics(model, tok, data["text"], lambda index: targets[index], [in_memory],
                               batch_size=batch_size, show_progress=False)
    streamed = RidgeStatistics.empty(32, 3)
    random_head = RandomFeatureHead.new(32, 20, 3, seed=1)
    random_share = random_head.accumulator()
    # A window holding every row sorts like the in-memory pass (same batches); a small one batches differently,
    # so there one text a batch keeps each text's features independent of its batch (padding changes float32 bits).
    encoded = accumulate_streamed_head_statistics(
        model, tok, data.to_iterable_dataset(num_shards=num_shards), _one_hot(3), [streamed, random_share],
        window=window, batch_size=batch_size, show_progress=False,
    )
    assert encoded == streamed.count == len(data)
    assert _relative_error(streamed.gram, in_memory.gram) <= 1e-10
    assert _relative_error(streamed.cross, in_memory.cross) <= 1e-10
    for ours, reference in zip(streamed.solve(1.0), in_memory.solve(1.0)):
        assert _relative_error(ours, reference) <= 1e-10
    reference_random = RandomFeatureHead.new(32, 20, 3, seed=1)
    reference_random.update(extract_head_inputs(model, tok, data["text"], batch_size=1, show_progress=False), targets)
    assert _relative_error(random_share.statistics.gram, reference_random.gram) <= 1e-6


def test_the_streamed_batches_go_longest_first_within_the_window_and_carry_their_columns():
    tok = tokenizer()
    texts = ["a b c d e f", "a", "a b c", "a b", "a b c d", "a b c d e"]
    stream = Dataset.from_dict({"text": texts, "labels": list(range(6))}).to_iterable_dataset()
    seen = []
    for batch, inputs in streamed_head_input_batches(tiny_bert(LABELS), tok, stream, window=3, batch_size=2,
                                                     show_progress=False):
        assert inputs.shape == (len(batch["text"]), 32) and [texts[i] for i in batch["labels"]] == batch["text"]
        seen.append(batch["labels"])
    # Windows [0, 1, 2] and [3, 4, 5], each sorted by length, longest first.
    assert seen == [[0, 2], [1], [5, 4], [3]]


def test_the_wrong_kind_of_data_set_is_refused_with_the_function_to_use(tmp_path):
    model, tok = tiny_bert(LABELS), tokenizer()
    data = _labelled(LABELS, 2)
    with pytest.raises(DataError, match="accumulate_streamed_head_statistics"):
        accumulate_head_statistics(model, tok, data.to_iterable_dataset(), _one_hot(3), [], show_progress=False)
    with pytest.raises(DataError, match=r"got Dataset.*accumulate_head_statistics"):
        accumulate_streamed_head_statistics(model, tok, data, _one_hot(3), [], show_progress=False)
    with pytest.raises(DataError, match="no text column 'sentence'"):
        accumulate_streamed_head_statistics(model, tok, data.to_iterable_dataset(), _one_hot(3), [],
                                            text_column="sentence", show_progress=False)
    with pytest.raises(DataError, match=r"IterableDataset.*materialize_stream"):
        check_texts(data.to_iterable_dataset(), what="eval data")
