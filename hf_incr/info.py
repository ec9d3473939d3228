"""``hf-incr info MODEL``: what a saved classifier is, from its ``config.json`` and its list of files only.

A folder is read directly; for a Hub id, ``config.json`` is downloaded and the repo's files are listed (no weights
are downloaded). :func:`model_info` returns a plain dict that :func:`hf_incr.report.format_info` turns into text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, hf_hub_download

from .closed_form import RIDGE_FILENAME
from .data import MULTI_LABEL
from .errors import ConfigError
from .kernel_attach import KERNEL_FILENAME, KERNEL_STATISTICS_FILENAME
from .lineage import LINEAGE_ATTRIBUTE
from .model_card import CARD_FILENAME, PLOT_FILENAME
from .random_features import RANDOM_FEATURES_FILENAME
from .replay import REPLAY_DIRNAME, REPLAY_FILENAME


def _read_source(source: str, revision: str | None, token: str | None) -> tuple[dict, list[str], str]:
    """``(config dict, file names, where files are shown)`` of a folder or a Hub repo."""
    folder = Path(source)
    if folder.is_dir():
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ConfigError(f"{source!r} has no config.json: is it a saved model folder?")
        files = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
        return json.loads(config_file.read_text(encoding="utf-8")), files, str(folder)
    try:
        config_file = hf_hub_download(source, "config.json", revision=revision, token=token)
        files = HfApi().list_repo_files(source, revision=revision, token=token)
    except Exception as error:  # any failure to reach the repo (offline, 404, HTTP) is one answer to the user
        raise ConfigError(
            f"Could not read {source!r}: neither a local folder nor a reachable Hub repo ({type(error).__name__}: "
            f"{error})."
        ) from error
    url = f"{constants.ENDPOINT.rstrip('/')}/{source}/blob/{revision or 'main'}"
    return json.loads(Path(config_file).read_text(encoding="utf-8")), files, url


def model_info(source: str, *, revision: str | None = None, token: str | None = None) -> dict[str, Any]:
    """Labels (with the increment that added each), lineage, saved state and card of the model at ``source``."""
    config, files, base = _read_source(source, revision, token)
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    lineage = list(config.get(LINEAGE_ATTRIBUTE) or [])
    added_by = {}
    for record in lineage:
        for label_id in record.get("label_ids") or []:
            added_by.setdefault(int(label_id), record.get("increment"))
    names = set(files)
    return {
        "source": source,
        "model_type": config.get("model_type"),
        "multi_label": config.get("problem_type") == MULTI_LABEL,
        "labels": [(i, id2label[i], added_by.get(i)) for i in sorted(id2label)],
        "lineage": lineage,
        "statistics": RIDGE_FILENAME in names,
        "head_rows": (lineage[-1].get("head_rows") if lineage else None),
        "random_features": RANDOM_FEATURES_FILENAME in names,
        "kernel_lda": KERNEL_FILENAME in names,
        "kernel_lda_statistics": KERNEL_STATISTICS_FILENAME in names,
        "replay": f"{REPLAY_DIRNAME}/{REPLAY_FILENAME}" in names or REPLAY_FILENAME in names,
        "card": f"{base}/{CARD_FILENAME}" if CARD_FILENAME in names else None,
        "plot": f"{base}/{PLOT_FILENAME}" if PLOT_FILENAME in names else None,
    }
