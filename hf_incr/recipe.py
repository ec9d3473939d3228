"""The increment recipe: :func:`train_increment` executes an :class:`~hf_incr.plan.IncrementPlan`, and
:func:`train_base_classifier` is increment 0 of the same recipe.

One increment, top to bottom:

1. :func:`check_inputs`: every pre-flight check, before anything changes; the output Linear is found (once).
2. :func:`load_state`: the heads and the replay memory saved beside the model (or passed by the caller).
3. A rerun of the model's last increment trains nothing (:func:`~hf_incr.lineage.find_rerun`).
4. :func:`~hf_incr.plan.plan`: which labels are new, which path runs, which heads are fitted and which answers.
5. :func:`grow`: replayed rows mixed in, the training rows' head inputs cached if a step needs them, the head grown in
   place, the labels encoded onto it.
6. :func:`measure` (before): the model as the user had it, scored on the old labels.
7. The plan's path (:data:`PATHS`): ``solve``, ``kept_rows``, ``adapt`` or ``gradient``; each returns an
   :class:`Outcome`.
8. :func:`measure` (after; and the plain Linear's when an extra head answers), :func:`lineage_record`,
   :func:`save_and_push`.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments
from transformers.utils import logging

from .checkpoints import training_faults
from .config import IncrementConfig
from .data import (
    MULTI_LABEL,
    check_label_kinds,
    check_texts,
    encode_labels,
    is_multi_label_column,
    is_multi_label_model,
    label_names_in,
    map_style,
    model_columns,
    row_label_names,
    tokenize,
)
from .distributed import rows_of_this_process
from .errors import DataError
from .features import RowCache, frozen_pass
from .freezing import freeze_all_but_head, unfreeze_top_layers
from .head import ClassifierHead, add_labels, align_weights, find_classifier_head
from .heads import HEADS, Head, KeptRowsHead, LinearHead, PassRows
from .heads.base import ship_inference_code
from .hub import push_saved_model
from .layers import encoder_layers
from .lineage import LINEAGE_ATTRIBUTE, append_record, find_rerun, make_record
from .loading import load_heads, saved_state_folder
from .measure import EvalFeatures, metrics_of
from .plan import IncrementPlan, plan
from .replay import ReplayMemory, balanced_repeat, mix_replay
from .saving import remove_checkpoints, run_lock, save_increment
from .trainer import evaluate_model, train_phase, warm_up_on_cached_features
from .validation import (
    check_base_encoder,
    check_increment_inputs,
    check_output_dir,
    check_resume_from_checkpoint,
    check_saved_state,
    check_trained_classifier,
)

logger = logging.get_logger(__name__)


@dataclass
class IncrementResult:
    """What :func:`train_increment` did: labels added, metrics before/after, forgetting, where it saved, and the
    heads (with their statistics) and replay memory to pass to the next increment when not saving."""

    new_labels: list[str]
    new_label_ids: list[int]
    old_label_ids: list[int]
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)
    forgetting: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    train_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    output_dir: str | None = None
    hub_url: str | None = None
    replay_memory: ReplayMemory | None = None
    heads: dict[str, Head] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    # With an extra head answering (the kernel head): the metrics of what plain transformers loads, the model's own
    # Linear (``metrics_after`` are the extra head's).
    metrics_plain: dict[str, float] = field(default_factory=dict)
    # Rows this process encoded in the statistics pass (its share under `accelerate launch`).
    rows_encoded: int | None = None
    plan: IncrementPlan | None = None


@dataclass(frozen=True)
class Increment:
    """What every step of one increment reads, fixed once the head has grown."""

    model: Any
    tokenizer: Any
    args: TrainingArguments
    config: IncrementConfig
    plan: IncrementPlan
    location: ClassifierHead  # the grown output Linear
    rows: Dataset  # the training rows, labels encoded: the increment's own rows, then replayed ones
    own: int  # how many of them are the increment's own
    train: Dataset  # the increment's own rows as the caller gave them (label names, not encoded)
    eval_rows: Dataset | None  # tokenized eval data, labels encoded, for Trainer (the encoder changes)
    eval_features: EvalFeatures | None  # what every head reads of the eval data (the encoder stays frozen)
    teacher: torch.nn.Module | None  # the model before the increment, for distillation
    fingerprint: str | None  # of the increment's own training data (the lineage's rerun check)

    @property
    def evaluated(self) -> bool:
        return self.eval_rows is not None or self.eval_features is not None

    @property
    def eval_size(self) -> int | None:
        if self.eval_features is not None:
            return len(self.eval_features.labels)
        return None if self.eval_rows is None else len(self.eval_rows)

    @property
    def show_progress(self) -> bool:
        return self.args.process_index == 0 and not self.args.disable_tqdm


@dataclass
class Outcome:
    """What a path produced: the heads it fitted, and what the summary and lineage report of it."""

    heads: dict[str, Head] = field(default_factory=dict)
    thresholds: dict[int, float] = field(default_factory=dict)  # multi-label: folded into the Linear's biases
    train_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    adaptation: dict[str, Any] = field(default_factory=dict)
    rows_encoded: int | None = None
    head_rows: str = "solved"


def train_increment(
    model,
    tokenizer,
    train_dataset: Dataset | IterableDataset,
    eval_dataset: Dataset | IterableDataset | None = None,
    *,
    config: IncrementConfig | None = None,
    args: TrainingArguments | None = None,
    replay_memory: ReplayMemory | None = None,
    heads: dict[str, Head] | None = None,
    save: bool = True,
    kind: str = "increment",
) -> IncrementResult:
    """Add the labels of ``train_dataset`` that ``model`` lacks, train the increment, and measure forgetting.

    ``model`` is modified in place (grown head, solved or trained weights, ``config`` lineage, the answering head's
    hooks); the result is a normal transformers model. With ``save=True`` it is saved (with tokenizer, lineage, replay
    memory, the heads' files and card) to ``args.output_dir``, atomically. Data with only old labels continues
    training without growing.

    Args:
        model: A ``*ForSequenceClassification`` model (e.g. from ``from_pretrained``).
        tokenizer: Its tokenizer.
        train_dataset: Texts and labels (names, ClassLabel, or lists for multi-label) of this increment: a
            ``Dataset``, or a streamed ``IterableDataset`` (written once to a temporary folder under datasets'
            cache, fingerprinted by content, deleted when the run ends).
        eval_dataset: Optional held-out data over old and new labels; metrics before/after come from it.
        config: The recipe's settings (:class:`IncrementConfig`).
        args: TrainingArguments for everything Trainer does (batch size, precision, logging, seed, ...);
            each phase gets its own checkpoint folder under ``output_dir/checkpoints``.
        replay_memory: Stored examples of old labels; default: the one saved beside the model, if any.
        heads: The heads with their statistics (``IncrementResult.heads`` of the previous increment); default: the
            ones saved beside the model, if any.
        save: Save the result to ``args.output_dir``.
        kind: ``"base"`` for a first classifier (every label of the data is the model's already, nothing to
            forget, the encoder is fine-tuned whatever ``finetune_increments`` says); recorded in the lineage.
    """
    args = training_arguments(args)
    config = config or IncrementConfig()
    start = time.perf_counter()
    # A stream is written to disk once (the increment reads its rows several times) and deleted afterwards.
    with map_style(train_dataset, eval_dataset, names=("training data", "eval data")) as (train, evaluation):
        location = check_inputs(model, tokenizer, train, evaluation, config, args, save)
        if kind != "base":
            check_trained_classifier(model)
        # One run at a time per output folder: a second one waits here (and says so) until this one has saved.
        with run_lock(args.output_dir, enabled=save and args.process_index == 0):
            if getattr(model, "hf_device_map", None) is None:
                model.to(args.device)  # where Trainer would put it; the frozen pass runs before any Trainer exists
            multi_label = is_multi_label_model(model)
            saved, memory = load_state(model, config, heads, replay_memory, multi_label, location)
            if kind != "base":
                repeated = find_rerun(model, getattr(train, "_fingerprint", None),
                                      _new_labels_in(model, train, config))
                if repeated is not None:
                    return _rerun_result(model, tokenizer, args, repeated, saved, memory, save)
            the_plan = plan(list(model.config.id2label.values()), multi_label, saved, config,
                            label_names_in(train, config.label_column), row_label_names(train, config.label_column),
                            kind=kind)
            for message in the_plan.warnings:
                warnings.warn(message, UserWarning, stacklevel=2)
            # A full disk while Trainer writes a checkpoint: a DiskFullError naming it, not a raw traceback.
            with training_faults(args.output_dir, model):
                result = run_plan(model, tokenizer, train, evaluation, config, args, the_plan, location, saved,
                                  memory, start)
            return save_and_push(model, tokenizer, args, config, result, save, pushed=True)


def run_plan(model, tokenizer, train, evaluation, config, args, the_plan: IncrementPlan, location, saved, memory,
             start: float) -> IncrementResult:
    """Execute a plan: grow the head, measure the model as it was, run the plan's path, measure the result and record
    it in the lineage (the model's trainable flags restored whatever happens)."""
    answering_before = _detach_extra_heads(model, location)
    # The answering head's code is pointed at again when the model is saved with it (Trainer's checkpoints, written
    # meanwhile, hold no such file and must load as plain models).
    ship_inference_code(model.config, {})
    teacher = copy.deepcopy(model).eval() if the_plan.teacher else None
    fitted = _heads_to_fit(model, location, the_plan, saved, config, args.seed)
    readers = {**({answering_before.name: answering_before} if answering_before else {}), **fitted}
    increment, cache, timings = grow(model, tokenizer, train, evaluation, config, args, the_plan, location, memory,
                                     teacher, readers)
    before = measure(increment, answering_before, before=True)
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        outcome = PATHS[the_plan.path](increment, fitted, cache)
    finally:
        for name, param in model.named_parameters():
            param.requires_grad_(trainable.get(name, True))
    memory = _after_training(increment, outcome, memory, cache)
    started = time.perf_counter()
    after = measure(increment, outcome.heads.get(the_plan.answering) if the_plan.answering != "linear" else None,
                    before=False)
    plain = measure_plain(increment)
    if after:
        timings["evaluate_s"] = timings.get("evaluate_s", 0.0) + time.perf_counter() - started
    timings.update(outcome.timings)
    timings["total_s"] = time.perf_counter() - start
    return IncrementResult(
        new_labels=list(the_plan.new_labels), new_label_ids=the_plan.new_ids, old_label_ids=the_plan.old_ids,
        metrics_before=before, metrics_after=after, metrics_plain=plain, forgetting=_forgetting(before, after),
        timings=timings, train_metrics=outcome.train_metrics, replay_memory=memory, heads=outcome.heads,
        record=lineage_record(increment, outcome, before, after, plain, timings), rows_encoded=outcome.rows_encoded,
        plan=the_plan,
    )


# 1-3. Before anything changes -------------------------------------------------------------------------------------


def training_arguments(args: TrainingArguments | None) -> TrainingArguments:
    """``args``, or defaults, with their device set up: under a distributed launch that joins the process group,
    which the first steps need (every process must have read the same streamed rows) before any Trainer exists."""
    args = args or TrainingArguments(output_dir="hf_incr-output", report_to="none")
    _ = args.device
    return args


def check_inputs(model, tokenizer, train, evaluation, config, args, save: bool) -> ClassifierHead:
    """Every check of the inputs (model, tokenizer, data, recipe, output folder) before anything is modified; returns
    the model's output Linear."""
    location = check_increment_inputs(model, tokenizer, train, evaluation, config)
    if save:
        # Saving replaces the output folder: refuse one whose replacement would delete something (e.g. the folder
        # that holds the model being extended), and checkpoints from anywhere but this run's own folder.
        check_output_dir(args.output_dir, getattr(model.config, "_name_or_path", None) or None)
        check_resume_from_checkpoint(args.resume_from_checkpoint, args.output_dir)
    return location


def load_state(model, config, heads, replay_memory, multi_label, location):
    """The heads (by name) and the replay memory saved beside the model, unless the caller passed them; checked
    against the model."""
    folder = saved_state_folder(model)
    saved = dict(heads) if heads is not None else (load_heads(folder, multi_label) if folder is not None else {})
    if not config.solved:
        saved = {}  # the gradient path trains the Linear by gradient: statistics would go stale
    if replay_memory is None and config.replay_per_label > 0 and folder is not None:
        replay_memory = ReplayMemory.load(folder)
    check_saved_state(model, location, saved, replay_memory, folder)
    return saved, replay_memory


def _new_labels_in(model, train, config) -> list[str]:
    known = set(model.config.label2id)
    declared = config.new_labels
    found = [name for name in label_names_in(train, config.label_column) if name not in known]
    return found if declared is None else [name for name in declared if name not in known]


def _rerun_result(model, tokenizer, args, repeated, saved, memory, save) -> IncrementResult:
    """A rerun of the model's last increment on its own result: nothing trained, no new record."""
    logger.warning(
        "This run repeats increment %s of the lineage (same training data, no label it did not add): nothing "
        "trained, no new lineage record. To train it again, start from the model it was trained from (%s).",
        repeated.get("increment"), repeated.get("base_model"),
    )
    result = IncrementResult(new_labels=[], new_label_ids=[], old_label_ids=list(model.config.id2label),
                             record=dict(repeated), heads=saved, replay_memory=memory)
    return save_and_push(model, tokenizer, args, None, result, save, pushed=False)


def _detach_extra_heads(model, location: ClassifierHead) -> Head | None:
    """Head surgery and training act on the model's own Linear: the extra head answering now comes off (and is
    returned, to score the model as the user had it)."""
    answering = None
    for cls in HEADS.values():
        answering = cls.detach(model, location) or answering
    return answering


def _heads_to_fit(model, location, the_plan: IncrementPlan, saved, config, seed) -> dict[str, Head]:
    """The heads this increment fits, the Linear's first: the saved ones continued, the others started."""
    fitted = {}
    beside_kept_rows = the_plan.path in ("kept_rows", "adapt")
    for name in the_plan.heads:
        if name == "linear" and beside_kept_rows:
            fitted[name] = KeptRowsHead.continuing(saved[name], seed) if name in saved else KeptRowsHead.start(
                model, location, multi_label=the_plan.multi_label, seed=seed)
        elif name in the_plan.starts:
            fitted[name] = HEADS[name].start(model, location, config=config, multi_label=the_plan.multi_label,
                                             seed=seed, kept_labels=the_plan.old_ids if the_plan.path == "kept_rows"
                                             else [])
        elif isinstance(saved[name], KeptRowsHead):  # its refit won (nothing kept): solved as the plain Linear now
            fitted[name] = LinearHead(saved[name].statistics, saved[name].kept)
        else:
            fitted[name] = saved[name]
    return fitted


# 5. Grow ----------------------------------------------------------------------------------------------------------


def grow(model, tokenizer, train, evaluation, config, args, the_plan: IncrementPlan, location, memory, teacher,
         readers: dict[str, Head]):
    """Mix in replayed rows, cache their head inputs if a step needs them, grow the head, and encode the labels; with
    eval data and an encoder that stays frozen, what every head (``readers``) reads of it, from one pass."""
    timings: dict[str, float] = {}
    rows = train
    if memory is not None and len(memory):
        repeat = balanced_repeat(memory, len(train), len(the_plan.new_labels))
        rows = mix_replay(train, memory, config.text_column, config.label_column, the_plan.multi_label, repeat=repeat)
    cache = None
    show = args.process_index == 0 and not args.disable_tqdm
    if the_plan.cache_features:
        started = time.perf_counter()
        cache = RowCache(len(rows))
        frozen_pass(model, tokenizer, rows[config.text_column], [cache], location=location,
                    max_length=config.max_length, device=args.device, show_progress=show)
        cache.end()
        timings["feature_cache_s"] = time.perf_counter() - started
    if the_plan.num_old < the_plan.num_labels and the_plan.kind != "base":
        examples = None
        if the_plan.path == "gradient":  # the new rows start imprinted from their examples' head inputs
            names = row_label_names(rows, config.label_column)
            examples = {n: cache.features[[i for i, row in enumerate(names) if n in row]] for n in the_plan.new_labels}
        add_labels(model, list(the_plan.new_labels), init="imprint" if examples else "zeros", examples=examples,
                   head=location)
        location = location.refreshed()
    label2id = model.config.label2id
    encoded = encode_labels(rows, label2id, config.label_column, the_plan.multi_label)
    eval_rows = eval_features = None
    if evaluation is not None:
        started = time.perf_counter()
        eval_encoded = encode_labels(evaluation, label2id, config.label_column, the_plan.multi_label)
        if the_plan.fine_tune or the_plan.path == "adapt":  # the encoder changes: Trainer evaluates the model
            eval_rows = model_columns(tokenize(eval_encoded, tokenizer, config.text_column, config.max_length),
                                      tokenizer)
        else:
            eval_features = EvalFeatures.compute(
                model, tokenizer, eval_encoded[config.text_column], eval_encoded["labels"], readers,
                location=location, max_length=config.max_length, device=args.device, show_progress=show,
            )
        timings["evaluate_s"] = time.perf_counter() - started
    increment = Increment(model, tokenizer, args, config, the_plan, location, encoded, len(train), train, eval_rows,
                          eval_features, teacher, getattr(train, "_fingerprint", None))
    return increment, cache, timings


# 6, 8. Measure ------------------------------------------------------------------------------------------------------


def measure(increment: Increment, answering: Head | None, *, before: bool) -> dict[str, float]:
    """Metrics on the eval data, split into old / new labels (``{}`` without eval data); ``answering``: the extra head
    the model answers with (None: the Linear).

    Before training, the model is scored as the user had it, on the old labels only: their rows are kept bit for bit,
    so this is exactly the model before the increment."""
    if not increment.evaluated or (before and not increment.plan.num_old):
        return {}
    if increment.eval_features is not None:
        logits = increment.eval_features.logits(increment.location.linear, answering)
        return metrics_of(logits, increment.eval_features.labels, old_ids=increment.plan.old_ids,
                          multi_label=increment.plan.multi_label, threshold=increment.config.threshold,
                          only_old=before)
    if not before or answering is None:  # after: the answering head is attached already
        return _evaluate(increment, only_old=before)
    answering.attach(increment.model, increment.location, fewer_labels_ok=True)
    try:
        return _evaluate(increment, only_old=True)
    finally:
        type(answering).detach(increment.model, increment.location)


def measure_plain(increment: Increment) -> dict[str, float]:
    """With an extra head answering, the metrics of the model's own Linear, which is what plain transformers loads
    (``{}`` without an extra head or eval data): the summary shows both."""
    if not increment.evaluated or increment.plan.answering == "linear":
        return {}
    if increment.eval_features is not None:
        return measure(increment, None, before=False)
    cls = HEADS[increment.plan.answering]
    answering = cls.attached(increment.model, increment.location)
    if answering is None:
        return {}
    cls.detach(increment.model, increment.location)
    try:
        return _evaluate(increment)
    finally:
        answering.attach(increment.model, increment.location)


def _evaluate(increment: Increment, only_old: bool = False) -> dict[str, float]:
    return evaluate_model(
        increment.model, increment.eval_rows, increment.args, increment.plan.old_ids,
        multi_label=increment.plan.multi_label, threshold=increment.config.threshold, only_old=only_old,
        tokenizer=increment.tokenizer,
    )


# 7. The paths -------------------------------------------------------------------------------------------------------


def statistics_pass(increment: Increment, heads: dict[str, Head], rows: int | None = None) -> int:
    """One frozen pass over the training rows into every head's statistics (a head with its own cache, e.g. the kept
    rows', also sees the replayed rows); returns the rows this process encoded."""
    plan_, config = increment.plan, increment.config
    total = len(increment.rows) if rows is None else rows
    info = PassRows(num_old=plan_.num_old, num_labels=plan_.num_labels,
                    annotated=None if plan_.annotated is None else list(plan_.annotated), own=increment.own,
                    total=total)
    for head in heads.values():
        head.begin(info)
    labels = increment.rows.select_columns(["labels"])  # a batch's labels read at once from Arrow
    targets = _targets_of(labels, plan_)
    rows_ = increment.rows if total == len(increment.rows) else increment.rows.select(range(total))
    frozen_pass(
        increment.model, increment.tokenizer, rows_[config.text_column], list(heads.values()), targets,
        location=increment.location, max_length=config.max_length, device=increment.args.device,
        show_progress=increment.show_progress,
    )
    for head in heads.values():
        head.end()
    share = rows_of_this_process(total)
    return len(range(share.start, min(share.stop, increment.own)))  # this process's own rows


def _targets_of(labels: Dataset, the_plan: IncrementPlan) -> Callable[[list[int]], torch.Tensor]:
    """A batch's targets: label ids, or multi-hot rows (0 for labels the rows do not annotate), float64."""

    def targets(index: list[int]) -> torch.Tensor:
        values = torch.tensor(labels[index]["labels"])
        if not the_plan.multi_label:
            return values.long()
        values = values.double()
        if the_plan.annotated is not None:
            unknown = torch.ones(values.shape[1], dtype=torch.bool)
            unknown[list(the_plan.annotated)] = False
            values[:, unknown] = 0.0
        return values

    return targets


def _solve_heads(increment: Increment, heads: dict[str, Head], outcome: Outcome) -> None:
    """Solve every head from its statistics (the Linear's first) and put it on the model."""
    solving = time.perf_counter()
    for name, head in heads.items():
        started = time.perf_counter()
        thresholds = head.solve(increment.model, increment.location)
        if name == "linear":
            outcome.thresholds = thresholds
        else:
            outcome.timings[f"{head.lineage_key or name}_s"] = time.perf_counter() - started
    outcome.timings["solve_s"] = outcome.timings.get("solve_s", 0.0) + time.perf_counter() - solving


def _encode(increment: Increment, heads: dict[str, Head], outcome: Outcome, rows: int | None = None) -> None:
    """The statistics pass, timed (the encoder's share of an increment)."""
    started = time.perf_counter()
    outcome.rows_encoded = statistics_pass(increment, heads, rows)
    outcome.timings["encode_s"] = outcome.timings.get("encode_s", 0.0) + time.perf_counter() - started


def solve_path(increment: Increment, heads: dict[str, Head], cache) -> Outcome:
    """The heads solved from their statistics after one frozen pass; a base first warms up the output Linear and
    fine-tunes the top layers, and is then solved on the adapted encoder (which stays frozen from then on)."""
    outcome = Outcome(heads=heads)
    if increment.plan.fine_tune:
        _warm_up(increment, cache, outcome)
        _fine_tune(increment, outcome)
        increment.model.eval()
    started = time.perf_counter()
    _encode(increment, heads, outcome, increment.own)
    _solve_heads(increment, heads, outcome)
    outcome.timings["closed_form_s"] = time.perf_counter() - started
    return outcome


def kept_rows_path(increment: Increment, heads: dict[str, Head], cache) -> Outcome:
    """A classifier hf_incr did not train: its trained rows kept, the new rows fitted beside them from one pass."""
    outcome = Outcome(heads=heads)
    started = time.perf_counter()
    _encode(increment, heads, outcome)
    _solve_heads(increment, heads, outcome)
    outcome.head_rows = heads["linear"].head_rows
    outcome.timings["new_rows_s"] = time.perf_counter() - started
    return outcome


def adapt_path(increment: Increment, heads: dict[str, Head], cache) -> Outcome:
    """A model hf_incr did not train, given every old label's rows about as well as the new ones: its encoder, trained
    for the old labels only, is what limits any head on it. So the whole model is fine-tuned once on every row (a
    joint fine-tune warm-started from the trained model: ``adapt_epochs``), and the heads are solved from the adapted
    encoder's statistics, as for a base that hf_incr trains; later increments then take the solve path.

    With eval data, the kept trained rows on the frozen encoder are scored first (after a full fit of the new rows);
    the adapted model replaces them only if it is at least as accurate there on the old labels' rows and on all rows.
    Otherwise every weight goes back to the kept state (a CPU copy of the weights is held meanwhile)."""
    config, model = increment.config, increment.model
    started = time.perf_counter()
    checked = increment.evaluated
    # The start of the adaptation: the new rows fitted beside the kept ones (only a quick fit when nothing checks it).
    heads["linear"].quick = not checked
    kept = kept_rows_path(increment, {"linear": heads["linear"]}, cache)
    kept_state = kept_metrics = None
    if checked:
        kept_metrics = _evaluate(increment)
        kept_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    # Every block and the head; the token embeddings stay as trained (half of a small encoder's weights, and the
    # costliest part of the optimizer step on CPU; the new labels' words are in the vocabulary already).
    unfreeze_top_layers(model, len(encoder_layers(model)), "head", increment.location)
    outcome = Outcome()
    outcome.train_metrics["adapt"] = train_phase(
        model, increment.tokenizer, increment.rows, increment.args, phase="adapt", epochs=config.adapt_epochs,
        learning_rate=config.adapt_learning_rate, text_column=config.text_column, max_length=config.max_length,
        group_by_length=True,
    )
    model.eval()
    adapted = {name: HEADS[name].start(model, increment.location, config=config,
                                       multi_label=increment.plan.multi_label, seed=increment.args.seed,
                                       kept_labels=[]) for name in heads}
    _encode(increment, adapted, outcome, increment.own)
    _solve_heads(increment, adapted, outcome)
    outcome.heads, outcome.head_rows = adapted, "adapted"
    outcome.adaptation = {"epochs": config.adapt_epochs, "learning_rate": config.adapt_learning_rate, "kept": False}
    if checked:
        adapted_metrics = _evaluate(increment)
        outcome.adaptation.update(eval_kept_rows=_accuracies(kept_metrics), eval_adapted=_accuracies(adapted_metrics))
        if not _at_least_as_accurate(adapted_metrics, kept_metrics):
            model.load_state_dict(kept_state)
            _detach_extra_heads(model, increment.location)  # a head started on the adapted encoder goes with it
            outcome.heads, outcome.head_rows, outcome.thresholds = kept.heads, kept.head_rows, kept.thresholds
            outcome.adaptation["kept"] = True
    outcome.timings["adapt_s"] = time.perf_counter() - started
    return outcome


def gradient_path(increment: Increment, heads: dict[str, Head], cache) -> Outcome:
    """The Linear trained by gradient: a warm-up on cached features, then the top layers fine-tuned (the base, or
    every increment with ``finetune_increments``), distilled from the model before the increment; new rows weight
    aligned after it (``weight_align``)."""
    outcome = Outcome(head_rows="trained")
    _warm_up(increment, cache, outcome)
    _fine_tune(increment, outcome)
    the_plan = increment.plan
    if increment.config.weight_align and the_plan.new_labels and the_plan.num_old:
        align_weights(increment.model, the_plan.new_ids, head=increment.location)
    return outcome


def _warm_up(increment: Increment, cache: RowCache | None, outcome: Outcome) -> None:
    """The output Linear trained on the frozen encoder's cached head inputs (distilled from the old rows' logits)."""
    config = increment.config
    if not increment.plan.warm_up:
        return
    started = time.perf_counter()
    freeze_all_but_head(increment.model, "output", increment.location)
    old = increment.plan.num_old
    linear = increment.location.linear
    teacher = None
    if old:  # the old rows are the model's before the increment, bit for bit: their logits are the teacher's
        teacher = (linear.weight[:old].detach().clone(), None if linear.bias is None else linear.bias[:old].detach()
                   .clone())
    outcome.train_metrics["warmup"] = warm_up_on_cached_features(
        increment.model, increment.location, cache.features, increment.rows, increment.args,
        epochs=config.warmup_epochs, learning_rate=config.warmup_learning_rate, text_column=config.text_column,
        multi_label=increment.plan.multi_label, teacher_head=teacher, distill_weight=config.distill_weight,
    )
    outcome.timings["warmup_s"] = time.perf_counter() - started


def _fine_tune(increment: Increment, outcome: Outcome) -> None:
    """The top ``finetune_layers`` layers and the head, in a NEW Trainer (DDP fixes the trainable set when it wraps
    the model)."""
    config = increment.config
    if not increment.plan.fine_tune:
        return
    started = time.perf_counter()
    unfreeze_top_layers(increment.model, config.finetune_layers, "head", increment.location)
    outcome.train_metrics["finetune"] = train_phase(
        increment.model, increment.tokenizer, increment.rows, increment.args, phase="finetune",
        epochs=config.finetune_epochs, learning_rate=config.finetune_learning_rate, text_column=config.text_column,
        max_length=config.max_length, layer_lr_decay=config.layer_lr_decay, teacher=increment.teacher,
        distill_weight=config.distill_weight,
    )
    outcome.timings["finetune_s"] = time.perf_counter() - started


PATHS: dict[str, Callable[[Increment, dict[str, Head], RowCache | None], Outcome]] = {
    "solve": solve_path,
    "kept_rows": kept_rows_path,
    "adapt": adapt_path,
    "gradient": gradient_path,
}


def _after_training(increment: Increment, outcome: Outcome, memory: ReplayMemory | None, cache) -> ReplayMemory | None:
    """The replay memory for the next increment (``replay_per_label``): examples of this increment's labels, chosen by
    herding on their head inputs."""
    config = increment.config
    if config.replay_per_label <= 0:
        return memory
    rows = increment.train  # label names as given (the encoded rows' column may be the `labels` it wrote)
    return (memory if memory is not None else ReplayMemory()).update(
        rows[config.text_column], row_label_names(rows, config.label_column), config.replay_per_label,
        features=cache.features[: increment.own], seed=increment.args.seed,
    )


def _accuracies(metrics: dict[str, float]) -> dict[str, float]:
    return {key: round(float(metrics[key]), 4) for key in ("old_accuracy", "accuracy") if key in metrics}


def _at_least_as_accurate(candidate: dict[str, float], reference: dict[str, float]) -> bool:
    """``candidate`` is at least as accurate as ``reference`` on the old labels' rows and on all rows (a figure that
    is NaN on either side, e.g. no old label in the eval data, is not compared)."""
    for key in ("old_accuracy", "accuracy"):
        new, old = candidate.get(key, math.nan), reference.get(key, math.nan)
        if not (math.isnan(new) or math.isnan(old)) and new < old:
            return False
    return True


# 8. Record and save -----------------------------------------------------------------------------------------------


def lineage_record(increment: Increment, outcome: Outcome, before, after, plain, timings) -> dict[str, Any]:
    """The lineage record of this increment, appended to ``model.config``."""
    the_plan, model = increment.plan, increment.model
    id2label = model.config.id2label
    record = make_record(
        kind=the_plan.kind,
        labels_added=list(the_plan.new_labels),
        label_ids=the_plan.new_ids,
        base_model=_public_name(getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)),
        recipe=increment.config.to_dict(),
        # What a reader needs: the cleaned metrics (see trainer.clean_metrics), forgetting, rows and seconds.
        metrics={"before": before, "after": after, **({"after_plain_transformers": plain} if plain else {}),
                 "forgetting": _forgetting(before, after),
                 "train_examples": increment.own,
                 "replayed_examples": len(increment.rows) - increment.own,
                 "eval_examples": increment.eval_size,
                 "seconds": round(timings.get("total_s", 0.0), 1)},
        num_labels=len(model.config.label2id),
        data_fingerprint=increment.fingerprint,
        head_rows=outcome.head_rows,
        thresholds={id2label[i]: value for i, value in outcome.thresholds.items()},
    )
    if outcome.adaptation:
        record["adaptation"] = dict(outcome.adaptation)
    for head in outcome.heads.values():
        if head.lineage_key:  # e.g. the kernel head's bandwidth, chosen at the first increment, is part of the model
            record[head.lineage_key] = head.lineage_entry(id2label)
    append_record(model, record)
    return record


def _forgetting(before: dict, after: dict) -> float | None:
    old_before, old_after = before.get("old_accuracy"), after.get("old_accuracy")
    return None if old_before is None or old_after is None else old_before - old_after


def save_and_push(model, tokenizer, args, config, result: IncrementResult, save: bool, pushed: bool):
    """With ``save``, the model saved atomically (main process) and pushed if ``args.push_to_hub``. A finished run
    leaves no Trainer checkpoint behind (a killed one resumes from them)."""
    if args.process_index == 0:
        remove_checkpoints(args.output_dir)
    if save and args.process_index == 0:
        started = time.perf_counter()
        result.output_dir = str(save_increment(model, args.output_dir, tokenizer, replay=result.replay_memory,
                                               heads=result.heads))
        result.timings["save_s"] = time.perf_counter() - started
        if pushed and args.push_to_hub:
            # Trainer's own push is off in every phase (it would upload a card without the lineage); the saved
            # folder, card and lineage included, is pushed once here.
            result.hub_url = str(push_saved_model(result.output_dir, args,
                                                  push_statistics=config.push_statistics))
    return result


def _public_name(name_or_path: str | Path | None) -> str | None:
    """A Hub id as is; a local folder as ``./<its name>`` only, so no local path reaches a pushed config or card
    (and the name is not mistaken for a Hub id)."""
    if not name_or_path:
        return None
    path = Path(name_or_path)
    return f"./{path.name}" if path.exists() else str(name_or_path)


def train_base_classifier(
    model_name_or_path: str,
    train_dataset: Dataset | IterableDataset,
    eval_dataset: Dataset | IterableDataset | None = None,
    *,
    config: IncrementConfig | None = None,
    args: TrainingArguments | None = None,
    save: bool = True,
    trust_remote_code: bool = False,
    replay_memory: ReplayMemory | None = None,
    new_head: bool = False,
):
    """Train a first classifier on ``train_dataset``'s labels with the same recipe (increment 0 of the lineage).

    Returns ``(model, tokenizer, result)``. The labels are read from the data (ClassLabel order if it has one,
    else sorted), the model is loaded with ``AutoModelForSequenceClassification`` and ``config.multi_label``
    chooses a sigmoid head. Either data set may be a streamed ``IterableDataset`` (see :func:`train_increment`).
    ``model_name_or_path`` is an encoder; a trained classifier of other labels is refused (extend it with
    :func:`train_increment`) unless ``new_head=True``, which starts a new head over its encoder (its head, labels and
    lineage are discarded).
    """
    args = training_arguments(args)
    # A stream is written to disk once here (its labels are read before the increment), not again in train_increment.
    with map_style(train_dataset, eval_dataset, names=("training data", "eval data")) as (train, evaluation):
        config = config or IncrementConfig()
        check_texts(train, config.text_column)
        check_label_kinds(train, config.label_column, what="training data")
        labels = label_names_in(train, config.label_column)
        multi_label = config.multi_label or is_multi_label_column(train, config.label_column)
        if multi_label and not config.multi_label:
            raise DataError(
                f"Column {config.label_column!r} holds lists of labels: set `multi_label=True` for a sigmoid head."
            )
        classifier, labels = check_base_encoder(model_name_or_path, labels, new_head=new_head,
                                                trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_name_or_path,
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            problem_type=MULTI_LABEL if multi_label else "single_label_classification",
            trust_remote_code=trust_remote_code,
            ignore_mismatched_sizes=classifier,  # `new_head`: another number of labels than the checkpoint's
        )
        if classifier:  # `new_head`
            _start_new_head(model)
        if tokenizer.pad_token is None or model.config.pad_token_id is None:
            # Decoder-only models (GPT-2, Llama) ship no pad token; their classification head needs one.
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            model.config.pad_token_id = tokenizer.pad_token_id
        if classifier and replay_memory is None:
            replay_memory = ReplayMemory()  # not the one saved beside the classifier: its labels are gone
        result = train_increment(model, tokenizer, train, evaluation, config=config, args=args, save=save,
                                 kind="base", replay_memory=replay_memory, heads={} if classifier else None)
        return model, tokenizer, result


def _start_new_head(model) -> None:
    """``new_head``: the classifier's trained rows, lineage and the heads saved beside it belong to its own labels,
    not to these: a new head over its encoder, a new lineage (the caller passes no saved heads or memory)."""
    find_classifier_head(model).linear.reset_parameters()
    if hasattr(model.config, LINEAGE_ATTRIBUTE):
        delattr(model.config, LINEAGE_ATTRIBUTE)
