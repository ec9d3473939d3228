"""Freezing and layer-wise learning rates: which parameters train, and at what rate.

Depths come from :mod:`hf_incr.layers` (0 embeddings, 1..L the blocks, L+1 everything above them).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from transformers import Trainer
from transformers.utils import logging

from .errors import ConfigError
from .head import ClassifierHead, find_classifier_head
from .layers import parameter_depths

logger = logging.get_logger(__name__)


def head_parameter_names(
    model: nn.Module,
    scope: str = "head",
    head: ClassifierHead | None = None,
    depths: dict[str, int] | None = None,
) -> list[str]:
    """Names of the parameters a frozen-encoder warm-up trains.

    ``scope="output"``: only the output projection (the Linear that outputs the logits).
    ``scope="head"``: everything above the last encoder block (BERT's pooler + classifier, RoBERTa's
    ``classifier.dense`` + ``out_proj``, GPT-2's final norm + ``score``, ...).
    ``head`` and ``depths`` (:func:`~hf_incr.layers.parameter_depths`): when the caller has them already.
    """
    if scope == "output":
        path = (head or find_classifier_head(model)).path
        return [f"{path}.{name}" for name, _ in model.get_submodule(path).named_parameters()]
    if scope == "head":
        depths = parameter_depths(model) if depths is None else depths
        top = max(depths.values(), default=0)
        names = [name for name, depth in depths.items() if depth == top]
        output = head_parameter_names(model, "output", head)
        return names + [name for name in output if name not in names]
    raise ConfigError(f"`scope` should be 'output' or 'head', got {scope!r}.")


def _set_trainable(model: nn.Module, names: Iterable[str]) -> None:
    names = set(names)
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)


def freeze_all_but_head(model: nn.Module, scope: str = "head", head: ClassifierHead | None = None) -> list[str]:
    """Freeze every parameter except the head's (see :func:`head_parameter_names`), in place.

    Returns the names of the parameters left trainable.
    """
    names = head_parameter_names(model, scope, head)
    _set_trainable(model, names)
    return names


def unfreeze_top_layers(
    model: nn.Module, num_layers: int, scope: str = "head", head: ClassifierHead | None = None
) -> list[str]:
    """Make the head and the top ``num_layers`` encoder blocks trainable, everything below frozen, in place.

    ``num_layers=0`` is :func:`freeze_all_but_head`; ``num_layers=-1`` (or more than the model has) unfreezes
    the whole model, embeddings included. Returns the names of the trainable parameters.
    """
    depths = parameter_depths(model)
    total = max(depths.values(), default=1) - 1  # number of blocks
    if num_layers < 0 or num_layers > total:
        if num_layers > total:
            logger.warning("Asked to unfreeze %d layers; the model has %d: unfreezing all of it.", num_layers, total)
        names = list(depths)
    else:
        lowest = total + 1 - num_layers
        names = [name for name, depth in depths.items() if num_layers > 0 and lowest <= depth <= total]
        names += head_parameter_names(model, scope, head, depths)
    _set_trainable(model, names)
    return names


def param_groups_layer_lr(
    model: nn.Module,
    learning_rate: float,
    layer_lr_decay: float = 1.0,
    weight_decay: float = 0.0,
    no_decay_names: Iterable[str] | None = None,
) -> list[dict]:
    """Optimizer parameter groups with a real ``lr`` per group, decaying by ``layer_lr_decay`` per layer going down.

    The head (everything above the last block) gets ``learning_rate``; block ``i`` of ``L`` gets
    ``learning_rate * layer_lr_decay ** (L + 1 - i)``; the embeddings ``learning_rate * layer_lr_decay ** (L + 1)``
    (discriminative fine-tuning, as in ULMFiT and ELECTRA). Biases and norm weights get no weight decay, as in
    Trainer. Frozen parameters are left out; ``requires_grad`` is never changed here.

    Args:
        model: The model whose trainable parameters to group.
        learning_rate: The head's learning rate.
        layer_lr_decay: Factor per layer going down, in (0, 1].
        weight_decay: Weight decay for the parameters that take it.
        no_decay_names: Names that take no weight decay; defaults to Trainer's rule (biases, LayerNorm, ``*norm``).

    Returns:
        A list of dicts with ``params``, ``lr``, ``weight_decay`` and, for reading, ``depth`` and ``names``;
        pass it to a torch optimizer (or let :class:`~hf_incr.IncrementalTrainer` do it).
    """
    if not 0 < layer_lr_decay <= 1:
        raise ConfigError(f"`layer_lr_decay` should be in (0, 1], got {layer_lr_decay}.")
    if no_decay_names is None:
        decay = set(Trainer.get_decay_parameter_names(None, model))
    else:
        decay = {name for name, _ in model.named_parameters()} - set(no_decay_names)
    depths = parameter_depths(model)
    top = max(depths.values(), default=0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = depths[name]
        takes_decay = name in decay
        key = (depth, takes_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "lr": learning_rate * layer_lr_decay ** (top - depth),
                "weight_decay": weight_decay if takes_decay else 0.0,
                "depth": depth,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[key] for key in sorted(groups)]
