"""What an increment costs as a command-line user runs it, against one joint retraining and against the floor.

Per data set (the anchors' label order: names sorted, ``random.Random(seed).shuffle``, cut into equal increments),
every step is one ``hf-incr`` process run alone, with the defaults (the kernel head; the base fine-tunes its top two
layers), its training rows and, as eval data, the test rows of every label seen so far:

  base         ``hf-incr train-base`` on the first increment's labels
  increment t  ``hf-incr increment`` from the previous step's folder with the next labels' rows
  joint        ``hf-incr train-base`` on every label's rows at once (the same head): the retraining an increment
               replaces

Each process's wall time is split into start-up (interpreter and imports: the wall time less what the command
measured), loading, the frozen pass, the solve, evaluating, saving (the command's own timings). The floor of an
increment is its training and eval texts, in the same length-sorted batches of 64, through the encoder in a plain
``torch.no_grad()`` loop (timed here, in this process, on the model the increment started from), plus its solve.
``--help`` is timed against the import floor (torch, ``TrainingArguments``, ``HfArgumentParser``): the median of
``--repeats`` processes each.

    python scripts/benchmarks/cost.py --datasets banking77 clinc150 --data_dir ../shared/data      # ~40 min alone

Results: ``--output_dir/cost.md`` (tables) and ``cost.json``, printed at the end.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from data import label_order, load_shared_split
from transformers import AutoModelForSequenceClassification, AutoTokenizer, HfArgumentParser

INCREMENTS = {"banking77": 7, "clinc150": 15}
# One process of the command line, as `hf-incr` runs it, that also prints the command's own timings.
DRIVER = (
    "import json, sys\n"
    "from hf_incr.cli import parse_args, run_command\n"
    "result = run_command(sys.argv[1], *parse_args(sys.argv[2:]))\n"
    "print('HF_INCR_TIMINGS ' + json.dumps(result.timings))\n"
)
IMPORT_FLOOR = "import torch\nfrom transformers import HfArgumentParser, TrainingArguments\n"


@dataclass
class CostArguments:
    datasets: list[str] = field(default_factory=lambda: list(INCREMENTS), metadata={"help": "Data sets to run."})
    data_dir: str | None = field(default=None, metadata={"help": "The shared data (default: ../shared/data)."})
    output_dir: str = field(default="bench_cost", metadata={"help": "Where models, data files and results go."})
    seed: int = field(default=0, metadata={"help": "Label order and the runs' seed."})
    max_length: int = field(default=64, metadata={"help": "Tokens per text (the benchmarks' setting)."})
    joint: bool = field(default=True, metadata={"help": "Also time the joint retraining on every label."})
    max_increments: int | None = field(default=None, metadata={"help": "Stop after this many steps (smoke runs)."})
    rows_per_label: int | None = field(default=None, metadata={"help": "Keep this many training rows a label."})
    repeats: int = field(default=5, metadata={"help": "Processes timed for `--help` and the import floor."})
    threads: int = field(default=2, metadata={"help": "torch threads of every process."})


def write_jsonl(rows: list[dict], path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def steps(args: CostArguments, name: str, folder: Path) -> tuple[list[dict], dict]:
    """Every step's files: ``[{"labels", "train", "eval"}]`` in order, and the joint step's."""
    train = load_shared_split(args.data_dir, name, "train").to_list()
    test = load_shared_split(args.data_dir, name, "test").to_list()
    order = label_order(sorted({row["label"] for row in train}), args.seed)
    size = len(order) // INCREMENTS[name]
    cuts = [order[i * size : (i + 1) * size] for i in range(INCREMENTS[name])]
    if args.rows_per_label is not None:
        counts: dict[str, int] = {}
        kept = []
        for row in train:
            counts[row["label"]] = counts.get(row["label"], 0) + 1
            if counts[row["label"]] <= args.rows_per_label:
                kept.append(row)
        train = kept
    out, seen = [], []
    for t, labels in enumerate(cuts[: args.max_increments]):
        seen += labels
        out.append({
            "labels": labels,
            "train": write_jsonl([r for r in train if r["label"] in labels], folder / f"train_{t}.jsonl"),
            "eval": write_jsonl([r for r in test if r["label"] in seen], folder / f"eval_{t}.jsonl"),
        })
    joint = {"train": write_jsonl([r for r in train if r["label"] in seen], folder / "train_all.jsonl"),
             "eval": out[-1]["eval"]}
    return out, joint


def run_step(command: str, argv: list[str], threads: int) -> dict:
    """One command-line process: its wall time and the command's own timings."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", DRIVER, command, *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"`hf-incr {command}` failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("HF_INCR_TIMINGS "))
    timings = json.loads(line.split(" ", 1)[1])
    inside = timings.get("load_s", 0.0) + timings.get("total_s", 0.0) + timings.get("save_s", 0.0)
    return {"wall_s": wall, "startup_s": wall - inside, **timings}


