"""Scale of the frozen pass behind a closed-form increment: time and peak memory against the number of texts.

Each measurement runs in a fresh process (so its peak resident memory is its own), over BANKING77's training texts
repeated up to ``--sizes`` rows. The texts and labels stay in a datasets ``Dataset`` (Arrow, memory-mapped from the
datasets cache: ``concatenate_datasets`` of the split repeated), as a user feeds them, never a Python list. Modes:

  streamed  ``hf_incr.frozen_pass`` on ``dataset["text"]`` feeding a ``hf_incr.heads.LinearHead`` (``begin``,
            the pass, ``end``): batch by batch into the Linear's statistics (what an increment does), labels read
            per batch from Arrow; under ``accelerate launch --num_processes N`` each process encodes its share and
            the shares are summed.
  cached    ``hf_incr.extract_head_inputs`` first (the whole ``N x hidden`` float32 matrix), then one statistics
            update of the same head: how the pass worked before it was streamed.
  forward   a plain ``Trainer.predict`` over the same texts (the floor: the encoder alone).

(An ``iterable`` mode, the pass over ``dataset.to_iterable_dataset()``, measured a function hf_incr no longer has:
``train_increment`` now writes a streamed data set to disk first and runs the ``streamed`` pass over it.)

    python scripts/benchmarks/scale.py --sizes 10000 30000 100000 --modes streamed cached forward
    accelerate launch --multi_gpu --num_processes 2 scripts/benchmarks/scale.py --child streamed --rows 30000 \
        --use_cpu
    python scripts/benchmarks/scale.py --model_layers 1 --sizes 10000 300000 --modes streamed cached   # cheap encoder

Each row also records the machine's 1-minute load average when its run started (other work on the machine slows it).

Results: a Markdown table printed and written to ``--output_dir/scale.md`` with ``scale.json``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from accelerate import PartialState
from data import load_shared_split
from datasets import Dataset, concatenate_datasets
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)

from hf_incr import extract_head_inputs, find_classifier_head, frozen_pass
from hf_incr.heads import LinearHead, PassRows

# Not exported by hf_incr: the offline default encoder's folder (the product's own lookup of it).
from hf_incr.loading import default_encoder


@dataclass
class ScaleArguments:
    sizes: list[int] = field(default_factory=lambda: [10_000, 30_000, 100_000], metadata={"help": "Numbers of texts."})
    modes: list[str] = field(
        default_factory=lambda: ["streamed", "cached", "forward"],
        metadata={"help": "streamed / cached / forward (see the module docstring)."},
    )
    processes: list[int] = field(
        default_factory=lambda: [1], metadata={"help": "Process counts for `streamed` (2: accelerate launch, gloo)."}
    )
    model_layers: int = field(
        default=0, metadata={"help": "Keep only this many encoder layers of MiniLM (0: all 6): a cheaper encoder."}
    )
    batch_size: int = field(default=64, metadata={"help": "Encoder batch size."})
    max_length: int = field(default=64, metadata={"help": "Tokens per text."})
    output_dir: str = field(default="bench_results/scale", metadata={"help": "Where scale.md and scale.json go."})
    child: str | None = field(default=None, metadata={"help": "Internal: run one measurement in this process."})
    rows: int = field(default=0, metadata={"help": "Internal: the number of texts of a child run."})
    use_cpu: bool = field(default=False, metadata={"help": "Run on the CPU even if a GPU is present."})


def _data(rows: int) -> tuple[Dataset, dict[str, int]]:
    """BANKING77's training split repeated to ``rows`` rows (``text``, ``label`` names), memory-mapped Arrow (the
    datasets cache of the JSON file; nothing is written, so parallel processes share it), and the label ids."""
    base = load_shared_split(None, "banking77", "train").select_columns(["text", "label"])
    label2id = {name: i for i, name in enumerate(sorted(set(base["label"])))}
    return concatenate_datasets([base] * -(-rows // len(base))).select(range(rows)), label2id  # a slice, no copy


def _model(args: ScaleArguments):
    path = default_encoder()
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=77)
    if args.model_layers:
        model.bert.encoder.layer = model.bert.encoder.layer[: args.model_layers]
    device = "cpu" if args.use_cpu or not torch.cuda.is_available() else "cuda"
    return model.to(device).eval(), AutoTokenizer.from_pretrained(path), device


def run_child(args: ScaleArguments) -> dict:
    PartialState(cpu=args.use_cpu)  # joins the process group under accelerate launch
    model, tokenizer, device = _model(args)
    data, label2id = _data(args.rows)
    labels = data.select_columns(["label"])  # a batch's labels are read from Arrow when it needs them

    def ids(names) -> torch.Tensor:
        return torch.tensor([label2id[name] for name in names])

    location = find_classifier_head(model)
    # The Linear's statistics, as an increment of 77 labels over every row starts them (all rows its own).
    head = LinearHead.start(model, location, multi_label=False)
    rows = PassRows(num_old=0, num_labels=77, annotated=None, own=args.rows, total=args.rows)
    start = time.perf_counter()
    encoded = args.rows
    if args.child == "streamed":
        head.begin(rows)
        encoded = frozen_pass(
            model, tokenizer, data["text"], [head], lambda index: ids(labels[index]["label"]), location=location,
            batch_size=args.batch_size, max_length=args.max_length, device=device, show_progress=False,
        )
        head.end()  # under accelerate launch: every process's share summed
    elif args.child == "cached":
        features = extract_head_inputs(model, tokenizer, data["text"], location=location, batch_size=args.batch_size,
                                       max_length=args.max_length, device=device, show_progress=False)
        head.statistics.update(features, ids(data["label"]))  # every process holds every row: nothing to sum
    else:
        data = data.map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_length), batched=True,
            remove_columns=["text", "label"],
        )
        trainer = Trainer(model=model, args=TrainingArguments(
            output_dir=str(Path(args.output_dir) / "predict"), per_device_eval_batch_size=args.batch_size,
            report_to="none", use_cpu=device == "cpu", disable_tqdm=True,
        ), data_collator=DataCollatorWithPadding(tokenizer))
        trainer.predict(data)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"mode": args.child, "rows": args.rows, "seconds": seconds, "texts_per_s": args.rows / seconds,
            "peak_rss_mb": peak, "rows_encoded_here": encoded,
            "process": int(os.environ.get("RANK", 0)), "processes": int(os.environ.get("WORLD_SIZE", 1))}


def _measure(args: ScaleArguments, mode: str, rows: int, processes: int, out: Path) -> list[dict]:
    result = out / f"{mode}-{rows}-{processes}.json"
    flags = [__file__, "--child", mode, "--rows", str(rows), "--batch_size", str(args.batch_size),
             "--max_length", str(args.max_length), "--model_layers", str(args.model_layers),
             "--output_dir", str(out)] + (["--use_cpu", "true"] if args.use_cpu else [])
    if processes == 1:
        command = [sys.executable, *flags]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   *flags, "--use_cpu", "true"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"} if processes > 1 else dict(os.environ)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} {rows} x{processes} failed:\n{done.stderr[-3000:]}")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    result.write_text(json.dumps(lines, indent=1))
    return lines


def main(args: ScaleArguments) -> None:
    if args.child:
        print(json.dumps(run_child(args)), flush=True)
        return
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows_out = []
    for rows in args.sizes:
        for mode in args.modes:
            for processes in args.processes if mode == "streamed" else [1]:
                load = os.getloadavg()[0]
                runs = _measure(args, mode, rows, processes, out)
                slowest = max(run["seconds"] for run in runs)
                rows_out.append({"mode": mode, "rows": rows, "processes": processes, "seconds": slowest,
                                 "texts_per_s": rows / slowest, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                                 "max_rows_per_process": max(r["rows_encoded_here"] for r in runs), "load": load})
                print(rows_out[-1], flush=True)
    layers = args.model_layers or 6
    table = [f"MiniLM ({layers} layers), batch {args.batch_size}, max_length {args.max_length}, "
             f"{'CPU' if args.use_cpu or not torch.cuda.is_available() else 'GPU'}, {os.cpu_count()} cores", "",
             "| mode | texts | processes | seconds | texts/s | peak RSS (MB) | rows per process | load at start |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {r['mode']} | {r['rows']:,} | {r['processes']} | {r['seconds']:.1f} | {r['texts_per_s']:.0f} | "
              f"{r['peak_rss_mb']:.0f} | {r['max_rows_per_process']:,} | {r['load']:.2f} |" for r in rows_out]
    (out / "scale.md").write_text("\n".join(table) + "\n")
    (out / "scale.json").write_text(json.dumps(rows_out, indent=1))
    print("\n".join(table))


if __name__ == "__main__":
    (script_args,) = HfArgumentParser(ScaleArguments).parse_args_into_dataclasses()
    main(script_args)
