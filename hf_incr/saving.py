"""Saving a grown model: model, tokenizer, lineage, replay memory, ridge statistics and card, written to a temporary
folder and renamed into place, so a crash during the save leaves the previous model folder intact."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from transformers.utils import logging

from .lineage import get_lineage, write_lineage_file

logger = logging.get_logger(__name__)

# Entries of an existing output folder that are not part of the saved model but must survive a re-save.
KEPT_ENTRIES = ("checkpoints", "runs")


def save_increment(
    model,
    output_dir: str | os.PathLike,
    tokenizer=None,
    *,
    replay=None,
    ridge=None,
    write_card: bool = True,
) -> Path:
    """Save everything an increment produced into ``output_dir``, atomically.

    The files are written to a sibling temporary folder first; the previous folder (if any) is replaced only once
    everything was written. Trainer checkpoints kept under ``output_dir/checkpoints`` are carried over.
    """
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    staging = output_dir.parent / f".{output_dir.name}.tmp-{tag}"
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        write_lineage_file(staging, get_lineage(model))
        if replay is not None and len(replay):
            replay.save(staging)
        if ridge is not None:
            ridge.save(staging)
        if write_card:
            from .model_card import write_model_card

            write_model_card(model, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_into_place(staging, output_dir, tag)
    logger.info("Saved the model to %s", output_dir)
    return output_dir


def _swap_into_place(staging: Path, output_dir: Path, tag: str) -> None:
    if not output_dir.exists():
        os.replace(staging, output_dir)
        return
    for name in KEPT_ENTRIES:
        if (output_dir / name).exists() and not (staging / name).exists():
            os.replace(output_dir / name, staging / name)
    retired = output_dir.parent / f".{output_dir.name}.old-{tag}"
    os.replace(output_dir, retired)
    os.replace(staging, output_dir)
    shutil.rmtree(retired, ignore_errors=True)
