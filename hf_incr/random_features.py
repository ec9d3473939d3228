"""A closed-form head over fixed random features (RanPAC, McDonnell et al., NeurIPS 2023).

The head's input ``x`` (e.g. BERT's pooler output) is expanded to ``relu(x @ P)`` with a fixed Gaussian matrix
``P`` of ``N`` columns, and a ridge head is solved on those features from statistics accumulated increment by
increment. It is more accurate than a linear head on the same frozen encoder (BANKING77, frozen MiniLM pooler:
91.7 % against 86.6 % for linear ridge and 87.8 % for LDA) and, like the linear closed-form head, stores no text.

It is an extra layer that transformers' classes do not have. So that the saved model still loads with plain
``AutoModelForSequenceClassification.from_pretrained``, the model's own output Linear keeps the linear closed-form
head and the random-feature head is *attached* with a forward hook that replaces the Linear's output: the state dict
is untouched, and :func:`load_model` (or :func:`attach_random_feature_head`) is what brings the random-feature head
back after loading.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import HeadConfigMismatchError
from .forgetting import ridge_solution, ridge_to_multi_label_logits
from .head import find_classifier_head

RANDOM_FEATURES_FILENAME = "hf_incr_random_features.safetensors"


class RandomFeatureHead(nn.Module):
    """``logits = linear(relu(x @ projection))`` with a fixed ``projection`` of shape ``(in_features, N)``.

    ``gram`` and ``cross`` (float64) are the ridge statistics over ``[relu(x @ projection), 1]``; they are kept here
    so the next increment can add its rows and solve again.
    """

    def __init__(self, projection: torch.Tensor, num_labels: int):
        super().__init__()
        self.register_buffer("projection", projection.float().contiguous())
        self.linear = nn.Linear(projection.shape[1], num_labels)
        size = projection.shape[1] + 1
        self.gram = torch.zeros(size, size, dtype=torch.float64)
        self.cross = torch.zeros(size, num_labels, dtype=torch.float64)
        self.count = 0

    @classmethod
    def new(cls, in_features: int, num_features: int, num_labels: int, seed: int = 0) -> RandomFeatureHead:
        """A head with a fresh Gaussian projection (variance ``1 / in_features``, drawn from ``seed`` on the CPU)."""
        generator = torch.Generator().manual_seed(seed)
        projection = torch.randn(in_features, num_features, generator=generator) / in_features**0.5
        return cls(projection, num_labels)

    @property
    def num_features(self) -> int:
        return self.projection.shape[1]

    @property
    def num_labels(self) -> int:
        return self.linear.out_features

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x.to(self.projection) @ self.projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.expand(x))

    def grow(self, num_labels: int) -> RandomFeatureHead:
        """Extend to ``num_labels`` outputs; new labels have had no positive rows so far (zero cross-products)."""
        extra = num_labels - self.num_labels
        if extra > 0:
            self.cross = torch.cat([self.cross, self.cross.new_zeros(self.cross.shape[0], extra)], dim=1)
            old = self.linear
            self.linear = nn.Linear(old.in_features, num_labels, device=old.weight.device)
            with torch.no_grad():
                self.linear.weight[: old.out_features] = old.weight
                self.linear.bias[: old.out_features] = old.bias
        return self

    def update(self, features: torch.Tensor, targets: torch.Tensor, batch_size: int = 4096) -> RandomFeatureHead:
        """Add rows: head inputs ``features`` (n, in_features) and one-/multi-hot ``targets`` (n, num_labels)."""
        for start in range(0, len(features), batch_size):
            # Batched so the (n, N) expansion never has to exist for all rows at once; in float64 so that the
            # statistics do not depend on how rows were batched into increments.
            h = torch.relu(features[start : start + batch_size].double().cpu() @ self.projection.double().cpu())
            h = torch.cat([h, h.new_ones(len(h), 1)], dim=1)
            self.gram += h.T @ h
            self.cross += h.T @ targets[start : start + batch_size].double()
        self.count += len(features)
        return self

    def solve(self, relative_lambda: float, multi_label: bool = False) -> None:
        """Write the ridge solution into ``linear``; the penalty is ``relative_lambda`` times the mean of the Gram
        matrix's diagonal, so it needs no retuning when rows accumulate. Multi-label: as logits for a sigmoid
        (:func:`ridge_to_multi_label_logits`)."""
        scale = self.gram.diagonal().mean().clamp_min(1e-12)
        weight, bias = ridge_solution(self.gram, self.cross, float(relative_lambda * scale))
        if multi_label:
            weight, bias = ridge_to_multi_label_logits(weight, bias)
        with torch.no_grad():
            self.linear.weight.copy_(weight.to(self.linear.weight))
            self.linear.bias.copy_(bias.to(self.linear.bias))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / RANDOM_FEATURES_FILENAME
        tensors = {
            "projection": self.projection.cpu().contiguous(),
            "weight": self.linear.weight.detach().cpu().contiguous(),
            "bias": self.linear.bias.detach().cpu().contiguous(),
            "gram": self.gram.contiguous(),
            "cross": self.cross.contiguous(),
        }
        save_file(tensors, str(path), metadata={"count": str(self.count), "format": "hf_incr random-feature head"})
        return path

    @classmethod
    def load(cls, directory: str | Path) -> RandomFeatureHead | None:
        """The head saved in a model folder, or ``None`` if it has none."""
        path = Path(directory) / RANDOM_FEATURES_FILENAME
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
            count = int(f.metadata().get("count", 0))
        head = cls(tensors["projection"], tensors["weight"].shape[0])
        with torch.no_grad():
            head.linear.weight.copy_(tensors["weight"])
            head.linear.bias.copy_(tensors["bias"])
        head.gram, head.cross, head.count = tensors["gram"].double(), tensors["cross"].double(), count
        return head


class _RandomFeatureHook:
    """Forward hook on the output Linear: its output is replaced by the random-feature head's logits."""

    def __init__(self, head: RandomFeatureHead):
        self.head = head

    def __call__(self, module: nn.Linear, args, output: torch.Tensor) -> torch.Tensor:
        if self.head.num_labels != module.out_features:
            raise HeadConfigMismatchError(
                f"The random-feature head has {self.head.num_labels} labels but the model's head has "
                f"{module.out_features}. Run `hf_incr.train_increment` to refit it after adding labels, or remove it "
                "with `hf_incr.detach_random_feature_head(model)`."
            )
        if self.head.projection.device != output.device:
            self.head.to(output.device)
        return self.head(args[0]).to(output.dtype)


