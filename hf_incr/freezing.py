"""Freezing and layer-wise learning rates: which parameters train, and at what rate.

Everything here works from two facts about a model: its encoder blocks in order (bottom to top), and where each
parameter sits relative to them. Parameters before the first block are depth 0 (embeddings), a block's own
parameters and anything between it and the next block are that block's depth, and everything after the last block
(pooler, final norm, classifier) is the top, depth ``num_layers + 1``.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from transformers.utils import logging

from .errors import ConfigError

logger = logging.get_logger(__name__)

# Suffixes of the ModuleLists holding the repeated blocks of transformers' encoders and decoders, bottom first.
KNOWN_LAYER_LIST_SUFFIXES: tuple[str, ...] = (
    "encoder.layer",  # BERT, RoBERTa, ELECTRA, DeBERTa, MPNet, XLM-R
    "transformer.layer",  # DistilBERT
    "encoder.albert_layer_groups",  # ALBERT (groups of shared layers)
    "transformer.h",  # GPT-2, GPT-Neo
    "encoder.layers",  # BART encoder
    "decoder.layers",  # BART decoder
    "model.layers",  # Llama, Mistral, Qwen2, ModernBERT
    "layers",
    "h",
)


def _is_block_list(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.ModuleList)
        and len(module) > 0
        and len({type(child) for child in module}) == 1
        and any(True for _ in module.parameters())
    )


def encoder_layer_paths(model: nn.Module) -> list[str]:
    """Dotted names of the ModuleLists that hold the model's repeated blocks, in forward order (bottom first).

    Known names come first (see ``KNOWN_LAYER_LIST_SUFFIXES``); otherwise the probe takes every ModuleList of
    same-typed blocks that is not nested inside another one.
    """
    lists = [(name, module) for name, module in model.named_modules() if _is_block_list(module)]
    known = [name for name, _ in lists if any(name == s or name.endswith(f".{s}") for s in KNOWN_LAYER_LIST_SUFFIXES)]
    chosen = known or [name for name, _ in lists]
    # Drop lists nested in another chosen list (e.g. ALBERT's inner `albert_layers`).
    return [name for name in chosen if not any(name != other and name.startswith(f"{other}.") for other in chosen)]


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's encoder (and decoder) blocks in order, bottom to top, e.g. the 6 ``BertLayer`` of MiniLM."""
    return [block for path in encoder_layer_paths(model) for block in model.get_submodule(path)]


def parameter_depths(model: nn.Module) -> dict[str, int]:
    """Map every parameter name to its depth: 0 embeddings, 1..L the blocks, L+1 everything above them.

    Modules outside the base model (``classifier``, ``score``, DistilBERT's ``pre_classifier``, ...) are the top.
    Inside it, a parameter that is not in a block takes the depth of the last block registered before it, and
    anything registered after the last block (BERT's pooler, GPT-2's ``ln_f``) is the top too.
    """
    block_prefixes = [
        f"{path}.{index}." for path in encoder_layer_paths(model) for index in range(len(model.get_submodule(path)))
    ]
    num_layers = len(block_prefixes)
    prefix = getattr(model, "base_model_prefix", "")
    inside_base = f"{prefix}." if prefix and hasattr(model, prefix) else ""
    depths: dict[str, int] = {}
    current = 0  # depth of the last block whose parameters were seen
    for name, _ in model.named_parameters():
        block = next((i for i, block_prefix in enumerate(block_prefixes) if name.startswith(block_prefix)), None)
        if block is not None:
            current = block + 1
            depths[name] = current
        elif inside_base and not name.startswith(inside_base):
            depths[name] = num_layers + 1
        else:
            depths[name] = num_layers + 1 if current == num_layers and num_layers else current
    return depths


def head_parameter_names(model: nn.Module, scope: str = "head") -> list[str]:
    """Names of the parameters a frozen-encoder warm-up trains.

    ``scope="output"``: only the output projection (the Linear that outputs the logits).
    ``scope="head"``: everything above the last encoder block (BERT's pooler + classifier, RoBERTa's
    ``classifier.dense`` + ``out_proj``, GPT-2's final norm + ``score``, ...).
    """
    from .head import find_classifier_head

    if scope == "output":
        path = find_classifier_head(model).path
        return [f"{path}.{name}" for name, _ in model.get_submodule(path).named_parameters()]
    if scope == "head":
        depths = parameter_depths(model)
        top = max(depths.values(), default=0)
        names = [name for name, depth in depths.items() if depth == top]
        output = head_parameter_names(model, "output")
        return names + [name for name in output if name not in names]
    raise ConfigError(f"`scope` should be 'output' or 'head', got {scope!r}.")


def _set_trainable(model: nn.Module, names: Iterable[str]) -> None:
    names = set(names)
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)


def freeze_all_but_head(model: nn.Module, scope: str = "head") -> list[str]:
    """Freeze every parameter except the head's (see :func:`head_parameter_names`), in place.

    Returns the names of the parameters left trainable.
    """
    names = head_parameter_names(model, scope)
    _set_trainable(model, names)
    return names


def unfreeze_top_layers(model: nn.Module, num_layers: int, scope: str = "head") -> list[str]:
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
        names += head_parameter_names(model, scope)
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
        from transformers import Trainer

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
