"""The frozen pass: batches by length, cached features, and closed-form statistics streamed batch by batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from datasets import load_dataset
from text_models import text_dataset, tiny_bert, tokenizer, training_args

from hf_incr import IncrementConfig, train_increment
from hf_incr.closed_form import RidgeStatistics
from hf_incr.features import accumulate_head_statistics, extract_head_inputs, head_input_batches
from hf_incr.random_features import RandomFeatureHead

LABELS = ["refund", "delivery", "login"]


def test_batches_cover_every_row_once_sorted_by_length():
    tok = tokenizer()
    texts = ["a b c d e f", "a", "a b c", "a b", "a b c d"]
    seen = []
    lengths = []
    for index, inputs in head_input_batches(tiny_bert(LABELS), tok, texts, batch_size=2, show_progress=False):
        assert inputs.shape == (len(index), 32)
        seen += index
        lengths += [len(tok(texts[i])["input_ids"]) for i in index]
    assert sorted(seen) == list(range(len(texts))) and lengths == sorted(lengths)


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
