"""What answering with the kernel head costs at inference, loaded the Hub's way: texts per second of the model loaded
with ``trust_remote_code=True`` (the kernel head) against the same folder loaded as its native class (the Linear),
on the same texts in the same batches; and the bytes a push uploads for inference against the model's own.

The model: a base trained by ``hf_incr.train_base_classifier`` with the kernel head on ``--rows_per_label`` training
rows of each of BANKING77's labels (encoder frozen: the cost of inference does not depend on how it was trained),
saved as a user saves it. The texts: the test split, in batches of ``--batch_size`` in their order (as a pipeline
gets them), each model timed ``--repeats`` times, the median kept; accuracy on the test split for both.

    python scripts/benchmarks/inference.py --data_dir ../shared/data     # ~5 min alone on 2 CPU cores

Results: ``--output_dir/inference.md`` and ``inference.json``, printed at the end.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from data import load_shared_split
from transformers import AutoModelForSequenceClassification, AutoTokenizer, HfArgumentParser, TrainingArguments

import hf_incr
from hf_incr.loading import default_encoder  # the offline MiniLM; not part of the public API


@dataclass
class InferenceArguments:
    data_dir: str | None = field(default=None, metadata={"help": "The shared data (default: ../shared/data)."})
    output_dir: str = field(default="bench_inference", metadata={"help": "Where the model and results go."})
    rows_per_label: int = field(default=40, metadata={"help": "Training rows of each label for the base."})
    batch_size: int = field(default=64, metadata={"help": "Texts per forward pass."})
    max_length: int = field(default=64, metadata={"help": "Tokens per text."})
    repeats: int = field(default=3, metadata={"help": "Timed passes per model (the median is kept)."})
    threads: int = field(default=2, metadata={"help": "torch threads."})


def train_model(args: InferenceArguments, folder: Path) -> None:
    train = load_shared_split(args.data_dir, "banking77", "train")
    counts: dict[str, int] = {}
    keep = []
    for i, label in enumerate(train["label"]):
        counts[label] = counts.get(label, 0) + 1
        if counts[label] <= args.rows_per_label:
            keep.append(i)
    config = hf_incr.IncrementConfig(head="kernel", finetune_layers=0, max_length=args.max_length)
    training = TrainingArguments(output_dir=str(folder), use_cpu=True, report_to="none", save_strategy="no",
                                 disable_tqdm=True)
    hf_incr.train_base_classifier(default_encoder(), train.select(keep), config=config, args=training)


def throughput(model, tokenizer, texts: list[str], args: InferenceArguments) -> tuple[float, torch.Tensor]:
    """Texts per second (the median of ``repeats`` passes) and the logits."""
    times, logits = [], None
    for _ in range(args.repeats):
        outputs = []
        started = time.perf_counter()
        with torch.no_grad():
            for start in range(0, len(texts), args.batch_size):
                batch = tokenizer(texts[start : start + args.batch_size], truncation=True, max_length=args.max_length,
                                  padding=True, return_tensors="pt")
                outputs.append(model(**batch).logits)
        times.append(time.perf_counter() - started)
        logits = torch.cat(outputs)
    return len(texts) / statistics.median(times), logits


def megabytes(folder: Path, names: list[str]) -> float:
    return sum((folder / name).stat().st_size for name in names if (folder / name).is_file()) / 1e6


def main(args: InferenceArguments) -> dict:
    torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    folder = out / "model"
    os.environ.setdefault("HF_MODULES_CACHE", str(out / "modules"))
    if not (folder / "config.json").is_file():
        train_model(args, folder)
    test = load_shared_split(args.data_dir, "banking77", "test")
    texts = list(test["text"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    native = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    remote = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    label2id = native.config.label2id
    labels = torch.tensor([label2id[name] for name in test["label"]])
    rows = {}
    for name, model in (("native class (its Linear)", native), ("trust_remote_code=True (kernel head)", remote)):
        speed, logits = throughput(model, tokenizer, texts, args)
        rows[name] = {"texts_per_s": speed, "accuracy": float((logits.argmax(1) == labels).float().mean())}
    model_files = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    head_files = ["hf_incr_kernel_lda.safetensors", "modeling_hf_incr_kernel.py"]
    own, inference = megabytes(folder, model_files), megabytes(folder, model_files + head_files)
    report = {"arguments": asdict(args), "rows": rows, "model_mb": own, "inference_mb": inference,
              "statistics_mb": megabytes(folder, ["hf_incr_kernel_lda_statistics.safetensors",
                                                  "hf_incr_linear_statistics.safetensors"]),
              "texts": len(texts), "threads": args.threads}
    slower = rows["native class (its Linear)"]["texts_per_s"] / rows["trust_remote_code=True (kernel head)"][
        "texts_per_s"]
    lines = ["| loading | texts/s | test accuracy |", "|---|---|---|"]
    lines += [f"| {name} | {r['texts_per_s']:.0f} | {100 * r['accuracy']:.1f} % |" for name, r in rows.items()]
    lines += ["", f"The kernel head takes {slower:.2f}x the native class's time per text ({len(texts)} BANKING77 test "
              f"texts, batches of {args.batch_size}, {args.threads} threads, CPU). What a push uploads for inference: "
              f"{inference:.1f} MB against the model's own {own:.1f} MB ({inference / own:.2f}x); the statistics "
              f"files (the next increment only) add {report['statistics_mb']:.1f} MB."]
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inference.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "inference.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return report


if __name__ == "__main__":
    main(HfArgumentParser(InferenceArguments).parse_args_into_dataclasses()[0])
