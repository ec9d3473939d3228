"""The kernel LDA head of hf_incr at inference: what turns a transformers classifier's encoder states into the head's
logits. Self-contained (torch and safetensors only), so that the same bytes serve ``hf_incr.load_model`` and ship
beside a model's weights.

The head reads the encoder's top ``layers`` layers, each pooled (the attention-mask weighted mean, or the first
token) and, when ``normalize``, L2-normalised, concatenated (:class:`PooledCapture`). Each of ``num_members`` members
expands that vector ``x`` into random Fourier features ``z(x) = sqrt(2 / D) cos(x W + b)`` (none when
``num_features`` is 0) and scores them with its solved LDA rows; the members' probabilities are averaged (softmax,
or per-label sigmoids for a multi-label head). It is attached with forward hooks, so the model's state dict is
untouched: one hook on the encoder (``model.base_model``) pools its output with the attention mask it was called
with, one on each lower block hands its output over, and one on the output Linear replaces the Linear's logits by
the head's. Labels listed in ``linear_labels`` (a multi-label classifier trained elsewhere) keep the Linear's own
logits.

File: ``hf_incr_kernel_lda.safetensors`` (format ``hf_incr.kernel_lda.inference``): per member ``projection`` /
``offset`` (with random features), ``weight`` and ``bias``, float32; the settings in the metadata (``config``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

import torch
from safetensors import safe_open
from torch import nn

KERNEL_FILENAME = "hf_incr_kernel_lda.safetensors"
INFERENCE_FORMAT = "hf_incr.kernel_lda.inference"
FORMAT_VERSION = "1"


@dataclass
class KernelConfig:
    """What defines a kernel head at inference, apart from its tensors (stored in its file's metadata)."""

    in_features: int
    num_features: int = 5000
    num_members: int = 1
    bandwidth: float | None = None
    bandwidth_factor: float = 1.0
    seed: int = 0
    normalize: bool = True
    pooling: str = "mean"  # "mean" or "cls"
    layers: int = 1
    combine: str = "probs"  # members: averaged probabilities ("probs") or averaged log-probabilities ("logits")
    multi_label: bool = False
    labels: list[str] = field(default_factory=list)
    # Multi-label: label ids whose logits stay the model's own Linear's (a classifier trained elsewhere).
    linear_labels: list[int] = field(default_factory=list)
    # Dotted paths, inside ``model.base_model``, of the blocks below the top one whose outputs are pooled too, and of
    # the output Linear inside the model (written by hf_incr; files written before they existed lack them).
    block_paths: list[str] = field(default_factory=list)
    linear_path: str | None = None
    # Beside the kept rows of a single-label classifier trained elsewhere (:class:`BesideKeptClassifier`): "gate" or
    # "fuse", and the number of the kept Linear's labels.
    beside: str = ""
    num_old: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> KernelConfig:
        """From a file's settings; settings this version does not read (e.g. the trainer's) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        values = asdict(self)
        for key in ("linear_labels", "block_paths", "beside", "num_old"):
            if not values[key]:
                del values[key]  # files read by versions without these fields load as before
        if values["linear_path"] is None:
            del values["linear_path"]
        return values


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """One vector per text from hidden states ``(batch, tokens, hidden)``: the attention-mask weighted mean
    (``mean``) or the first token's state (``cls``); float32."""
    hidden = hidden.float()
    if mode == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(1)
    mask = attention_mask[:, : hidden.shape[1]].to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class PooledCapture:
    """Forward hook (with kwargs) on the encoder: keeps the head's input vector of the last batch in :attr:`pooled`.

    With ``layers > 1`` the vector is the concatenation, bottom to top, of the pooled outputs of the top ``layers``
    layers (the blocks below the top one hand theirs over through :class:`LayerOutput` hooks; the top one is the
    encoder's last hidden state), each L2-normalised first when ``normalize`` so that no layer outweighs another."""

    def __init__(self, mode: str, layers: int = 1, normalize: bool = False):
        self.mode, self.layers, self.normalize = mode, layers, normalize
        self.lower: list[torch.Tensor] = []  # this forward pass's outputs of the blocks below the top one
        self.pooled: torch.Tensor | None = None

    def __call__(self, module, args, kwargs, output) -> None:
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
            mask = args[1]  # BERT-style forward(input_ids, attention_mask, ...) called positionally
        # The latest outputs: a pass that failed half-way may have left some of its own behind.
        states, self.lower = [*self.lower[len(self.lower) - (self.layers - 1) :], hidden], []
        if len(states) != self.layers:
            raise ValueError(
                f"The kernel LDA head pools the top {self.layers} layers but saw {len(states)} in this forward pass. "
                "Attach it with `attach_kernel_head` (which hooks those layers), not by hand."
            )
        pooled = [pool(state, mask, self.mode) for state in states]
        if self.layers > 1 and self.normalize:
            pooled = [nn.functional.normalize(vector, dim=1) for vector in pooled]
        self.pooled = torch.cat(pooled, dim=1)

    def read(self) -> torch.Tensor:
        """The vector of the last forward pass (the frozen pass reads it after each batch)."""
        if self.pooled is None:
            raise ValueError("No forward pass of the encoder was seen: call the model, not its output Linear.")
        return self.pooled


class LayerOutput:
    """Forward hook on one of the blocks below the top one: hands its output to the :class:`PooledCapture`."""

    def __init__(self, capture: PooledCapture):
        self.capture = capture

    def __call__(self, module, args, output) -> None:
        self.capture.lower.append(output[0] if isinstance(output, tuple) else output)


def base_model_of(model: nn.Module) -> nn.Module:
    """The encoder whose hidden states are pooled (``model.base_model``: ``bert``, ``roberta``, ``model``, ...)."""
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        raise ValueError(
            f"The kernel LDA head pools the encoder's hidden states, but {type(model).__name__} exposes no separate "
            "encoder (`model.base_model`). Expected a transformers `*ForSequenceClassification` model."
        )
    return base


def capture_pooled(model: nn.Module, config: KernelConfig) -> tuple[PooledCapture, list]:
    """Hook ``model``'s encoder so that every forward pass leaves the head's input vector in the returned capture;
    also returns the hooks' handles (``handle.remove()`` undoes them)."""
    base = base_model_of(model)
    capture = PooledCapture(config.pooling, config.layers, config.normalize)
    handles = [base.register_forward_hook(capture, with_kwargs=True)]
    if config.layers > 1:
        if len(config.block_paths) != config.layers - 1:
            raise ValueError(
                f"The kernel LDA head pools the top {config.layers} layers, but its file names "
                f"{len(config.block_paths)} block(s) below the top one. Save the model again with hf_incr."
            )
        handles += [base.get_submodule(path).register_forward_hook(LayerOutput(capture))
                    for path in config.block_paths]
    return capture, handles


class RandomFourierFeatures:
    """``z(x) = sqrt(2 / D) cos(x @ weight + offset)``, kept in float32."""

    def __init__(self, weight: torch.Tensor, offset: torch.Tensor):
        self.weight = weight.to(torch.float32).contiguous()
        self.offset = offset.to(torch.float32).contiguous()

    @property
    def num_features(self) -> int:
        return self.weight.shape[1]

    def __call__(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The features of ``x`` (rows, in_features) computed in ``dtype`` (float32 for inference; the statistics use
        float64, so that a row's features do not depend on the batch it came in)."""
        weight, offset = self.weight.to(dtype), self.offset.to(dtype)
        return math.sqrt(2.0 / self.num_features) * torch.cos(x.to(dtype) @ weight + offset)

    def to(self, device) -> RandomFourierFeatures:
        self.weight, self.offset = self.weight.to(device), self.offset.to(device)
        return self


def prepare(x: torch.Tensor, normalize: bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The pooled vector as the members read it (L2-normalised when ``normalize``)."""
    x = x.to(dtype)
    return nn.functional.normalize(x, dim=1) if normalize else x


class KernelClassifier:
    """What inference needs: the members' projections and solved rows. Calling it on pooled vectors gives logits
    (the log of the members' averaged probabilities; multi-label: the logit of their averaged sigmoids)."""

    def __init__(self, config: KernelConfig, projections: list[RandomFourierFeatures | None],
                 weights: list[torch.Tensor], biases: list[torch.Tensor]):
        self.config, self.projections = config, projections
        self.weights = [w.to(torch.float32).contiguous() for w in weights]
        self.biases = [b.to(torch.float32).contiguous() for b in biases]

    @property
    def num_labels(self) -> int:
        return self.weights[0].shape[0]

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    def to(self, device) -> KernelClassifier:
        """Move every tensor to ``device`` (in place; returns self), e.g. the encoder's GPU."""
        for projection in self.projections:
            if projection is not None:
                projection.to(device)
        self.weights = [w.to(device) for w in self.weights]
        self.biases = [b.to(device) for b in self.biases]
        return self

    def member_logits(self, pooled: torch.Tensor) -> list[torch.Tensor]:
        """Each member's LDA scores (rows, num_labels)."""
        if pooled.ndim != 2 or pooled.shape[1] != self.config.in_features:
            raise ValueError(f"The kernel LDA head reads {self.config.in_features}-dimensional pooled vectors, got "
                             f"shape {tuple(pooled.shape)}.")
        x = prepare(pooled, self.config.normalize)
        return [(projection(x) if projection is not None else x) @ weight.T + bias
                for projection, weight, bias in zip(self.projections, self.weights, self.biases)]

    def __call__(self, pooled: torch.Tensor) -> torch.Tensor:
        scores = self.member_logits(pooled)
        if self.config.multi_label:
            if len(scores) == 1:
                return scores[0]
            probs = torch.stack([torch.sigmoid(s.to(torch.float64)) for s in scores]).mean(0)
            return torch.logit(probs, eps=1e-12).to(torch.float32)
        log_probs = torch.stack([torch.log_softmax(s.to(torch.float64), dim=1) for s in scores])
        if self.config.combine == "logits":
            return log_probs.mean(0).to(torch.float32)
        return (torch.logsumexp(log_probs, dim=0) - math.log(len(scores))).to(torch.float32)

    def with_linear_labels(self, logits: torch.Tensor, linear_logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with the labels of ``config.linear_labels`` taken from the Linear's own ``linear_logits``."""
        if not self.config.linear_labels:
            return logits
        logits = logits.clone()
        logits[..., self.config.linear_labels] = linear_logits[..., self.config.linear_labels].to(logits.dtype)
        return logits

    def answer(self, pooled: torch.Tensor, linear_logits: torch.Tensor) -> torch.Tensor:
        """The model's logits: the head's, shaped as the Linear's output ``linear_logits`` (a decoder's score Linear
        runs on every token: every position gets its text's logits, so whichever the model picks answers)."""
        logits = self(pooled)
        if linear_logits.dim() == 3:
            logits = logits[:, None, :].expand(-1, linear_logits.shape[1], -1)
        return self.with_linear_labels(logits.to(linear_logits.dtype), linear_logits)

    @classmethod
    def from_tensors(cls, config: KernelConfig, tensors: dict[str, torch.Tensor]) -> KernelClassifier:
        """From an inference file's tensors (``KeyError`` if one is missing)."""
        projections, weights, biases = [], [], []
        for i in range(config.num_members):
            projections.append(None if config.num_features == 0 else RandomFourierFeatures(
                tensors[f"member{i}.projection"], tensors[f"member{i}.offset"]))
            weights.append(tensors[f"member{i}.weight"])
            biases.append(tensors[f"member{i}.bias"])
        return cls(config, projections, weights, biases)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for i, (projection, weight, bias) in enumerate(zip(self.projections, self.weights, self.biases)):
            if projection is not None:
                tensors[f"member{i}.projection"] = projection.weight
                tensors[f"member{i}.offset"] = projection.offset
            tensors[f"member{i}.weight"] = weight
            tensors[f"member{i}.bias"] = bias
        return tensors


# Beside the kept rows of a classifier trained elsewhere -------------------------------------------------------------


def gate_parts(x: torch.Tensor, old_logits: torch.Tensor, gate: dict) -> tuple[torch.Tensor, torch.Tensor,
                                                                                 torch.Tensor]:
    """The new labels' LDA logits of ``x`` (texts, float64) and the gate's two raw scores, both higher on new-label
    texts: the relative Mahalanobis distance and the kept Linear's lack of confidence (shaped as ``old_logits``,
    which may have a token dimension).

    With ``l_k`` the LDA logit, the distance to label k's mean is ``x'Px - 2 l_k(x)``; less the distance to the
    new rows' one Gaussian ``(m, P_b)`` it is ``x'(P - P_b)x - 2 max_k l_k(x) - 2 m'P_b x + m'P_b m``. ``gate``
    holds ``weight``, ``bias``, ``quadratic`` (``P - P_b``), ``linear`` (``-2 P_b m``) and ``const``
    (``m'P_b m``)."""
    x = x.double()
    new_logits = x @ gate["weight"].double().T + gate["bias"].double()
    relative = (2 * new_logits.max(1).values - ((x @ gate["quadratic"].double()) * x).sum(1)
                + x @ gate["linear"].double() + gate["const"].double())
    unsure = -torch.softmax(old_logits.double(), -1).max(-1).values
    if old_logits.dim() == 3:
        relative = relative[:, None]
    return new_logits, relative, unsure


def gate_score(relative: torch.Tensor, unsure: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The gate's score: the two parts z-scored by their held-out means and deviations on new rows, summed, less the
    threshold (``scale`` = ``[mean, std, mean, std, threshold]``); positive sends a text to the new labels."""
    scale = scale.double()
    return (relative - scale[0]) / scale[1] + (unsure - scale[2]) / scale[3] - scale[4]


def gated_logits(x: torch.Tensor, old_logits: torch.Tensor, gate: dict, sharpness: float) -> torch.Tensor:
    """Log-probabilities over old then new labels: each side's own, plus log sigmoid(-+ sharpness * score)."""
    new_logits, relative, unsure = gate_parts(x, old_logits, gate)
    score = sharpness * gate_score(relative, unsure, gate["scale"])
    if old_logits.dim() == 3:
        new_logits = new_logits[:, None, :].expand(-1, old_logits.shape[1], -1)
    return torch.cat([torch.log_softmax(old_logits.double(), -1) + nn.functional.logsigmoid(-score)[..., None],
                      torch.log_softmax(new_logits, -1) + nn.functional.logsigmoid(score)[..., None]], -1)


def fused_logits(x: torch.Tensor, old_logits: torch.Tensor, fuse: dict) -> torch.Tensor:
    """One LDA over old and new labels on ``[x ; old_logits / s]``, plus ``a * old_logits + c`` on the old labels
    (``fuse["scale"]`` = ``[s, a, c]``)."""
    spread, weight, offset = fuse["scale"].double().tolist()
    x, old = x.double(), old_logits.double()
    if old.dim() == 3:
        x = x[:, None, :].expand(-1, old.shape[1], -1)
    logits = torch.cat([x, old / spread], -1) @ fuse["weight"].double().T + fuse["bias"].double()
    return torch.cat([logits[..., : old.shape[-1]] + weight * old + offset, logits[..., old.shape[-1]:]], -1)


BESIDE_KEPT_FILENAME = "hf_incr_beside_kept.safetensors"
BESIDE_KEPT_FORMAT = "hf_incr.beside_kept.inference"
BESIDE_KEPT_TENSORS = {"gate": ("weight", "bias", "quadratic", "linear", "const", "scale"),
                       "fuse": ("weight", "bias", "scale")}
GATE_SHARPNESS = 8.0  # at 8, a text half a deviation from the threshold goes 98 % to one side


class BesideKeptClassifier:
    """New labels beside the kept Linear of a single-label classifier trained elsewhere, from the pooled layers
    (``config.beside``: ``"gate"`` routes each text to the kept Linear or an LDA over the new labels; ``"fuse"``
    adds the kept Linear's logits to one LDA over all labels). Same interface as :class:`KernelClassifier`."""

    def __init__(self, config: KernelConfig, tensors: dict[str, torch.Tensor]):
        if config.beside not in BESIDE_KEPT_TENSORS or config.num_old < 1:
            raise ValueError(f"Not a head beside kept rows: beside={config.beside!r}, num_old={config.num_old}.")
        self.config, self.projections = config, [None]
        # Held in float64 once (the file is float32): the distances are computed in float64, and casting the
        # (d, d) quadratic form at every forward pass would copy it each time.
        self.tensors = {name: tensors[name].to(torch.float64).contiguous() for name in BESIDE_KEPT_TENSORS[
            config.beside]}

    @property
    def num_labels(self) -> int:
        rows = self.tensors["weight"].shape[0]
        return self.config.num_old + rows if self.config.beside == "gate" else rows

    @property
    def device(self) -> torch.device:
        return self.tensors["weight"].device

    def to(self, device) -> BesideKeptClassifier:
        self.tensors = {name: tensor.to(device) for name, tensor in self.tensors.items()}
        return self

    def answer(self, pooled: torch.Tensor, linear_logits: torch.Tensor) -> torch.Tensor:
        """Logits over old then new labels from the pooled layers and the Linear's output (old labels first)."""
        old = linear_logits[..., : self.config.num_old]
        if self.config.beside == "gate":
            logits = gated_logits(prepare(pooled, self.config.normalize, torch.float64), old, self.tensors,
                                  GATE_SHARPNESS)
        else:  # the fusion reads the top layer alone
            top = pooled[:, -(self.config.in_features // self.config.layers):]
            logits = fused_logits(prepare(top, self.config.normalize, torch.float64), old, self.tensors)
        return logits.to(linear_logits.dtype)

    @classmethod
    def from_tensors(cls, config: KernelConfig, tensors: dict[str, torch.Tensor]) -> BesideKeptClassifier:
        return cls(config, tensors)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {name: tensor.to(torch.float32) for name, tensor in self.tensors.items()}


def read_inference_file(path) -> KernelClassifier | BesideKeptClassifier:
    """The classifier in an inference file (``ValueError`` for a file of another kind or an incomplete one)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") not in (INFERENCE_FORMAT, BESIDE_KEPT_FORMAT):
            raise ValueError(f"{path} is not a {INFERENCE_FORMAT} or {BESIDE_KEPT_FORMAT} file (format "
                             f"{metadata.get('format')!r}).")
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    config = KernelConfig.from_dict(json.loads(metadata["config"]))
    kind = BesideKeptClassifier if config.beside else KernelClassifier
    return kind.from_tensors(config, tensors)


class KernelHook:
    """Forward hook on the output Linear: its output is replaced by the kernel head's logits of the pooled vector.

    ``fewer_labels_ok``: while hf_incr scores the model as it was before an increment grew the head, the old kernel
    head has fewer labels; the new ones get very low logits (they are not scored then)."""

    def __init__(self, classifier: KernelClassifier, capture: PooledCapture, fewer_labels_ok: bool = False):
        self.classifier, self.capture, self.fewer_labels_ok = classifier, capture, fewer_labels_ok

    def __call__(self, module: nn.Linear, args, output: torch.Tensor) -> torch.Tensor:
        missing = module.out_features - self.classifier.num_labels
        if missing and not (self.fewer_labels_ok and missing > 0):
            raise ValueError(
                f"The kernel LDA head has {self.classifier.num_labels} labels but the model's head has "
                f"{module.out_features}. Refit it with an hf_incr increment after adding labels, or detach it."
            )
        pooled = self.capture.pooled
        if pooled is None or pooled.shape[0] != output.shape[0]:
            raise ValueError(
                "The kernel LDA head found no pooled encoder output for this batch (expected one vector per row from "
                "the hook on `model.base_model`). Call the model itself (`model(**batch)`), not its output Linear, "
                "or detach the kernel head."
            )
        if self.classifier.device != pooled.device:
            self.classifier.to(pooled.device)
        logits = self.classifier.answer(pooled, output)
        if missing:
            logits = torch.cat([logits, logits.new_full((*logits.shape[:-1], missing), -1e4)], dim=-1)
        return logits


def _hooks(module: nn.Module, kind: type) -> list:
    # Found by type among the module's forward hooks: nothing is stored on the module, so deepcopy and save_pretrained
    # see the plain model.
    return [(key, hook) for key, hook in module._forward_hooks.items() if isinstance(hook, kind)]


def attach_kernel_head(model: nn.Module, linear: nn.Linear, classifier: KernelClassifier, *,
                       fewer_labels_ok: bool = False) -> None:
    """Make ``model``'s logits (those of its output Linear ``linear``) come from ``classifier``, replacing a kernel
    head attached before. The state dict does not change; :func:`detach_kernel_head` restores the Linear."""
    detach_kernel_head(model, linear)
    hidden = getattr(model.config, "hidden_size", None)
    config = classifier.config
    if hidden is not None and hidden * config.layers != config.in_features:
        raise ValueError(
            f"The kernel LDA head reads {config.in_features}-dimensional pooled states ({config.layers} layer(s)) "
            f"but the model's encoder has hidden size {hidden}. Was it saved with another model?"
        )
    capture, _ = capture_pooled(model, config)
    linear.register_forward_hook(KernelHook(classifier, capture, fewer_labels_ok))


def detach_kernel_head(model: nn.Module, linear: nn.Linear, kind: type = object) -> KernelClassifier | None:
    """Remove the kernel head's hooks (the Linear gives the logits again); returns its classifier, or ``None``.
    ``kind``: only a head whose classifier is of this type (another is left attached)."""
    found = [(key, hook) for key, hook in _hooks(linear, KernelHook) if isinstance(hook.classifier, kind)]
    if not found:
        return None
    for key, _ in found:
        del linear._forward_hooks[key]
    base = getattr(model, "base_model", None)
    if base is not None and base is not model:
        for module in base.modules():
            for key, _ in _hooks(module, PooledCapture) + _hooks(module, LayerOutput):
                del module._forward_hooks[key]
    return found[-1][1].classifier if found else None


def attached_kernel_head(linear: nn.Linear, kind: type = object) -> KernelClassifier | None:
    """The classifier (of type ``kind``) of the kernel head attached to the output Linear ``linear``, or ``None``."""
    found = [(key, hook) for key, hook in _hooks(linear, KernelHook) if isinstance(hook.classifier, kind)]
    return found[-1][1].classifier if found else None


# Loading with `trust_remote_code=True` ---------------------------------------------------------------------------

AUTO_CLASS = "AutoModelForSequenceClassification"
# Where transformers' classification models keep the output Linear, for files that do not record it.
_LINEAR_PATHS = ("classifier.out_proj", "classification_head.out_proj", "classifier", "score")


class HfIncrKernelForSequenceClassification:
    """What ``AutoModelForSequenceClassification.from_pretrained(repo, trust_remote_code=True)`` (and so
    ``pipeline(..., trust_remote_code=True)``) loads for a model saved with hf_incr's kernel head: ``config.json``'s
    ``auto_map`` names this class. It is a factory, not a model class: the model is the checkpoint's own transformers
    class, loaded as usual, with the kernel head from the repo's ``hf_incr_kernel_lda.safetensors`` attached (read
    from the same folder, or the same commit of the Hub repo, as the weights). Everything it reads is a safetensors
    file or JSON; nothing is unpickled. A model loaded this way and saved again with plain ``save_pretrained`` is a
    plain model (its Linear answers): its ``auto_map`` entry is dropped, since the file it names would not be saved."""

    filename = KERNEL_FILENAME

    @classmethod
    def register_for_auto_class(cls, auto_class: str = AUTO_CLASS) -> None:
        """Nothing to register: the model is an instance of its own transformers class."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

        kwargs.pop("trust_remote_code", None)
        native = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
        model = native.from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        classifier = read_inference_file(_kernel_file(str(pretrained_model_name_or_path), kwargs, cls.filename))
        attach_kernel_head(model, _output_linear(model, classifier), classifier)
        auto_map = dict(getattr(model.config, "auto_map", None) or {})
        auto_map.pop(AUTO_CLASS, None)
        if auto_map:
            model.config.auto_map = auto_map
        elif hasattr(model.config, "auto_map"):
            del model.config.auto_map
        return model


class HfIncrBesideKeptForSequenceClassification(HfIncrKernelForSequenceClassification):
    """The same for a classifier trained elsewhere whose new labels answer beside its kept rows
    (``hf_incr_beside_kept.safetensors``, :class:`BesideKeptClassifier`)."""

    filename = BESIDE_KEPT_FILENAME


def _kernel_file(source: str, kwargs: dict, filename: str = KERNEL_FILENAME) -> str:
    """The kernel head's file beside the weights: in the folder, or from the Hub at the commit the weights came from
    (transformers resolves ``revision`` to one commit before loading anything)."""
    import os

    subfolder = kwargs.get("subfolder") or ""
    if os.path.isdir(source):
        return os.path.join(source, subfolder, filename)
    from huggingface_hub import hf_hub_download

    return hf_hub_download(
        source, filename, subfolder=subfolder or None, revision=kwargs.get("revision"),
        token=kwargs.get("token"), cache_dir=kwargs.get("cache_dir"),
        local_files_only=bool(kwargs.get("local_files_only")), force_download=bool(kwargs.get("force_download")),
    )


def _output_linear(model: nn.Module, classifier: KernelClassifier) -> nn.Linear:
    """The Linear whose logits the kernel head replaces: where its file says, else where transformers puts it."""
    paths = [classifier.config.linear_path] if classifier.config.linear_path else list(_LINEAR_PATHS)
    for path in paths:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, nn.Linear):
            return module
    raise ValueError(f"No output Linear of {type(model).__name__} at {paths}: the kernel LDA head cannot attach.")
