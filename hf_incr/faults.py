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
nothing was lost, and what to do; :func:`hf_incr.checkpoints.training_faults` does the same for the Trainer phases
of a run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path

from .errors import DiskFullError, HfIncrError, SaveError, causes

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


def _is_writer_error(error: BaseException) -> bool:
    """An exception type a writer raises for a failed write: OSError, safetensors' error, torch's RuntimeError, or the
    bare Exception of the tokenizers library (matched by text, since it has no type of its own)."""
    name = type(error).__name__
    return isinstance(error, (OSError, RuntimeError)) or name == "SafetensorError" or type(error) is Exception


def write_fault(error: BaseException, under: str | os.PathLike | None = None) -> str | None:
    """``"full"`` when ``error`` (or an exception it was raised from) says the disk is full or a file-size limit was
    reached, ``"io"`` for another failed write, ``None`` when it is no fault of a write. With ``under``, an
    ``OSError`` without a full disk counts only when it names a path inside that folder (elsewhere, a read)."""
    chain = [cause for cause in causes(error) if not isinstance(cause, _NOT_FILES)]
    for cause in chain:
        if isinstance(cause, OSError) and cause.errno in FULL_ERRNOS:
            return "full"
        if _is_writer_error(cause) and _FULL_TEXT.search(str(cause)):
            return "full"
    for cause in chain:
        if isinstance(cause, OSError) and not isinstance(cause, HfIncrError):
            if under is None or inside(getattr(cause, "filename", None), under):
                return "io"
        elif _is_writer_error(cause) and _WRITE_TEXT.search(str(cause)):
            return "io"
    return None


def inside(path, folder) -> bool:
    if not path:
        return False
    try:
        return Path(os.fsdecode(path)).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, ValueError, TypeError):
        return False


def detail(error: BaseException, limit: int = 200) -> str:
    """The innermost message of a fault, one line (``OSError: [Errno 28] No space left on device: 'x'``)."""
    chain = list(causes(error))
    cause = next((c for c in chain if isinstance(c, OSError) and c.errno in FULL_ERRNOS), None) or next(
        (c for c in chain if _FULL_TEXT.search(str(c))), chain[-1])
    text = " ".join(f"{type(cause).__name__}: {cause}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def reason(kind: str, error: BaseException) -> str:
    """Why the write failed, in words, with the writer's own message."""
    if kind == "full":
        return f"the disk is full or a file-size limit was reached ({detail(error)})"
    if any(isinstance(c, (NotADirectoryError, FileExistsError)) for c in causes(error)):
        return f"a part of that path is a file, not a folder; was it replaced while the run worked? ({detail(error)})"
    if any(isinstance(c, FileNotFoundError) for c in causes(error)):
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
