"""What an increment will do, decided once, before anything changes: :func:`plan` is a pure function of the model's
labels, the heads saved with it, the recipe's settings and the training data's labels, and returns a frozen
:class:`IncrementPlan` that the recipe executes (and ``hf-incr info`` prints).

Paths:

- ``solve``: the heads are solved from their statistics after one frozen pass over the increment's rows (a base
  classifier first fine-tunes its top layers, after a warm-up of the output Linear, and solves on the adapted encoder).
- ``kept_rows``: a classifier hf_incr did not train (no saved statistics): its trained rows are kept, new rows fitted
  beside them, from one frozen pass.
- ``adapt``: the same classifier, given its old labels' data about as well as the new labels' (the user's full data):
  the whole encoder fine-tuned once, then the heads solved as for a base.
- ``gradient`` (``head="trained"``): the Linear trained by gradient (warm-up, fine-tuning) with the forgetting
  controls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .config import TRAINED, IncrementConfig
from .errors import DataError
from .heads import HEADS, Head
from .heads.kept_rows import represents_old_labels

PATHS = ("solve", "kept_rows", "adapt", "gradient")


@dataclass(frozen=True)
class IncrementPlan:
    """One increment, decided: its labels, the path it runs, the heads fitted and the one that answers, what the
    frozen pass must produce, and the warnings that apply (see the module docstring for the paths)."""

    kind: str  # "base" or "increment"
    new_labels: tuple[str, ...]  # a base's: every label
    num_old: int  # labels before the increment (0 for a base)
    num_labels: int  # labels after it
    multi_label: bool
    annotated: tuple[int, ...] | None  # multi-label: the label ids the rows annotate (None: every label)
    path: str
    heads: tuple[str, ...]  # fitted from the frozen pass, the Linear's first (none on the gradient path)
    answering: str  # the head the model answers with ("linear", or an extra head's name)
    starts: tuple[str, ...]  # heads that start in this increment (the others continue saved statistics)
    dropped: tuple[str, ...]  # saved heads this increment drops
    fallback: str | None  # why the head asked for cannot answer (the Linear does), with what would enable it
    fine_tune: bool  # the top layers are fine-tuned (the base, or every increment of the gradient path)
    warm_up: bool  # the output Linear is warmed up by gradient on cached features
    cache_features: bool  # the training rows' head inputs are cached before training (warm-up, imprint, herding)
    teacher: bool  # the gradient phases distill from the model before the increment
    features: tuple[str, ...]  # what the frozen pass reads, for the heads
    warnings: tuple[str, ...]

    @property
    def new_ids(self) -> list[int]:
        return list(range(self.num_old, self.num_labels))

    @property
    def old_ids(self) -> list[int]:
        return list(range(self.num_old))

    def describe(self) -> str:
        """One sentence: what this increment does (``hf-incr info`` prints it for the next increment)."""
        heads = " and ".join(HEADS[name].title for name in self.heads)
        what = {
            "solve": f"one frozen pass over the rows ({', '.join(self.features)}), then {heads} solved from the "
            "statistics saved with the model: the new data needs only the new labels, and the old labels stay exact",
            "kept_rows": "every trained row of the Linear kept bit for bit and the new labels' rows fitted beside "
            f"them from one frozen pass ({', '.join(self.features)}); a few rows of every old label in the data let "
            "hf_incr calibrate new against old",
            "adapt": "the encoder fine-tuned once on every old and new label's rows, then "
            f"{heads} solved from the adapted encoder (kept only if it does at least as well on eval data)",
            "gradient": "the Linear trained by gradient"
            + (" after a warm-up on cached features" if self.warm_up else "")
            + (", then the top layers fine-tuned" if self.fine_tune else "")
            + (", distilled from the model before the increment" if self.teacher else ""),
        }[self.path]
        if self.path == "solve" and self.kind == "base" and self.fine_tune:
            what = f"the output Linear warmed up, the top layers fine-tuned, then {what}"
        extras = [f"the {HEADS[name].title} starts here" for name in self.starts if name != "linear"]
        extras += [f"the saved {HEADS[name].title} is dropped" for name in self.dropped]
        if self.fallback:
            extras.append(f"the Linear answers: {self.fallback}")
        answer = f"; the model answers with the {HEADS[self.answering].title}" if self.answering != "linear" else ""
        return what + ("; " + ", ".join(extras) if extras else "") + answer


def plan(
    model_labels: Sequence[str],
    multi_label: bool,
    saved: Mapping[str, Head],
    config: IncrementConfig,
    data_labels: Sequence[str],
    row_labels: Sequence[Sequence[str]] | None,
    *,
    kind: str = "increment",
) -> IncrementPlan:
    """Decide one increment.

    Args:
        model_labels: The model's labels, in id order.
        multi_label: Whether the model is a sigmoid classifier.
        saved: The heads saved with the model, by name (``"linear"``: its statistics).
        config: The recipe's settings.
        data_labels: Every label name of the training data (ClassLabel order, else sorted).
        row_labels: Each training row's label names (``None``: unknown, e.g. for ``hf-incr info``).
        kind: ``"base"`` for a first classifier (every label of the data is the model's already).

    Raises:
        DataError, ConfigError: the data or the settings cannot make this increment (before anything changed).
    """
    base = kind == "base"
    known = set(model_labels)
    warnings: list[str] = []
    new_labels = _new_labels(data_labels, known, config.new_labels)
    if base and new_labels:
        raise DataError(f"The base model lacks the label(s) {new_labels} that occur in the training data.")
    num_old = 0 if base else len(model_labels)
    if base:
        new_labels = list(model_labels)  # a first classifier adds every label it has
    annotated = _annotated(multi_label, base, config, new_labels, row_labels, known, num_old, warnings)
    gradient = config.head == TRAINED
    linear = saved.get("linear")
    keep_rows = not gradient and not base and (linear is None or linear.keeps_trained_rows)
    if keep_rows and linear is None and row_labels is not None:
        _warn_old_labels_without_rows(model_labels, row_labels, multi_label, config, warnings)
    if keep_rows and multi_label and row_labels is not None:
        _check_new_labels_have_negatives(new_labels, row_labels, statistics=linear is not None, warnings=warnings)
    adapt = (keep_rows and linear is None and config.adapt_trained_elsewhere and row_labels is not None
             and _holds_old_labels(multi_label, model_labels, new_labels, row_labels))
    extra, starts, dropped, fallback = _extra_head(config, saved, base or adapt, keep_rows and not adapt, multi_label)
    warnings += [f"The model has a {HEADS[name].title} but `head={config.head}`: it is dropped (it would lack this "
                 f"increment's labels). Keep `head={name}` to continue it." for name in dropped if name != extra
                 and saved[name].can_continue]
    if fallback:
        warnings.append(fallback)
    path = "gradient" if gradient else "adapt" if adapt else "kept_rows" if keep_rows else "solve"
    fine_tune = config.finetune_layers != 0 and config.finetune_epochs > 0 and (base or config.finetune_increments)
    warm_up = config.warmup_epochs > 0 and (gradient or (path == "solve" and fine_tune))
    heads = () if gradient else ("linear", *([extra] if extra else []))
    if linear is None and heads:
        starts = ("linear", *starts)
    replay_herding = config.replay_per_label > 0
    imprint = gradient and bool(new_labels) and not base
    return IncrementPlan(
        kind=kind, new_labels=tuple(new_labels), num_old=num_old, num_labels=num_old + len(new_labels),
        multi_label=multi_label,
        annotated=None if annotated is None else tuple(annotated), path=path, heads=heads,
        answering=extra or "linear", starts=starts, dropped=dropped, fallback=fallback, fine_tune=fine_tune,
        warm_up=warm_up,
        cache_features=warm_up or imprint or replay_herding,
        teacher=config.distill_weight > 0 and num_old > 0 and bool(new_labels) and (gradient or fine_tune),
        features=tuple(HEADS[name].reads for name in heads), warnings=tuple(warnings),
    )


def _new_labels(data_labels: Sequence[str], known: set[str], declared: Sequence[str] | None) -> list[str]:
    """The labels of the data the model lacks; with ``declared``, those (any other unknown name is an error)."""
    unknown = [name for name in data_labels if name not in known]
    if declared is None:
        return unknown
    stray = [name for name in unknown if name not in set(declared)]
    if stray:
        raise DataError(
            f"The data has label(s) {stray} that the model does not know and that are not among `new_labels` "
            f"{list(declared)}. Add them to `new_labels`, or drop those rows."
        )
    return [name for name in declared if name not in known]


def _annotated(multi_label, base, config, new_labels, row_labels, known, num_old, warnings) -> list[int] | None:
    """The label ids the rows of a multi-label increment annotate (``multi_label_annotation``); None: every label.

    With ``new`` (the default) an old label missing from a row is unknown, not absent: learning it as a negative would
    teach the head that the old label never occurs in the new data. Old labels present in rows are ignored then,
    which the warning says (and how to use them)."""
    if not multi_label or base or config.multi_label_annotation == "all":
        return None
    if not new_labels:
        raise DataError(
            "This multi-label increment brings no new label, and `multi_label_annotation='new'` says its rows "
            "annotate only new labels: there is nothing to learn. If the rows are fully annotated (a label missing "
            "from a row is absent), set `multi_label_annotation='all'` (`--multi_label_annotation all`)."
        )
    carrying = sum(any(name in known for name in names) for names in row_labels or [])
    if carrying:
        warnings.append(
            f"{carrying} of {len(row_labels)} rows carry old labels, which `multi_label_annotation='new'` ignores: "
            "old labels keep their rows and thresholds. If every row is fully annotated (a label missing from it is "
            "absent), set `multi_label_annotation='all'` to refit the old labels too."
        )
    return list(range(num_old, num_old + len(new_labels)))


def _warn_old_labels_without_rows(model_labels, row_labels, multi_label, config, warnings) -> None:
    """A classifier without statistics whose data lacks some of its labels: they are kept, and what that means."""
    present = {name for names in row_labels for name in names}
    absent = [name for name in model_labels if name not in present]
    if not absent:
        return
    if multi_label:  # sigmoids are independent: the old labels lose nothing; the advice is for the new ones
        what = (
            " are kept bit for bit, so their predictions do not change; the new labels' rows are fitted on the "
            "encoder's pooler output"
            + ("." if config.head == "kernel" else
               ". If the model will be loaded with `hf_incr.load_model`, `head=kernel` (`kernel_features=5000`) "
               "decides the new labels on the encoder's top layers instead (GoEmotions: 57.3 % micro-F1 against "
               "48.7 %).")
        )
    else:
        beside = config.head in ("kernel", "beside_kept")
        what = (
            " are kept bit for bit"
            + ("; the new labels are read from the encoder's layers beside them, and with no rows of the old labels "
               "a gate decides between the two (`gate_new_recall` sets the trade-off)" if beside else
               " and only the new labels' rows are fitted, on the old rows' scale, with nothing to calibrate them "
               "against the old ones")
            + ". Rows of the old labels buy accuracy (BANKING77, all labels: "
            + ("85.5 % with none, 89.5 %" if beside else "74.5 % with none, 87.4 %")
            + " with 5 of every old label, 91.8 % with all the data the model was trained on, which also adapts its "
            "encoder: `adapt_trained_elsewhere`)."
        )
    from .heads.linear import STATISTICS_FILENAME

    warnings.append(
        f"The model has no saved statistics ({STATISTICS_FILENAME}; was it trained without hf_incr?) and the data "
        f"lacks its label(s) {absent[:10]}{' ...' if len(absent) > 10 else ''}. Their trained rows of the head" + what
    )


def _check_new_labels_have_negatives(new_labels, row_labels, *, statistics: bool, warnings: list[str]) -> None:
    """A multi-label model without statistics learns each new label from this increment's rows alone: a label that
    every row carries cannot be told apart from anything (with statistics, earlier rows would be its negatives); and
    when every row carries some new label, no row shows the new labels what a text without any of them looks like."""
    everywhere = [name for name in new_labels if all(name in names for names in row_labels)]
    if everywhere:
        raise DataError(
            f"The new label(s) {everywhere[:10]} are carried by every row of this increment, and the model has no "
            "saved statistics (it was trained without hf_incr) whose earlier rows could serve as rows without them. "
            "Add rows that do not carry them (e.g. a few rows of the old labels) to this increment's data."
        )
    new = set(new_labels)
    if not statistics and all(new.intersection(names) for names in row_labels):
        # GoEmotions, 14 + 14 labels: 58.6 % micro-F1 on the new labels from their rows alone, 62.0 % with the texts
        # that carry none of them (docs/benchmarks.md): both the thresholds and the ranking gain.
        warnings.append(
            "Every row of this increment carries one of the new labels, and the model has no saved statistics: each "
            "new label's threshold is chosen against the other new labels' rows only, so it fires too often on texts "
            "that carry none of them. Add texts annotated as carrying none of the new labels (an empty label list "
            "`[]`, or only old labels), e.g. the rest of the corpus the new labels were annotated on."
        )


def _extra_head(config, saved, every_label, keep_rows, multi_label) -> tuple[str | None, tuple, tuple, str | None]:
    """The extra head that answers (None: the Linear), the heads starting now, the saved heads dropped, and why the
    head asked for cannot answer (a head that cannot start or continue leaves the answer to the Linear, with one line
    saying why and what would enable it). ``every_label``: this increment's rows hold every label (a base, or an
    adapted classifier trained elsewhere)."""
    wanted = config.head if config.head not in (TRAINED, "linear") else None

    def refusal_of(name: str) -> str | None:
        existing = saved.get(name)
        if existing is not None and existing.can_continue:
            return None
        return HEADS[name].start_refusal(every_label=every_label, keeps_rows=keep_rows, multi_label=multi_label,
                                         inference_only=existing is not None)

    refusal = refusal_of(wanted) if wanted else None
    stand_in = HEADS[wanted].stand_in if wanted else None
    if refusal and stand_in and refusal_of(stand_in) is None:
        wanted, refusal = stand_in, None  # where the head asked for cannot start, the one made for that case does
    continues = wanted in saved and saved[wanted].can_continue
    answering = None if wanted is None or refusal else wanted
    dropped = tuple(name for name in saved if name != "linear" and (name != answering or not continues))
    starts = (answering,) if answering and not continues else ()
    return answering, starts, dropped, refusal


def _holds_old_labels(multi_label, model_labels, new_labels, row_labels) -> bool:
    """Whether a single-label increment's rows hold every old label about as well as the new ones
    (:func:`~hf_incr.heads.kept_rows.represents_old_labels`), from the label names alone."""
    if multi_label or not new_labels or not model_labels:
        return False
    ids = {name: i for i, name in enumerate([*model_labels, *new_labels])}
    labels = torch.tensor([ids[names[0]] for names in row_labels])
    return represents_old_labels(labels, len(model_labels), len(ids))
