"""The interface every head implements, and the registry of heads.

A *head* answers from features of a frozen encoder and is solved from sufficient statistics of one frozen pass over
an increment's rows; it never stores text. Its life in an increment, in the order :mod:`hf_incr.recipe` calls it:

1. :meth:`Head.start` (its first increment) or :meth:`Head.load` (its statistics saved beside the model).
2. :meth:`Head.begin`: room for the increment's labels, an empty share for this process's rows.
3. :meth:`Head.add`: each batch of the frozen pass, its features (:attr:`Head.feature_key` names what it reads,
   :meth:`Head.capture` how to read it) and targets.
4. :meth:`Head.end`: the shares of every process combined and merged; :meth:`Head.solve`: the head solved and put
   on the model (:meth:`Head.attach`).
5. :meth:`Head.save` into the model folder; :meth:`Head.lineage_entry` into the lineage.

The Linear's closed form (:class:`~hf_incr.heads.linear.LinearHead`) writes the model's own output Linear, which
plain ``from_pretrained`` loads. Any other head is *extra*: it answers through forward hooks and its own files
(:attr:`Head.files`), attached by :func:`hf_incr.load_model` (and, where the head ships :attr:`Head.modeling_file`,
by transformers with ``trust_remote_code=True``). Adding a head is a subclass and one :func:`register_head` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from ..features import HEAD_INPUTS, Capture, HeadInputsCapture
from ..head import ClassifierHead


@dataclass(frozen=True)
class PassRows:
    """What a head is told before a frozen pass over an increment's training rows."""

    num_old: int  # labels before this increment
    num_labels: int  # labels after it
    annotated: list[int] | None  # multi-label: the label ids the rows annotate (None: all)
    own: int  # the increment's own rows; replayed rows follow them (ids >= own), already in the statistics
    total: int  # rows in the pass


