"""Checks run before an increment changes anything: the model, tokenizer, data and recipe must fit together.

:func:`check_increment_inputs` is called first thing by :func:`~hf_incr.train_increment`, so bad input fails with a
clear message while the model, the files on disk and the Hub repo are still as they were.
"""

from __future__ import annotations

from datasets import Dataset

from .config import IncrementConfig
from .data import check_texts


def check_increment_inputs(
    model,
    tokenizer,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    config: IncrementConfig,
) -> None:
    """Raise a :class:`~hf_incr.HfIncrError` (also a ``ValueError``) naming the problem and the fix."""
    check_texts(train_dataset, config.text_column)
    if eval_dataset is not None:
        check_texts(eval_dataset, config.text_column)
