"""The Trainer side of an increment: :class:`IncrementalTrainer` and one function per phase that runs in a ``Trainer``.

- :func:`warm_up_on_cached_features`: the output Linear trained on cached head inputs (encoder frozen, fast path).
- :func:`train_phase`: a phase that runs the whole model (the warm-up without cache, the fine-tuning of top layers).
- :func:`evaluate_model`: metrics split into old / new labels.

Each phase builds a new ``Trainer``: DDP fixes the trainable set when it wraps the model, so a phase that unfreezes
layers needs a Trainer of its own. The recipe that calls these phases in order is :mod:`hf_incr.recipe`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from datasets import Dataset
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from .checkpoints import phase_checkpoint_dir, phase_run, resume_from
from .console import quiet_trainer
from .data import is_multi_label_model, model_columns, tokenize
from .freezing import param_groups_layer_lr
from .head import ClassifierHead
from .losses import increment_loss
from .metrics import make_compute_metrics

# Chosen, not settings: the distillation temperature (Hinton et al.'s common choice), and the batch of the cached
# warm-up (a step is one small matmul, so larger batches than the encoder's pay off).
DISTILL_TEMPERATURE = 2.0
CACHED_BATCH_SIZE = 128


class IncrementalTrainer(Trainer):
    """A ``Trainer`` with layer-wise learning-rate groups and optional distillation from a frozen teacher.

    Args:
        layer_lr_decay: When set, the optimizer gets :func:`~hf_incr.param_groups_layer_lr` groups (head at
            ``args.learning_rate``, each layer below multiplied by this factor) instead of Trainer's two groups.
        teacher: The model before the increment (frozen, eval mode). With ``distill_weight > 0`` the loss adds
            :func:`~hf_incr.losses.distillation_loss` on the old labels' outputs.
        distill_weight, distill_temperature: Weight and temperature of that term.
    """

    _tag_names: ClassVar[list[str]] = ["hf_incr", "class-incremental"]

    def __init__(
        self,
        *args,
        layer_lr_decay: float | None = None,
        teacher: torch.nn.Module | None = None,
        distill_weight: float = 0.0,
        distill_temperature: float = DISTILL_TEMPERATURE,
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
        teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with torch.no_grad():
            teacher_logits = self.teacher.to(outputs.logits.device)(**teacher_inputs).logits
        loss = increment_loss(
            outputs.logits, inputs["labels"], is_multi_label_model(self.teacher), teacher_logits,
            self.distill_weight, self.distill_temperature,
        )
        outputs.loss = loss
        return (loss, outputs) if return_outputs else loss


def phase_args(args: TrainingArguments, phase: str, **overrides) -> TrainingArguments:
    """The user's TrainingArguments for one phase: own checkpoint folder, phase epochs and learning rate."""
    if args.device.type != "cuda":
        # Pinned memory only helps copies to a GPU; elsewhere torch warns about it on every DataLoader.
        overrides.setdefault("dataloader_pin_memory", False)
    return dataclasses.replace(
        args,
        output_dir=str(phase_checkpoint_dir(args.output_dir, phase)),
        push_to_hub=False,  # the recipe pushes once, with the card and lineage, after saving
        load_best_model_at_end=False,
        **overrides,
    )


# Trainer's bookkeeping in evaluate()'s metrics: nothing a reader of the lineage or the card needs.
BOOKKEEPING_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time")


