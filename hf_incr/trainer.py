"""The increment recipe on Trainer: grow the head, warm it up on a frozen encoder, optionally fine-tune the top layers
with layer-wise learning rates, keep the old labels, measure forgetting, record the lineage.

:func:`train_increment` is the one call; :class:`IncrementalTrainer` is the ``Trainer`` it builds for phases that
run the whole model (layer-wise learning-rate groups and distillation from the model before the increment).
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
from transformers.utils import logging

from .config import IncrementConfig
from .data import check_texts, encode_labels, find_new_labels, is_multi_label_column, label_names_in, tokenize
from .errors import ConfigError, DataError
from .features import CachedFeatureDataset, CachedFeatureHead, extract_head_inputs
from .forgetting import (
    RIDGE_FILENAME,
    ReplayMemory,
    RidgeStatistics,
    classification_loss,
    balanced_repeat,
    distillation_loss,
    mix_replay,
)
from .freezing import freeze_all_but_head, param_groups_layer_lr, unfreeze_top_layers
from .head import add_labels, align_weights, find_classifier_head
from .lineage import append_record, find_rerun, make_record
from .metrics import make_compute_metrics
from .random_features import RandomFeatureHead, attach_random_feature_head, detach_random_feature_head
from .validation import check_increment_inputs, check_output_dir, check_resume_from_checkpoint

logger = logging.get_logger(__name__)

MULTI_LABEL = "multi_label_classification"


class IncrementalTrainer(Trainer):
    """A ``Trainer`` with layer-wise learning-rate groups and optional distillation from a frozen teacher.

    Args:
        layer_lr_decay: When set, the optimizer gets :func:`~hf_incr.param_groups_layer_lr` groups (head at
            ``args.learning_rate``, each layer below multiplied by this factor) instead of Trainer's two groups.
        teacher: The model before the increment (frozen, eval mode). With ``distill_weight > 0`` the loss adds
            :func:`~hf_incr.forgetting.distillation_loss` on the old labels' outputs.
        distill_weight, distill_temperature: Weight and temperature of that term.
    """

    _tag_names = ["hf_incr", "class-incremental"]

    def __init__(
        self,
        *args,
        layer_lr_decay: float | None = None,
        teacher: torch.nn.Module | None = None,
        distill_weight: float = 0.0,
        distill_temperature: float = 2.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.layer_lr_decay = layer_lr_decay
        self.teacher = teacher
        self.distill_weight = distill_weight
        self.distill_temperature = distill_temperature
        # transformers' classifiers take **kwargs, so Trainer would pass num_items_in_batch and then scale their
        # (already averaged) loss by the accumulation steps / processes. Their loss is a mean: switch that off.
        self.model_accepts_loss_kwargs = False
        if self.teacher is not None:
            self.teacher.requires_grad_(False).eval()

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.layer_lr_decay is not None:
            opt_model = self.model if model is None else model
            groups = param_groups_layer_lr(
                opt_model, self.args.learning_rate, self.layer_lr_decay, self.args.weight_decay
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            optimizer_kwargs.pop("lr", None)  # every group carries its own lr
            self.optimizer = optimizer_cls(
                [{k: v for k, v in g.items() if k in ("params", "lr", "weight_decay")} for g in groups],
                lr=self.args.learning_rate,
                **optimizer_kwargs,
            )
            return self.optimizer
        return super().create_optimizer(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.teacher is None or self.distill_weight <= 0:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        outputs = model(**inputs)
        logits = outputs.logits
        multi_label = getattr(self.teacher.config, "problem_type", None) == MULTI_LABEL
        loss = classification_loss(logits, inputs["labels"], multi_label)
        teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with torch.no_grad():
            teacher_logits = self.teacher.to(logits.device)(**teacher_inputs).logits
        old = teacher_logits.shape[-1]
        loss = loss + self.distill_weight * distillation_loss(
            logits[:, :old], teacher_logits, multi_label, self.distill_temperature
        )
        outputs.loss = loss
        return (loss, outputs) if return_outputs else loss


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


def _phase_args(args: TrainingArguments, phase: str, **overrides) -> TrainingArguments:
    """The user's TrainingArguments for one phase: own checkpoint folder, phase epochs and learning rate."""
    return dataclasses.replace(
        args,
        output_dir=str(Path(args.output_dir) / "checkpoints" / phase),
        push_to_hub=False,  # the recipe pushes once, with the card and lineage, after saving
        load_best_model_at_end=False,
        **overrides,
    )


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _row_label_names(dataset: Dataset, label_column: str) -> list[list[str]]:
    from .data import _names_in_row

    feature = dataset.features[label_column]
    return [_names_in_row(value, feature) for value in dataset[label_column]]


