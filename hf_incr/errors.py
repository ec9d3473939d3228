"""Exceptions raised by hf_incr.

Every error subclasses :class:`HfIncrError` and, where it is about a value the caller passed, ``ValueError`` too,
so ``except ValueError`` clauses written against plain transformers keep working (the PEFT convention).
Messages say what was expected, what was found, and what to do.
"""

from __future__ import annotations


class HfIncrError(Exception):
    """Base class of every error raised by hf_incr."""


class LabelError(HfIncrError, ValueError):
    """A label name or list of labels is invalid (empty, duplicated, already known, not a string)."""


class HeadNotFoundError(HfIncrError, ValueError):
    """The classification head (the Linear that outputs the logits) could not be found or is ambiguous."""


class HeadConfigMismatchError(HfIncrError, ValueError):
    """The classification head's size disagrees with ``config.id2label`` / ``config.num_labels``."""


class DataError(HfIncrError, ValueError):
    """A data set does not have the columns, texts or labels the increment needs."""


class ConfigError(HfIncrError, ValueError):
    """A recipe setting is invalid or contradicts another one."""


class TokenizerError(HfIncrError, ValueError):
    """The tokenizer does not fit the model (another model's vocabulary, token ids the embeddings lack, a missing or
    different padding token)."""


class UnsupportedModelError(HfIncrError, ValueError):
    """The model is of a kind whose head hf_incr cannot grow safely as it is (e.g. wrapped by a PEFT adapter)."""


class SavedStateError(HfIncrError, ValueError):
    """A file hf_incr saved beside a model (closed-form statistics, random-feature head, replay memory, lineage) is
    damaged, or belongs to another model. The message names the file, what is lost without it, and the way forward.

    Attributes:
        path: The file.
    """

    def __init__(self, message: str, *, path=None):
        super().__init__(message)
        self.path = path


def damaged_file_error(path, problem: str, lost: str, fix: str) -> SavedStateError:
    """A :class:`SavedStateError` for ``path``: what is wrong with it, what is lost without it, and what to do."""
    return SavedStateError(f"{str(path)!r} {problem}. Without it, {lost}. {fix}", path=path)


class HubPushError(HfIncrError):
    """Uploading a saved model to the Hugging Face Hub failed (no token, no network, an HTTP error, an interrupted
    upload). The model folder on disk is complete: the message names it and how to retry the push.

    Not a ``ValueError``: the caller's values were fine, the transfer was not.

    Attributes:
        folder: The complete local model folder.
        repo_id: The Hub repository the push was for.
        status_code: The HTTP status the Hub answered, when there was one.
    """

    def __init__(self, message: str, *, folder=None, repo_id: str | None = None, status_code: int | None = None):
        super().__init__(message)
        self.folder = folder
        self.repo_id = repo_id
        self.status_code = status_code


class SaveError(HfIncrError, OSError):
    """Writing what a run produces failed for a reason of the machine or of the folder, not of the caller's values:
    a write error, a read-only or vanished folder, an output folder replaced by something else while the run worked.
    Nothing that existed before is lost: the message names what was being written, where, and what to do.

    Not a ``ValueError`` (the caller's values were fine, the write was not); an ``OSError``, so ``except OSError``
    clauses written around ``save_pretrained`` keep working.

    Attributes:
        path: The file or folder being written when it failed.
        folder: The output folder of the run (as it was before the failed write).
    """

    def __init__(self, message: str, *, path=None, folder=None):
        super().__init__(message)
        self.path = path
        self.folder = folder


class DiskFullError(SaveError):
    """A :class:`SaveError` where the disk (or the user's quota) is full, or a file-size limit (``ulimit -f``) was
    reached: free space or raise the limit, then rerun."""


def causes(error: BaseException | None):
    """``error`` and the exceptions it was raised from or during, innermost last (a ``raise ... from None`` ends the
    chain): libraries wrap what went wrong (huggingface_hub an upload's HTTP error, datasets a file's parse error)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