def clean_metrics(metrics: dict[str, float], *, only_old: bool = False) -> dict[str, float]:
    """``evaluate()``'s metrics without the ``eval_`` prefix and Trainer's bookkeeping; with ``only_old`` also without
    the loss (that of the grown model with the new labels' logits masked: no number a reader can use)."""
    dropped = BOOKKEEPING_METRICS + (("loss",) if only_old else ())
    cleaned = {k.removeprefix("eval_"): float(v) for k, v in metrics.items()}
    return {k: v for k, v in cleaned.items() if k not in dropped}


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
    increment would (new labels' logits ignored), which the old rows being kept bit for bit makes exact. Only the
    metrics a reader needs come back (see :func:`clean_metrics`)."""
    describe = "the model before the increment, on its old labels" if only_old else "old / new / all labels"
    trainer = Trainer(
        model=model,
        args=phase_args(args, "eval"),
        eval_dataset=tokenized_eval,
        data_collator=DataCollatorWithPadding(tokenizer) if tokenizer is not None else None,
        compute_metrics=make_compute_metrics(
            old_label_ids, multi_label, threshold, restrict_to=old_label_ids if only_old else None
        ),
    )
    quiet_trainer(trainer, "evaluation", f"Evaluation: {describe} ({len(tokenized_eval)} rows)")
    return clean_metrics(trainer.evaluate(metric_key_prefix="eval"), only_old=only_old)


def train_phase(
    model,
    tokenizer,
    train_encoded: Dataset,
    args: TrainingArguments,
    *,
    phase: str,
    epochs: float,
    learning_rate: float,
    text_column: str,
    max_length: int,
    layer_lr_decay: float | None = None,
    teacher: torch.nn.Module | None = None,
    distill_weight: float = 0.0,
    group_by_length: bool = False,
) -> dict:
    """One phase that runs the whole model (trainable set already chosen) in its own :class:`IncrementalTrainer`;
    returns Trainer's train metrics.

    ``group_by_length``: batches of similar lengths (Trainer's own sampler), which pad less, where the user left
    Trainer's default random batches (adapting a whole encoder on BANKING77's 10k rows, 2 CPU cores: 299 s with
    random batches, 147 s grouped)."""
    overrides = {"num_train_epochs": epochs, "learning_rate": learning_rate}
    if group_by_length and args.train_sampling_strategy == "random":
        overrides["train_sampling_strategy"] = "group_by_length"
    tokenized = tokenize(train_encoded, tokenizer, text_column, max_length)
    trainer = IncrementalTrainer(
        model=model,
        args=phase_args(args, phase, **overrides),
        train_dataset=model_columns(tokenized, tokenizer),
        data_collator=DataCollatorWithPadding(tokenizer),
        layer_lr_decay=layer_lr_decay,
        teacher=teacher,
        distill_weight=distill_weight,
    )
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    quiet_trainer(trainer, PHASE_NAMES.get(phase, phase), _phase_heading(phase, epochs, len(train_encoded), trainable))
    run = phase_run(model.config.id2label, train_encoded[text_column], train_encoded["labels"], trainable)
    return trainer.train(resume_from_checkpoint=resume_from(args, phase, run)).metrics


PHASE_NAMES = {"warmup": "warm-up", "finetune": "fine-tuning", "adapt": "adapting the encoder"}


def _phase_heading(phase: str, epochs: float, rows: int, trainable: list[str]) -> str:
    name = PHASE_NAMES.get(phase, phase).capitalize()
    return f"{name}: {rows} rows, {epochs:g} epochs, {len(trainable)} trainable tensors"


def warm_up_on_cached_features(
    model,
    head: ClassifierHead,
    features: torch.Tensor,
    train_encoded: Dataset,
    args: TrainingArguments,
    *,
    epochs: float,
    learning_rate: float,
    text_column: str,
    multi_label: bool,
    teacher_head: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    distill_weight: float = 0.0,
) -> dict:
    """Train the model's output Linear with Trainer on cached head inputs (the frozen-encoder fast path).

    ``teacher_head``: the old head's ``(weight, bias)``; with ``distill_weight > 0`` the old labels' logits it gives
    on the same cached features (exact, the encoder being frozen) are distilled into the new head."""
    linear = head.linear
    labels = torch.tensor(train_encoded["labels"], dtype=torch.float32 if multi_label else torch.long)
    columns = {"features": features, "labels": labels}
    if distill_weight > 0 and teacher_head is not None:
        weight, bias = teacher_head
        # On the CPU, beside the cached features (the old head may already live on the GPU).
        columns["teacher_logits"] = features @ weight.float().cpu().T + (0 if bias is None else bias.float().cpu())
    head_model = CachedFeatureHead(linear, multi_label, distill_weight, DISTILL_TEMPERATURE)
    trainer = Trainer(
        model=head_model,
        args=phase_args(
            args, "warmup", num_train_epochs=epochs, learning_rate=learning_rate,
            per_device_train_batch_size=CACHED_BATCH_SIZE,
        ),
        train_dataset=CachedFeatureDataset(**columns),
    )
    trainable = [f"cached:{name}" for name, param in head_model.named_parameters() if param.requires_grad]
    quiet_trainer(
        trainer, "warm-up", f"Warm-up: the output layer on cached features of {len(features)} rows, {epochs:g} epochs"
    )
    run = phase_run(model.config.id2label, train_encoded[text_column], train_encoded["labels"], trainable)
    metrics = trainer.train(resume_from_checkpoint=resume_from(args, "warmup", run)).metrics
    # Trainer may have moved the Linear (shared with the model) to its device; the model follows it.
    model.to(linear.weight.device)
    return metrics


class CachedFeatureDataset(torch.utils.data.Dataset):
    """Rows of in-memory tensors (``features``, ``labels``, optional ``teacher_logits``) for Trainer.

    Indexing tensors directly keeps a step of the cached warm-up cheap; an Arrow data set in torch format was 3x
    slower per epoch here, which dominates when the model trained is a single Linear.
    """

    def __init__(self, **columns: torch.Tensor):
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"All columns need the same number of rows, got {lengths}.")
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: values[index] for name, values in self.columns.items()}


class CachedFeatureHead(torch.nn.Module):
    """Trains a model's output Linear on cached head inputs, inside a normal ``Trainer``.

    It holds the model's own Linear (not a copy), so training it trains the model. ``forward`` takes the batch
    columns ``features``, ``labels`` and, for distillation, ``teacher_logits`` (the old head's logits on the same
    features, which a frozen encoder makes exact).
    """

    def __init__(self, linear: torch.nn.Linear, multi_label: bool, distill_weight: float = 0.0,
                 distill_temperature: float = DISTILL_TEMPERATURE):
        super().__init__()
        self.linear = linear
        self.multi_label = multi_label
        self.distill_weight = distill_weight
        self.distill_temperature = distill_temperature

    def forward(self, features, labels=None, teacher_logits=None):
        logits = self.linear(features.to(self.linear.weight.dtype))
        loss = None
        if labels is not None:
            loss = increment_loss(
                logits, labels, self.multi_label, teacher_logits, self.distill_weight, self.distill_temperature
            )
        return SequenceClassifierOutput(loss=loss, logits=logits)
