"""hf_incr: add labels to a trained transformers text classifier, train the increment, keep the old labels."""

__version__ = "0.1.0"

from .closed_form import RidgeStatistics
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
from .freezing import freeze_all_but_head, head_parameter_names, param_groups_layer_lr, unfreeze_top_layers
from .head import ClassifierHead, HeadLocation, add_labels, align_weights, find_classifier_head, head_inputs
from .hub import push_saved_model, push_to_hub
from .kernel_attach import attach_kernel_head, attached_kernel_head, detach_kernel_head
from .layers import encoder_layers, parameter_depths
from .lineage import get_lineage
from .loading import load_model
from .model_card import write_model_card
from .random_features import RandomFeatureHead, attach_random_feature_head, detach_random_feature_head
from .recipe import IncrementResult, train_base_classifier, train_increment
from .replay import ReplayMemory
from .saving import recover_interrupted_save, save_increment
from .trainer import IncrementalTrainer

__all__ = [
    "ClassifierHead",
    "ConfigError",
    "DataError",
    "HeadConfigMismatchError",
    "HeadLocation",
    "HeadNotFoundError",
    "HfIncrError",
    "HubPushError",
    "IncrementConfig",
    "IncrementResult",
    "IncrementalTrainer",
    "LabelError",
    "RandomFeatureHead",
    "ReplayMemory",
    "RidgeStatistics",
    "SavedStateError",
    "TokenizerError",
    "UnsupportedModelError",
    "add_labels",
    "align_weights",
    "attach_kernel_head",
    "attach_random_feature_head",
    "attached_kernel_head",
    "detach_kernel_head",
    "detach_random_feature_head",
    "encoder_layers",
    "find_classifier_head",
    "freeze_all_but_head",
    "get_lineage",
    "head_inputs",
    "head_parameter_names",
    "load_model",
    "param_groups_layer_lr",
    "parameter_depths",
    "push_saved_model",
    "push_to_hub",
    "recover_interrupted_save",
    "save_increment",
    "train_base_classifier",
    "train_increment",
    "unfreeze_top_layers",
    "write_model_card",
]
