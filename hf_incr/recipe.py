"""The increment recipe: :func:`train_increment` as a short list of named steps, and :func:`train_base_classifier`.

One increment, top to bottom (each step is a function below that reads and fills one :class:`IncrementRun`):

1. :func:`check_inputs`: every pre-flight check, before anything changes.
2. :func:`load_saved_state`: the replay memory and closed-form statistics saved beside the model.
3. :func:`find_rerun_record`: a rerun of the model's last increment trains nothing.
4. :func:`plan_increment`: which labels are new, which phases run, whether the head is solved in closed form.
5. :func:`grow_head`: replayed rows mixed in, the head grown in place, the labels encoded onto it.
6. :func:`measure` (before): the model as the user had it, scored on the old labels.
7. :func:`warm_up_or_solve`: the output Linear trained on a frozen encoder, or solved from the statistics.
8. :func:`adapt_trained_elsewhere`: a model hf_incr did not train, given its old labels' data too: the whole model
   fine-tuned once, the head solved from the adapted encoder's statistics.
   :func:`fine_tune`: the top layers in a new Trainer with layer-wise learning rates (the base, by default).
9. :func:`after_training`: trainable flags restored, the controls' last word (memory update, weight aligning).
10. :func:`measure` (after), :func:`record_lineage`, :func:`save_and_push`.

A base classifier (increment 0) and a later increment differ only in :class:`IncrementRun` fields set once, in
:func:`plan_increment` (``is_base``, ``fine_tune``, ``closed_form``).
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

from .closed_form import RidgeStatistics
from .config import IncrementConfig
from .controls import ForgettingControl, active_controls
from .data import (
    MULTI_LABEL,
    check_texts,
    encode_labels,
    find_new_labels,
    is_multi_label_column,
    is_multi_label_model,
    label_names_in,
    map_style,
    model_columns,
    row_label_names,
    tokenize,
)
from .distributed import sum_over_processes
from .errors import DataError
from .features import accumulate_head_statistics, extract_head_inputs
from .freezing import freeze_all_but_head, unfreeze_top_layers
from .head import ClassifierHead, add_labels, find_classifier_head
from .hub import push_saved_model
from .kernel_attach import (
    KernelHeadState,
    KernelStatisticsAccumulator,
    attach_kernel_head,
    base_model_of,
    capture_pooled,
    detach_kernel_head,
    sentence_pooling,
)
from .kernel_head import KernelLDAClassifier, KernelLDAConfig, KernelLDAHead, head_size
from .layers import encoder_layers
from .lineage import append_record, find_rerun, make_record
from .loading import saved_state_folder
from .new_rows import add_new_rows, fit_multilabel_new_rows, fit_new_rows, refit_if_better, represents_old_labels
from .new_rows import grow_head as grow_rows
from .random_features import RandomFeatureHead, attach_random_feature_head, detach_random_feature_head
from .replay import ReplayMemory
from .saving import save_increment
from .trainer import evaluate_model, train_phase, warm_up_on_cached_features
from .validation import (
    check_increment_inputs,
    check_output_dir,
    check_resume_from_checkpoint,
    check_saved_state,
    keeps_trained_rows,
)

logger = logging.get_logger(__name__)

# L-BFGS iterations of the new rows' fit that only starts the adaptation of a model trained elsewhere (the fine-tune
# moves them anyway): 200 took 15.6 of CLINC150's 194 s.
ADAPT_START_ITERATIONS = 50


@dataclass
class IncrementResult:
    """What :func:`train_increment` did: labels added, metrics before/after, forgetting, where it saved, and the
    replay memory / ridge statistics to pass to the next increment when not saving."""

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
    ridge_statistics: RidgeStatistics | None = None
    record: dict[str, Any] = field(default_factory=dict)
    # With an extra head (kernel LDA, random features): the metrics of what plain transformers loads, the model's
    # own Linear (``metrics_after`` are the extra head's).
    metrics_plain: dict[str, float] = field(default_factory=dict)
    # Rows this process encoded in the streamed closed-form pass (its share under `accelerate launch`).
    rows_encoded: int | None = None


@dataclass
class IncrementRun:
    """Everything one increment works on, filled in step by step (see the module docstring for the order)."""

    model: Any
    tokenizer: Any
    train_dataset: Dataset
    eval_dataset: Dataset | None
    config: IncrementConfig
    args: TrainingArguments
    is_base: bool
    save: bool
    replay_memory: ReplayMemory | None = None
    statistics: RidgeStatistics | None = None
    controls: list[ForgettingControl] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    # plan_increment
    multi_label: bool = False
    source_dir: Path | None = None
    head: ClassifierHead | None = None
    detached_random_features: RandomFeatureHead | None = None
    detached_kernel: KernelLDAClassifier | None = None
    new_labels: list[str] = field(default_factory=list)
    new_ids: list[int] = field(default_factory=list)
    old_ids: list[int] = field(default_factory=list)
    fine_tune: bool = False
    closed_form: bool = False
    keep_rows: bool = False  # a classifier hf_incr did not train: trained rows kept, new rows fitted beside them
    adapt: bool = False  # ... and given its old labels' data: the encoder is fine-tuned once (adapt_trained_elsewhere)
    adaptation: dict[str, Any] = field(default_factory=dict)  # what that step did, for the lineage and the summary
    # ... multi-label, with `kernel_features`: the kernel head beside the kept rows, and the pooled top layers of this
    # process's share of the increment's own rows (row ids, vectors), read in the same pass as the head inputs.
    kernel_beside_kept_rows: KernelHeadState | None = None
    pooled_rows: tuple[torch.Tensor, torch.Tensor] | None = None
    # Multi-label: the label ids this increment's rows annotate (None: every label), and the decision thresholds
    # (logits) folded into the biases of the rows it fitted, by label id.
    annotated: list[int] | None = None
    thresholds: dict[int, float] = field(default_factory=dict)
    teacher: torch.nn.Module | None = None
    old_head: tuple[torch.Tensor, torch.Tensor | None] | None = None
    # grow_head
    train_rows: Dataset | None = None
    features: torch.Tensor | None = None
    train_encoded: Dataset | None = None
    eval_tokenized: Dataset | None = None
    # training and measuring
    trainable_before: dict[str, bool] = field(default_factory=dict)
    train_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)
    metrics_plain: dict[str, float] = field(default_factory=dict)
    rows_encoded: int | None = None  # by this process in the last streamed closed-form pass

    @property
    def show_progress(self) -> bool:
        return self.args.process_index == 0 and not self.args.disable_tqdm

    def timed(self, name: str, started: float) -> None:
        self.timings[name] = time.perf_counter() - started


def train_increment(
    model,
    tokenizer,
    train_dataset: Dataset | IterableDataset,
    eval_dataset: Dataset | IterableDataset | None = None,
    *,
    config: IncrementConfig | None = None,
    args: TrainingArguments | None = None,
    replay_memory: ReplayMemory | None = None,
    ridge_statistics: RidgeStatistics | None = None,
    save: bool = True,
    kind: str = "increment",
) -> IncrementResult:
    """Add the labels of ``train_dataset`` that ``model`` lacks, train the increment, and measure forgetting.

    ``model`` is modified in place (grown head, trained weights, ``config`` lineage); the result is a normal
    transformers model. With ``save=True`` it is saved (with tokenizer, lineage, replay memory, ridge statistics and
    card) to ``args.output_dir``, atomically. Data with only old labels continues training without growing.

    Args:
        model: A ``*ForSequenceClassification`` model (e.g. from ``from_pretrained``).
        tokenizer: Its tokenizer.
        train_dataset: Texts and labels (names, ClassLabel, or lists for multi-label) of this increment: a
            ``Dataset``, or a streamed ``IterableDataset`` (written once to a temporary folder under datasets'
            cache, fingerprinted by content, deleted when the run ends).
        eval_dataset: Optional held-out data over old and new labels; metrics before/after come from it (a
            ``Dataset`` or a stream, as ``train_dataset``).
        config: The recipe's settings (:class:`IncrementConfig`).
        args: TrainingArguments for everything Trainer does (batch size, precision, logging, seed, ...);
            each phase gets its own checkpoint folder under ``output_dir/checkpoints``.
        replay_memory: Stored examples of old labels; default: the one saved beside the model, if any.
        ridge_statistics: Closed-form head statistics; default: the ones saved beside the model, if any.
        save: Save the result to ``args.output_dir``.
        kind: ``"base"`` for a first classifier (every label of the data is the model's already, nothing to
            forget, the encoder is fine-tuned whatever ``finetune_increments`` says); recorded in the lineage.
    """
    args = training_arguments(args)
    # A stream is written to disk once (the increment reads its rows several times) and deleted afterwards.
    with map_style(train_dataset, eval_dataset, names=("training data", "eval data")) as (train_dataset,
                                                                                       eval_dataset):
        run = IncrementRun(
            model=model, tokenizer=tokenizer, train_dataset=train_dataset, eval_dataset=eval_dataset,
            config=config or IncrementConfig(),
            args=args,
            is_base=kind == "base", save=save, replay_memory=replay_memory, statistics=ridge_statistics,
        )
        check_inputs(run)
        load_saved_state(run)
        repeated = find_rerun_record(run)
        if repeated is not None:
            return save_and_push(run, record=dict(repeated))
        plan_increment(run)
        grow_head(run)
        run.metrics_before = measure(run, before=True)
        try:
            warm_up_or_solve(run)
            adapt_trained_elsewhere(run)
            fine_tune(run)
        finally:
            restore_trainable(run)
        after_training(run)
        run.metrics_after = measure(run, before=False)
        run.metrics_plain = measure_plain(run)
        run.timings["total_s"] = time.perf_counter() - run.start
        return save_and_push(run, record=record_lineage(run))


# 1-3. Before anything changes -------------------------------------------------------------------------------------


def training_arguments(args: TrainingArguments | None) -> TrainingArguments:
    """``args``, or defaults, with their device set up: under a distributed launch that joins the process group,
    which the first steps need (every process must have read the same streamed rows) before any Trainer exists."""
    args = args or TrainingArguments(output_dir="hf_incr-output", report_to="none")
    _ = args.device
    return args


def check_inputs(run: IncrementRun) -> None:
    """Every check of the inputs (model, tokenizer, data, recipe, output folder) before anything is modified."""
    check_increment_inputs(run.model, run.tokenizer, run.train_dataset, run.eval_dataset, run.config)
    if run.save:
        # Saving replaces the output folder: refuse one whose replacement would delete something (e.g. the folder
        # that holds the model being extended), and checkpoints from anywhere but this run's own folder.
        check_output_dir(run.args.output_dir, getattr(run.model.config, "_name_or_path", None) or None)
        check_resume_from_checkpoint(run.args.resume_from_checkpoint, run.args.output_dir)


def load_saved_state(run: IncrementRun) -> None:
    """Put the model where Trainer would, and let every control read what was saved beside the model."""
    if getattr(run.model, "hf_device_map", None) is None:
        # Where Trainer would put it anyway; the feature-caching pass runs before any Trainer exists.
        run.model.to(run.args.device)
    run.multi_label = is_multi_label_model(run.model)
    run.source_dir = saved_state_folder(run.model)
    run.controls = active_controls(run.config)
    for control in run.controls:
        control.load(run)
    check_saved_state(run.model, run.statistics, run.replay_memory, run.source_dir)


def find_rerun_record(run: IncrementRun) -> dict | None:
    """The lineage record this run repeats (same training data, no label it did not add), or ``None``.

    A rerun of the model's last increment on its own result trains nothing: more epochs on that data would change
    the weights behind a lineage that does not record them."""
    if run.is_base:
        return None
    config = run.config
    new_labels = find_new_labels(run.train_dataset, run.model.config.label2id, config.label_column, config.new_labels)
    repeated = find_rerun(run.model, getattr(run.train_dataset, "_fingerprint", None), new_labels)
    if repeated is not None:
        logger.warning(
            "This run repeats increment %s of the lineage (same training data, no label it did not add): nothing "
            "trained, no new lineage record. To train it again, start from the model it was trained from (%s).",
            repeated.get("increment"), repeated.get("base_model"),
        )
        run.old_ids = list(run.model.config.id2label)
    return repeated


# 4-5. Plan and grow -----------------------------------------------------------------------------------------------


def plan_increment(run: IncrementRun) -> None:
    """Decide, once, what this increment does: its new labels, whether the head is solved in closed form, whether
    the encoder is fine-tuned, and whether the gradient phases distill from the model before the increment."""
    model, config = run.model, run.config
    run.new_labels = find_new_labels(run.train_dataset, model.config.label2id, config.label_column, config.new_labels)
    run.old_ids = list(range(len(model.config.id2label)))
    if run.is_base:
        # A first classifier: every label is the model's already, and there is nothing to forget.
        if run.new_labels:
            raise DataError(f"The base model lacks the label(s) {run.new_labels} that occur in the training data.")
        run.old_ids = []
    run.annotated = _annotated_labels(run)  # may refuse the data: before anything is modified
    run.fine_tune = config.finetune_layers != 0 and config.finetune_epochs > 0 and (
        run.is_base or config.finetune_increments
    )
    run.keep_rows = config.closed_form_head and not run.is_base and keeps_trained_rows(
        model, run.statistics, config, label_names_in(run.train_dataset, config.label_column)
    )
    run.closed_form = config.closed_form_head and not run.keep_rows
    if run.keep_rows and run.multi_label:
        _check_new_labels_have_negatives(run)
    run.adapt = run.keep_rows and run.statistics is None and config.adapt_trained_elsewhere and _holds_old_labels(run)
    # Head surgery and training act on the model's own Linear: a random-feature head is refitted (closed form) or
    # dropped (any other recipe), never trained by gradient.
    run.head = find_classifier_head(model)
    run.detached_random_features = detach_random_feature_head(model, run.head)
    run.detached_kernel = detach_kernel_head(model, run.head)
    if any(control.wants_teacher(run) for control in run.controls):
        run.teacher = copy.deepcopy(model).eval()
    linear = run.head.linear
    run.old_head = (linear.weight.detach().clone(), None if linear.bias is None else linear.bias.detach().clone())


def _annotated_labels(run: IncrementRun) -> list[int] | None:
    """The label ids the rows of a multi-label increment annotate (``multi_label_annotation``); None: every label.

    With ``new`` (the default) an old label missing from a row is unknown, not absent: learning it as a negative would
    teach the head that the old label never occurs in the new data. Old labels present in rows are ignored then,
    which the warning says (and how to use them)."""
    if not run.multi_label or run.is_base or run.config.multi_label_annotation == "all":
        return None
    old_names = set(run.model.config.label2id)
    carrying = sum(
        any(name in old_names for name in names)
        for names in row_label_names(run.train_dataset, run.config.label_column)
    )
    if not run.new_labels:
        raise DataError(
            "This multi-label increment brings no new label, and `multi_label_annotation='new'` says its rows "
            "annotate only new labels: there is nothing to learn. If the rows are fully annotated (a label missing "
            "from a row is absent), set `multi_label_annotation='all'` (`--multi_label_annotation all`)."
        )
    if carrying:
        warnings.warn(
            f"{carrying} of {len(run.train_dataset)} rows carry old labels, which `multi_label_annotation='new'` "
            "ignores: old labels keep their rows and thresholds. If every row is fully annotated (a label missing "
            "from it is absent), set `multi_label_annotation='all'` to refit the old labels too.",
            UserWarning,
            stacklevel=2,
        )
    first_new = len(run.model.config.id2label)
    return list(range(first_new, first_new + len(run.new_labels)))


def _holds_old_labels(run: IncrementRun) -> bool:
    """Whether a single-label increment's rows hold every old label about as well as the new ones
    (:func:`hf_incr.new_rows.represents_old_labels`), from the label names alone (before the head grows)."""
    if run.multi_label or not run.new_labels or not run.old_ids:
        return False
    ids = {name: i for i, name in enumerate(list(run.model.config.label2id) + list(run.new_labels))}
    labels = torch.tensor([ids[names[0]] for names in row_label_names(run.train_dataset, run.config.label_column)])
    return represents_old_labels(labels, len(run.old_ids), len(ids))


def _check_new_labels_have_negatives(run: IncrementRun) -> None:
    """A multi-label model without statistics learns each new label from this increment's rows alone: a label that
    every row carries cannot be told apart from anything (with statistics, earlier rows would be its negatives); and
    when every row carries some new label, no row shows the new labels what a text without any of them looks like
    (a warning)."""
    rows = row_label_names(run.train_dataset, run.config.label_column)
    everywhere = [name for name in run.new_labels if all(name in names for names in rows)]
    if everywhere:
        raise DataError(
            f"The new label(s) {everywhere[:10]} are carried by every row of this increment, and the model has no "
            "saved statistics (it was trained without hf_incr) whose earlier rows could serve as rows without them. "
            "Add rows that do not carry them (e.g. a few rows of the old labels) to this increment's data."
        )
    new_labels = set(run.new_labels)
    if run.statistics is None and all(new_labels.intersection(names) for names in rows):
        # GoEmotions, 14 + 14 labels: 58.6 % micro-F1 on the new labels from their rows alone, 62.0 % with the texts
        # that carry none of them (docs/benchmarks.md): both the thresholds and the ranking gain.
        warnings.warn(
            "Every row of this increment carries one of the new labels, and the model has no saved statistics: "
            "each new label's threshold is chosen against the other new labels' rows only, so it fires too often on "
            "texts that carry none of them. Add texts annotated as carrying none of the new labels (an empty label "
            "list `[]`, or only old labels), e.g. the rest of the corpus the new labels were annotated on.",
            UserWarning,
            stacklevel=3,
        )


def grow_head(run: IncrementRun) -> None:
    """Mix in replayed rows, cache head inputs if a phase needs them, grow the head, and encode the labels."""
    config, model = run.config, run.model
    run.train_rows = run.train_dataset
    for control in run.controls:
        control.prepare_rows(run)
    if needs_features(run):
        started = time.perf_counter()
        if run.keep_rows and run.multi_label:
            run.kernel_beside_kept_rows = kernel_head_state(run, _statistics_of(run))
        if run.kernel_beside_kept_rows is not None:
            run.features, run.pooled_rows = _encode_with_pooled_rows(run, run.kernel_beside_kept_rows.config)
        else:
            run.features = _encode(run, run.train_rows)
        run.timed("feature_cache_s", started)
    examples = None
    init = config.init
    if run.keep_rows or (init == "imprint" and run.new_labels and run.features is None):
        init = "zeros"  # the new rows are written by the closed-form solve or by fit_new_rows
    elif init == "imprint" and run.new_labels:
        row_names = row_label_names(run.train_rows, config.label_column)
        examples = {n: run.features[[i for i, names in enumerate(row_names) if n in names]] for n in run.new_labels}
    if run.new_labels:
        run.new_ids = add_labels(model, run.new_labels, init=init, examples=examples, head=run.head)
        run.head = run.head.refreshed()
    if run.is_base:
        run.new_labels, run.new_ids = list(model.config.id2label.values()), list(model.config.id2label)
    label2id = model.config.label2id
    run.train_encoded = encode_labels(run.train_rows, label2id, config.label_column, run.multi_label)
    if run.eval_dataset is not None:
        eval_encoded = encode_labels(run.eval_dataset, label2id, config.label_column, run.multi_label)
        run.eval_tokenized = model_columns(
            tokenize(eval_encoded, run.tokenizer, config.text_column, config.max_length), run.tokenizer
        )


def needs_features(run: IncrementRun) -> bool:
    """Whether any step needs the frozen encoder's head inputs of the training rows."""
    config = run.config
    # A head solved in closed form (no warm-up) overwrites every row: no cached warm-up, nothing to imprint; its
    # statistics stream over the rows instead (see solve_closed_form_head).
    if run.keep_rows:
        return True  # the new rows are fitted on the head inputs of the increment's rows
    solved = solves_head(run)
    cached_warm_up = (
        not solved and config.warmup_epochs > 0 and config.cache_features and config.warmup_scope == "output"
    )
    imprint = config.init == "imprint" and bool(run.new_labels) and not solved
    return cached_warm_up or imprint or any(control.needs_features(run) for control in run.controls)


