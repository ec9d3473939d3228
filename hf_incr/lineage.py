"""Lineage: one plain-JSON record per increment, kept in ``config.json`` (so it survives ``from_pretrained`` and the
Hub) and mirrored to ``lineage.json`` beside the model for people and tools that read files."""

from __future__ import annotations

import copy
import datetime as _dt
import json
from pathlib import Path
from typing import Any

LINEAGE_ATTRIBUTE = "hf_incr_lineage"
LINEAGE_FILENAME = "lineage.json"


def get_lineage(model_or_config) -> list[dict[str, Any]]:
    """A copy of the increment records of a model (or config); empty for a model hf_incr never touched."""
    config = getattr(model_or_config, "config", model_or_config)
    return copy.deepcopy(list(getattr(config, LINEAGE_ATTRIBUTE, None) or []))


def make_record(
    *,
    kind: str,
    labels_added: list[str],
    label_ids: list[int],
    base_model: str | None,
    recipe: dict[str, Any],
    metrics: dict[str, Any],
    num_labels: int,
    data_fingerprint: str | None = None,
) -> dict[str, Any]:
    """One lineage record; every value is plain JSON."""
    return {
        "kind": kind,
        "labels_added": list(labels_added),
        "label_ids": [int(i) for i in label_ids],
        "num_labels": int(num_labels),
        "base_model": base_model,
        "recipe": _jsonable(recipe),
        "metrics": _jsonable(metrics),
        "data_fingerprint": data_fingerprint,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def append_record(model, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Append ``record`` to the model's lineage (in ``model.config``), numbering it; returns the new lineage.

    A record that repeats the last one (same labels added and same training data) is not appended twice, so
    re-running an increment does not duplicate the history.
    """
    lineage = get_lineage(model)
    if lineage:
        last = lineage[-1]
        if (
            last.get("labels_added") == record["labels_added"]
            and last.get("data_fingerprint") is not None
            and last.get("data_fingerprint") == record.get("data_fingerprint")
        ):
            return lineage
    record = {"increment": len(lineage), **record}
    lineage.append(record)
    setattr(model.config, LINEAGE_ATTRIBUTE, lineage)
    return lineage


def write_lineage_file(directory: str | Path, lineage: list[dict[str, Any]]) -> Path:
    path = Path(directory) / LINEAGE_FILENAME
    path.write_text(json.dumps(lineage, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _jsonable(value):
    """Make metrics/config values plain JSON (NaN becomes null, numpy scalars become Python numbers)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
