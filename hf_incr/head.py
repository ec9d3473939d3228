"""Head surgery: find the output projection of a ``*ForSequenceClassification`` model and grow it in place.

The output projection is the ``nn.Linear`` whose output *is* the logits. It is found from a short table of
attribute paths used by transformers' classification models, and, for any other class, by one structural probe
(the single Linear outside the encoder stack whose ``out_features`` equals ``config.num_labels``).
"""

from __future__ import annotations

import math
import unicodedata
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers.utils import logging

from .errors import HeadConfigMismatchError, HeadNotFoundError, LabelError, UnsupportedModelError
from .layers import encoder_layer_paths

logger = logging.get_logger(__name__)

# Where transformers' classification models keep the Linear that outputs the logits. Order matters: a
# RoBERTa-style `classifier` is a module holding `dense` and `out_proj`, so the deeper path is tried first.
KNOWN_HEAD_PATHS: tuple[str, ...] = (
    "classifier.out_proj",  # RoBERTa, XLM-RoBERTa, ELECTRA, MPNet, Camembert, Data2VecText, ...
    "classification_head.out_proj",  # BART, mBART, PLBart, ...
    "classifier",  # BERT, DistilBERT, DeBERTa(-v2), ALBERT, ModernBERT, ...
    "score",  # GPT-2, GPT-Neo(X), Llama, Mistral, Qwen2, Gemma, Phi, ...
    "logits_proj",
    "out_proj",
)

InitMethod = Literal["default", "zeros", "mean", "imprint"]
INIT_METHODS: tuple[str, ...] = ("default", "zeros", "mean", "imprint")