def solves_head(run: IncrementRun) -> bool:
    """Whether this increment solves the head in closed form instead of warming it up (no fine-tuning after it)."""
    return run.closed_form and not run.fine_tune


def _encode(run: IncrementRun, rows: Dataset, on_batch: Callable[[list[int]], None] | None = None) -> torch.Tensor:
    config = run.config
    return extract_head_inputs(
        run.model, run.tokenizer, rows[config.text_column], batch_size=config.feature_batch_size,
        max_length=config.max_length, device=run.args.device, show_progress=run.show_progress, head=run.head,
        on_batch=on_batch,
    )


def _encode_with_pooled_rows(run: IncrementRun, kernel: KernelLDAConfig) -> tuple[torch.Tensor, tuple]:
    """The head inputs of the training rows (:func:`_encode`) and, from the same forward passes, the pooled top layers
    a kernel head reads, for this process's share of the increment's own rows (not replayed ones): ``(row ids,
    vectors)`` in row order."""
    capture, hooks = capture_pooled(run.model, kernel)
    own = len(run.train_dataset)
    ids, vectors = [], []

    def keep(index: list[int]) -> None:
        ids.extend(index)
        vectors.append(capture.pooled.detach().float().cpu())

    try:
        features = _encode(run, run.train_rows, on_batch=keep)
    finally:
        for hook in hooks:
            hook.remove()
    ids = torch.tensor(ids, dtype=torch.long)
    vectors = torch.cat(vectors) if vectors else torch.zeros(0, kernel.in_features)
    order = ids.argsort()
    ids, vectors = ids[order], vectors[order]
    return features, (ids[ids < own], vectors[ids < own])


