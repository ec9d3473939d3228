"""hf_incr: add labels to a trained transformers text classifier, train the increment, keep the old labels."""

__version__ = "0.1.0"

from .errors import ConfigError, DataError, HeadConfigMismatchError, HeadNotFoundError, HfIncrError, LabelError
from .freezing import (
    encoder_layers,
    freeze_all_but_head,
    head_parameter_names,
    param_groups_layer_lr,
    parameter_depths,
    unfreeze_top_layers,
)
from .head import HeadLocation, add_labels, align_weights, find_classifier_head, head_inputs

__all__ = [
    "ConfigError",
    "DataError",
    "HeadConfigMismatchError",
    "HeadLocation",
    "HeadNotFoundError",
    "HfIncrError",
    "LabelError",
    "add_labels",
    "align_weights",
    "encoder_layers",
    "find_classifier_head",
    "freeze_all_but_head",
    "head_inputs",
    "head_parameter_names",
    "param_groups_layer_lr",
    "parameter_depths",
    "unfreeze_top_layers",
]