class Head:
    """One way of answering from a frozen encoder's features, solved from statistics (see the module docstring).

    Every hook has a default for a head that reads the Linear's inputs; a subclass implements at least
    :meth:`start`, :meth:`add`, :meth:`solve`, :meth:`logits`, :meth:`save` and :meth:`load`."""

    name: ClassVar[str] = ""
    # Files beside the weights: what inference reads (empty for the Linear: the weights are its own), what only the
    # next increment reads, and names that earlier versions wrote (removed from the Hub by a push that lacks them).
    files: ClassVar[tuple[str, ...]] = ()
    statistics_files: ClassVar[tuple[str, ...]] = ()
    legacy_files: ClassVar[tuple[str, ...]] = ()
    # The head's inference code, shipped beside the weights for `trust_remote_code=True` (None: it ships none), and
    # the class in it that config.json's `auto_map` names for AutoModelForSequenceClassification.
    modeling_file: ClassVar[Path | None] = None
    auto_class: ClassVar[str | None] = None
    # The head that answers in this one's place where this one cannot start and it can (None: the Linear answers).
    stand_in: ClassVar[str | None] = None
    # The key of this head's entry in a lineage record (None: it records none).
    lineage_key: ClassVar[str | None] = None
    # What people read: the head's name in a sentence, and what it reads of the encoder.
    title: ClassVar[str] = ""
    reads: ClassVar[str] = "the output Linear's inputs"
    feature_key: str = HEAD_INPUTS

    # -- starting and continuing ----------------------------------------------------------------------------------

    @classmethod
    def start(cls, model: nn.Module, location: ClassifierHead, *, config, multi_label: bool, seed: int,
              kept_labels: list[int]) -> Head:
        """A new head at its first increment; ``config``: the :class:`~hf_incr.IncrementConfig` (its size).
        ``kept_labels``: labels whose trained Linear rows the model keeps (a classifier trained elsewhere), which this
        head has no rows of."""
        raise NotImplementedError

    @classmethod
    def load(cls, folder: str | Path, *, multi_label: bool = False) -> Head | None:
        """The head saved in ``folder`` with its statistics (to continue it; ``can_continue`` False when they are
        missing), or ``None`` if it has none. ``multi_label``: the model's kind."""
        return None

    @classmethod
    def load_inference(cls, folder: str | Path) -> Head | None:
        """What inference needs of the head saved in ``folder`` (no statistics), or ``None`` if it has none."""
        return None

    @property
    def can_continue(self) -> bool:
        """Whether this head has the statistics a later increment adds to."""
        return True

    @classmethod
    def start_refusal(cls, *, every_label: bool, keeps_rows: bool, multi_label: bool,
                      inference_only: bool) -> str | None:
        """Why this head cannot start in an increment (``None``: it can), and what would enable it: one line, after
        which the Linear answers. By default a head starts only where the rows hold every label (a base): a later start
        would lack every earlier increment's rows."""
        if every_label:
            return None
        if inference_only:
            return (f"The model's {cls.title} cannot continue: its statistics file was not saved (or pushed) with it. "
                    f"This increment answers with the Linear and drops the {cls.title}; start from the folder it was "
                    "trained in to keep it.")
        return (f"The model has no {cls.title} (its base was trained without it) and one cannot start now: it would "
                "lack every earlier increment's rows. This increment answers with the Linear; a base trained with "
                f"`head={cls.name}` has it from the start.")

    def save(self, folder: str | Path, *, statistics: bool = True) -> list[Path]:
        """Write the head's files into ``folder`` (``statistics=False``: only what inference needs)."""
        return []

    def check_model(self, model: nn.Module, location: ClassifierHead) -> None:
        """Raise when the head belongs to another model (sizes that cannot match)."""

    # -- one frozen pass ------------------------------------------------------------------------------------------

    def capture(self, model: nn.Module, location: ClassifierHead) -> Capture:
        """How the frozen pass reads this head's features (:attr:`feature_key`)."""
        if self.feature_key != HEAD_INPUTS:
            raise ConfigError(f"The head {self.name!r} reads {self.feature_key!r} but defines no capture for it.")
        return HeadInputsCapture(model, location)

    def begin(self, rows: PassRows) -> None:
        """Before the pass: room for the increment's labels, an empty share for this process's rows."""
        self.rows = rows

    def feed(self, rows: list[int], features: torch.Tensor, targets: torch.Tensor) -> None:
        """A batch of the pass, as it comes: the statistics take the increment's own rows only (:meth:`add`)."""
        own = [i for i, row in enumerate(rows) if row < self.rows.own]
        if len(own) == len(rows):
            self.add(rows, features, targets)
        elif own:
            self.add([rows[i] for i in own], features[own], targets[own])

    def add(self, rows: list[int], features: torch.Tensor, targets: torch.Tensor) -> None:
        """Rows of the increment: their ids (this process's), features (CPU float32) and targets (label ids, or for
        a multi-label model 0/1 rows, float64, zero for labels the rows do not annotate)."""
        raise NotImplementedError

    def end(self) -> None:
        """After the pass: every process's rows combined into the statistics."""

    def solve(self, model: nn.Module, location: ClassifierHead) -> dict[int, float]:
        """Solve from the statistics and put the result on the model; returns the multi-label decision thresholds
        (logits) it folded in, by label id."""
        raise NotImplementedError

    # -- inference ------------------------------------------------------------------------------------------------

    def logits(self, features: torch.Tensor, linear_logits: torch.Tensor) -> torch.Tensor:
        """The head's logits from its features (the Linear's logits of the same rows beside them)."""
        raise NotImplementedError

    def attach(self, model: nn.Module, location: ClassifierHead, *, fewer_labels_ok: bool = False) -> None:
        """Make the model answer with this head (a forward hook that replaces the Linear's output)."""
        detach_answering_hooks(location.linear)
        location.linear.register_forward_hook(AnsweringHook(self, fewer_labels_ok))

    @classmethod
    def detach(cls, model: nn.Module, location: ClassifierHead) -> Head | None:
        """Remove this kind of head from the model; returns it (or ``None`` when none was attached)."""
        return detach_answering_hooks(location.linear, cls)

    @classmethod
    def attached(cls, model: nn.Module, location: ClassifierHead) -> Head | None:
        """The head of this kind attached to the model, or ``None``."""
        found = [hook.head for hook in location.linear._forward_hooks.values()
                 if isinstance(hook, AnsweringHook) and isinstance(hook.head, cls)]
        return found[-1] if found else None

    # -- what people read -----------------------------------------------------------------------------------------

    def lineage_entry(self, id2label: dict[int, str]) -> dict[str, Any]:
        """The head's entry in the lineage record of the increment that solved it (key :attr:`lineage_key`)."""
        return {}

    @classmethod
    def describe_files(cls, files: set[str]) -> str | None:
        """One line for ``hf-incr info`` from a model's file names (no weights read), or ``None`` if it has none."""
        if not cls.files or cls.files[0] not in files:
            return None
        with_statistics = all(name in files for name in cls.statistics_files)
        return f"yes, {'with' if with_statistics else 'without'} its statistics"

    @classmethod
    def card_section(cls, folder: Path, config, model_id: str) -> str | None:
        """The Markdown the model card shows about the head saved in ``folder`` (``None``: the folder has none)."""
        return None

    @classmethod
    def card_summary(cls, folder: Path, config) -> dict[str, Any] | None:
        """What the model card says of the head saved in ``folder`` (``None``: the folder has none), from its files'
        metadata and sizes."""
        return None