# 6. Measure ---------------------------------------------------------------------------------------------------------


def measure(run: IncrementRun, *, before: bool) -> dict[str, float]:
    """Metrics on the eval data, split into old / new labels (``{}`` without eval data).

    Before training, the model is scored as the user had it (random-feature head included), on the old labels
    only: their rows are kept bit for bit, so this is exactly the model before the increment."""
    if run.eval_tokenized is None or (before and not run.old_ids):
        return {}
    attached = run.detached_random_features if before else None
    if attached is not None:
        attach_random_feature_head(run.model, attached.grow(len(run.model.config.label2id)), run.head)
    kernel = run.detached_kernel if before else None
    if kernel is not None:  # the old kernel head scores the old labels; the grown Linear's new rows are not scored
        attach_kernel_head(run.model, kernel, run.head, fewer_labels_ok=True)
    try:
        return evaluate_model(
            run.model, run.eval_tokenized, run.args, run.old_ids, multi_label=run.multi_label,
            threshold=run.config.threshold, only_old=before, tokenizer=run.tokenizer,
        )
    finally:
        if attached is not None:
            detach_random_feature_head(run.model, run.head)
        if kernel is not None:
            detach_kernel_head(run.model, run.head)


# 7-9. Train ---------------------------------------------------------------------------------------------------------


