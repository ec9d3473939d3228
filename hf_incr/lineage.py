"""Lineage: one plain-JSON record per increment, kept in ``config.json`` (so it survives ``from_pretrained`` and the
Hub) and mirrored to ``lineage.json`` beside the model for people and tools that read files."""

from __future__ import annotations

import copy
import datetime as _dt
import json
from pathlib import Path
from typing import Any

from transformers.utils import logging

from .errors import SavedStateError

logger = logging.get_logger(__name__)

LINEAGE_ATTRIBUTE = "hf_incr_lineage"
LINEAGE_FILENAME = "lineage.json"


def get_lineage(model_or_config) -> list[dict[str, Any]]:
    """A copy of the increment records of a model (or config); empty for a model hf_incr never touched."""
    config = getattr(model_or_config, "config", model_or_config)
    lineage = getattr(config, LINEAGE_ATTRIBUTE, None) or []
    if not isinstance(lineage, list) or not all(isinstance(record, dict) for record in lineage):
        raise SavedStateError(
            f"`config.{LINEAGE_ATTRIBUTE}` (in the model's config.json) should be a list of increment records "
            f"(JSON objects), found {type(lineage).__name__} {str(lineage)[:80]!r}. Without it, the card and the next "
            "increment cannot tell which increment added which label. Restore config.json from where the model came "
            f"from, or remove the `{LINEAGE_ATTRIBUTE}` key to start a new lineage.",
            path="config.json",
        )
    return copy.deepcopy(lineage)


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
    head_rows: str | None = None,
    thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One lineage record; every value is plain JSON. ``head_rows`` says how the head's rows were made:
    ``"solved"`` (closed form from the statistics), ``"kept"`` (trained rows kept, new rows fitted beside them),
    ``"refitted"`` (every row refitted on the increment's rows, which held every label), ``"adapted"`` (a model
    trained elsewhere whose encoder was fine-tuned on every label's rows, head then solved) or ``"trained"`` (by
    gradient). ``thresholds`` (multi-label): the logit each label set by this increment is decided at, folded into
    its bias (the model's sigmoid > 0.5 applies it; the label's own probability is ``sigmoid(logit + threshold)``)."""
    return {
        "head_rows": head_rows,
        "thresholds": {name: round(float(value), 4) for name, value in (thresholds or {}).items()},
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


def find_rerun(model_or_lineage, data_fingerprint: str | None, labels_added) -> dict[str, Any] | None:
    """The model's last increment record if a run on data with ``data_fingerprint`` adding ``labels_added`` repeats it.

    A run repeats the last increment when it trains on the same data (same ``datasets`` fingerprint) and adds no label
    that increment did not add: the same increment run again on the same base (same labels added), or on its own
    result (the labels are known by then, so none is added). Data without a fingerprint is never a rerun.
    """
    lineage = model_or_lineage if isinstance(model_or_lineage, list) else get_lineage(model_or_lineage)
    if not lineage or data_fingerprint is None:
        return None
    last = lineage[-1]
    if last.get("data_fingerprint") != data_fingerprint:
        return None
    return last if set(labels_added) <= set(last.get("labels_added") or []) else None


def append_record(model, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Append ``record`` to the model's lineage (in ``model.config``), numbering it; returns the new lineage.

    A record that repeats the last one (see :func:`find_rerun`) is not appended, with a warning: running an increment
    again on its own result trains on data the lineage already records, and must not look like a new increment.
    """
    lineage = get_lineage(model)
    repeated = find_rerun(lineage, record.get("data_fingerprint"), record["labels_added"])
    if repeated is not None:
        logger.warning(
            "This run repeats increment %s of the lineage (same training data, fingerprint %s, and no label it did "
            "not add): no new lineage record. To add labels, train on data that has them; to redo that increment, "
            "start from the model it was trained from (its base_model: %s).",
            repeated.get("increment"), record.get("data_fingerprint"), repeated.get("base_model"),
        )
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
