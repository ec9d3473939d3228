"""The increment recipe on Trainer: grow the head, warm it up on a frozen encoder, optionally fine-tune the top layers
with layer-wise learning rates, keep the old labels, measure forgetting, record the lineage.

:func:`train_increment` is the one call; :class:`IncrementalTrainer` is the ``Trainer`` it builds for phases that
run the whole model (layer-wise learning-rate groups and distillation from the model before the increment).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
from transformers.utils import logging

from .config import IncrementConfig
from .data import check_texts, encode_labels, find_new_labels, is_multi_label_column, tokenize
from .errors import ConfigError, DataError
from .features import CachedFeatureDataset, CachedFeatureHead, extract_head_inputs
from .forgetting import (
    ReplayMemory,
    RidgeStatistics,
    classification_loss,
    balanced_repeat,
    distillation_loss,
    mix_replay,
)
from .freezing import freeze_all_but_head, param_groups_layer_lr, unfreeze_top_layers
from .head import add_labels, align_weights, find_classifier_head
from .lineage import append_record, make_record
from .metrics import make_compute_metrics
from .validation import check_increment_inputs

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
    teacher = copy.deepcopy(model).eval() if config.distill_weight > 0 and old_ids and new_labels else None
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
    ) or config.closed_form_head or (config.replay_per_label > 0 and config.replay_selection == "herding")
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

    metrics_before = evaluate(only_old=True) if old_ids else {}
    trainable_before = {n: p.requires_grad for n, p in model.named_parameters()}
    train_metrics: dict[str, dict[str, float]] = {}

    # 2. Warm-up: encoder frozen.
    if config.closed_form_head:
        t = time.perf_counter()
        # Only this increment's own rows: replayed rows are already in the statistics of earlier increments.
        own = len(train_dataset)
        targets = torch.tensor(train_encoded["labels"][:own], dtype=torch.float64)
        if not multi_label:
            targets = torch.nn.functional.one_hot(targets.long(), len(label2id)).double()
        linear = find_classifier_head(model).linear
        if ridge_statistics is None:
            ridge_statistics = RidgeStatistics.empty(linear.in_features, 0)
        ridge_statistics.grow(len(label2id)).update(features[:own], targets)
        ridge_statistics.write_into(linear, config.ridge_lambda, config.closed_form_solver)
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
    if config.finetune_layers != 0 and config.finetune_epochs > 0:
        t = time.perf_counter()
        unfreeze_top_layers(model, config.finetune_layers, "head")
        train_metrics["finetune"] = _train_phase(
            model, tokenizer, train_encoded, args, config, teacher, "finetune", config.finetune_epochs,
            config.finetune_learning_rate, layer_lr_decay=config.layer_lr_decay,
        )
        timings["finetune_s"] = time.perf_counter() - t

    for name, param in model.named_parameters():
        param.requires_grad_(trainable_before.get(name, True))
    if config.weight_align and new_ids and old_ids and not config.closed_form_head:
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
    return trainer.train(resume_from_checkpoint=_resume_from(args, phase)).metrics


def _resume_from(args: TrainingArguments, phase: str):
    """TrainingArguments.resume_from_checkpoint, applied to the phase whose checkpoint folder it points into
    (``True`` resumes every phase from its own last checkpoint, if it has one)."""
    resume = args.resume_from_checkpoint
    if resume in (None, False, "False", "false"):
        return None
    folder = Path(args.output_dir) / "checkpoints" / phase
    if resume is True or str(resume).lower() == "true":
        return True if any(folder.glob("checkpoint-*")) else None
    return resume if Path(resume).resolve().is_relative_to(folder.resolve()) else None


def _warm_up_on_cached_features(model, features, train_encoded, args, config, multi_label, old_head, old_ids):
    """Train the model's output Linear with Trainer on cached head inputs (the frozen-encoder fast path)."""
    linear = find_classifier_head(model).linear
    labels = torch.tensor(train_encoded["labels"], dtype=torch.float32 if multi_label else torch.long)
    columns = {"features": features, "labels": labels}
    if config.distill_weight > 0 and old_ids:
        weight, bias = old_head
        columns["teacher_logits"] = features @ weight.float().T + (0 if bias is None else bias.float())
    head_model = CachedFeatureHead(linear, multi_label, config.distill_weight, config.distill_temperature)
    trainer = Trainer(
        model=head_model,
        args=_phase_args(
            args, "warmup", num_train_epochs=config.warmup_epochs, learning_rate=config.warmup_learning_rate,
            per_device_train_batch_size=config.cached_batch_size,
        ),
        train_dataset=CachedFeatureDataset(**columns),
    )
    metrics = trainer.train(resume_from_checkpoint=_resume_from(args, "warmup")).metrics
    # Trainer may have moved the Linear (shared with the model) to its device; the model follows it.
    model.to(linear.weight.device)
    return metrics