def warm_up_or_solve(run: IncrementRun) -> None:
    """The output Linear on a frozen encoder: solved from the statistics, or warmed up by gradient.

    A closed-form head replaces the warm-up, unless the encoder is fine-tuned afterwards (the base of a
    first-session-adapted model): then the head is solved after fine-tuning, and the warm-up gives the fine-tuning a
    trained head to start from."""
    config, model = run.config, run.model
    run.trainable_before = {n: p.requires_grad for n, p in model.named_parameters()}
    started = time.perf_counter()
    if run.keep_rows:
        fit_new_rows_beside_kept_ones(run)
        run.timed("new_rows_s", started)
        return
    if solves_head(run):
        # Closed-form rows: only this increment's own rows (replayed rows are already in the statistics).
        own = len(run.train_dataset)
        solve_closed_form_head(
            run, run.train_encoded.select(range(own)), None if run.features is None else run.features[:own]
        )
        run.timed("closed_form_s", started)
        return
    if config.warmup_epochs <= 0:
        return
    freeze_all_but_head(model, config.warmup_scope, run.head)
    if run.features is not None and config.cache_features and config.warmup_scope == "output":
        run.train_metrics["warmup"] = warm_up_on_cached_features(
            model, run.head, run.features, run.train_encoded, run.args,
            epochs=config.warmup_epochs, learning_rate=config.warmup_learning_rate,
            batch_size=config.cached_batch_size, text_column=config.text_column, multi_label=run.multi_label,
            teacher_head=run.old_head if run.old_ids else None,
            distill_weight=config.distill_weight, distill_temperature=config.distill_temperature,
        )
    else:
        run.train_metrics["warmup"] = _train_phase(run, "warmup", config.warmup_epochs, config.warmup_learning_rate)
    run.timed("warmup_s", started)


