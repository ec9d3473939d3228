"""Forgetting controls behind one small interface: each plugs into an increment at fixed points.

An increment (:mod:`hf_incr.recipe`) calls every active control's hooks in order:

1. :meth:`ForgettingControl.load`: read the state saved beside the model (a replay memory, closed-form statistics).
2. :meth:`ForgettingControl.prepare_rows`: add rows to the increment's training rows (replayed examples).
3. :meth:`ForgettingControl.needs_features` / :meth:`ForgettingControl.wants_teacher`: ask for the frozen encoder's
   head inputs of the training rows, or for a frozen copy of the model before the increment (distillation).
4. :meth:`ForgettingControl.after_training`: act on the trained model (weight aligning, updating a memory).

What a control keeps for the next increment lives on the run (``run.replay_memory``, ``run.statistics``) and is
saved with the model by :func:`~hf_incr.saving.save_increment`. Adding a control is a subclass plus its entry in
:data:`CONTROLS`. The closed-form head is the one control that also replaces a phase: when it can keep the old labels
(see :func:`hf_incr.validation.closed_form_usable`), the recipe solves the head instead of warming it up.
"""

from __future__ import annotations

from typing import ClassVar

from .data import row_label_names
from .head import align_weights
from .loading import load_statistics
from .replay import ReplayMemory, balanced_repeat, mix_replay


class ForgettingControl:
    """A way of keeping the old labels. Every hook does nothing by default; ``run`` is the increment's
    :class:`~hf_incr.recipe.IncrementRun` (its config, model, rows, labels and what earlier steps produced)."""

    name: ClassVar[str] = ""

    @classmethod
    def active(cls, config) -> bool:
        """Whether the recipe's settings turn this control on."""
        return False

    def load(self, run) -> None:
        """Read the state saved beside the model (``run.source_dir``), unless the caller passed it."""

    def prepare_rows(self, run) -> None:
        """Change ``run.train_rows`` before the head grows (the increment's own rows stay first)."""

    def needs_features(self, run) -> bool:
        """Whether this control needs the frozen encoder's head inputs of the training rows (``run.features``)."""
        return False

    def wants_teacher(self, run) -> bool:
        """Whether the gradient phases need the model as it was before the increment."""
        return False

    def after_training(self, run) -> None:
        """Act on the trained model (trainable flags already restored), before the final measurement."""


class Replay(ForgettingControl):
    """A few stored examples per label, mixed into every later increment (class-balanced repetition)."""

    name = "replay"

    @classmethod
    def active(cls, config) -> bool:
        return True  # a memory passed in by the caller is replayed even with `replay_per_label=0`

    def load(self, run) -> None:
        if run.replay_memory is None and run.config.replay_per_label > 0 and run.source_dir is not None:
            run.replay_memory = ReplayMemory.load(run.source_dir)

    def prepare_rows(self, run) -> None:
        memory, config = run.replay_memory, run.config
        if memory is None or not len(memory):
            return
        repeat = balanced_repeat(memory, len(run.train_dataset), len(run.new_labels)) if config.replay_balance else 1
        run.train_rows = mix_replay(
            run.train_dataset, memory, config.text_column, config.label_column, run.multi_label, repeat=repeat
        )

    def needs_features(self, run) -> bool:
        return run.config.replay_per_label > 0 and run.config.replay_selection == "herding"

    def after_training(self, run) -> None:
        config = run.config
        if config.replay_per_label <= 0:
            return
        memory = run.replay_memory if run.replay_memory is not None else ReplayMemory()
        run.replay_memory = memory.update(
            run.train_dataset[config.text_column], row_label_names(run.train_dataset, config.label_column),
            config.replay_per_label,
            # Replayed rows follow the increment's own rows (see mix_replay): the first rows are the new ones.
            features=None if run.features is None else run.features[: len(run.train_dataset)],
            selection=config.replay_selection, seed=run.args.seed,
        )


class Distillation(ForgettingControl):
    """The old labels' outputs kept close to the model's before the increment (Learning without Forgetting)."""

    name = "distillation"

    @classmethod
    def active(cls, config) -> bool:
        return config.distill_weight > 0

    def wants_teacher(self, run) -> bool:
        # A closed-form head is exact for the old labels by construction: the teacher serves the gradient phases only.
        # (The adaptation of a model trained elsewhere trains on the old labels' own rows: no teacher either.)
        gradient_phases = not (run.closed_form or run.keep_rows) or run.fine_tune
        return bool(run.old_ids and run.new_labels and gradient_phases)


class WeightAlign(ForgettingControl):
    """The new rows rescaled to the old rows' mean norm after training (Zhao et al., 2020)."""

    name = "weight_align"

    @classmethod
    def active(cls, config) -> bool:
        return config.weight_align

    def after_training(self, run) -> None:
        if run.new_ids and run.old_ids and not (run.closed_form or run.keep_rows):
            align_weights(run.model, run.new_ids, head=run.head)


class ClosedFormHead(ForgettingControl):
    """Statistics of every label's rows, saved with the model, from which the head is solved exactly."""

    name = "closed_form_head"

    @classmethod
    def active(cls, config) -> bool:
        return config.closed_form_head

    def load(self, run) -> None:
        if run.statistics is None and run.source_dir is not None:
            run.statistics = load_statistics(run.source_dir)


# Every control, in the order their hooks run.
CONTROLS: tuple[type[ForgettingControl], ...] = (ClosedFormHead, Distillation, WeightAlign, Replay)


def active_controls(config) -> list[ForgettingControl]:
    """The controls the recipe's settings turn on, ready to run."""
    return [control() for control in CONTROLS if control.active(config)]
