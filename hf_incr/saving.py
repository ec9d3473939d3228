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
import json
import os
import re
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path

from transformers.utils import logging

from .errors import SaveError
from .faults import megabytes, writing
from .heads.base import ship_inference_code
from .lineage import LINEAGE_FILENAME, get_lineage, write_lineage_file
from .model_card import CARD_FILENAME, PLOT_FILENAME, write_model_card
from .replay import REPLAY_DIRNAME, REPLAY_FILENAME

logger = logging.get_logger(__name__)

# Entries of an existing output folder that are not part of the saved model but must survive a re-save.
CHECKPOINTS_DIRNAME = "checkpoints"  # Trainer checkpoints of the phases (see hf_incr.checkpoints)
KEPT_ENTRIES = (CHECKPOINTS_DIRNAME, "runs")
# A folder holds a saved model when it has this file (save_pretrained writes it; the folder is loadable).
MODEL_MARKER = "config.json"
# `.<name>.lock` beside the output folder: held by the run that writes it (see run_lock).
LOCK_SUFFIX = ".lock"
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

    Raises:
        DiskFullError: The disk filled up (or a file-size limit was hit) while writing; the message names the file.
        SaveError: Another write failed, or ``output_dir`` is now a file or holds files that are not a saved model
            (it was replaced while the run worked). In both cases ``output_dir`` is as it was and no partial copy is
            left beside it.
    """
    output_dir = Path(output_dir)
    _make_parent(output_dir)
    with _locked(output_dir.parent):
        check_replaceable(output_dir)
        _recover(output_dir)
        tag = uuid.uuid4().hex[:8]
        staging = output_dir.parent / f".{output_dir.name}.tmp-{tag}"
        try:
            _write_version(model, staging, output_dir, tokenizer, replay, heads, write_card)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        kept = (f"Nothing was lost: the previous version and the new one are in that folder or beside it "
                f"(.{output_dir.name}.old-{tag}, .{output_dir.name}.new-{tag}); the next save, a resumed run or "
                f"`hf_incr.saving.recover_interrupted_save({str(output_dir)!r})` puts one of them in place.")
        with writing(f"Putting the new version in place of {str(output_dir)!r}", output_dir, folder=output_dir,
                     kept=kept, fix_full="Free space on that disk, then run the recovery.",
                     fix_io="Then run the recovery."):
            _swap_into_place(staging, output_dir, tag)
    logger.info("Saved the model to %s", output_dir)
    return output_dir


def _write_version(model, staging: Path, output_dir: Path, tokenizer, replay, heads, write_card: bool) -> None:
    """Every file of the new version into ``staging``, one named step at a time (a fault names what it wrote)."""
    step = _SaveStep(model, output_dir)
    code = ship_inference_code(model.config, heads or {})
    with step("the model (config.json and its weights)", "model.safetensors"):
        model.save_pretrained(staging)
    for path in code:  # the answering head's inference code, for `trust_remote_code=True`
        with step(f"the answering head's inference code ({path.name})", path.name):
            shutil.copyfile(path, staging / path.name)
    if tokenizer is not None:
        with step("the tokenizer", "tokenizer.json"):
            tokenizer.save_pretrained(staging)
    with step(f"the lineage ({LINEAGE_FILENAME})", LINEAGE_FILENAME):
        write_lineage_file(staging, get_lineage(model))
    if replay is not None and len(replay):
        with step("the replay memory", f"{REPLAY_DIRNAME}/{REPLAY_FILENAME}"):
            replay.save(staging)
    for name, head in (heads or {}).items():
        files = [*type(head).files, *type(head).statistics_files]
        with step(f"the {name} head's files ({', '.join(files) or 'none'})", files[0] if files else ""):
            head.save(staging)
    if write_card:
        with step(f"the model card ({CARD_FILENAME}) and its plot ({PLOT_FILENAME})", CARD_FILENAME):
            write_model_card(model, staging)
    # A SIGKILL loses nothing already written, but a power cut can: flush before the renames publish it.
    with step(f"Flushing the saved files of {str(output_dir)!r} to the disk (fsync)", ""):
        _fsync_tree(staging)


class _SaveStep:
    """``step(what, name)``: a context for one write of a save, whose fault becomes a
    :class:`~hf_incr.errors.DiskFullError` / :class:`~hf_incr.errors.SaveError` naming ``what`` and
    ``output_dir / name`` (the file's final place: the temporary folder is hidden)."""

    def __init__(self, model, output_dir: Path):
        self.output_dir = output_dir
        parent = str(output_dir.parent)
        before = ("still holds the model it held before this save" if (output_dir / MODEL_MARKER).is_file()
                  else "was not created or changed")
        self.kept = f"Nothing was lost: {str(output_dir)!r} {before}, and the partial copy was deleted."
        self.fix_full = (f"Free space on the disk that holds {parent!r} (the weights alone take about "
                         f"{megabytes(model)} MB) or raise the file-size limit (`ulimit -f`), then rerun the same "
                         "command.")
        self.fix_io = f"Check that {parent!r} is a folder that can be written, then rerun the same command."

    def __call__(self, what: str, name: str):
        return writing(what, self.output_dir / name if name else self.output_dir, folder=self.output_dir,
                       kept=self.kept, fix_full=self.fix_full, fix_io=self.fix_io)


def foreign_entries(folder: Path) -> list[str]:
    """The names in ``folder`` that a save would delete although they are no saved model's (``[]`` for a missing or
    empty folder, or a model folder: saving replaces those as a whole)."""
    if not folder.is_dir() or (folder / MODEL_MARKER).is_file():
        return []
    return sorted(entry.name for entry in folder.iterdir() if entry.name not in KEPT_ENTRIES)


def blocking_file(output_dir: str | os.PathLike) -> Path | None:
    """The file that stands where ``output_dir`` or one of its parents should be a folder, or ``None``."""
    for path in (Path(output_dir), *Path(output_dir).parents):
        if path.exists() or path.is_symlink():
            return None if path.is_dir() else path
    return None


def _file_in_the_way(output_dir: Path, blocked: Path) -> SaveError:
    return SaveError(
        f"Saving the model to {str(output_dir)!r} failed: {str(blocked)!r} is a file, not a folder (was it replaced "
        "while the run worked?). Nothing was written and the file was left as it is. Move it away or pass another "
        "`output_dir`, then rerun.", path=blocked, folder=output_dir,
    )


def _make_parent(output_dir: Path) -> None:
    blocked = blocking_file(output_dir.parent)
    if blocked is not None:
        raise _file_in_the_way(output_dir, blocked)
    with writing(f"Creating the folder {str(output_dir.parent)!r}", output_dir.parent, folder=output_dir,
                 kept="Nothing was written.", fix_full="Free space on that disk, then rerun the same command.",
                 fix_io="Check that it can be created, then rerun the same command."):
        output_dir.parent.mkdir(parents=True, exist_ok=True)


def check_replaceable(output_dir: Path) -> None:
    """Refuse (:class:`~hf_incr.errors.SaveError`) to replace an ``output_dir`` that is a file, or a folder that holds
    files that are not a saved model: the command line checked it before the run, so it was replaced meanwhile, and
    replacing it would delete them."""
    output_dir = Path(output_dir)
    blocked = blocking_file(output_dir)
    if blocked is not None:
        raise _file_in_the_way(output_dir, blocked)
    if others := foreign_entries(output_dir):
        raise SaveError(
            f"Saving the model to {str(output_dir)!r} failed: the folder holds files that are not a saved model "
            f"({others[:5]}{' ...' if len(others) > 5 else ''}; was it replaced while the run worked?). Saving "
            "replaces the folder as a whole, so nothing was written and they were left as they are. Move them "
            "away or pass another `output_dir`, then rerun.", path=output_dir, folder=output_dir,
        )


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
def run_lock(output_dir: str | os.PathLike, *, enabled: bool = True):
    """Hold the output folder for a whole run: a second run on the same ``output_dir`` waits for this one to end (and
    says so, naming it), so two runs never interleave their Trainer checkpoints or their saves.

    The lock is ``.<name>.lock`` beside the folder, locked with ``flock`` and holding who holds it (process id, host,
    start, command). The lock dies with its process, so a killed run never blocks the next; the file is deleted when
    the run ends. Where ``flock`` is unavailable (Windows, some network file systems) runs are not serialised.
    """
    if not enabled:
        yield
        return
    try:
        import fcntl
    except ImportError:
        yield
        return
    output_dir = Path(output_dir).expanduser()
    _make_parent(output_dir)
    path = output_dir.parent / f".{output_dir.name}{LOCK_SUFFIX}"
    fd = _acquire(path, output_dir, fcntl)
    if fd is None:  # flock refused by the file system
        yield
        return
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        yield
    finally:
        # Deleted while still locked: a run waiting on this file then sees it gone and locks a new one.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _acquire(path: Path, output_dir: Path, fcntl) -> int | None:
    """An open, exclusively locked descriptor of the lock file at ``path`` (waiting for another run to release it),
    or ``None`` where the file system has no ``flock``."""
    said = False
    while True:
        with writing(f"Creating the run's lock file {str(path)!r}", path, folder=output_dir,
                     kept="Nothing was run or written.", fix_full="Free space on that disk, then rerun.",
                     fix_io="Pass an `output_dir` in a folder you can write, then rerun."):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not said:
                logger.warning(
                    "%s is being written by another run (%s). This run waits until it has finished: runs on one "
                    "output folder take turns, so their checkpoints and saves never mix. Pass another `output_dir` to "
                    "run both at once.", output_dir, _holder(path),
                )
                said = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            return None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError:
            same = False
        if same:
            if said:
                logger.warning("The other run on %s has finished; this run goes on.", output_dir)
            return fd
        os.close(fd)  # the run before deleted the file as it ended: lock the one that is there now


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return (f"process {holder['pid']} on {holder['host']}, started {holder['started']}: "
                f"`{holder['command']}`")
    except (OSError, ValueError, KeyError, TypeError):
        return "its details are not written yet"


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
