"""New labels beside the kept rows of a single-label classifier hf_incr did not train, read from the encoder's layers.

A classifier fine-tuned elsewhere (plain ``Trainer``, the Hub) comes without hf_incr's statistics, and its last
features were trained to separate the old labels only: new-label texts land on old clusters there, so new rows fitted
beside the kept ones on the Linear's inputs find the new labels 6 times in 10 (BANKING77) with no old rows given.
The encoder's lower layers were moved less by that fine-tune. :class:`BesideKeptHead` reads every layer's pooled
state (each L2-normalised, concatenated; the kernel head's capture with no random features) and, by what the
increment's rows hold:

- **no rows of the old labels** (``mode="gate"``): a two-stage head. An LDA over the new labels answers among them;
  the kept Linear answers among the old ones, bit for bit; a gate decides which. Its score is the sum of two
  z-scored parts, both higher on new-label texts: the relative Mahalanobis distance (Ren et al., 2021: the distance
  to the nearest new label's mean less the distance to one Gaussian over all new rows, shared covariance, OAS
  shrinkage) and the kept Linear's lack of confidence (minus its largest softmax probability, Hendrycks & Gimpel,
  2017). The threshold is the quantile of the gate scores of held-out new rows (``folds``-fold cross-fitting) that
  keeps ``new_recall`` of them: with no old rows nothing else can place it, so the trade-off is the user's
  (:func:`fit_gate`).
- **rows of every old label** (``mode="fuse"``, e.g. 5 per label): one LDA over old and new labels on the top
  layer's pooled state and the kept Linear's old logits (scaled to the same within-label spread), plus
  ``a * old logits + c`` on the old labels, with ``(a, c)`` chosen by class-balanced accuracy on cross-fitted
  held-out logits (:func:`fit_fusion`): the few old rows place the old labels in the layer's space, the kept
  Linear's logits carry what the fine-tune learned about them.

Measured (``scripts/benchmarks/elsewhere.py``, docs/benchmarks.md): BANKING77 new rows only 74.5 -> 85.5 all labels,
+5 rows per old label 87.4 -> 89.5. The Linear's rows stay the kept rows plus new rows fitted beside them (what plain
``from_pretrained`` loads); this head answers through ``trust_remote_code`` or ``hf_incr.load_model``. It is fitted
again at each increment on that increment's rows (it keeps no statistics).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..distributed import distributed_launch, gather_variable_rows
from ..errors import DataError
from ..features import Capture
from ..head import last_token
from ..layers import encoder_layers
from . import modeling_hf_incr_kernel as modeling
from .files import FileReader, write_tensors
from .kept_rows import fold_indices
from .kernel import KernelHead, PooledLayersCapture, block_paths, sentence_pooling
from .lda import shared_covariance, solve_lda
from .statistics import ClassStatistics, check_labels

GATE_NEW_RECALL = 0.8
FOLDS = 5
# The fusion's grid: the kept Linear's weight `a` and the old labels' offset `c` (in logit units). `c` is the middle
# of the best plateau: the held-out accuracy is flat over a range of offsets, whose middle is the least fragile.
FUSION_WEIGHTS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
FUSION_OFFSETS = torch.linspace(-40.0, 40.0, 161, dtype=torch.float64)


def _gaussians(x: torch.Tensor, labels: torch.Tensor, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Label means ``(L, d)`` and the precision of their shared covariance (LDA's, OAS-shrunk), float64."""
    statistics = ClassStatistics(x.shape[1]).update(x, labels).grow(num_labels)
    covariance, _ = shared_covariance(statistics.counts, statistics.scatter)
    precision = torch.cholesky_inverse(torch.linalg.cholesky(covariance))
    return statistics.sums / statistics.counts[:, None], precision