@dataclass(frozen=True)
class ClassifierHead:
    """The output projection of a classification model, found once (:func:`find_classifier_head`) and passed to
    everything that reads or changes it: ``getattr(parent, name) is linear`` and ``path`` is its dotted name.

    After :func:`add_labels` the grown Linear replaces ``linear`` in the model: find the head again (or use
    :meth:`refreshed`) rather than keep a stale one.
    """

    path: str
    parent: nn.Module
    name: str
    linear: nn.Linear

    def refreshed(self) -> ClassifierHead:
        """The same location with the Linear the model holds now (e.g. after the head grew)."""
        return ClassifierHead(self.path, self.parent, self.name, getattr(self.parent, self.name))

    def inputs(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """What this Linear receives for ``batch``, one vector per text (see :func:`head_inputs`)."""
        return _captured_inputs(model, self.linear, batch)


# The name of earlier releases.
HeadLocation = ClassifierHead


def _get_submodule_or_none(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _locate(model: nn.Module, path: str) -> ClassifierHead:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    return ClassifierHead(path=path, parent=parent, name=name, linear=getattr(parent, name))


def _num_labels_of(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    id2label = getattr(config, "id2label", None)
    return len(id2label) if id2label else None


def find_classifier_head(model: nn.Module, head_path: str | None = None) -> ClassifierHead:
    """Return the :class:`ClassifierHead` of the Linear that produces the model's logits.

    Args:
        model: A loaded ``*ForSequenceClassification`` model (or any module with a ``config.id2label``).
        head_path: Dotted path of the output Linear (e.g. ``"classifier.out_proj"``), for models the table and
            the probe cannot decide on.

    Raises:
        HeadNotFoundError: no Linear head was found, or several candidates fit; the message lists them.
    """
    if head_path is not None:
        module = _get_submodule_or_none(model, head_path)
        if not isinstance(module, nn.Linear):
            found = "nothing" if module is None else type(module).__name__
            raise HeadNotFoundError(
                f"`head_path={head_path!r}` should name an `nn.Linear` inside {type(model).__name__}, but it names "
                f"{found}. Pass the dotted name of the Linear whose output is the logits (see "
                "`model.named_modules()`)."
            )
        return _locate(model, head_path)

    num_labels = _num_labels_of(model)
    for path in KNOWN_HEAD_PATHS:
        module = _get_submodule_or_none(model, path)
        if isinstance(module, nn.Linear) and (num_labels is None or module.out_features == num_labels):
            return _locate(model, path)

    # A head present in the table but sized unlike config.id2label is a corrupted checkpoint, not a missing head.
    # Checked before probing: otherwise a config whose label count happens to equal the hidden size would let the
    # probe pick (and grow) a hidden-to-hidden Linear such as BERT's pooler.
    for path in KNOWN_HEAD_PATHS:
        module = _get_submodule_or_none(model, path)
        if isinstance(module, nn.Linear):
            raise HeadConfigMismatchError(
                f"The head `{path}` of {type(model).__name__} has {module.out_features} outputs but `config.id2label` "
                f"has {num_labels} labels. Fix the config (or reload the checkpoint it belongs to) so that both "
                "agree before adding labels."
            )

    # Probe: the Linear layers sized like the label space, outside the repeated encoder blocks.
    layer_prefixes = tuple(f"{p}." for p in encoder_layer_paths(model))
    candidates = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and module.out_features == num_labels
        and not name.startswith(layer_prefixes)
    ]
    if len(candidates) == 1:
        logger.info("Classification head found by probing: `%s`.", candidates[0])
        return _locate(model, candidates[0])

    tried = ", ".join(f"`{p}`" for p in KNOWN_HEAD_PATHS)
    if not candidates:
        raise HeadNotFoundError(
            f"No classification head found in {type(model).__name__}: tried {tried} and found no other `nn.Linear` "
            f"with {num_labels} outputs. Load the model with `AutoModelForSequenceClassification`, or pass "
            "`head_path=` naming the Linear whose output is the logits."
        )
    raise HeadNotFoundError(
        f"Several Linear layers of {type(model).__name__} could be the classification head: {candidates}. "
        f"Pass `head_path=` naming the one whose output is the logits, e.g. `head_path={candidates[-1]!r}`."
    )


def peft_description(model, walk: bool = True) -> str | None:
    """How ``model`` involves PEFT (a ``PeftModel`` wrapper, adapters loaded into it, with ``walk`` also adapter
    layers injected into its modules), or ``None`` for a plain model. Found from class modules, so ``peft`` need not
    be installed."""
    for cls in type(model).__mro__:
        if cls.__module__.split(".")[0] == "peft":
            return f"a PEFT model (`{type(model).__name__}`)"
    if getattr(model, "_hf_peft_config_loaded", False):
        return "a model with PEFT adapters loaded into it (`model.load_adapter(...)` / `model.add_adapter(...)`)"
    named_modules = getattr(model, "named_modules", None)
    if walk and callable(named_modules):
        for name, module in named_modules():
            if type(module).__module__.split(".")[0] == "peft":
                return f"a model with PEFT adapter layers injected (`{name}` is a `{type(module).__name__}`)"
    return None


def check_not_peft(model, action: str = "add labels to", walk: bool = True) -> None:
    """Refuse a model wrapped or modified by PEFT: its head is a wrapper's copy (``modules_to_save``) or sits behind
    the wrapper, so growing "the head" would grow the wrong module and leave config and weights disagreeing.

    ``walk=False`` checks only the model object itself (no walk over its modules: ``add_labels`` touches nothing but
    the head)."""
    found = peft_description(model, walk)
    if found:
        raise UnsupportedModelError(
            f"hf_incr can {action} a plain transformers `*ForSequenceClassification` model, but got {found}. Growing "
            "the head through an adapter wrapper would grow the wrapper or a copy of the head, not the head that is "
            "saved. Merge the adapter into the weights first: `model = model.merge_and_unload()` on the `PeftModel` "
            "(for an adapter loaded with `model.load_adapter(...)`, load it with "
            "`peft.PeftModel.from_pretrained(model, adapter_path)` and merge that); then add labels, and attach a new "
            "adapter afterwards if you want one."
        )


def check_new_label_names(model: nn.Module, new_labels: Sequence[str]) -> list[str]:
    """The new label names as a list, after checking them against the model's labels (raises :class:`LabelError`);
    warns about names that differ from existing ones only by case or whitespace."""
    if isinstance(new_labels, str):
        raise LabelError(
            f"`new_labels` should be a list of label names, but got the string {new_labels!r}. "
            f"Wrap it in a list: `new_labels=[{new_labels!r}]`."
        )
    labels = list(new_labels)
    if not labels:
        raise LabelError("`new_labels` is empty: pass at least one new label name.")
    bad = [label for label in labels if not isinstance(label, str) or not label.strip()]
    if bad:
        raise LabelError(
            f"Label names must be non-empty strings, but `new_labels` contains {bad!r}. "
            "Convert ids to names first (e.g. with `ClassLabel.int2str`)."
        )
    # Control characters (newlines, tabs, NUL) would break the card's tables, CSV exports and logs; any other
    # character (emoji, CJK, right-to-left scripts, slashes, `..`) is fine: no path is ever built from a label name.
    control = [label for label in labels if any(unicodedata.category(char) == "Cc" for char in label)]
    if control:
        raise LabelError(
            f"Label names must be single-line text without control characters, but `new_labels` contains "
            f"{control[:5]!r}. Replace them, e.g. `' '.join(name.split())`."
        )
    duplicates = sorted(label for label, count in Counter(labels).items() if count > 1)
    if duplicates:
        raise LabelError(f"`new_labels` names {duplicates} more than once; pass each new label once.")
    known = set(model.config.label2id or {}) | set((model.config.id2label or {}).values())
    already = [label for label in labels if label in known]
    if already:
        raise LabelError(
            f"The model already has the label(s) {already}. Pass only labels it does not know yet; "
            f"its labels are {list(model.config.id2label.values())}."
        )
    # Names that differ only by case or surrounding whitespace are allowed (data sets do use them, e.g.
    # BANKING77's `Refund_not_showing_up`) but are usually a typo: warn, naming both (also for two new labels).
    normalised: dict[str, str] = {}
    for name in [*sorted(known, key=str), *labels]:
        key = " ".join(str(name).split()).casefold()
        if key in normalised and normalised[key] != name and name in labels:
            other = normalised[key]
            kind = "the new label" if other in labels else "the label"
            warnings.warn(
                f"The new label {name!r} differs from {kind} {other!r} only by case or whitespace; "
                "they will be two separate labels. Rename one if they mean the same thing.",
                UserWarning,
                stacklevel=3,
            )
        normalised.setdefault(key, name)
    return labels


def check_head_matches_config(model: nn.Module, head: ClassifierHead) -> None:
    """``config.id2label`` numbers the labels 0..n-1, ``label2id`` is its inverse, and the head has n outputs."""
    config = model.config
    id2label = config.id2label or {}
    ids = sorted(int(i) for i in id2label)
    if ids != list(range(len(ids))):
        raise HeadConfigMismatchError(
            f"`config.id2label` should map the ids 0..{len(ids) - 1} but has the ids {ids}. "
            "Repair `config.id2label` so that its keys are consecutive ids starting at 0."
        )
    label2id = config.label2id or {}
    inverse = {name: int(i) for i, name in id2label.items()}
    if {k: int(v) for k, v in label2id.items()} != inverse:
        raise HeadConfigMismatchError(
            "`config.label2id` is not the inverse of `config.id2label`. Set "
            "`model.config.label2id = {name: i for i, name in model.config.id2label.items()}` first."
        )
    if head.linear.out_features != len(id2label):
        raise HeadConfigMismatchError(
            f"The head `{head.path}` has {head.linear.out_features} outputs but `config.id2label` has "
            f"{len(id2label)} labels. Fix the config (or reload the checkpoint it belongs to) so that both agree."
        )


def head_inputs(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    head_path: str | None = None,
) -> torch.Tensor:
    """Return what the output projection receives for ``batch`` (e.g. BERT's pooler output), in eval mode.

    This is the representation the classifier's rows are dot-multiplied with, captured by a forward pre-hook, so it
    works for any architecture without knowing how its head pools tokens. The model's train/eval mode is restored.
    """
    return find_classifier_head(model, head_path).inputs(model, batch)


@torch.no_grad()
def _captured_inputs(model: nn.Module, linear: nn.Linear, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    handle = linear.register_forward_pre_hook(lambda _module, args: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()
    try:
        model(**batch)
    finally:
        handle.remove()
        model.train(was_training)
    features = captured[-1]
    if features.dim() == 3:
        # Decoder-style heads (GPT-2, Llama) score every position and then pick the last real token; the
        # representation of a sequence is that token's hidden state.
        features = last_token(features, batch, model)
    return features


def last_token(features: torch.Tensor, batch: Mapping[str, torch.Tensor], model: nn.Module) -> torch.Tensor:
    pad_id = getattr(model.config, "pad_token_id", None)
    input_ids = batch.get("input_ids")
    if input_ids is None or pad_id is None:
        return features[:, -1]
    non_pad = (input_ids != pad_id).int()
    last = (non_pad * torch.arange(input_ids.shape[-1], device=input_ids.device)).argmax(-1)
    return features[torch.arange(features.shape[0], device=features.device), last]


def _default_rows(model: nn.Module, old: nn.Linear, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    template = nn.Linear(
        old.in_features, count, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype
    )
    init_weights = getattr(model, "_init_weights", None)
    if callable(init_weights):
        # The model's own initialiser (e.g. normal(0, initializer_range) for BERT), as for a freshly built head.
        init_weights(template)
    return template.weight.detach(), None if template.bias is None else template.bias.detach()


def _imprinted_rows(
    model: nn.Module,
    old: nn.Linear,
    labels: Sequence[str],
    examples: Mapping[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    missing = [label for label in labels if label not in examples]
    if missing:
        raise LabelError(
            f"`init='imprint'` needs example representations for every new label, but none were given for "
            f"{missing}. Pass `examples={{label: head_inputs_tensor, ...}}` for each of them."
        )
    # Reductions accumulate in float32 via `dtype=` rather than `.float()`, which would copy a half-precision head.
    old_norm = (
        torch.linalg.vector_norm(old.weight.detach(), dim=1, dtype=torch.float32).mean()
        if old.out_features
        else torch.tensor(1.0)
    )
    rows = []
    for label in labels:
        if not isinstance(examples[label], torch.Tensor):
            raise LabelError(
                f"Examples for {label!r} should be a tensor of head inputs, got {type(examples[label]).__name__}. "
                "Compute them with `hf_incr.head_inputs(model, batch)`."
            )
        feats = examples[label].detach().float().to(old.weight.device)
        if feats.dim() != 2 or feats.shape[-1] != old.in_features or feats.shape[0] == 0:
            raise LabelError(
                f"Examples for {label!r} should be a (n, {old.in_features}) tensor of head inputs with n >= 1, "
                f"got shape {tuple(feats.shape)}. Compute them with `hf_incr.head_inputs(model, batch)`."
            )
        mean = torch.nn.functional.normalize(feats, dim=-1).mean(0)
        rows.append(torch.nn.functional.normalize(mean, dim=0) * old_norm)
    weight = torch.stack(rows).to(old.weight.dtype)
    bias = None
    if old.bias is not None:
        fill = old.bias.detach().mean(dtype=torch.float32) if old.out_features else torch.tensor(0.0)
        bias = torch.full((len(labels),), float(fill), device=old.weight.device, dtype=old.bias.dtype)
    return weight, bias


def _new_rows(
    model: nn.Module,
    old: nn.Linear,
    labels: Sequence[str],
    init: str,
    examples: Mapping[str, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    count = len(labels)
    if init == "default":
        return _default_rows(model, old, count)
    if init == "zeros":
        weight = torch.zeros(count, old.in_features, device=old.weight.device, dtype=old.weight.dtype)
        bias = None if old.bias is None else torch.zeros(count, device=old.bias.device, dtype=old.bias.dtype)
        return weight, bias
    if init == "mean":
        if old.out_features == 0:
            return _default_rows(model, old, count)
        # float32 accumulation without a float32 copy of the whole head (`.float()` copies a bf16/fp16 head).
        weight = old.weight.detach().mean(0, keepdim=True, dtype=torch.float32).expand(count, -1).to(old.weight.dtype)
        bias = (
            None if old.bias is None else old.bias.detach().mean(dtype=torch.float32).expand(count).to(old.bias.dtype)
        )
        return weight, bias  # broadcast views: `_grown_linear` copies them into the grown head
    if examples is None:
        raise LabelError(
            "`init='imprint'` builds the new rows from examples of each new label: pass "
            "`examples={label: head_inputs_tensor}` (see `hf_incr.head_inputs`)."
        )
    return _imprinted_rows(model, old, labels, examples)


def _grown_rows(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``cat([old, new])`` written straight into one new tensor: the old rows are copied bit for bit and no
    intermediate the size of the head is made."""
    grown = torch.empty((old.shape[0] + new.shape[0], *old.shape[1:]), dtype=old.dtype, device=old.device)
    grown[: old.shape[0]].copy_(old.detach())
    grown[old.shape[0] :].copy_(new.detach())
    return grown


def _grown_linear(old: nn.Linear, new_weight: torch.Tensor, new_bias: torch.Tensor | None) -> nn.Linear:
    """A new Linear holding the old rows then the new ones, with the old one's dtype, device, trainability, mode.

    Built on the meta device and then given its tensors, so the grown head is allocated once and never initialised
    only to be overwritten: the cost is one copy of the head, whatever the size of the rest of the model.
    """
    grown = nn.Linear(
        old.in_features, old.out_features + new_weight.shape[0], bias=old.bias is not None, device="meta"
    )
    with torch.no_grad():
        grown.weight = nn.Parameter(_grown_rows(old.weight, new_weight), requires_grad=old.weight.requires_grad)
        if old.bias is not None:
            grown.bias = nn.Parameter(_grown_rows(old.bias, new_bias), requires_grad=old.bias.requires_grad)
    grown.train(old.training)
    return grown


def add_labels(
    model: nn.Module,
    new_labels: Sequence[str],
    *,
    init: InitMethod = "default",
    examples: Mapping[str, torch.Tensor] | None = None,
    head_path: str | None = None,
    head: ClassifierHead | None = None,
) -> list[int]:
    """Grow the classification head of ``model`` **in place** to cover ``new_labels`` and return their ids.

    The old rows of the head's weight and bias are kept bit for bit (dtype, device and ``requires_grad`` too), so
    the old labels' logits are unchanged for any input. ``config.id2label``, ``config.label2id``,
    ``config.num_labels`` and a cached ``model.num_labels`` are updated, new labels being appended after the old
    ones; ``config.problem_type`` is kept, so single- and multi-label models keep their loss. The grown model
    saves with ``save_pretrained`` and loads with plain ``AutoModelForSequenceClassification.from_pretrained``.

    Args:
        model: A loaded ``*ForSequenceClassification`` model. It is modified in place.
        new_labels: Names of the labels to add, in the order their ids should be given.
        init: How the new rows start: ``"default"`` (the model's own initialiser), ``"zeros"``, ``"mean"`` (the
            mean of the old rows) or ``"imprint"`` (the normalised mean head input of a few examples of each new
            label, scaled to the old rows' mean norm; needs ``examples``).
        examples: For ``init="imprint"``: ``{label: tensor (n, in_features)}`` of head inputs, as returned by
            :func:`head_inputs`.
        head_path: Dotted path of the output Linear, for models whose head is neither in the table nor found by
            the probe.
        head: The model's :class:`ClassifierHead`, when the caller has found it already.

    Returns:
        The ids given to ``new_labels``, in order.

    Raises:
        LabelError: ``new_labels`` is empty, has duplicates or non-strings, or names a label the model has.
        HeadNotFoundError: no classification head could be found.
        HeadConfigMismatchError: the head's size disagrees with ``config.id2label``.

    Nothing is modified when an error is raised.
    """
    if init not in INIT_METHODS:
        raise LabelError(f"`init` should be one of {list(INIT_METHODS)}, got {init!r}.")
    if getattr(model, "config", None) is None or not getattr(model.config, "id2label", None):
        raise HeadNotFoundError(
            f"{type(model).__name__} has no `config.id2label`, so it is not a classification model. Load it with "
            "`AutoModelForSequenceClassification.from_pretrained(...)`."
        )
    check_not_peft(model, "add labels to", walk=False)
    head = head or find_classifier_head(model, head_path)
    check_head_matches_config(model, head)
    labels = check_new_label_names(model, new_labels)
    old = head.linear
    new_weight, new_bias = _new_rows(model, old, labels, init, examples)
    grown = _grown_linear(old, new_weight, new_bias)
    setattr(head.parent, head.name, grown)

    first_id = old.out_features
    id2label = {int(i): name for i, name in model.config.id2label.items()}
    id2label.update({first_id + k: name for k, name in enumerate(labels)})
    model.config.id2label = id2label
    model.config.label2id = {name: i for i, name in id2label.items()}
    if hasattr(model, "num_labels"):
        # BERT-family models cache num_labels and read it in their loss.
        model.num_labels = len(id2label)
    new_ids = list(range(first_id, first_id + len(labels)))
    logger.info("Added %d label(s) to `%s`: %s", len(labels), head.path, dict(zip(labels, new_ids)))
    return new_ids


def align_weights(
    model: nn.Module, new_ids: Sequence[int], head_path: str | None = None, head: ClassifierHead | None = None
) -> float:
    """Weight aligning (Zhao et al., 2020): rescale the rows of ``new_ids`` to the old rows' mean norm, in place.

    Bias correction after an increment: a head trained mostly on new data grows larger new rows, which pushes
    predictions toward the new labels. Returns the factor applied (``nan`` when there are no old rows).
    """
    linear = (head or find_classifier_head(model, head_path)).linear
    new = sorted({int(i) for i in new_ids})
    old = [i for i in range(linear.out_features) if i not in set(new)]
    if not old or not new:
        return math.nan
    norms = linear.weight.detach().float().norm(dim=1)
    factor = float(norms[old].mean() / norms[new].mean().clamp_min(1e-12))
    with torch.no_grad():
        linear.weight[new] *= factor
        if linear.bias is not None:
            linear.bias[new] *= factor
    return factor
