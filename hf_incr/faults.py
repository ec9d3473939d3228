"""Faults of the machine while hf_incr writes: a full disk, a file-size limit, a folder that vanished or was replaced.

Each writer reports them in its own words (measured on a full tmpfs and under ``ulimit -f``):

- Python's ``open().write``, matplotlib, pyarrow (the replay memory): ``OSError`` with ``errno`` 28 (ENOSPC), 27
  (EFBIG) or 122 (EDQUOT); pyarrow's reads ``[Errno 28] Error writing bytes to file``;
- safetensors (the model, the heads' files, Trainer's checkpoints): ``SafetensorError("Error while serializing: I/O
  error: No space left on device (os error 28)")``, not an ``OSError``;
- the tokenizers library (``tokenizer.json``): a bare ``Exception("File too large (os error 27)")``;
- ``torch.save`` (Trainer's optimizer state): ``RuntimeError("[enforce fail at inline_container.cc:672] . unexpected
  pos 576 vs 534")`` raised from ``basic_ios::clear: iostream error``, which names no cause.

:func:`write_fault` reads them all; :func:`writing` turns one raised while writing a named thing into a
:class:`~hf_incr.errors.DiskFullError` / :class:`~hf_incr.errors.SaveError` that says what was written, where, that
nothing was lost, and what to do; :func:`training_faults` does the same for the Trainer phases of a run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from pathlib import Path

from .errors import DiskFullError, HfIncrError, SaveError

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", 122)})
# How the writers that raise no errno say it (Rust's `os error N`, pyarrow's `[errno N]`).
_FULL_TEXT = re.compile(r"No space left on device|File too large|Disk quota exceeded|(os error|errno) (28|27|122)\b",
                        re.IGNORECASE)
# A write that failed without saying why: safetensors' serializer, torch's zip writer.
_WRITE_TEXT = re.compile(
    r"Error while serializing|unexpected pos|iostream error|PytorchStreamWriter|file write failed"
)
# Network errors are OSErrors too; none of them is a fault of a file.
_NOT_FILES = (ConnectionError, TimeoutError)
# Trainer writes trainer_state.json last in a checkpoint (hf_incr.checkpoints reads the same file).
_TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-\d+$")


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)


def _is_writer_error(error: BaseException) -> bool:
    """An exception type a writer raises for a failed write: OSError, safetensors' error, torch's RuntimeError, or the
    bare Exception of the tokenizers library (matched by text, since it has no type of its own)."""
    name = type(error).__name__
    return isinstance(error, (OSError, RuntimeError)) or name == "SafetensorError" or type(error) is Exception


def write_fault(error: BaseException, under: str | os.PathLike | None = None) -> str | None:
    """``"full"`` when ``error`` (or an exception it was raised from) says the disk is full or a file-size limit was
    reached, ``"io"`` for another failed write, ``None`` when it is no fault of a write. With ``under``, an
    ``OSError`` without a full disk counts only when it names a path inside that folder (elsewhere, a read)."""
    chain = [cause for cause in _chain(error) if not isinstance(cause, _NOT_FILES)]
    for cause in chain:
        if isinstance(cause, OSError) and cause.errno in FULL_ERRNOS:
            return "full"
        if _is_writer_error(cause) and _FULL_TEXT.search(str(cause)):
            return "full"
    for cause in chain:
        if isinstance(cause, OSError) and not isinstance(cause, HfIncrError):
            if under is None or _inside(getattr(cause, "filename", None), under):
                return "io"
        elif _is_writer_error(cause) and _WRITE_TEXT.search(str(cause)):
            return "io"
    return None


def _inside(path, folder) -> bool:
    if not path:
        return False
    try:
        return Path(os.fsdecode(path)).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, ValueError, TypeError):
        return False


def detail(error: BaseException, limit: int = 200) -> str:
    """The innermost message of a fault, one line (``OSError: [Errno 28] No space left on device: 'x'``)."""
    chain = list(_chain(error))
    cause = next((c for c in chain if isinstance(c, OSError) and c.errno in FULL_ERRNOS), None) or next(
        (c for c in chain if _FULL_TEXT.search(str(c))), chain[-1])
    text = " ".join(f"{type(cause).__name__}: {cause}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def reason(kind: str, error: BaseException) -> str:
    """Why the write failed, in words, with the writer's own message."""
    if kind == "full":
        return f"the disk is full or a file-size limit was reached ({detail(error)})"
    if any(isinstance(c, (NotADirectoryError, FileExistsError)) for c in _chain(error)):
        return f"a part of that path is a file, not a folder; was it replaced while the run worked? ({detail(error)})"
    if any(isinstance(c, FileNotFoundError) for c in _chain(error)):
        return f"a folder of that path no longer exists; was it removed while the run worked? ({detail(error)})"
    return f"the write failed ({detail(error)})"