def _lda(x: torch.Tensor, labels: torch.Tensor, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform-prior LDA rows ``weight`` ``(L, d)``, ``bias`` ``(L,)`` (float64)."""
    statistics = ClassStatistics(x.shape[1]).update(x, labels).grow(num_labels)
    weight, bias, _ = solve_lda(statistics.counts, statistics.sums, statistics.scatter, priors="uniform")
    return weight, bias


def _gate_solution(x: torch.Tensor, labels: torch.Tensor, num_new: int) -> dict:
    """The new labels' LDA and the quadratic form of the relative distance (:func:`modeling.gate_parts`)."""
    means, precision = _gaussians(x, labels, num_new)
    weight = means @ precision
    solution = {"weight": weight, "bias": -0.5 * (weight * means).sum(1)}
    if num_new == 1:
        # One new label is its own background (the relative distance would be 0 everywhere): the plain distance.
        zero = torch.zeros(x.shape[1], dtype=torch.float64)
        return {**solution, "quadratic": precision, "linear": zero, "const": zero.sum()}
    centre, background = _gaussians(x, torch.zeros_like(labels), 1)  # one Gaussian over all new rows
    centre = centre[0]
    return {**solution, "quadratic": precision - background, "linear": -2 * background @ centre,
            "const": centre @ background @ centre}


def fit_gate(features: torch.Tensor, old_logits: torch.Tensor, labels: torch.Tensor, num_new: int, *,
             new_recall: float = GATE_NEW_RECALL, folds: int = FOLDS, seed: int = 0) -> dict:
    """The gate of a classifier trained elsewhere, from the new labels' rows only.

    Args:
        features: ``(n, d)`` pooled layers of the new labels' rows.
        old_logits: ``(n, num_old)`` the kept Linear's logits of those rows.
        labels: ``(n,)`` new-label indices ``0 .. num_new - 1``.
        new_recall: The share of held-out new rows the gate sends to the new labels (the rest of the curve trades
            new-label accuracy for old-label accuracy: 0.9 favours the new labels, 0.7 the old ones).

    Returns:
        Float32 tensors: the new labels' LDA ``weight`` / ``bias``, the gate's ``quadratic`` / ``linear`` /
        ``const``, and ``scale`` (the two scores' held-out means and standard deviations and the threshold).
    """
    if not 0.0 < new_recall < 1.0:
        raise DataError(f"gate_new_recall must be between 0 and 1 (the share of new-label rows the gate keeps); "
                        f"found {new_recall}. Use 0.8 (the default), more to favour the new labels.")
    x = features.double()
    relative, unsure = torch.empty(x.shape[0], dtype=torch.float64), torch.empty(x.shape[0], dtype=torch.float64)
    for held in fold_indices(labels, folds, seed):
        keep = torch.ones(x.shape[0], dtype=torch.bool)
        keep[held] = False
        if torch.unique(labels[keep]).numel() < num_new:
            raise DataError("every new label needs at least 2 rows to place the gate; found labels with 1. Add rows "
                            "of those labels.")
        _, relative[held], unsure[held] = modeling.gate_parts(x[held], old_logits[held],
                                                     _gate_solution(x[keep], labels[keep], num_new))
    parts = torch.stack([relative, unsure])
    # Floors on the spreads: a kept Linear whose top probability barely varies (under 1 %) carries no signal, and
    # z-scoring it would magnify float noise into the decision.
    mean = parts.mean(1)
    std = torch.maximum(parts.std(1), torch.stack([1e-6 * (1 + mean[0].abs()), torch.tensor(0.01).double()]))
    score = ((parts - mean[:, None]) / std[:, None]).sum(0)
    threshold = torch.quantile(score, 1.0 - new_recall)
    solution = _gate_solution(x, labels, num_new)
    solution["scale"] = torch.stack([mean[0], std[0], mean[1], std[1], threshold])
    return {key: value.float() for key, value in solution.items()}


def within_spread(x: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean per-dimension variance of ``x`` around its labels' means."""
    centred = torch.cat([x[labels == k] - x[labels == k].mean(0) for k in torch.unique(labels)])
    return float(centred.var(0).mean())


def fit_fusion(features: torch.Tensor, old_logits: torch.Tensor, labels: torch.Tensor, num_labels: int, *,
               folds: int = FOLDS, seed: int = 0) -> dict:
    """One LDA over old and new labels on ``[features ; old_logits / s]``, plus ``a * old_logits + c`` on the old
    labels, from rows of every label (the old labels' few).

    Returns float32 ``weight`` ``(num_labels, d + num_old)``, ``bias`` and ``scale`` = ``[s, a, c]``.
    """
    num_old = old_logits.shape[1]
    x, old = features.double(), old_logits.double()
    # Logits constant within each label (nothing to scale) are left as they are.
    spread = (within_spread(old, labels) / max(within_spread(x, labels), 1e-30)) ** 0.5 or 1.0
    z = torch.cat([x, old / spread], 1)
    held_logits = torch.empty(x.shape[0], num_labels, dtype=torch.float64)
    for held in fold_indices(labels, folds, seed):
        keep = torch.ones(x.shape[0], dtype=torch.bool)
        keep[held] = False
        weight, bias = _lda(z[keep], labels[keep], num_labels)
        held_logits[held] = z[held] @ weight.T + bias
    # Class-balanced: old and new labels weigh the same, however few rows the old ones have.
    is_old = labels < num_old
    row_weight = torch.where(is_old, 1.0 / is_old.sum(), 1.0 / (~is_old).sum()).double()
    best = (-1.0, 1.0, 0.0)
    for a in FUSION_WEIGHTS:
        accuracy = []
        for c in FUSION_OFFSETS.tolist():
            shifted = held_logits.clone()
            shifted[:, :num_old] += a * old + c
            accuracy.append(float((row_weight * (shifted.argmax(1) == labels).double()).sum()))
        accuracy = torch.tensor(accuracy)
        if float(accuracy.max()) > best[0] + 1e-9:
            best = (float(accuracy.max()), a, float(FUSION_OFFSETS[accuracy >= accuracy.max() - 1e-9].median()))
    weight, bias = _lda(z, labels, num_labels)
    return {"weight": weight.float(), "bias": bias.float(),
            "scale": torch.tensor([spread, best[1], best[2]], dtype=torch.float32)}


# --------------------------------------------------------------------------------------------------- the head

# Layers read: the top 6 (all of MiniLM's). On BANKING77 (new rows only) the gate on the top 4 reached 83.9 % of all
# labels, on the top 5 and 6 85.7 %: the layers the fine-tune moved least tell new texts from old ones.
LAYERS = 6
INFERENCE_LOST = "the new labels beside the kept rows cannot score"
INFERENCE_FIX = "Restore the file from where the model came from, or run the increment again."


class PooledAndLogitsCapture(PooledLayersCapture):
    """The pooled layers and, after them, the output Linear's logits (a decoder's last real token)."""

    def __init__(self, model, config: modeling.KernelConfig, linear):
        super().__init__(model, config)
        self.model, self.logits = model, None
        self.handles.append(linear.register_forward_hook(self._keep))

    def _keep(self, module, args, output) -> None:
        self.logits = output.detach()

    def read(self, batch) -> torch.Tensor:
        logits = self.logits if self.logits.dim() == 2 else last_token(self.logits, batch, self.model)
        return torch.cat([super().read(batch), logits.float().cpu()], 1)


class BesideKeptHead(KernelHead):
    """New labels beside the kept rows of a single-label classifier trained elsewhere (see the module docstring):
    fitted on the rows of each increment it starts in (it keeps no statistics), answering through the output Linear's
    hook as the kernel head does, from ``hf_incr_beside_kept.safetensors``."""

    name = "beside_kept"
    title = "layer LDA beside the kept rows"
    reads = "the encoder's pooled layers and the kept Linear's logits"
    files = (modeling.BESIDE_KEPT_FILENAME,)
    statistics_files = ()
    auto_class = modeling.HfIncrBesideKeptForSequenceClassification.__name__
    lineage_key = "beside_kept"
    classifier_type = modeling.BesideKeptClassifier

    def __init__(self, config: modeling.KernelConfig, classifier=None, *, new_recall: float = GATE_NEW_RECALL):
        super().__init__(config, classifier=classifier)
        self.new_recall = new_recall
        self.gathered: tuple[torch.Tensor, torch.Tensor] | None = None  # every row of the pass, and its label

    @classmethod
    def from_classifier(cls, classifier) -> BesideKeptHead:
        return cls(classifier.config, classifier=classifier)

    @property
    def feature_key(self) -> str:
        return "beside_kept:" + super().feature_key

    @property
    def can_continue(self) -> bool:
        return False  # fitted again from each increment's rows

    @classmethod
    def start(cls, model, location, *, config, multi_label, seed=0, kept_labels=()) -> BesideKeptHead:
        pooling, _ = sentence_pooling(model)
        layers = min(LAYERS, len(encoder_layers(modeling.base_model_of(model))) or 1)
        # Each layer L2-normalised (normalize=True), as measured: no layer outweighs another in the distances.
        settings = modeling.KernelConfig(
            in_features=model.config.hidden_size * layers, num_features=0, seed=seed, normalize=True, pooling=pooling,
            layers=layers, block_paths=block_paths(model, layers), linear_path=location.path, beside="gate",
            num_old=len(kept_labels))
        return cls(settings, new_recall=config.gate_new_recall)

    @classmethod
    def start_refusal(cls, *, every_label, keeps_rows, multi_label, inference_only) -> str | None:
        if multi_label:
            return ("The layer LDA beside the kept rows is single-label: in a multi-label classifier trained "
                    "elsewhere every old label keeps its own Linear decision. Use `head=kernel`.")
        if not keeps_rows or every_label:
            return ("The layer LDA beside the kept rows starts only beside the trained rows of a classifier trained "
                    "elsewhere, given rows of new labels; this increment answers with the Linear.")
        return None

    def capture(self, model, location) -> Capture:
        self.check_model(model, location)
        return PooledAndLogitsCapture(model, self.config, location.linear)

    def begin(self, rows) -> None:
        self.rows, self._pending = rows, []

    def add(self, rows, features, targets) -> None:
        # The pooled layers, then the old labels' logits (a grown Linear's new rows are not read).
        features = features[:, : self.config.in_features + self.rows.num_old].float()
        self._pending.append((features, check_labels(targets, features.shape[0], None, "BesideKeptHead.add")))

    def end(self) -> None:
        # Every process gets every row (in process order under a distributed launch): all fit the same head.
        width = self.config.in_features + self.rows.num_old
        rows = torch.cat([f for f, _ in self._pending]) if self._pending else torch.zeros(0, width)
        labels = torch.cat([t for _, t in self._pending]) if self._pending else torch.zeros(0, dtype=torch.long)
        if distributed_launch():
            rows, labels = gather_variable_rows(rows), gather_variable_rows(labels)
        self.gathered, self._pending = (rows, labels), []

    def solve(self, model, location) -> dict[int, float]:
        width = self.config.in_features
        (rows, labels), self.gathered = self.gathered, None
        num_old, num_labels = self.rows.num_old, self.rows.num_labels
        self.config.num_old = num_old
        pooled, old_logits = rows[:, :width], rows[:, width: width + num_old].double()
        old_counts = torch.bincount(labels[labels < num_old], minlength=num_old)
        if bool((old_counts >= 2).all()):
            # Rows of every old label: the fusion, on the top layer alone (the lower ones did not help it).
            hidden = width // self.config.layers
            x = modeling.prepare(pooled[:, -hidden:], True, torch.float64)
            tensors = fit_fusion(x, old_logits, labels, num_labels, seed=self.config.seed)
            self.config.beside = "fuse"
        else:
            new = labels >= num_old
            x = modeling.prepare(pooled[new], True, torch.float64)
            tensors = fit_gate(x, old_logits[new], labels[new] - num_old, num_labels - num_old,
                               new_recall=self.new_recall, seed=self.config.seed)
        self.classifier = modeling.BesideKeptClassifier(self.config, tensors)
        self.attach(model, location)
        return {}

    def logits(self, features, linear_logits):
        # The captured row is the pooled layers, then the Linear's logits then; the Linear's logits now are given.
        pooled = features[:, : self.config.in_features].to(self.classifier.device)
        return self.classifier.answer(pooled, linear_logits.to(self.classifier.device))

    # -- files ----------------------------------------------------------------------------------------------------

    def save(self, folder, *, statistics: bool = True) -> list[Path]:
        return [write_tensors(Path(folder) / modeling.BESIDE_KEPT_FILENAME, self.classifier.to_tensors(),
                              format=modeling.BESIDE_KEPT_FORMAT, version=modeling.FORMAT_VERSION,
                              metadata={"config": self.config.to_dict()})]

    @classmethod
    def load_inference(cls, folder) -> BesideKeptHead | None:
        path = Path(folder) / modeling.BESIDE_KEPT_FILENAME
        if not path.is_file():
            return None
        reader = FileReader(path, INFERENCE_LOST, INFERENCE_FIX)
        tensors, metadata = reader.read((modeling.BESIDE_KEPT_FORMAT,))
        try:
            config = modeling.KernelConfig.from_dict(reader.json(metadata, "config"))
            classifier = modeling.BesideKeptClassifier(config, tensors)
        except (KeyError, TypeError, ValueError) as error:
            raise reader.error(f"is incomplete ({error!r})") from error
        return cls(config, classifier=classifier)

    @classmethod
    def load(cls, folder, *, multi_label: bool = False) -> BesideKeptHead | None:
        return cls.load_inference(folder)

    # -- what people read -----------------------------------------------------------------------------------------

    def lineage_entry(self, id2label) -> dict:
        """How the new labels were placed beside the kept rows: the mode, the layers and the fitted settings."""
        c, scale = self.config, self.classifier.tensors["scale"].tolist()
        entry = {"mode": c.beside, "layers": c.layers, "pooling": c.pooling}
        if c.beside == "gate":
            entry.update(new_recall=self.new_recall, threshold=round(scale[4], 4))
        else:
            entry.update(old_logit_weight=scale[1], old_offset=round(scale[2], 4))
        return entry

    @classmethod
    def describe_files(cls, files: set[str]) -> str | None:
        return "yes" if cls.files[0] in files else None

    @classmethod
    def card_section(cls, folder, config, model_id: str) -> str | None:
        if not (Path(folder) / modeling.BESIDE_KEPT_FILENAME).is_file():
            return None
        return CARD_SECTION.format(model_id=model_id)

    @classmethod
    def card_summary(cls, folder, config) -> dict | None:
        path = Path(folder) / modeling.BESIDE_KEPT_FILENAME
        if not path.is_file():
            return None
        return {"file": path.name, "inference_mb": round(path.stat().st_size / 1e6, 1)}


CARD_SECTION = """## New labels beside the kept rows

This classifier was trained elsewhere; hf_incr kept its output Linear's trained rows bit for bit and placed the new
labels beside them with an LDA on the encoder's pooled layers (`hf_incr_beside_kept.safetensors`). Load it with

```python
model = AutoModelForSequenceClassification.from_pretrained("{model_id}", trust_remote_code=True)
```

Plain `from_pretrained` loads the Linear, whose new rows were fitted beside the kept ones (less accurate on the new
labels when few or no old rows were given).
"""
