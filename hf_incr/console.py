"""What a run shows on the terminal: one heading and one progress bar per phase, no per-step dicts.

Trainer prints every log (``{'loss': ...}``, ``{'train_runtime': ...}``) through its progress callback; each phase's
Trainer gets :class:`PhaseProgressCallback` instead, unless the run is verbose (``TrainingArguments.log_level`` of
``info`` or more, which ``hf-incr --verbose`` sets). :func:`quiet_run` turns off the ``datasets`` and transformers
bars (Map, Filter, loading and writing weights) for the duration of a command and restores them after. Nothing is
configured at import.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, TrainerCallback
from transformers.utils import logging as transformers_logging

VERBOSE_LEVELS = ("debug", "info", "detail")


def is_verbose(args) -> bool:
    """Whether Trainer's own logs are wanted (``log_level`` ``info`` / ``debug`` / ``detail``)."""
    return getattr(args, "log_level", "passive") in VERBOSE_LEVELS


def heading(text: str) -> None:
    """One line that names a phase, on stderr beside the progress bars (stdout keeps the summary)."""
    tqdm.write(f"» {text}", file=sys.stderr)


class PhaseProgressCallback(TrainerCallback):
    """One bar for a training phase or an evaluation, named ``desc``; the logs go to the Trainer's state only."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None
        self.current_step = 0

    def _show(self, args, state) -> bool:
        return state.is_world_process_zero and not args.disable_tqdm

    def on_train_begin(self, args, state, control, **kwargs):
        if self._show(args, state):
            self.bar = tqdm(total=state.max_steps, desc=self.desc, unit="step", dynamic_ncols=True)
        self.current_step = 0

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.current_step)
            self.current_step = state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not self._show(args, state):
            return
        if self.bar is None:
            total = len(eval_dataloader) if eval_dataloader is not None else None
            self.bar = tqdm(total=total, desc=self.desc, unit="batch", dynamic_ncols=True)
        self.bar.update(1)

    def on_evaluate(self, args, state, control, **kwargs):
        self.on_train_end(args, state, control)

    on_predict = on_evaluate


def quiet_trainer(trainer, desc: str, text: str | None = None):
    """Swap Trainer's printing progress callback for :class:`PhaseProgressCallback` (unless verbose), and print the
    phase's heading ``text``. Returns the trainer."""
    args = trainer.args
    if is_verbose(args):
        return trainer
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(PhaseProgressCallback(desc))
    if text and args.process_index == 0 and not args.disable_tqdm:
        heading(text)
    return trainer


@contextmanager
def quiet_run(verbose: bool = False) -> Iterator[None]:
    """For one command: no ``datasets`` Map / Filter bars and no transformers loading / writing bars (unless
    ``verbose``, which also shows transformers' info logs); everything restored afterwards."""
    import datasets  # only the commands that process data need it (`hf-incr --help` and `info` do not)

    datasets_bars = datasets.is_progress_bar_enabled()
    transformers_bars = transformers_logging.is_progress_bar_enabled()
    verbosity = transformers_logging.get_verbosity()
    if verbose:
        transformers_logging.set_verbosity_info()
    else:
        datasets.disable_progress_bars()
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if datasets_bars:
            datasets.enable_progress_bars()
        else:
            datasets.disable_progress_bars()
        if transformers_bars:
            transformers_logging.enable_progress_bar()
        else:
            transformers_logging.disable_progress_bar()