def fault_error(kind: str, error: BaseException, *, what: str, path, folder, kept: str, fix: str) -> SaveError:
    """A :class:`DiskFullError` (``kind == "full"``) or :class:`SaveError`: what failed (``what``: "the lineage";
    or, starting with a capital, the whole action: "Creating the folder 'x'"), where, what is kept, the fix."""
    cls = DiskFullError if kind == "full" else SaveError
    action = what if what[:1].isupper() else f"Writing {what} to {str(path)!r}"
    message = f"{action} failed: {reason(kind, error)}. {kept} {fix}"
    return cls(message, path=Path(path), folder=Path(folder) if folder is not None else None)


@contextlib.contextmanager
def writing(what: str, path, *, folder, kept: str, fix_full: str, fix_io: str):
    """Run the body (one write), turning a fault of the machine into a :class:`DiskFullError` / :class:`SaveError`
    that names ``what`` and ``path``; every other exception passes unchanged."""
    try:
        yield
    except HfIncrError:
        raise
    except Exception as error:
        kind = write_fault(error)
        if kind is None:
            raise
        raise fault_error(kind, error, what=what, path=path, folder=folder, kept=kept,
                          fix=fix_full if kind == "full" else fix_io) from error


def megabytes(model) -> int:
    """The size of a model's weights in MB (at least 1), to say how much space a save needs."""
    try:
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    except (AttributeError, RuntimeError):
        return 1
    return max(1, round(size / 1e6))


@contextlib.contextmanager
def training_faults(output_dir, model=None):
    """The Trainer phases of a run: a full disk (or a file-size limit, or a checkpoint folder that vanished or became
    a file) while Trainer writes a checkpoint under ``output_dir/checkpoints``, or datasets a cache file, becomes a
    :class:`DiskFullError` / :class:`SaveError`. The checkpoints whose writing failed are deleted: they free the
    space they took, and a resumed run would skip them anyway."""
    try:
        yield
    except HfIncrError:
        raise
    except Exception as error:
        kind = write_fault(error, under=output_dir)
        if kind is None:
            raise
        out = Path(output_dir)
        checkpoints = out / "checkpoints"
        removed = remove_incomplete_checkpoints(checkpoints)
        named = next((c.filename for c in _chain(error) if isinstance(c, OSError) and getattr(c, "filename", None)),
                     None)
        path = Path(os.fsdecode(named)) if named else checkpoints
        what = "the Trainer checkpoints of this run" if not named or _inside(named, out) else "a cache file"
        kept = (f"Nothing saved before was changed: {str(out)!r} holds no model of this run (a model saved there "
                "before is as it was)"
                + (f"; the incomplete checkpoint(s) {removed} were deleted." if removed else "."))
        size = megabytes(model) if model is not None else None
        needs = f" (a checkpoint of this model takes about {3 * size} MB: weights and optimizer state)" if size else ""
        resume = ("then rerun; with checkpoints, add `--resume_from_checkpoint true` (Python: "
                  "`TrainingArguments(resume_from_checkpoint=True)`) to continue from the last complete one, or pass "
                  "`--save_strategy no` to write none.")
        fix = (f"Free space on that disk{needs} or raise the file-size limit (`ulimit -f`), {resume}"
               if kind == "full" else f"Check that {str(out)!r} is a folder that can be written, {resume}")
        raise fault_error(kind, error, what=what, path=path, folder=out, kept=kept, fix=fix) from error


def _complete(checkpoint: Path) -> bool:
    try:
        state = json.loads((checkpoint / _TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def remove_incomplete_checkpoints(folder: Path) -> list[str]:
    """Delete the Trainer checkpoints under ``folder/<phase>/`` that lack their ``trainer_state.json`` (Trainer writes
    it last, so they were being written); returns their names as ``phase/checkpoint-N``."""
    removed = []
    if not folder.is_dir():
        return removed
    for phase in sorted(p for p in folder.iterdir() if p.is_dir()):
        for checkpoint in sorted(p for p in phase.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)):
            if not _complete(checkpoint):
                shutil.rmtree(checkpoint, ignore_errors=True)
                removed.append(f"{phase.name}/{checkpoint.name}")
    return removed
