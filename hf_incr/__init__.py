"""hf_incr: add labels to a trained transformers text classifier, train the increment, keep the old labels."""

__version__ = "0.2.0"

from . import heads
from .config import IncrementConfig
from .errors import (
    ConfigError,
    DataError,
    HeadConfigMismatchError,
    HeadNotFoundError,
    HfIncrError,
    HubPushError,
    LabelError,
    SavedStateError,
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

__all__ = [
    "ClassifierHead",
    "ConfigError",
    "DataError",
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
