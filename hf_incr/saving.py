"""Saving a grown model: model, tokenizer, lineage, replay memory, the heads' files and card, written to a temporary
folder and renamed into place, so a crash during the save leaves the previous model folder intact; and the Trainer
checkpoints a killed increment resumes from.

A save of ``out`` moves through sibling folders named after it, each step one ``rename``:

1. ``.out.tmp-<tag>``: files being written (partial until renamed).
2. ``.out.new-<tag>``: every file written and flushed (complete).
3. ``out`` renamed to ``.out.old-<tag>``; ``checkpoints`` / ``runs`` moved from it into ``.out.new-<tag>``.
4. ``.out.new-<tag>`` renamed to ``out``; ``.out.old-<tag>`` deleted.

A process killed at any point leaves either the previous ``out`` or a complete new version: between 3 and 4 there
is no ``out``, but ``.out.new-<tag>`` is complete. :func:`recover_interrupted_save` (run by every save, and before
resuming a run) finishes or undoes such a save: while ``out`` holds a model, leftovers are deleted (the save never
happened); without one, the complete new version is put in place (the save happened).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from pathlib import Path

from transformers.utils import logging

from .heads.base import ship_inference_code
from .lineage import get_lineage, write_lineage_file
from .model_card import write_model_card

logger = logging.get_logger(__name__)

# Entries of an existing output folder that are not part of the saved model but must survive a re-save.
CHECKPOINTS_DIRNAME = "checkpoints"  # Trainer checkpoints of the phases (see hf_incr.checkpoints)
KEPT_ENTRIES = (CHECKPOINTS_DIRNAME, "runs")
# A folder holds a saved model when it has this file (save_pretrained writes it; the folder is loadable).
MODEL_MARKER = "config.json"
# model_card.py maps the `.tmp-` name back to the final one: keep the two patterns in step.
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<stage>tmp|new|old)-(?P<tag>[0-9a-f]{8})$")


def save_increment(
    model,
    output_dir: str | os.PathLike,
    tokenizer=None,
    *,
    replay=None,
    heads=None,
    write_card: bool = True,
) -> Path:
    """Save everything an increment produced into ``output_dir``, atomically: the model, its tokenizer, the lineage,
    the replay memory and every head's files (``heads``: by name, as ``IncrementResult.heads``).

    The files are written to a sibling temporary folder first; the previous folder (if any) is replaced only once
    everything was written. Trainer checkpoints kept under ``output_dir/checkpoints`` are carried over. Leftovers of
    an earlier save that was killed are cleaned up first (see :func:`recover_interrupted_save`).
    """
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with _locked(output_dir.parent):
        _recover(output_dir)
        tag = uuid.uuid4().hex[:8]
        staging = output_dir.parent / f".{output_dir.name}.tmp-{tag}"
        try:
            code = ship_inference_code(model.config, heads or {})
            model.save_pretrained(staging)
            for path in code:  # the answering head's inference code, for `trust_remote_code=True`
                shutil.copyfile(path, staging / path.name)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            write_lineage_file(staging, get_lineage(model))
            if replay is not None and len(replay):
                replay.save(staging)
            for head in (heads or {}).values():
                head.save(staging)
            if write_card:
                write_model_card(model, staging)
            # A SIGKILL loses nothing already written, but a power cut can: flush before the renames publish it.
            _fsync_tree(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _swap_into_place(staging, output_dir, tag)
    logger.info("Saved the model to %s", output_dir)
    return output_dir


def remove_checkpoints(output_dir: str | os.PathLike) -> None:
    """Delete the Trainer checkpoints of a run that has finished (``output_dir/checkpoints``): they hold optimizer
    states (1.4 GB after a MiniLM base) that nothing reads once the run is done."""
    folder = Path(output_dir) / CHECKPOINTS_DIRNAME
    if folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)


def recover_interrupted_save(output_dir: str | os.PathLike) -> Path | None:
    """Finish or undo a save of ``output_dir`` that was killed, and delete its leftover folders.

    Every save runs this first, and an increment resuming from its checkpoints runs it before looking for them. Call it
    yourself before loading a folder whose save may have been killed (``output_dir`` missing while a sibling
    ``.<name>.new-<tag>`` exists). Returns the folder put in place, or ``None`` when there was nothing to finish.
    """
    output_dir = Path(output_dir)
    if not output_dir.parent.is_dir():
        return None
    with _locked(output_dir.parent):
        return _recover(output_dir)


def _swap_into_place(staging: Path, output_dir: Path, tag: str) -> None:
    parent, name = output_dir.parent, output_dir.name
    complete = parent / f".{name}.new-{tag}"
    os.replace(staging, complete)  # from here on a killed save leaves a complete new version behind
    if not output_dir.exists():
        os.replace(complete, output_dir)
        _fsync_dir(parent)
        return
    retired = parent / f".{name}.old-{tag}"
    # The output folder is renamed away before its kept entries move, so they are never only in a partial folder.
    os.replace(output_dir, retired)
    for entry in KEPT_ENTRIES:
        if (retired / entry).exists() and not (complete / entry).exists():
            os.replace(retired / entry, complete / entry)
    os.replace(complete, output_dir)
    _fsync_dir(parent)
    shutil.rmtree(retired, ignore_errors=True)


def _recover(output_dir: Path) -> Path | None:
    """:func:`recover_interrupted_save` without the lock (the caller holds it)."""
    parent, name = output_dir.parent, output_dir.name
    leftovers: dict[str, list[Path]] = {"tmp": [], "new": [], "old": []}
    for entry in parent.iterdir():
        match = _LEFTOVER.match(entry.name)
        if match and match["name"] == name:
            leftovers[match["stage"]].append(entry)
    for partial in leftovers["tmp"]:
        # Files still being written when the save was killed: never part of a model.
        logger.warning("Deleting %s, left by a save of %s that was interrupted while writing.", partial, output_dir)
        shutil.rmtree(partial, ignore_errors=True)
    restored = None
    candidates = leftovers["new"] or leftovers["old"]
    if not (output_dir / MODEL_MARKER).is_file() and candidates:
        # No model in `output_dir`: the killed save had renamed it away (or it never held one, as in a first save
        # after training): the save counts as done, put the newest complete version in place.
        candidate = max(candidates, key=lambda p: p.stat().st_mtime_ns)
        tag = _LEFTOVER.match(candidate.name)["tag"]
        retired = parent / f".{name}.old-{tag}"
        if candidate != retired and retired.is_dir():
            for entry in KEPT_ENTRIES:
                if (retired / entry).exists() and not (candidate / entry).exists():
                    os.replace(retired / entry, candidate / entry)
        if output_dir.exists():
            # A run that restarted before this recovery may have created `output_dir/checkpoints/...` already.
            _move_missing(candidate, output_dir)
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            os.replace(candidate, output_dir)
        _fsync_dir(parent)
        restored = output_dir
        logger.warning(
            "%s was missing or incomplete after an interrupted save; restored it from %s (%s version).",
            output_dir, candidate.name, "new" if candidate in leftovers["new"] else "previous",
        )
    for folder in leftovers["new"] + leftovers["old"]:
        if folder.exists():
            # `output_dir` holds a complete model: the interrupted save either never replaced it or had finished.
            logger.warning("Deleting %s, left by an interrupted save of %s.", folder, output_dir)
            shutil.rmtree(folder, ignore_errors=True)
    return restored


def _move_missing(source: Path, target: Path) -> None:
    """Move every entry of ``source`` that ``target`` lacks into it, descending into folders both have."""
    for entry in source.iterdir():
        destination = target / entry.name
        if not destination.exists():
            os.replace(entry, destination)
        elif entry.is_dir() and destination.is_dir():
            _move_missing(entry, destination)


@contextlib.contextmanager
def _locked(directory: Path):
    """Hold an exclusive lock on ``directory`` (the output folder's parent) while saving or recovering.

    A recovery deletes ``.tmp-`` folders, which is only safe if no other process is writing one: saves into the same
    parent take turns. The lock dies with its process, so a killed save never blocks the next. Where ``flock`` is
    unavailable (Windows, some network file systems) saves run unlocked: do not save one folder from two processes.
    """
    try:
        import fcntl

        fd = os.open(directory, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for file in files:
            fd = os.open(os.path.join(root, file), os.O_RDONLY)
            try:
                os.fsync(fd)
            except OSError:
                pass  # Windows cannot flush a read-only handle; a kill loses nothing written anyway
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every platform / file system can flush a directory
    finally:
        os.close(fd)
