"""``hf-incr info MODEL``: what a saved classifier is, from its ``config.json`` and its list of files only.

A folder is read directly; for a Hub id, ``config.json`` is downloaded and the repo's files are listed (no weights
are downloaded). :func:`model_info` returns a plain dict that :func:`hf_incr.report.format_info` turns into text,
with the plan of the next increment (:func:`hf_incr.plan.plan`) under the default recipe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, hf_hub_download

from .config import MULTI_LABEL, IncrementConfig
from .errors import ConfigError, HfIncrError
from .heads import HEADS
from .lineage import LINEAGE_ATTRIBUTE
from .model_card import CARD_FILENAME, PLOT_FILENAME
from .plan import plan
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


class _SavedHead:
    """What a plan reads of a saved head, from the file names and the lineage alone."""

    def __init__(self, can_continue: bool, keeps_trained_rows: bool = False):
        self.can_continue, self.keeps_trained_rows = can_continue, keeps_trained_rows


def model_info(source: str, *, revision: str | None = None, token: str | None = None) -> dict[str, Any]:
    """Labels (with the increment that added each), lineage, saved state, card, and the next increment's plan of the
    model at ``source``."""
    config, files, base = _read_source(source, revision, token)
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    lineage = list(config.get(LINEAGE_ATTRIBUTE) or [])
    added_by = {}
    for record in lineage:
        for label_id in record.get("label_ids") or []:
            added_by.setdefault(int(label_id), record.get("increment"))
    names = set(files)
    multi_label = config.get("problem_type") == MULTI_LABEL
    heads = {name: cls.describe_files(names) for name, cls in HEADS.items()}
    head_rows = lineage[-1].get("head_rows") if lineage else None
    return {
        "source": source,
        "model_type": config.get("model_type"),
        "multi_label": multi_label,
        "labels": [(i, id2label[i], added_by.get(i)) for i in sorted(id2label)],
        "lineage": lineage,
        "heads": heads,
        "head_rows": head_rows,
        "replay": f"{REPLAY_DIRNAME}/{REPLAY_FILENAME}" in names or REPLAY_FILENAME in names,
        "remote_code": any(cls.modeling_file.name in names for cls in HEADS.values() if cls.modeling_file),
        "card": f"{base}/{CARD_FILENAME}" if CARD_FILENAME in names else None,
        "plot": f"{base}/{PLOT_FILENAME}" if PLOT_FILENAME in names else None,
        "next_increment": next_increment_plan(id2label, multi_label, heads, head_rows, lineage),
    }


def next_increment_plan(id2label, multi_label, heads, head_rows, lineage) -> str:
    """What ``hf-incr increment`` does next on this model with the recipe it was last trained with (or the defaults):
    :meth:`IncrementPlan.describe` of the plan for data that brings one new label."""
    recipe = (lineage[-1].get("recipe") or {}) if lineage else {}
    try:
        config = IncrementConfig(head=recipe["head"])
    except (KeyError, HfIncrError):  # a lineage of an earlier version, or none: the defaults
        config = IncrementConfig()
    saved = {}
    if heads.get("linear") == "yes":
        saved["linear"] = _SavedHead(True, keeps_trained_rows=head_rows == "kept")
    for name, line in heads.items():
        if name != "linear" and line not in (None, "no"):
            saved[name] = _SavedHead("with its statistics" in line)
    labels = [id2label[i] for i in sorted(id2label)]
    try:
        the_plan = plan(labels, multi_label, saved, config, [*labels, "<new label>"], None)
    except HfIncrError as error:
        return f"refused with these settings: {error}"
    return the_plan.describe()