def adapt_trained_elsewhere(run: IncrementRun) -> None:
    """A model hf_incr did not train, given every old label's rows about as well as the new ones (``run.adapt``):
    its encoder, trained for the old labels only, is what limits any head on it. So the whole model is fine-tuned
    once on every row (a joint fine-tune warm-started from the trained model: ``adapt_epochs``), and the head is
    solved from the adapted encoder's statistics, as for a base that hf_incr trains; those statistics cover every
    label, so later increments take the closed-form path with the encoder frozen.

    With eval data, the kept trained rows on the frozen encoder are scored first; the adapted model replaces them only
    if it is at least as accurate there on the old labels' rows and on all rows. Otherwise every weight and the
    statistics go back to the kept state (a CPU copy of the weights is held meanwhile)."""
    if not run.adapt:
        return
    config, model = run.config, run.model
    started = time.perf_counter()
    kept_state = kept_metrics = None
    if run.eval_tokenized is not None:
        kept_metrics = _evaluate(run)
        kept_state = ({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}, run.statistics)
    # Every block and the head; the token embeddings stay as trained (half of a small encoder's weights, and the
    # costliest part of the optimizer step on CPU; the new labels' words are in the vocabulary already).
    unfreeze_top_layers(model, len(encoder_layers(model)), "head", run.head)
    run.train_metrics["adapt"] = _train_phase(
        run, "adapt", config.adapt_epochs, config.adapt_learning_rate, group_by_length=True
    )
    model.eval()
    run.statistics = None  # statistics of the adapted encoder, from every row of this increment
    solve_closed_form_head(run, run.train_encoded.select(range(len(run.train_dataset))))
    run.adaptation = {"epochs": config.adapt_epochs, "learning_rate": config.adapt_learning_rate, "kept": False}
    if kept_metrics is not None:
        adapted_metrics = _evaluate(run)
        run.adaptation.update(eval_kept_rows=_accuracies(kept_metrics), eval_adapted=_accuracies(adapted_metrics))
        if not _at_least_as_accurate(adapted_metrics, kept_metrics):
            state, statistics = kept_state
            model.load_state_dict(state)
            run.statistics = statistics
            run.adaptation["kept"] = True
    run.timed("adapt_s", started)


def measure_plain(run: IncrementRun) -> dict[str, float]:
    """With an extra head attached (kernel LDA, random features), the metrics of the model's own Linear, which is
    what plain transformers loads (``{}`` without an extra head or eval data): the summary shows both."""
    if run.eval_tokenized is None:
        return {}
    kernel = detach_kernel_head(run.model, run.head)
    random_head = detach_random_feature_head(run.model, run.head)
    if kernel is None and random_head is None:
        return {}
    try:
        return _evaluate(run)
    finally:
        if kernel is not None:
            attach_kernel_head(run.model, kernel, run.head)
        if random_head is not None:
            attach_random_feature_head(run.model, random_head, run.head)


