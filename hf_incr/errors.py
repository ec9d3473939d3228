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