class AnsweringHook:
    """Forward hook on the output Linear: the Linear's output replaced by a head's logits of the Linear's inputs."""

    def __init__(self, head: Head, fewer_labels_ok: bool = False):
        self.head, self.fewer_labels_ok = head, fewer_labels_ok

    def __call__(self, module: nn.Linear, args, output: torch.Tensor) -> torch.Tensor:
        features = args[0]
        flat = features.reshape(-1, features.shape[-1])
        logits = self.head.logits(flat.float(), output.reshape(-1, output.shape[-1]))
        missing = module.out_features - logits.shape[-1]
        if missing and not (self.fewer_labels_ok and missing > 0):
            raise ConfigError(f"The head {self.head.name!r} has {logits.shape[-1]} labels but the model's head has "
                              f"{module.out_features}: refit it with an increment, or detach it.")
        if missing:
            logits = torch.cat([logits, logits.new_full((logits.shape[0], missing), -1e4)], dim=1)
        return logits.reshape(*output.shape).to(output.dtype)


def detach_answering_hooks(linear: nn.Linear, kind: type[Head] | None = None) -> Head | None:
    """Remove the :class:`AnsweringHook` of ``kind`` (any head when None) from ``linear``; returns its head."""
    found = [(key, hook) for key, hook in linear._forward_hooks.items()
             if isinstance(hook, AnsweringHook) and (kind is None or isinstance(hook.head, kind))]
    for key, _ in found:
        del linear._forward_hooks[key]
    return found[-1][1].head if found else None


HEADS: dict[str, type[Head]] = {}


def register_head(cls: type[Head]) -> type[Head]:
    """Make a head known to the recipe (``IncrementConfig(head=cls.name)``), to loading, the Hub push, ``info`` and the
    card. Usable as a class decorator."""
    if not cls.name:
        raise ConfigError(f"{cls.__name__} has no `name`; set the class attribute to the name users pass as `head`.")
    HEADS[cls.name] = cls
    return cls


def extra_heads() -> list[type[Head]]:
    """The registered heads with files of their own (every head but the Linear's closed form)."""
    return [cls for cls in HEADS.values() if cls.files]


def head_files() -> list[str]:
    """Every file name a registered head writes or wrote (for the Hub's mirroring and ``info``)."""
    names = [name for cls in HEADS.values() for name in (*cls.files, *cls.statistics_files, *cls.legacy_files)]
    return names + [cls.modeling_file.name for cls in HEADS.values() if cls.modeling_file]


AUTO_CLASS = "AutoModelForSequenceClassification"


def ship_inference_code(config, heads: dict[str, Head]) -> list[Path]:
    """Point ``config.auto_map`` at the answering head's inference code (or remove hf_incr's entry when no head ships
    code), and return the code files to copy beside the weights: ``from_pretrained(..., trust_remote_code=True)``
    then answers with the head. An ``auto_map`` entry of the user's own (a remote-code model) is left alone."""
    ours = {cls.modeling_file.stem for cls in HEADS.values() if cls.modeling_file}
    auto_map = dict(getattr(config, "auto_map", None) or {})
    current = auto_map.get(AUTO_CLASS)
    if current is not None and current.split(".")[0] not in ours:
        return []  # the model's own remote code: hf_incr does not replace it
    shipping = [head for head in heads.values() if head.modeling_file and head.auto_class]
    auto_map.pop(AUTO_CLASS, None)
    if shipping:
        auto_map[AUTO_CLASS] = f"{shipping[-1].modeling_file.stem}.{shipping[-1].auto_class}"
    if auto_map:
        config.auto_map = auto_map
    elif hasattr(config, "auto_map"):
        del config.auto_map
    return [shipping[-1].modeling_file] if shipping else []
