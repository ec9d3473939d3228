"""hf_incr: add labels to a trained transformers text classifier, train the increment, keep the old labels.

The names below are imported when first used (PEP 562): ``hf-incr --help`` and ``hf-incr info`` then start at the
cost of torch and transformers' argument classes, not of the Trainer stack, datasets and matplotlib that training
needs. ``from hf_incr import X`` and ``hf_incr.X`` work as with eager imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.0"

# Every public name and the module that defines it.
_EXPORTS = {
    "IncrementConfig": "config",
    "ConfigError": "errors", "DataError": "errors", "DiskFullError": "errors", "HeadConfigMismatchError": "errors",
    "HeadNotFoundError": "errors", "HfIncrError": "errors", "HubPushError": "errors", "LabelError": "errors",
    "SaveError": "errors", "SavedStateError": "errors", "TokenizerError": "errors", "UnsupportedModelError": "errors",
    "encode_for_heads": "features", "extract_head_inputs": "features", "frozen_pass": "features",
    "freeze_all_but_head": "freezing", "head_parameter_names": "freezing", "param_groups_layer_lr": "freezing",
    "unfreeze_top_layers": "freezing",
    "ClassifierHead": "head", "HeadLocation": "head", "add_labels": "head", "align_weights": "head",
    "find_classifier_head": "head", "head_inputs": "head",
    "Head": "heads", "register_head": "heads",
    "push_saved_model": "hub", "push_to_hub": "hub",
    "encoder_layers": "layers", "parameter_depths": "layers",
    "get_lineage": "lineage",
    "load_heads": "loading", "load_model": "loading",
    "write_model_card": "model_card",
    "IncrementPlan": "plan", "plan": "plan",
    "IncrementResult": "recipe", "train_base_classifier": "recipe", "train_increment": "recipe",
    "ReplayMemory": "replay",
    "recover_interrupted_save": "saving", "save_increment": "saving",
    "IncrementalTrainer": "trainer",
}
__all__ = [
    "ClassifierHead",
    "ConfigError",
    "DataError",
    "DiskFullError",
    "Head",
    "HeadConfigMismatchError",
    "HeadLocation",
    "HeadNotFoundError",
    "HfIncrError",
    "HubPushError",
    "IncrementConfig",
    "IncrementPlan",
    "IncrementResult",
    "IncrementalTrainer",
    "LabelError",
    "ReplayMemory",
    "SaveError",
    "SavedStateError",
    "TokenizerError",
    "UnsupportedModelError",
    "add_labels",
    "align_weights",
    "encode_for_heads",
    "encoder_layers",
    "extract_head_inputs",
    "find_classifier_head",
    "freeze_all_but_head",
    "frozen_pass",
    "get_lineage",
    "head_inputs",
    "head_parameter_names",
    "heads",
    "load_heads",
    "load_model",
    "param_groups_layer_lr",
    "parameter_depths",
    "plan",
    "push_saved_model",
    "push_to_hub",
    "recover_interrupted_save",
    "register_head",
    "save_increment",
    "train_base_classifier",
    "train_increment",
    "unfreeze_top_layers",
    "write_model_card",
]


def __getattr__(name: str):
    if name == "heads":
        return importlib.import_module(".heads", __name__)
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # what type checkers and editors read
    from . import heads
    from .config import IncrementConfig
    from .errors import (
        ConfigError,
        DataError,
        DiskFullError,
        HeadConfigMismatchError,
        HeadNotFoundError,
        HfIncrError,
        HubPushError,
        LabelError,
        SavedStateError,
        SaveError,
        TokenizerError,
        UnsupportedModelError,
    )
    from .features import encode_for_heads, extract_head_inputs, frozen_pass
    from .freezing import freeze_all_but_head, head_parameter_names, param_groups_layer_lr, unfreeze_top_layers
    from .head import ClassifierHead, HeadLocation, add_labels, align_weights, find_classifier_head, head_inputs
    from .heads import Head, register_head
    from .hub import push_saved_model, push_to_hub
    from .layers import encoder_layers, parameter_depths
    from .lineage import get_lineage
    from .loading import load_heads, load_model
    from .model_card import write_model_card
    from .plan import IncrementPlan, plan
    from .recipe import IncrementResult, train_base_classifier, train_increment
    from .replay import ReplayMemory
    from .saving import recover_interrupted_save, save_increment
    from .trainer import IncrementalTrainer