def encoder_floor(model_dir: str, texts: list[str], max_length: int) -> float:
    """The texts, in length-sorted batches of 64, through the model in a plain ``torch.no_grad()`` loop."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(order), 64):
            batch = [texts[i] for i in order[start : start + 64]]
            model(**tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt"))
    return time.perf_counter() - started


def texts_of(*paths: str) -> list[str]:
    return [json.loads(line)["text"] for path in paths for line in Path(path).read_text().splitlines()]


def median_process(code: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(code, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_dataset(args: CostArguments, name: str) -> dict:
    folder = Path(args.output_dir) / name
    plan, joint = steps(args, name, folder / "data")
    common = ["--use_cpu", "--report_to", "none", "--save_strategy", "no", "--seed", str(args.seed),
              "--max_length", str(args.max_length), "--disable_tqdm", "true"]
    rows, previous = [], None
    for t, step in enumerate(plan):
        out = str(folder / f"step{t}")
        argv = ["--train_file", step["train"], "--eval_file", step["eval"], "--output_dir", out, *common]
        if previous is None:
            measured = run_step("train-base", argv, args.threads)
        else:
            floor = encoder_floor(previous, texts_of(step["train"], step["eval"]), args.max_length)
            measured = run_step("increment", ["--model_name_or_path", previous, *argv], args.threads)
            measured["floor_s"] = floor + measured.get("solve_s", 0.0)
        metrics = json.loads((Path(out) / "lineage.json").read_text())[-1]["metrics"]["after"]
        rows.append({"step": "base" if previous is None else f"increment {t}", "labels": len(step["labels"]),
                     "train_rows": len(texts_of(step["train"])), "accuracy": metrics.get("accuracy"),
                     **measured})
        print(f"[{name}] {rows[-1]['step']}: {measured['wall_s']:.1f} s", flush=True)
        previous = out
    result = {"dataset": name, "steps": rows}
    if args.joint:
        argv = ["--train_file", joint["train"], "--eval_file", joint["eval"], "--output_dir",
                str(folder / "joint"), *common]
        result["joint"] = run_step("train-base", argv, args.threads)
        lineage = json.loads((folder / "joint" / "lineage.json").read_text())
        result["joint"]["accuracy"] = lineage[-1]["metrics"]["after"].get("accuracy")
        print(f"[{name}] joint: {result['joint']['wall_s']:.1f} s", flush=True)
    return result


def markdown(report: dict) -> str:
    lines = [f"`hf-incr --help` {report['help_s']:.2f} s against the import floor {report['import_floor_s']:.2f} s "
             f"(median of {report['repeats']} processes each).", ""]
    for result in report["datasets"]:
        lines += [f"### {result['dataset']}", "",
                  "| step | rows | wall s | start-up | load | frozen pass | solve | evaluate | save | in-process | "
                  "floor | in-process / floor | accuracy |", "|" + "---|" * 13]
        for r in result["steps"]:
            floor = r.get("floor_s")
            lines.append(
                f"| {r['step']} | {r['train_rows']} | {r['wall_s']:.1f} | {r['startup_s']:.1f} | "
                f"{r.get('load_s', 0):.1f} | {r.get('encode_s', 0):.1f} | {r.get('solve_s', 0):.1f} | "
                f"{r.get('evaluate_s', 0):.1f} | {r.get('save_s', 0):.1f} | {r.get('total_s', 0):.1f} | "
                + (f"{floor:.1f} | {r['total_s'] / floor:.2f}x" if floor else "— | —")
                + f" | {100 * (r['accuracy'] or 0):.1f} |")
        increments = sum(r["wall_s"] for r in result["steps"][1:])
        if "joint" in result:
            joint = result["joint"]
            lines += ["", f"Increments after the base, together: {increments:.1f} s = "
                      f"{increments / joint['wall_s']:.3f}x one joint retraining ({joint['wall_s']:.1f} s, accuracy "
                      f"{100 * (joint['accuracy'] or 0):.1f} %)."]
        lines.append("")
    return "\n".join(lines)


def main(args: CostArguments) -> dict:
    torch.set_num_threads(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    os.environ.update(env)
    report = {
        "arguments": asdict(args), "repeats": args.repeats,
        "import_floor_s": median_process([sys.executable, "-c", IMPORT_FLOOR], args.repeats),
        "help_s": median_process([str(Path(sys.executable).with_name("hf-incr")), "--help"], args.repeats),
        "datasets": [run_dataset(args, name) for name in args.datasets],
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    text = markdown(report)
    (out / "cost.md").write_text(text, encoding="utf-8")
    print(text)
    return report


if __name__ == "__main__":
    main(HfArgumentParser(CostArguments).parse_args_into_dataclasses()[0])