def evaluate_model(
    model,
    tokenized_eval: Dataset,
    args: TrainingArguments,
    old_label_ids: list[int],
    *,
    multi_label: bool,
    threshold: float = 0.5,
    only_old: bool = False,
    tokenizer=None,
) -> dict[str, float]:
    """Evaluate with Trainer; metrics split into old / new labels. ``only_old`` scores as the model before the
    increment would (new labels' logits ignored), which the old rows being kept bit for bit makes exact."""
    trainer = Trainer(
        model=model,
        args=_phase_args(args, "eval"),
        eval_dataset=tokenized_eval,
        data_collator=DataCollatorWithPadding(tokenizer) if tokenizer is not None else None,
        compute_metrics=make_compute_metrics(
            old_label_ids, multi_label, threshold, restrict_to=old_label_ids if only_old else None
        ),
    )
    metrics = trainer.evaluate(metric_key_prefix="eval")
    return {k.removeprefix("eval_"): float(v) for k, v in metrics.items()}


def train_increment(
    model,
    tokenizer,
    train_dataset: Dataset,
    eval_dataset: Dataset | None = None,
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
        train_dataset: Texts and labels (names, ClassLabel, or lists for multi-label) of this increment.
        eval_dataset: Optional held-out data over old and new labels; metrics before/after come from it.
        config: The recipe's settings (:class:`IncrementConfig`).
        args: TrainingArguments for everything Trainer does (batch size, precision, logging, seed, ...);
            each phase gets its own checkpoint folder under ``output_dir/checkpoints``.
        replay_memory: Stored examples of old labels; default: the one saved beside the model, if any.
        ridge_statistics: Closed-form head statistics; default: the ones saved beside the model, if any.
        save: Save the result to ``args.output_dir``.
        kind: Recorded in the lineage (``"base"`` for a first classifier).
    """
    config = config or IncrementConfig()
    args = args or TrainingArguments(output_dir="hf_incr-output", report_to="none")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    check_increment_inputs(model, tokenizer, train_dataset, eval_dataset, config)
    if save:
        # Saving replaces the output folder: refuse one whose replacement would delete something (e.g. the folder
        # that holds the model being extended), and checkpoints from anywhere but this run's own folder.
        check_output_dir(args.output_dir, getattr(model.config, "_name_or_path", None) or None)
        check_resume_from_checkpoint(args.resume_from_checkpoint, args.output_dir)
    multi_label = model.config.problem_type == MULTI_LABEL
    if config.closed_form_head and config.closed_form_solver == "lda" and multi_label:
        raise ConfigError("`closed_form_solver='lda'` is for single-label models; use 'ridge' for multi-label.")
    if is_multi_label_column(train_dataset, config.label_column) and not multi_label:
        raise DataError(
            f"Column {config.label_column!r} holds lists of labels but the model is single-label "
            f"(problem_type={model.config.problem_type!r}). Start from a multi-label model (`multi_label=True` when "
            "training the base), or keep one label per row."
        )
    if getattr(model, "hf_device_map", None) is None:
        # Where Trainer would put it anyway; the feature-caching pass below runs before any Trainer exists.
        model.to(args.device)
    source_dir = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if replay_memory is None and config.replay_per_label > 0 and source_dir and Path(source_dir).is_dir():
        replay_memory = ReplayMemory.load(source_dir)
    if ridge_statistics is None and config.closed_form_head and source_dir and Path(source_dir).is_dir():
        ridge_statistics = RidgeStatistics.load(source_dir)
    # A rerun of the model's last increment on its own result (same data, no label it did not add): nothing is
    # trained, since more epochs on that data would change the weights behind a lineage that does not record them.
    if kind != "base":
        repeated = find_rerun(
            model, getattr(train_dataset, "_fingerprint", None),
            find_new_labels(train_dataset, model.config.label2id, config.label_column, config.new_labels),
        )
        if repeated is not None:
            logger.warning(
                "This run repeats increment %s of the lineage (same training data, no label it did not add): nothing "
                "trained, no new lineage record. To train it again, start from the model it was trained from (%s).",
                repeated.get("increment"), repeated.get("base_model"),
            )
            result = IncrementResult(
                new_labels=[], new_label_ids=[], old_label_ids=list(model.config.id2label), record=dict(repeated),
                replay_memory=replay_memory, ridge_statistics=ridge_statistics,
            )
            if save and args.process_index == 0:
                from .saving import save_increment

                result.output_dir = str(
                    save_increment(model, args.output_dir, tokenizer, replay=replay_memory, ridge=ridge_statistics)
                )
            return result
    # Head surgery and training act on the model's own Linear: a random-feature head is refitted (closed-form) or
    # dropped (any other recipe), never trained by gradient.
    attached = detach_random_feature_head(model)
    finetune_now = config.finetune_layers != 0 and config.finetune_epochs > 0 and (
        kind == "base" or config.finetune_increments
    )
    closed_form = config.closed_form_head and (
        kind == "base"
        or _closed_form_usable(model, ridge_statistics, config, label_names_in(train_dataset, config.label_column))
    )

    # 1. Labels: which are new, grow the head, encode the data onto the grown label space.
    old_ids = list(range(len(model.config.id2label)))
    new_labels = find_new_labels(train_dataset, model.config.label2id, config.label_column, config.new_labels)
    if kind == "base":
        # A first classifier: every label is new and there is nothing to forget.
        if new_labels:
            raise DataError(f"The base model lacks the label(s) {new_labels} that occur in the training data.")
        old_ids = []
    if eval_dataset is not None:
        stray = [n for n in find_new_labels(eval_dataset, model.config.label2id, config.label_column) if n not in new_labels]
        if stray:
            raise DataError(f"The eval data has label(s) {stray} that neither the model nor the training data has.")
    # The teacher serves the gradient phases only (a closed-form head is exact for the old labels by construction).
    gradient_phases = not closed_form or finetune_now
    teacher = (
        copy.deepcopy(model).eval() if config.distill_weight > 0 and old_ids and new_labels and gradient_phases else None
    )
    old_linear = find_classifier_head(model).linear
    old_head = (old_linear.weight.detach().clone(), None if old_linear.bias is None else old_linear.bias.detach().clone())

    train_rows = train_dataset
    if replay_memory is not None and len(replay_memory):
        repeat = balanced_repeat(replay_memory, len(train_dataset), len(new_labels)) if config.replay_balance else 1
        train_rows = mix_replay(
            train_dataset, replay_memory, config.text_column, config.label_column, multi_label, repeat=repeat
        )
        logger.info("Mixed %d replayed examples into %d new ones.", len(replay_memory), len(train_dataset))

    features = None
    need_features = (config.warmup_epochs > 0 and config.cache_features and config.warmup_scope == "output") or (
        config.init == "imprint" and new_labels
    ) or closed_form or (config.replay_per_label > 0 and config.replay_selection == "herding")
    if need_features:
        t = time.perf_counter()
        features = extract_head_inputs(
            model, tokenizer, train_rows[config.text_column], batch_size=config.feature_batch_size,
            max_length=config.max_length, device=args.device, show_progress=args.process_index == 0 and not args.disable_tqdm,
        )
        timings["feature_cache_s"] = time.perf_counter() - t
    row_names = _row_label_names(train_rows, config.label_column)

    examples = None
    if config.init == "imprint" and new_labels and kind != "base":
        examples = {n: features[[i for i, names in enumerate(row_names) if n in names]] for n in new_labels}
        missing = [n for n, x in examples.items() if len(x) == 0]
        if missing:
            raise DataError(
                f"`init='imprint'` needs training examples of every new label, but {missing} have none. Add examples, "
                "or use another `init`."
            )
    new_ids = add_labels(model, new_labels, init=config.init, examples=examples) if new_labels else []
    if kind == "base":
        new_labels, new_ids = list(model.config.id2label.values()), list(model.config.id2label)
    label2id = model.config.label2id
    train_encoded = encode_labels(train_rows, label2id, config.label_column, multi_label)
    eval_tokenized = None
    if eval_dataset is not None:
        eval_encoded = encode_labels(eval_dataset, label2id, config.label_column, multi_label)
        eval_tokenized = _model_columns(tokenize(eval_encoded, tokenizer, config.text_column, config.max_length), tokenizer)

    def evaluate(only_old: bool) -> dict[str, float]:
        if eval_tokenized is None:
            return {}
        return evaluate_model(
            model, eval_tokenized, args, old_ids, multi_label=multi_label, threshold=config.threshold,
            only_old=only_old, tokenizer=tokenizer,
        )

    if attached is not None and old_ids:
        # "Before" is the model as the user had it, random-feature head included (restricted to the old labels).
        attach_random_feature_head(model, attached.grow(len(label2id)))
    metrics_before = evaluate(only_old=True) if old_ids else {}
    detach_random_feature_head(model)
    trainable_before = {n: p.requires_grad for n, p in model.named_parameters()}
    train_metrics: dict[str, dict[str, float]] = {}

    # Closed-form rows: only this increment's own rows (replayed rows are already in the statistics).
    own = len(train_dataset)

    # 2. Warm-up: encoder frozen. A closed-form head replaces it, unless the encoder is fine-tuned afterwards
    # (the base of a first-session-adapted model): then the head is solved after fine-tuning, and the warm-up gives
    # the fine-tuning a trained head to start from.
    if closed_form and not finetune_now:
        t = time.perf_counter()
        ridge_statistics = _fit_closed_form_head(
            model, features[:own], train_encoded["labels"][:own], ridge_statistics, config, multi_label, args.seed
        )
        timings["closed_form_s"] = time.perf_counter() - t
    elif config.warmup_epochs > 0:
        t = time.perf_counter()
        freeze_all_but_head(model, config.warmup_scope)
        if features is not None and config.cache_features and config.warmup_scope == "output":
            train_metrics["warmup"] = _warm_up_on_cached_features(
                model, features, train_encoded, args, config, multi_label, old_head, old_ids
            )
        else:
            train_metrics["warmup"] = _train_phase(
                model, tokenizer, train_encoded, args, config, teacher, "warmup", config.warmup_epochs,
                config.warmup_learning_rate,
            )
        timings["warmup_s"] = time.perf_counter() - t

    # 3. Fine-tune the top layers, in a NEW Trainer: DDP fixes the trainable set when it wraps the model.
    if finetune_now:
        t = time.perf_counter()
        unfreeze_top_layers(model, config.finetune_layers, "head")
        train_metrics["finetune"] = _train_phase(
            model, tokenizer, train_encoded, args, config, teacher, "finetune", config.finetune_epochs,
            config.finetune_learning_rate, layer_lr_decay=config.layer_lr_decay,
        )
        timings["finetune_s"] = time.perf_counter() - t
        if closed_form:
            # The statistics must describe the encoder as it stays from now on (frozen in later increments): encode
            # this increment's rows again with the fine-tuned encoder.
            t = time.perf_counter()
            model.eval()
            features = extract_head_inputs(
                model, tokenizer, train_dataset[config.text_column], batch_size=config.feature_batch_size,
                max_length=config.max_length, device=args.device,
                show_progress=args.process_index == 0 and not args.disable_tqdm,
            )
            ridge_statistics = _fit_closed_form_head(
                model, features, train_encoded["labels"][:own], ridge_statistics, config, multi_label, args.seed
            )
            timings["closed_form_s"] = time.perf_counter() - t

    for name, param in model.named_parameters():
        param.requires_grad_(trainable_before.get(name, True))
    if config.weight_align and new_ids and old_ids and not closed_form:
        align_weights(model, new_ids)

    # 4. Memory for the next increment, metrics, lineage.
    if config.replay_per_label > 0:
        replay_memory = (replay_memory if replay_memory is not None else ReplayMemory()).update(
            train_dataset[config.text_column], _row_label_names(train_dataset, config.label_column),
            config.replay_per_label,
            # Replayed rows follow the increment's own rows (see mix_replay): the first rows are the new ones.
            features=None if features is None else features[: len(train_dataset)],
            selection=config.replay_selection, seed=args.seed,
        )
    metrics_after = evaluate(only_old=False)
    forgetting = None
    if metrics_before.get("old_accuracy") is not None and "old_accuracy" in metrics_after:
        forgetting = metrics_before["old_accuracy"] - metrics_after["old_accuracy"]
    timings["total_s"] = time.perf_counter() - start
    record = make_record(
        kind=kind,
        labels_added=new_labels,
        label_ids=new_ids,
        base_model=_public_name(source_dir),
        recipe=config.to_dict(),
        metrics={"before": metrics_before, "after": metrics_after, "forgetting": forgetting,
                 "train_examples": len(train_dataset), "replayed_examples": len(train_rows) - len(train_dataset)},
        num_labels=len(label2id),
        data_fingerprint=getattr(train_dataset, "_fingerprint", None),
    )
    append_record(model, record)
    result = IncrementResult(
        new_labels=new_labels, new_label_ids=new_ids, old_label_ids=old_ids, metrics_before=metrics_before,
        metrics_after=metrics_after, forgetting=forgetting, timings=timings, record=record,
        train_metrics=train_metrics, replay_memory=replay_memory, ridge_statistics=ridge_statistics,
    )
    if save and args.process_index == 0:
        from .saving import save_increment

        result.output_dir = str(save_increment(model, args.output_dir, tokenizer, replay=replay_memory, ridge=ridge_statistics))
        if args.push_to_hub:
            # Trainer's own push is off in every phase (it would upload a card without the lineage); the saved
            # folder, card and lineage included, is pushed once here.
            from .hub import push_saved_model

            result.hub_url = str(push_saved_model(result.output_dir, args))
    return result


def _closed_form_usable(model, statistics: RidgeStatistics | None, config: IncrementConfig,
                        labels_in_data: list[str]) -> bool:
    """Whether a closed-form increment can keep the old labels: their statistics are there, or (a first closed-form
    run) every old label is in the data. If not, e.g. a classifier trained without hf_incr given only new labels,
    the increment falls back to the gradient warm-up (with distillation), with a warning that says how to switch.
    Statistics that do not fit the model are an error."""
    num_old = len(model.config.id2label)
    if statistics is None:
        absent = [name for name in model.config.label2id if name not in set(labels_in_data)]
        if not absent:
            return True  # the statistics start from this data, which covers every label
        message = (
            f"`closed_form_head=True` solves the head from statistics of every label's training rows, but the model "
            f"has no saved statistics ({RIDGE_FILENAME}; was it trained without hf_incr?) and the data lacks its "
            f"label(s) {absent[:10]}{' ...' if len(absent) > 10 else ''}. This increment trains the head by gradient "
            "instead (warm-up with distillation), and those labels will be partly forgotten. To keep them, add a few "
            "training examples of every old label to this data once: their statistics are then collected and saved, "
            "and later increments need only new labels."
        )
        logger.warning(message)
        warnings.warn(message, UserWarning, stacklevel=3)
        return False
    if statistics.num_labels != num_old:
        raise ConfigError(
            f"The closed-form statistics cover {statistics.num_labels} labels but the model has {num_old}. Were they "
            "saved with another model (or another version of it)?"
        )
    features = statistics.random_features
    if config.random_features and features is None:
        raise ConfigError(
            f"`random_features={config.random_features}`, but the model's statistics hold no random-feature head "
            "(the base was trained without it), so the old labels' random-feature statistics are missing. Train the "
            "base with `random_features` set, or keep `random_features=0`."
        )
    if config.random_features and features.num_features != config.random_features:
        raise ConfigError(
            f"The model's random-feature head has {features.num_features} features but `random_features="
            f"{config.random_features}`. Keep the number it was trained with: `random_features="
            f"{features.num_features}`."
        )
    return True


def _fit_closed_form_head(model, features, labels, statistics, config, multi_label, seed) -> RidgeStatistics:
    """Add ``features`` (head inputs) and their labels to the statistics and write the closed-form solution into the
    model's own Linear; with ``config.random_features``, also refit the random-feature head and attach it."""
    linear = find_classifier_head(model).linear
    num_labels = linear.out_features
    targets = torch.tensor(labels, dtype=torch.float64)
    if not multi_label:
        targets = torch.nn.functional.one_hot(targets.long(), num_labels).double()
    if statistics is None:
        statistics = RidgeStatistics.empty(linear.in_features, 0)
    statistics.grow(num_labels).update(features, targets)
    solver = config.closed_form_solver
    if solver == "auto":
        solver = "ridge" if multi_label else "lda"
    statistics.write_into(linear, config.ridge_lambda, solver, multi_label)
    if config.random_features:
        head = statistics.random_features or RandomFeatureHead.new(
            linear.in_features, config.random_features, num_labels, seed
        )
        head.grow(num_labels).update(features, targets).solve(config.random_features_lambda, multi_label)
        statistics.random_features = head
        attach_random_feature_head(model, head.to(linear.weight.device))
    return statistics


def _public_name(name_or_path: str | None) -> str | None:
    """A Hub id as is; a local folder as ``./<its name>`` only, so no local path reaches a pushed config or card
    (and the name is not mistaken for a Hub id)."""
    if not name_or_path:
        return None
    path = Path(name_or_path)
    return f"./{path.name}" if path.exists() else name_or_path


def train_base_classifier(
    model_name_or_path: str,
    train_dataset: Dataset,
    eval_dataset: Dataset | None = None,
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
    chooses a sigmoid head.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .data import label_names_in

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


def _model_columns(tokenized: Dataset, tokenizer) -> Dataset:
    keep = [c for c in tokenized.column_names if c in set(tokenizer.model_input_names) | {"labels"}]
    return tokenized.select_columns(keep)


def _train_phase(model, tokenizer, train_encoded, args, config, teacher, phase, epochs, learning_rate,
                 layer_lr_decay=None) -> dict:
    """One phase that runs the whole model (trainable set already chosen) in its own IncrementalTrainer."""
    from .saving import phase_run

    tokenized = tokenize(train_encoded, tokenizer, config.text_column, config.max_length)
    trainer = IncrementalTrainer(
        model=model,
        args=_phase_args(args, phase, num_train_epochs=epochs, learning_rate=learning_rate),
        train_dataset=_model_columns(tokenized, tokenizer),
        data_collator=DataCollatorWithPadding(tokenizer),
        layer_lr_decay=layer_lr_decay,
        teacher=teacher,
        distill_weight=config.distill_weight,
        distill_temperature=config.distill_temperature,
    )
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    run = phase_run(model.config.id2label, train_encoded[config.text_column], train_encoded["labels"], trainable)
    return trainer.train(resume_from_checkpoint=_resume_from(args, phase, run)).metrics


def _resume_from(args: TrainingArguments, phase: str, run: dict | None = None) -> str | None:
    """The checkpoint this phase resumes from (``None``: start afresh), from TrainingArguments.resume_from_checkpoint.

    ``True`` resumes every phase from its own last *complete* checkpoint, if it has one (a checkpoint whose writing
    was killed is skipped); a path resumes the phase whose checkpoint folder it points into. ``run`` (labels, digests
    of the training rows and of the trained parameters' names) is stored beside the checkpoints: resuming another
    run's checkpoints is refused.
    A phase that starts afresh deletes its folder's old checkpoints, so a later resume cannot pick them up.
    """
    from .saving import checkpoint_to_resume, recover_interrupted_save

    folder = Path(args.output_dir) / "checkpoints" / phase
    resume = args.resume_from_checkpoint
    if resume in (None, False) or str(resume).lower() in ("false", "none", ""):
        resume = None
    elif not (resume is True or str(resume).lower() == "true") and not Path(resume).resolve().is_relative_to(
        folder.resolve()
    ):
        resume = None  # a checkpoint of another phase: this one starts afresh
    if str(getattr(args.save_strategy, "value", args.save_strategy)) == "no":
        run = None  # no checkpoints to tell apart: write no run file
    if resume is not None and args.should_save:
        # A save killed between its renames leaves `output_dir`, checkpoints included, in a sibling folder.
        recover_interrupted_save(args.output_dir)
    return checkpoint_to_resume(folder, resume, run, main_process=args.should_save)


def _warm_up_on_cached_features(model, features, train_encoded, args, config, multi_label, old_head, old_ids):
    """Train the model's output Linear with Trainer on cached head inputs (the frozen-encoder fast path)."""
    from .saving import phase_run

    linear = find_classifier_head(model).linear
    labels = torch.tensor(train_encoded["labels"], dtype=torch.float32 if multi_label else torch.long)
    columns = {"features": features, "labels": labels}
    if config.distill_weight > 0 and old_ids:
        weight, bias = old_head
        # On the CPU, beside the cached features (the old head may already live on the GPU).
        columns["teacher_logits"] = features @ weight.float().cpu().T + (0 if bias is None else bias.float().cpu())
    head_model = CachedFeatureHead(linear, multi_label, config.distill_weight, config.distill_temperature)
    trainer = Trainer(
        model=head_model,
        args=_phase_args(
            args, "warmup", num_train_epochs=config.warmup_epochs, learning_rate=config.warmup_learning_rate,
            per_device_train_batch_size=config.cached_batch_size,
        ),
        train_dataset=CachedFeatureDataset(**columns),
    )
    trainable = [f"cached:{name}" for name, param in head_model.named_parameters() if param.requires_grad]
    run = phase_run(model.config.id2label, train_encoded[config.text_column], train_encoded["labels"], trainable)
    metrics = trainer.train(resume_from_checkpoint=_resume_from(args, "warmup", run)).metrics
    # Trainer may have moved the Linear (shared with the model) to its device; the model follows it.
    model.to(linear.weight.device)
    return metrics