def _evaluate(run: IncrementRun) -> dict[str, float]:
    return evaluate_model(
        run.model, run.eval_tokenized, run.args, run.old_ids, multi_label=run.multi_label,
        threshold=run.config.threshold, tokenizer=run.tokenizer,
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


def fine_tune(run: IncrementRun) -> None:
    """The top ``finetune_layers`` layers and the head, in a NEW Trainer (DDP fixes the trainable set when it wraps
    the model); then, for a closed-form head, the statistics of the fine-tuned encoder."""
    if not run.fine_tune:
        return
    config = run.config
    started = time.perf_counter()
    unfreeze_top_layers(run.model, config.finetune_layers, "head", run.head)
    run.train_metrics["finetune"] = _train_phase(
        run, "finetune", config.finetune_epochs, config.finetune_learning_rate, layer_lr_decay=config.layer_lr_decay
    )
    run.timed("finetune_s", started)
    if run.closed_form:
        # The statistics must describe the encoder as it stays from now on (frozen in later increments): encode
        # this increment's rows again with the fine-tuned encoder.
        started = time.perf_counter()
        run.model.eval()
        solve_closed_form_head(run, run.train_encoded.select(range(len(run.train_dataset))))
        run.timed("closed_form_s", started)


def _train_phase(
    run: IncrementRun, phase: str, epochs: float, learning_rate: float, layer_lr_decay=None, group_by_length=False
) -> dict:
    config = run.config
    return train_phase(
        run.model, run.tokenizer, run.train_encoded, run.args, phase=phase, epochs=epochs,
        learning_rate=learning_rate, text_column=config.text_column, max_length=config.max_length,
        layer_lr_decay=layer_lr_decay, teacher=run.teacher, distill_weight=config.distill_weight,
        distill_temperature=config.distill_temperature, group_by_length=group_by_length,
    )


def solve_closed_form_head(run: IncrementRun, rows: Dataset, features: torch.Tensor | None = None) -> None:
    """Add ``rows`` (this increment's own rows, labels encoded) to the statistics and write the closed-form solution
    into the model's own Linear; with ``random_features``, also refit the random-feature head and attach it.

    With ``features`` (their head inputs, cached for another step) they are added at once; otherwise the frozen
    encoder streams over the rows, each process encodes its share, and the shares are added up across processes:
    memory stays independent of the number of rows, and every process solves the same head."""
    config, linear = run.config, run.head.linear
    num_labels = linear.out_features
    # A batch's labels read at once from Arrow: `rows["labels"][i]` builds a Dataset per row.
    labels = rows.select_columns(["labels"])

    def targets(index) -> torch.Tensor:
        return _targets(torch.tensor(labels[list(index)]["labels"]), num_labels, run.multi_label, run.annotated)

    statistics = _statistics_of(run)
    statistics.grow(num_labels)
    random_head = None
    if config.random_features:
        random_head = statistics.random_features or RandomFeatureHead.new(
            linear.in_features, config.random_features, num_labels, run.args.seed
        )
        random_head.grow(num_labels)
    kernel = kernel_head_state(run, statistics)
    kernel_share = None
    if features is not None and kernel is None:
        every_row = targets(range(len(rows)))
        share = RidgeStatistics.empty(linear.in_features, num_labels).update(features, every_row)
        statistics.add(share, run.annotated)
        if random_head is not None:
            random_head.update(features, every_row)
    else:
        share = RidgeStatistics.empty(linear.in_features, num_labels)
        random_share = random_head.accumulator() if random_head is not None else None
        hooks = []
        if kernel is not None:
            # The kernel head reads the pooled top layers of the same forward pass that yields the Linear's inputs:
            # hooks on the encoder record them for the accumulator.
            capture, hooks = capture_pooled(run.model, kernel.config)
            kernel_share = KernelStatisticsAccumulator(kernel, capture, run.annotated)
        try:
            count = accumulate_head_statistics(
                run.model, run.tokenizer, rows[config.text_column], targets,
                [share] + ([random_share] if random_share is not None else [])
                + ([kernel_share] if kernel_share is not None else []),
                batch_size=config.feature_batch_size, max_length=config.max_length, device=run.args.device,
                show_progress=run.show_progress, head=run.head,
            )
        finally:
            for hook in hooks:
                hook.remove()
        run.rows_encoded = count
        shares = [share] + ([random_share.statistics] if random_share is not None else [])
        for part in shares:
            total = torch.tensor([float(part.count)], dtype=torch.float64)
            sum_over_processes(part.gram, part.cross, total)
            part.count = int(total.item())
        statistics.add(share, run.annotated)
        if random_head is not None:
            random_head.statistics.add(random_share.statistics)
    solver = "lda" if config.closed_form_solver == "auto" else config.closed_form_solver
    # Rows of labels the data does not annotate stay as they are (multi_label_annotation='new').
    run.thresholds = statistics.write_into(linear, config.ridge_lambda, solver, run.multi_label, run.annotated)
    if random_head is not None:
        random_head.solve(config.random_features_lambda, run.multi_label)
        statistics.random_features = random_head
        attach_random_feature_head(run.model, random_head.to(linear.weight.device), run.head)
    if kernel_share is not None:
        started = time.perf_counter()
        statistics.kernel_lda = kernel_share.finish(num_labels)
        run.timed("kernel_lda_s", started)
        attach_kernel_head(run.model, statistics.kernel_lda.classifier, run.head)
    run.statistics = statistics


def kernel_head_state(run: IncrementRun, statistics: RidgeStatistics) -> KernelHeadState | None:
    """The kernel LDA head this increment continues (the model's, or a new one at its first increment), or ``None``
    when ``kernel_features=0`` (a kernel head the model had is then dropped, with a warning: its statistics would
    miss this increment's rows)."""
    config = run.config
    if not config.kernel_features:
        if statistics.kernel_lda is not None:
            logger.warning(
                "The model has a kernel LDA head but `kernel_features=0`: it is dropped (it would lack this "
                "increment's labels). Keep `kernel_features=%d` to continue it.",
                statistics.kernel_lda.config.num_features,
            )
            statistics.kernel_lda = None
        return None
    state = statistics.kernel_lda
    if state is None:
        if config.kernel_pooling == "auto":
            pooling, normalize = sentence_pooling(run.model)
        else:
            pooling, normalize = config.kernel_pooling, True
        layers = min(config.kernel_layers, len(encoder_layers(base_model_of(run.model))) or 1)
        features, members = head_size(config.kernel_features, config.kernel_members, run.multi_label)
        head_config = KernelLDAConfig(
            in_features=run.model.config.hidden_size * layers, num_features=features, num_members=members,
            seed=run.args.seed, normalize=normalize, pooling=pooling, layers=layers, multi_label=run.multi_label,
            # A multi-label classifier trained elsewhere: its labels so far keep the Linear's kept, trained rows.
            linear_labels=list(run.old_ids) if run.keep_rows else [],
        )
        state = KernelHeadState(KernelLDAHead(head_config))
    state.file_dtype = config.kernel_statistics_dtype
    return state


def fit_new_rows_beside_kept_ones(run: IncrementRun) -> None:
    """A classifier hf_incr did not train: its trained rows stay (bit for bit, unless every old label has rows and
    a held-out check prefers refitting them all), the new rows are fitted against them on the cached head inputs
    (:func:`hf_incr.new_rows.add_new_rows`; multi-label: :func:`~hf_incr.new_rows.fit_multilabel_new_rows`), and
    the statistics of this increment's rows are saved, marking the kept rows, so the next increment continues."""
    linear, num_old = run.head.linear, len(run.old_ids)
    own = len(run.train_dataset)
    features = run.features.float()
    labels = torch.tensor(run.train_encoded["labels"])
    old_weight, old_bias = run.old_head
    refit = False
    weight = bias = new_weight = new_bias = None
    if run.multi_label:
        if run.new_ids:  # each new label its own logistic regression; old rows are not even read
            fitted = fit_multilabel_new_rows(features, labels.float(), num_old, seed=run.args.seed)
            new_weight, new_bias = fitted["new_weight"], fitted["new_bias"]
    else:
        old = (old_weight.float().cpu(), None if old_bias is None else old_bias.float().cpu())
        if run.new_ids and run.adapt and run.eval_tokenized is None:
            # Only the start of the adaptation (the whole head is solved again after it): one fit of the new rows
            # against the frozen old ones. The held-out calibration (21 s of 43 on BANKING77) would buy nothing the
            # fine-tune keeps.
            grown = grow_rows(*old, *fit_new_rows(
                features, labels, *old, len(run.new_ids), scale="free", max_iter=ADAPT_START_ITERATIONS
            ))
            fitted = {"refit": False, "weight": grown[0], "bias": grown[1]}
        elif run.new_ids:
            fitted = add_new_rows(features, labels, *old, len(run.new_ids), seed=run.args.seed)
        else:  # only the model's own labels: nothing to add, a refit only if it wins a held-out check
            fitted = refit_if_better(features, labels, *old, seed=run.args.seed)
        refit = bool(fitted["refit"])
        weight, bias = fitted["weight"], fitted["bias"]
        new_weight, new_bias = weight[num_old:], None if bias is None else bias[num_old:]
    with torch.no_grad():
        if refit:
            linear.weight.copy_(weight.to(linear.weight))
            if linear.bias is not None:
                linear.bias.copy_(bias.to(linear.bias))
        elif run.new_ids:
            # Only the new rows are written: the old ones stay the tensors they were, bit for bit.
            linear.weight[num_old:] = new_weight.to(linear.weight)
            if linear.bias is not None and new_bias is not None:
                linear.bias[num_old:] = new_bias.to(linear.bias)
    statistics = _statistics_of(run)
    share = RidgeStatistics.empty(linear.in_features, linear.out_features).update(
        features[:own], _targets(labels[:own], linear.out_features, run.multi_label, run.annotated)
    )
    statistics.add(share, run.annotated)
    if run.multi_label and run.new_ids and linear.bias is not None:
        # Each new label decides at its F1-tuned threshold, folded into its bias (old rows are not touched).
        cuts = statistics.decision_thresholds(new_weight.double(), new_bias.double(), run.new_ids)
        with torch.no_grad():
            linear.bias[num_old:] -= cuts.to(linear.bias)
        run.thresholds = {num_old + k: float(cut) for k, cut in enumerate(cuts)}
    # Rows refitted on every label's rows are the data's own fit; otherwise every row is a kept, trained row.
    statistics.kept[:] = not refit
    run.statistics = statistics
    solve_kernel_head_beside_kept_rows(run, statistics)


def solve_kernel_head_beside_kept_rows(run: IncrementRun, statistics: RidgeStatistics) -> None:
    """Multi-label, trained rows kept, ``kernel_features`` set: a kernel LDA head decides the labels it has rows of
    (this increment's and later ones), reading the encoder's pooled top layers, while the labels the classifier
    brought keep the Linear's logits bit for bit (``KernelLDAConfig.linear_labels``). Its statistics come from the
    pooled rows the feature pass kept (:func:`_encode_with_pooled_rows`). On GoEmotions (14 labels trained elsewhere,
    14 new) the new labels' micro-F1 went from 48.7 (new Linear rows on the pooler) to 57.3, 58.6 at
    ``kernel_layers=6`` (docs/benchmarks.md)."""
    kernel = run.kernel_beside_kept_rows
    if kernel is None:
        return
    started = time.perf_counter()
    ids, pooled = run.pooled_rows
    run.pooled_rows = None  # held only until here
    num_labels = run.head.linear.out_features
    share = KernelStatisticsAccumulator(kernel, None, run.annotated)
    if len(ids):
        labels = torch.tensor(run.train_encoded.select_columns(["labels"])[ids.tolist()]["labels"])
        share.add(pooled, _targets(labels, num_labels, True, run.annotated))
    run.rows_encoded = len(ids)
    statistics.kernel_lda = share.finish(num_labels)
    attach_kernel_head(run.model, statistics.kernel_lda.classifier, run.head)
    run.timed("kernel_lda_s", started)


def _targets(
    labels: torch.Tensor, num_labels: int, multi_label: bool, annotated: list[int] | None = None
) -> torch.Tensor:
    """The statistics' targets of encoded labels: multi-hot rows (0 for labels the rows do not annotate, see
    ``RidgeStatistics.add``), label ids one-hot; float64."""
    if not multi_label:
        return torch.nn.functional.one_hot(labels.long(), num_labels).double()
    targets = labels.double()
    if annotated is not None:
        unknown = torch.ones(targets.shape[1], dtype=torch.bool)
        unknown[annotated] = False
        targets[:, unknown] = 0.0
    return targets


def _statistics_of(run: IncrementRun) -> RidgeStatistics:
    """The statistics this increment adds to: the model's, or empty ones over its head inputs."""
    return run.statistics if run.statistics is not None else RidgeStatistics.empty(run.head.linear.in_features, 0)


def restore_trainable(run: IncrementRun) -> None:
    """Every parameter's ``requires_grad`` as it was before the phases froze and unfroze layers."""
    if not run.trainable_before:
        return  # no phase ran
    for name, param in run.model.named_parameters():
        param.requires_grad_(run.trainable_before.get(name, True))


def after_training(run: IncrementRun) -> None:
    """Each control's last word on the trained model (weight aligning, the replay memory for the next increment)."""
    for control in run.controls:
        control.after_training(run)


# 10. Record and save ------------------------------------------------------------------------------------------------


def record_lineage(run: IncrementRun) -> dict[str, Any]:
    """The lineage record of this increment, appended to ``model.config``."""
    forgetting = _forgetting(run)
    record = make_record(
        kind="base" if run.is_base else "increment",
        labels_added=run.new_labels,
        label_ids=run.new_ids,
        base_model=_public_name(
            getattr(run.model.config, "_name_or_path", None) or getattr(run.model, "name_or_path", None)
        ),
        recipe=run.config.to_dict(),
        # What a reader needs: the cleaned metrics (see trainer.clean_metrics), forgetting, rows and seconds.
        metrics={"before": run.metrics_before, "after": run.metrics_after,
                 **({"after_plain_transformers": run.metrics_plain} if run.metrics_plain else {}),
                 "forgetting": forgetting,
                 "train_examples": len(run.train_dataset),
                 "replayed_examples": len(run.train_rows) - len(run.train_dataset),
                 "eval_examples": None if run.eval_dataset is None else len(run.eval_dataset),
                 "seconds": round(run.timings.get("total_s", 0.0), 1)},
        num_labels=len(run.model.config.label2id),
        data_fingerprint=getattr(run.train_dataset, "_fingerprint", None),
        head_rows=_head_rows(run),
        thresholds={run.model.config.id2label[i]: value for i, value in run.thresholds.items()},
    )
    if run.adaptation:
        record["adaptation"] = dict(run.adaptation)
    # Solved this increment: in closed form, or beside a multi-label classifier's kept rows.
    solved_kernel = run.closed_form or (run.keep_rows and run.multi_label)
    kernel = getattr(run.statistics, "kernel_lda", None) if solved_kernel else None
    if kernel is not None:  # its bandwidth, chosen at the first increment, is part of what the model is
        record["kernel_lda"] = kernel.lineage_entry()
        if kernel.config.multi_label:  # the kernel head's own decisions, tuned like the Linear's
            record["kernel_lda"]["thresholds"] = {
                run.model.config.id2label[i]: round(value, 4) for i, value in kernel.head.thresholds.items()
            }
    append_record(run.model, record)
    return record


def _head_rows(run: IncrementRun) -> str:
    """How this increment made the head's rows, for the lineage (``hf-incr info`` says what comes next from it)."""
    if run.adaptation and not run.adaptation["kept"]:
        return "adapted"
    if run.keep_rows:
        return "kept" if run.statistics.keeps_trained_rows else "refitted"
    return "solved" if run.closed_form else "trained"


def _forgetting(run: IncrementRun) -> float | None:
    before, after = run.metrics_before.get("old_accuracy"), run.metrics_after.get("old_accuracy")
    return None if before is None or after is None else before - after


def save_and_push(run: IncrementRun, record: dict[str, Any]) -> IncrementResult:
    """The result; with ``save``, the model saved atomically (main process) and pushed if ``args.push_to_hub``."""
    result = IncrementResult(
        new_labels=run.new_labels,
        new_label_ids=run.new_ids, old_label_ids=run.old_ids, metrics_before=run.metrics_before,
        metrics_after=run.metrics_after, metrics_plain=run.metrics_plain, forgetting=_forgetting(run),
        timings=run.timings, record=record,
        train_metrics=run.train_metrics, replay_memory=run.replay_memory, ridge_statistics=run.statistics,
        rows_encoded=run.rows_encoded,
    )
    if run.save and run.args.process_index == 0:
        result.output_dir = str(
            save_increment(
                run.model, run.args.output_dir, run.tokenizer, replay=run.replay_memory, ridge=run.statistics
            )
        )
        if run.train_encoded is not None and run.args.push_to_hub:
            # Trainer's own push is off in every phase (it would upload a card without the lineage); the saved
            # folder, card and lineage included, is pushed once here.
            result.hub_url = str(push_saved_model(
                result.output_dir, run.args, push_kernel_statistics=run.config.kernel_push_statistics
            ))
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
    ridge_statistics: RidgeStatistics | None = None,
):
    """Train a first classifier on ``train_dataset``'s labels with the same recipe (increment 0 of the lineage).

    Returns ``(model, tokenizer, result)``. The labels are read from the data (ClassLabel order if it has one,
    else sorted), the model is loaded with ``AutoModelForSequenceClassification`` and ``config.multi_label``
    chooses a sigmoid head. Either data set may be a streamed ``IterableDataset`` (see :func:`train_increment`).
    """
    args = training_arguments(args)
    # A stream is written to disk once here (its labels are read before the increment), not again in train_increment.
    with map_style(train_dataset, eval_dataset, names=("training data", "eval data")) as (train_dataset,
                                                                                       eval_dataset):
        config = config or IncrementConfig()
        check_texts(train_dataset, config.text_column)
        labels = label_names_in(train_dataset, config.label_column)
        multi_label = config.multi_label or is_multi_label_column(train_dataset, config.label_column)
        if multi_label and not config.multi_label:
            raise DataError(
                f"Column {config.label_column!r} holds lists of labels: set `multi_label=True` for a sigmoid head."
            )
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_name_or_path,
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            problem_type=MULTI_LABEL if multi_label else "single_label_classification",
            trust_remote_code=trust_remote_code,
        )
        if tokenizer.pad_token is None or model.config.pad_token_id is None:
            # Decoder-only models (GPT-2, Llama) ship no pad token; their classification head needs one.
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            model.config.pad_token_id = tokenizer.pad_token_id
        result = train_increment(
            model, tokenizer, train_dataset, eval_dataset, config=config, args=args, save=save, kind="base",
            replay_memory=replay_memory, ridge_statistics=ridge_statistics,
        )
        return model, tokenizer, result
