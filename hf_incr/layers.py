"""Where a model's repeated blocks are, and how deep each parameter sits relative to them.

Everything that freezes layers or spreads learning rates over them works from two facts about a model: its encoder
blocks in order (bottom to top), and where each parameter sits relative to them. Parameters before the first block
are depth 0 (embeddings), a block's own parameters and anything between it and the next block are that block's depth,
and everything after the last block (pooler, final norm, classifier) is the top, depth ``num_layers + 1``.
"""

from __future__ import annotations

from torch import nn

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