def _attached_hooks(model: nn.Module) -> list[tuple[int, _RandomFeatureHook]]:
    # Found by type among the Linear's forward hooks: nothing else is stored on the module, so deepcopy and
    # save_pretrained see a plain Linear (plus a hook object that copies with it).
    linear = find_classifier_head(model).linear
    return [(key, hook) for key, hook in linear._forward_hooks.items() if isinstance(hook, _RandomFeatureHook)]


def attach_random_feature_head(model: nn.Module, head: RandomFeatureHead) -> None:
    """Make ``model``'s logits come from ``head`` (replacing any head attached before). The model's parameters and
    state dict do not change: its own Linear still holds the linear closed-form head that plain transformers loads."""
    detach_random_feature_head(model)
    linear = find_classifier_head(model).linear
    if head.projection.shape[0] != linear.in_features:
        raise HeadConfigMismatchError(
            f"The random-feature head reads {head.projection.shape[0]} features but the model's head receives "
            f"{linear.in_features}. Was it saved with another model?"
        )
    linear.register_forward_hook(_RandomFeatureHook(head))


def detach_random_feature_head(model: nn.Module) -> RandomFeatureHead | None:
    """Remove the random-feature head (the model's own Linear gives the logits again); returns it, or ``None``."""
    linear = find_classifier_head(model).linear
    found = _attached_hooks(model)
    for key, _ in found:
        del linear._forward_hooks[key]
    return found[-1][1].head if found else None


def attached_random_feature_head(model: nn.Module) -> RandomFeatureHead | None:
    """The random-feature head attached to ``model``, or ``None``."""
    found = _attached_hooks(model)
    return found[-1][1].head if found else None


def load_model(model_name_or_path: str, **kwargs):
    """``AutoModelForSequenceClassification.from_pretrained`` plus the random-feature head saved beside the model,
    if there is one (``closed_form_head=True, random_features=N``). For every other model it is exactly
    ``from_pretrained``. Keyword arguments go to ``from_pretrained``; ``trust_remote_code`` stays off unless set."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_name_or_path, **kwargs)
    folder = Path(model_name_or_path)
    if not folder.is_dir():
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            folder = Path(hf_hub_download(
                str(model_name_or_path), RANDOM_FEATURES_FILENAME, revision=kwargs.get("revision"),
                token=kwargs.get("token"), cache_dir=kwargs.get("cache_dir"),
            )).parent
        except EntryNotFoundError:
            return model  # a model without a random-feature head: exactly from_pretrained
    head = RandomFeatureHead.load(folder)
    if head is not None:
        attach_random_feature_head(model, head.to(next(model.parameters()).device))
    return model
