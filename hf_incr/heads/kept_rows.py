"""New head rows beside the kept, trained rows of a classifier hf_incr did not train.

A model fine-tuned elsewhere (plain ``Trainer``, the Hub) comes without hf_incr's statistics. Its trained output
Linear is the best summary of the old labels there is: re-solving it from the few rows a user brings loses accuracy on
the old labels, and training the whole head by gradient on new rows only collapses them. So the old rows stay bit for
bit, the encoder stays frozen, and only the new rows (plus, where old rows are given, a calibration between old and
new logits) are fitted, on the head inputs of the increment's rows (:class:`KeptRowsHead`, which also keeps the
statistics of those rows so the next increment continues the same way).

Single-label (softmax) head, old rows ``(W_o, b_o)`` frozen, new rows ``(W_n, b_n)``::

    z(x) = [W_o x + b_o ; W_n x + b_n]                 logits over old + new labels

1. :func:`fit_new_rows` fits ``(W_n, b_n)`` by class-balanced cross-entropy over ALL logits, old rows frozen. The old
   logits of the new labels' rows are the margin the new rows must win by.
2. No old label has rows (:func:`add_new_rows`, case ``"new_only"``): nothing in the data says how far the new
   logits may rise on old inputs (every rise lowers the loss). Two things still bound it. (a) The old rows' scale
   (Zhao et al. 2020, weight aligning, made a constraint): every new row gets the old rows' mean norm and the new
   biases average to the old ones; only directions and relative biases are learned. (b) Where the old inputs lie:
   a converged softmax head's centred rows point at its labels' centred feature means (neural collapse), so
   :func:`old_label_anchors` puts one stand-in feature per old label at ``m + r_k (w_k - w_bar)/||.||`` (``m``:
   the increment's feature mean, ``r_k``: their mean norm) and the fit sees it as a row of that old label.
3. Some old labels have rows (``"with_old"``): free new rows with L2 ``l2`` chosen on ``folds``-fold cross-fitted
   held-out logits, then BiC (Wu et al. 2019): a 2-parameter affine ``a * z_new + c`` fitted by class-balanced
   cross-entropy on those held-out logits (:func:`fit_logit_calibration`), folded into the rows
   (:func:`fold_calibration`) so the grown head is still one Linear.
4. Every old label has rows: a refit of all rows (:func:`refit_all_rows`) replaces the kept rows only if its
   cross-fitted held-out accuracy is higher on the old labels' rows and on all rows.
5. Rows of every old label about as many as of a new one (the user's full data, :func:`represents_old_labels`): the
   recipe fine-tunes the whole model once on them (the plan's ``adapt`` path): the frozen encoder, trained for the
   old labels only, is what limits every head on it.
6. :func:`fit_multilabel_new_rows`: in a sigmoid head every label is its own decision, so frozen old rows leave old
   predictions bit for bit unchanged; each new row is a logistic regression of its label against every other row
   (L2 by cross-validated log-loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather_rows, rows_of_this_process
from ..errors import DataError
from ..head import ClassifierHead
from .lda import f1_thresholds
from .linear import LinearHead
from .statistics import check_features, check_labels, check_targets

# L2 strengths tried by cross-validation, relative to the class-balanced mean loss (scale-free in n).
L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2)


# --------------------------------------------------------------------------------------------------- helpers


def _check_head(old_weight: torch.Tensor, old_bias: torch.Tensor | None) -> tuple[int, int]:
    if old_weight.dim() != 2:
        raise DataError(
            f"old_weight must be the head's weight, shape (num_old, hidden); found shape {tuple(old_weight.shape)}. "
            "Pass `head.weight` of the output nn.Linear."
        )
    num_old, dim = old_weight.shape
    if old_bias is not None and tuple(old_bias.shape) != (num_old,):
        raise DataError(
            f"old_bias must have shape ({num_old},) to match old_weight {tuple(old_weight.shape)}; found "
            f"{tuple(old_bias.shape)}. Pass `head.bias` of the same Linear (or None for a bias-free head)."
        )
    return num_old, dim



def balanced_weights(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Row weights ``1 / (K_present * n_label)``: every label present counts the same, the weights sum to 1.

    Why: an increment holds ~5 rows of each old label beside ~100 of each new one; unweighted, the loss is the new
    labels' and the calibration would favour them.
    """
    counts = torch.bincount(labels, minlength=num_labels).to(torch.float64)
    present = int((counts > 0).sum())
    return (1.0 / (present * counts[labels])).to(torch.float64)


def fold_indices(labels: torch.Tensor, folds: int, seed: int = 0) -> list[torch.Tensor]:
    """Stratified fold assignment: each label's rows dealt round-robin in a seeded order; returns held-out indices."""
    generator = torch.Generator().manual_seed(seed)
    assignment = torch.empty(labels.shape[0], dtype=torch.long)
    offset = 0
    for label in torch.unique(labels):
        idx = torch.nonzero(labels == label).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        # The offset rotates so labels with fewer rows than folds do not all land in fold 0.
        assignment[idx] = (torch.arange(idx.numel()) + offset) % folds
        offset += idx.numel()
    return [torch.nonzero(assignment == f).flatten() for f in range(folds)]


def _minimize(params: list[torch.Tensor], closure_loss, max_iter: int) -> None:
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        loss = closure_loss()
        loss.backward()
        return loss

    optimizer.step(closure)


# --------------------------------------------------------------------------------------------------- single-label


def fit_new_rows(
    features: torch.Tensor,
    labels: torch.Tensor,
    old_weight: torch.Tensor,
    old_bias: torch.Tensor | None,
    num_new: int,
    *,
    scale: str = "aligned",
    l2: float = 1e-3,
    max_iter: int = 200,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit the new rows by class-balanced cross-entropy over old + new logits, the old rows frozen.

    Args:
        features: ``(n, d)`` head inputs of the increment's rows.
        labels: ``(n,)`` ids in the grown label space; new labels are ``num_old .. num_old + num_new - 1``.
        old_weight: ``(num_old, d)`` trained rows (not modified).
        old_bias: ``(num_old,)`` trained biases, or ``None`` (bias-free head: the new biases are then 0 too).
        num_new: Number of new labels.
        scale: ``"aligned"``: every new row has the old rows' mean norm and the new biases average to the old ones
            (only directions and relative biases are fitted); needed when no old label has rows, where the loss
            rewards raising the new logits without bound. ``"free"``: unconstrained, with L2 ``l2`` on the new rows.
        l2: L2 strength of the ``"free"`` fit, relative to the mean loss.
        max_iter: L-BFGS iterations.

    Returns:
        ``(new_weight (num_new, d), new_bias (num_new,))`` in float32.
    """
    num_old = _check_fit(features, labels, old_weight, old_bias, num_new, scale)
    new_ids = torch.arange(num_old, num_old + num_new)
    x = features.to(torch.float64)
    w_old = old_weight.detach().to(torch.float64)
    b_old = (old_bias.detach() if old_bias is not None else torch.zeros(num_old)).to(torch.float64)
    old_logits = x @ w_old.T + b_old  # fixed: computed once
    weights = balanced_weights(labels, num_old + num_new)

    # Start from the centred class means: already the right directions for well-separated labels.
    centre = x.mean(0)
    means = torch.stack([x[labels == i].mean(0) for i in new_ids]) - centre
    radius = w_old.norm(dim=1).mean()
    bias_mean = b_old.mean() if old_bias is not None else torch.tensor(0.0, dtype=torch.float64)
    direction = means.clone().requires_grad_(True)
    offset = torch.zeros(num_new, dtype=torch.float64, requires_grad=True)

    def rows():
        if scale == "aligned":
            w = radius * direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
            b = bias_mean + offset - offset.mean()
        else:
            w, b = direction, bias_mean + offset
        if old_bias is None:
            b = torch.zeros_like(b)
        return w, b

    def loss():
        w, b = rows()
        logits = torch.cat([old_logits, x @ w.T + b], dim=1)
        value = (F.cross_entropy(logits, labels, reduction="none") * weights).sum()
        if scale != "aligned":
            value = value + 0.5 * l2 * (w * w).sum()
        return value

    if scale != "aligned":
        # Free rows start at the old rows' scale too, which keeps L-BFGS' first steps sane.
        with torch.no_grad():
            direction.mul_(radius / direction.norm(dim=1, keepdim=True).clamp_min(1e-12))
    _minimize([direction, offset], loss, max_iter)
    with torch.no_grad():
        w, b = rows()
    return w.detach().to(torch.float32), b.detach().to(torch.float32)


def _check_fit(features, labels, old_weight, old_bias, num_new: int, scale: str) -> int:
    """The inputs of :func:`fit_new_rows` fit together (a :class:`~hf_incr.DataError` otherwise); returns num_old."""
    num_old, dim = _check_head(old_weight, old_bias)
    check_features(features, dim, "features", min_rows=1)
    check_labels(labels, features.shape[0], num_old + num_new, "labels")
    if num_new < 1:
        raise DataError(f"num_new must be >= 1; found {num_new}. Pass the number of labels added to the head.")
    if scale not in ("aligned", "free"):
        raise DataError(f"scale must be 'aligned' or 'free'; found {scale!r}. Pick one of those.")
    missing = [i for i in range(num_old, num_old + num_new) if not (labels == i).any()]
    if missing:
        raise DataError(
            f"every new label needs rows to fit its row; found none for ids {missing[:10]}. "
            "Add rows of those labels to the increment (or do not add the labels)."
        )
    return num_old


def fit_logit_calibration(
    old_logits: torch.Tensor, new_logits: torch.Tensor, labels: torch.Tensor, *, max_iter: int = 100
) -> tuple[float, float]:
    """BiC's 2-parameter bias correction: ``(a, c)`` minimising class-balanced CE of ``[old, a * new + c]``.

    Fit on held-out logits (rows the new rows were not fitted on), which must include rows of old labels: otherwise
    the loss only rewards raising ``c`` and this raises. ``a`` is kept positive (parameterised as ``exp``).

    Returns:
        ``(a, c)``.
    """
    num_old = old_logits.shape[1]
    num_labels = num_old + new_logits.shape[1]
    if old_logits.shape[0] != new_logits.shape[0] or old_logits.shape[0] != labels.shape[0]:
        raise DataError(
            f"old_logits, new_logits and labels must have one row per example; found {old_logits.shape[0]}, "
            f"{new_logits.shape[0]}, {labels.shape[0]} rows. Compute all three on the same held-out rows."
        )
    check_labels(labels, labels.shape[0], num_labels, "labels")
    if not (labels < num_old).any() or not (labels >= num_old).any():
        raise DataError(
            "calibrating new logits against old ones needs held-out rows of old AND new labels; found only "
            f"{'new' if (labels >= num_old).any() else 'old'} labels. Keep (a, c) = (1, 0) without old labels' rows."
        )
    old = old_logits.to(torch.float64)
    new = new_logits.to(torch.float64)
    weights = balanced_weights(labels, num_labels)
    log_a = torch.zeros((), dtype=torch.float64, requires_grad=True)
    c = torch.zeros((), dtype=torch.float64, requires_grad=True)

    def loss():
        logits = torch.cat([old, log_a.exp() * new + c], dim=1)
        return (F.cross_entropy(logits, labels, reduction="none") * weights).sum()

    _minimize([log_a, c], loss, max_iter)
    return float(log_a.detach().exp()), float(c.detach())


def fold_calibration(
    new_weight: torch.Tensor, new_bias: torch.Tensor, a: float, c: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold ``a * (W x + b) + c`` into the rows: ``(a W, a b + c)``, so the grown head stays one Linear."""
    return new_weight * a, new_bias * a + c


def grow_rows(
    old_weight: torch.Tensor, old_bias: torch.Tensor | None, new_weight: torch.Tensor, new_bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the untouched old rows with the new ones (old rows copied bit for bit, in their dtype)."""
    _, dim = _check_head(old_weight, old_bias)
    if new_weight.dim() != 2 or new_weight.shape[1] != dim:
        raise DataError(
            f"new_weight must have shape (num_new, {dim}); found {tuple(new_weight.shape)}. Fit it on features of "
            "the head's input."
        )
    weight = torch.cat([old_weight.detach(), new_weight.detach().to(old_weight.dtype)], dim=0)
    if old_bias is None:
        return weight, None
    new_bias = torch.zeros(new_weight.shape[0]) if new_bias is None else new_bias
    return weight, torch.cat([old_bias.detach(), new_bias.detach().to(old_bias.dtype)])


def old_label_anchors(features: torch.Tensor, old_weight: torch.Tensor) -> torch.Tensor:
    """One stand-in feature per old label, from the trained rows alone: ``m + r_k * u_k``.

    Why this: a softmax head trained to convergence has its centred rows aligned with its labels' centred feature
    means (neural collapse, Papyan et al. 2020), so ``u_k = (w_k - mean w) / ||w_k - mean w||`` points from the
    feature centre towards label k. ``m`` is the centre of the increment's features (same encoder) and ``r_k``
    puts the anchor at their mean norm (the encoder's features have a typical norm; LayerNorm/tanh outputs barely
    vary). Used as the old labels' rows when the increment has none, so the new rows learn where not to fire.
    Returns ``(num_old, d)``.
    """
    _, dim = _check_head(old_weight, None)
    check_features(features, dim, "features", min_rows=1)
    x = features.to(torch.float64)
    centre = x.mean(0)
    directions = old_weight.detach().to(torch.float64)
    directions = directions - directions.mean(0)
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    target = x.norm(dim=1).mean()
    # ||m + r u||^2 = t^2  ->  r = -(u.m) + sqrt((u.m)^2 - |m|^2 + t^2), the positive root (0 if t < |m|).
    along = directions @ centre
    radius = -along + torch.sqrt((along**2 - centre.dot(centre) + target**2).clamp_min(0.0))
    return (centre + radius.unsqueeze(1) * directions).to(torch.float32)


def _old_logits(features: torch.Tensor, old_weight: torch.Tensor, old_bias: torch.Tensor | None) -> torch.Tensor:
    logits = features.float() @ old_weight.detach().float().T
    return logits + old_bias.detach().float() if old_bias is not None else logits


def _balanced_ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    weights = balanced_weights(labels, logits.shape[1])
    return float((F.cross_entropy(logits.double(), labels, reduction="none") * weights).sum())


def cross_fitted_new_logits(
    features: torch.Tensor,
    labels: torch.Tensor,
    old_weight: torch.Tensor,
    old_bias: torch.Tensor | None,
    num_new: int,
    *,
    folds: int = 3,
    seed: int = 0,
    **fit_kwargs,
) -> torch.Tensor:
    """New logits of every row from new rows fitted on the other folds (held-out logits for calibration)."""
    num_old = old_weight.shape[0]
    out = torch.empty(features.shape[0], num_new, dtype=torch.float32)
    for held in fold_indices(labels, folds, seed):
        keep = torch.ones(features.shape[0], dtype=torch.bool)
        keep[held] = False
        # A new label absent from the training folds cannot be fitted; fall back to fitting on every row for it.
        train_labels = labels[keep]
        if any(not (train_labels == i).any() for i in range(num_old, num_old + num_new)):
            keep[:] = True
        w, b = fit_new_rows(features[keep], labels[keep], old_weight, old_bias, num_new, **fit_kwargs)
        out[held] = features[held].float() @ w.T + b
    return out


def refit_all_rows(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    l2: float = 1e-3,
    max_iter: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refit every row (old ones too) by class-balanced cross-entropy, starting from ``(weight, bias)``.

    Only for increments that hold rows of every old label, and only kept where a held-out check prefers it
    (:func:`add_new_rows`): a trained row summarises data the increment may not hold.
    """
    _, dim = _check_head(weight, bias)
    check_features(features, dim, "features", min_rows=1)
    check_labels(labels, features.shape[0], weight.shape[0], "labels")
    x = features.to(torch.float64)
    w = weight.detach().to(torch.float64).clone().requires_grad_(True)
    b = bias.detach().to(torch.float64).clone().requires_grad_(True)
    weights = balanced_weights(labels, weight.shape[0])

    def loss():
        value = (F.cross_entropy(x @ w.T + b, labels, reduction="none") * weights).sum()
        return value + 0.5 * l2 * (w * w).sum()

    _minimize([w, b], loss, max_iter)
    return w.detach().to(weight.dtype), b.detach().to(bias.dtype)


def add_new_rows(
    features: torch.Tensor,
    labels: torch.Tensor,
    old_weight: torch.Tensor,
    old_bias: torch.Tensor | None,
    num_new: int,
    *,
    l2_grid: tuple[float, ...] = L2_GRID,
    folds: int = 3,
    seed: int = 0,
    max_iter: int = 100,
    allow_refit: bool = True,
) -> dict:
    """The whole single-label recipe: old rows kept (bit for bit unless a held-out check prefers a refit), new rows
    fitted, new logits calibrated against the old ones where the data allow.

    - No old label has rows (``"new_only"``): new rows on the old rows' scale (``scale="aligned"``), fitted against
      one :func:`old_label_anchors` per old label; no calibration (no held-out old rows to fit it on).
    - Some old labels have rows (``"with_old"``): free new rows, L2 chosen from ``l2_grid`` and BiC's ``(a, c)``
      fitted, both on ``folds``-fold cross-fitted held-out logits (class-balanced cross-entropy), then folded in.
    - Every old label has rows and ``allow_refit``: also refit all rows (:func:`refit_all_rows`) on the same folds;
      the refit replaces the kept head only if its held-out accuracy is higher on the old labels' rows AND on all.

    Returns:
        ``{"weight", "bias"}`` of the grown head, the new rows alone (``"new_weight"``, ``"new_bias"``; before any
        refit), ``"a"``, ``"c"``, ``"l2"``, ``"case"`` and ``"refit"`` (bool), plus the held-out figures checked
        and (case ``"with_old"``) the head before any refit (``"kept_weight"``, ``"kept_bias"``).
    """
    num_old, _ = _check_head(old_weight, old_bias)
    check_features(features, old_weight.shape[1], "features", min_rows=1)
    check_labels(labels, features.shape[0], num_old + num_new, "labels")
    present_old = torch.unique(labels[labels < num_old])
    info: dict = {"a": 1.0, "c": 0.0, "l2": None, "refit": False}
    if present_old.numel() == 0:
        anchors = old_label_anchors(features, old_weight)
        x = torch.cat([features.float(), anchors])
        y = torch.cat([labels, torch.arange(num_old)])
        new_weight, new_bias = fit_new_rows(x, y, old_weight, old_bias, num_new, scale="aligned", max_iter=max_iter)
        weight, bias = grow_rows(old_weight, old_bias, new_weight, new_bias)
        return {"weight": weight, "bias": bias, "new_weight": new_weight, "new_bias": new_bias, "case": "new_only",
                **info}

    old_logits = _old_logits(features, old_weight, old_bias)
    best = None
    for l2 in l2_grid:
        held = cross_fitted_new_logits(features, labels, old_weight, old_bias, num_new, folds=folds, seed=seed,
                                       scale="free", l2=l2, max_iter=max_iter)
        a, c = fit_logit_calibration(old_logits, held, labels) if old_bias is not None else (1.0, 0.0)
        loss = _balanced_ce(torch.cat([old_logits, a * held + c], 1), labels)
        if best is None or loss < best[0]:
            best = (loss, l2, a, c, held)
    _, l2, a, c, held = best
    info.update(a=a, c=c, l2=l2, cv_loss=best[0])
    new_weight, new_bias = fit_new_rows(features, labels, old_weight, old_bias, num_new, scale="free", l2=l2,
                                        max_iter=max_iter)
    new_weight, new_bias = fold_calibration(new_weight, new_bias, a, c)
    weight, bias = grow_rows(old_weight, old_bias, new_weight, new_bias)
    info.update(kept_weight=weight, kept_bias=bias)

    if allow_refit and old_bias is not None and present_old.numel() == num_old:
        kept_pred = torch.cat([old_logits, a * held + c], 1).argmax(1)
        refit_pred = _cross_fitted_refit(features, labels, old_weight, old_bias, num_new, (a, c), l2, folds, seed,
                                         max_iter)
        old = labels < num_old

        def acc(pred, mask):
            return float((pred[mask] == labels[mask]).float().mean())

        info.update(held_out_old_kept=acc(kept_pred, old), held_out_old_refit=acc(refit_pred, old),
                    held_out_all_kept=acc(kept_pred, old | ~old), held_out_all_refit=acc(refit_pred, old | ~old))
        if info["held_out_old_refit"] > info["held_out_old_kept"] and (
            info["held_out_all_refit"] > info["held_out_all_kept"]
        ):
            weight, bias = refit_all_rows(features, labels, weight, bias, l2=l2, max_iter=max_iter)
            info["refit"] = True
    return {"weight": weight, "bias": bias, "new_weight": new_weight, "new_bias": new_bias, "case": "with_old",
            **info}


def _cross_fitted_refit(features, labels, old_weight, old_bias, num_new, calibration, l2, folds, seed, max_iter):
    """Each row's label predicted by a refit of every row on the other folds (new rows fitted and calibrated the
    same way first): the held-out side of the refit's check."""
    refit_pred = torch.empty_like(labels)
    for fold in fold_indices(labels, folds, seed):
        keep = torch.ones(labels.shape[0], dtype=torch.bool)
        keep[fold] = False
        w_f, b_f = fit_new_rows(features[keep], labels[keep], old_weight, old_bias, num_new, scale="free", l2=l2,
                                max_iter=max_iter)
        w_f, b_f = fold_calibration(w_f, b_f, *calibration)
        w_all, b_all = refit_all_rows(features[keep], labels[keep], *grow_rows(old_weight, old_bias, w_f, b_f),
                                      l2=l2, max_iter=max_iter)
        refit_pred[fold] = (features[fold].float() @ w_all.float().T + b_all.float()).argmax(1)
    return refit_pred


def represents_old_labels(labels: torch.Tensor, num_old: int, num_labels: int) -> bool:
    """Whether single-label rows hold the old labels about as well as the new ones: every old label (ids below
    ``num_old``) has rows, and the median old label at least half as many as the median new label (ids ``num_old``
    to ``num_labels - 1``). Medians, because real data sets are unbalanced (BANKING77: 35 to 187 rows a label).

    Such rows can teach the old labels again, so fine-tuning the encoder on them is a joint fine-tune (what
    :func:`hf_incr.train_increment` does for a model trained elsewhere, ``adapt_trained_elsewhere``). A few rows per
    old label cannot: a fine-tune on mostly new rows moves the encoder away from the old labels (issue 13's benchmark:
    5 rows per old label, one epoch, old-label accuracy 91.9 -> 74.1 %)."""
    check_labels(labels, labels.shape[0], num_labels, "labels")
    if num_old == 0 or num_old >= num_labels:
        return False
    counts = torch.bincount(labels.long(), minlength=num_labels).double()
    old, new = counts[:num_old], counts[num_old:]
    if not bool((new > 0).any()) or not bool((old > 0).all()):
        return False
    return bool(old.median() >= 0.5 * new[new > 0].median())


def refit_if_better(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    l2: float = 1e-3,
    folds: int = 3,
    seed: int = 0,
    max_iter: int = 100,
) -> dict:
    """Data with only the head's own labels (nothing to add): the trained head stays, unless every label has rows
    and refitting all rows on them (:func:`refit_all_rows`) is more accurate on ``folds``-fold held-out rows.

    Returns ``{"weight", "bias", "refit"}`` (the input tensors themselves when kept)."""
    num_labels, _ = _check_head(weight, bias)
    check_features(features, weight.shape[1], "features", min_rows=1)
    check_labels(labels, features.shape[0], num_labels, "labels")
    info: dict = {"weight": weight, "bias": bias, "refit": False}
    if bias is None or torch.unique(labels).numel() < num_labels:
        return info
    kept_pred = (features.float() @ weight.float().T + bias.float()).argmax(1)
    refit_pred = torch.empty_like(labels)
    for fold in fold_indices(labels, folds, seed):
        keep = torch.ones(labels.shape[0], dtype=torch.bool)
        keep[fold] = False
        w_fold, b_fold = refit_all_rows(features[keep], labels[keep], weight, bias, l2=l2, max_iter=max_iter)
        refit_pred[fold] = (features[fold].float() @ w_fold.float().T + b_fold.float()).argmax(1)
    info.update(held_out_kept=float((kept_pred == labels).float().mean()),
                held_out_refit=float((refit_pred == labels).float().mean()))
    if info["held_out_refit"] > info["held_out_kept"]:
        info["weight"], info["bias"] = refit_all_rows(features, labels, weight, bias, l2=l2, max_iter=max_iter)
        info["refit"] = True
    return info


# --------------------------------------------------------------------------------------------------- multi-label


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    # One binary logistic regression per column, solved together: the problems share nothing but the inputs.
    w = torch.zeros(y.shape[1], x.shape[1], dtype=torch.float64, requires_grad=True)
    prior = y.mean(0).clamp(1e-4, 1 - 1e-4)
    b = torch.log(prior / (1 - prior)).clone().requires_grad_(True)

    def loss():
        logits = x @ w.T + b
        return F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / x.shape[0] + 0.5 * l2 * (w * w).sum()

    _minimize([w, b], loss, max_iter)
    return w.detach(), b.detach()


def fit_multilabel_new_rows(
    features: torch.Tensor,
    targets: torch.Tensor,
    num_old: int,
    *,
    l2: float | None = None,
    folds: int = 3,
    seed: int = 0,
    max_iter: int = 300,
) -> dict:
    """New rows of a sigmoid head: each new label's logistic regression against every other row of the increment.

    Old rows are not touched (nor read): in a sigmoid head each label decides alone, so the old labels' predictions
    stay bit for bit what they were. ``l2`` (per row, relative to the mean loss) is chosen by ``folds``-fold
    cross-validated log-loss over :data:`L2_GRID` when ``None``: the increment's own held-out rows pick it.

    Args:
        features: ``(n, d)`` head inputs.
        targets: ``(n, num_old + num_new)`` multi-hot; only the new columns are read (old columns may be 0 where the
            user did not annotate old labels).
        num_old: Number of old labels.

    Returns:
        ``{"new_weight", "new_bias", "l2", "cv_loss"}``.
    """
    check_features(features, None, "features", min_rows=1)
    check_targets(targets, features.shape[0], None, "targets")
    if targets.shape[1] <= num_old:
        raise DataError(
            f"targets must have columns for the new labels after the {num_old} old ones; found {targets.shape[1]} "
            "columns. Grow the label list before building the targets."
        )
    x = features.to(torch.float64)
    y = targets[:, num_old:].to(torch.float64)
    if (y.sum(0) == 0).any():
        raise DataError(
            "every new label needs positive rows; found none for new columns "
            f"{torch.nonzero(y.sum(0) == 0).flatten().tolist()[:10]}. Add rows of those labels."
        )
    cv_loss = {}
    if l2 is None:
        # Stratify folds by the rows' first new label (0 = none): keeps each label in every fold where possible.
        strata = torch.where(y.any(1), y.argmax(1) + 1, torch.zeros_like(y[:, 0], dtype=torch.long))
        held_sets = fold_indices(strata, folds, seed)
        for candidate in L2_GRID:
            total = 0.0
            for held in held_sets:
                keep = torch.ones(x.shape[0], dtype=torch.bool)
                keep[held] = False
                w, b = _fit_logistic(x[keep], y[keep], candidate, max_iter)
                total += float(F.binary_cross_entropy_with_logits(x[held] @ w.T + b, y[held], reduction="sum"))
            cv_loss[candidate] = total / x.shape[0]
        l2 = min(cv_loss, key=cv_loss.get)
    w, b = _fit_logistic(x, y, l2, max_iter)
    return {"new_weight": w.float(), "new_bias": b.float(), "l2": l2, "cv_loss": cv_loss}




# --------------------------------------------------------------------------------------------------- the head

# L-BFGS iterations of the new rows' fit that only starts the adaptation of a model trained elsewhere (the fine-tune
# moves them anyway): 200 took 15.6 of CLINC150's 194 s.
ADAPT_START_ITERATIONS = 50


class KeptRowsHead(LinearHead):
    """The Linear of a classifier hf_incr did not train: its trained rows stay (bit for bit, unless every old label
    has rows and a held-out check prefers refitting them all), the new rows are fitted against them on the head inputs
    of the increment's rows (replayed rows included), and the statistics of the increment's own rows are kept, the
    trained rows marked, so the next increment continues the same way.

    ``quick``: only the start of an adaptation of the encoder (the whole head is solved again after it): one fit of
    the new rows against the frozen old ones, no held-out calibration."""

    def __init__(self, statistics, kept=None, *, seed: int = 0, quick: bool = False):
        super().__init__(statistics, kept)
        self.seed, self.quick = seed, quick
        self.rows = None
        self._cached: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []
        self.features = self.targets = None

    @classmethod
    def start(cls, model, location, *, config=None, multi_label, seed=0, kept_labels=()) -> KeptRowsHead:
        return cls(LinearHead.start(model, location, multi_label=multi_label).statistics, seed=seed)

    @classmethod
    def continuing(cls, head: LinearHead, seed: int = 0) -> KeptRowsHead:
        """The saved Linear head's statistics and kept flags, continued on this path."""
        kept = cls(head.statistics, head.kept, seed=seed)
        kept.path = head.path
        return kept

    @property
    def head_rows(self) -> str:
        return "kept" if self.keeps_trained_rows else "refitted"

    def begin(self, rows) -> None:
        super().begin(rows)
        self._cached, self.features, self.targets = [], None, None

    def feed(self, rows: list[int], features: torch.Tensor, targets: torch.Tensor) -> None:
        # Every training row (replayed ones too) is fitted; only the increment's own rows enter the statistics.
        self._cached.append((rows, features, targets))
        super().feed(rows, features, targets)

    def end(self) -> None:
        super().end()
        share = rows_of_this_process(self.rows.total)
        dim = self.statistics.dim
        features = torch.zeros(len(share), dim)
        targets = torch.zeros(len(share), *((self.rows.num_labels,) if self.statistics.multi_label else ()),
                              dtype=torch.float64 if self.statistics.multi_label else torch.long)
        for rows, batch_features, batch_targets in self._cached:
            index = torch.tensor(rows) - share.start  # a process's rows are contiguous
            features[index] = batch_features.float()
            targets[index] = batch_targets.to(targets.dtype)
        self._cached = []
        self.features = gather_rows(features, share, self.rows.total)
        self.targets = gather_rows(targets, share, self.rows.total)

    def solve(self, model, location: ClassifierHead) -> dict[int, float]:
        linear, num_old = location.linear, self.rows.num_old
        new_ids = list(range(num_old, self.rows.num_labels))
        old_weight = linear.weight[:num_old].detach().float().cpu()
        old_bias = None if linear.bias is None else linear.bias[:num_old].detach().float().cpu()
        refit, thresholds = False, {}
        weight = bias = new_weight = new_bias = None
        if self.statistics.multi_label:
            if new_ids:  # each new label its own logistic regression; old rows are not even read
                fitted = fit_multilabel_new_rows(self.features, self.targets.float(), num_old, seed=self.seed)
                new_weight, new_bias = fitted["new_weight"], fitted["new_bias"]
        else:
            labels = self.targets
            if new_ids and self.quick:
                grown = grow_rows(old_weight, old_bias, *fit_new_rows(
                    self.features, labels, old_weight, old_bias, len(new_ids), scale="free",
                    max_iter=ADAPT_START_ITERATIONS,
                ))
                fitted = {"refit": False, "weight": grown[0], "bias": grown[1]}
            elif new_ids:
                fitted = add_new_rows(self.features, labels, old_weight, old_bias, len(new_ids), seed=self.seed)
            else:  # only the model's own labels: nothing to add, a refit only if it wins a held-out check
                fitted = refit_if_better(self.features, labels, old_weight, old_bias, seed=self.seed)
            refit = bool(fitted["refit"])
            weight, bias = fitted["weight"], fitted["bias"]
            new_weight, new_bias = weight[num_old:], None if bias is None else bias[num_old:]
        with torch.no_grad():
            if refit:
                linear.weight.copy_(weight.to(linear.weight))
                if linear.bias is not None:
                    linear.bias.copy_(bias.to(linear.bias))
            elif new_ids:
                # Only the new rows are written: the old ones stay the tensors they were, bit for bit.
                linear.weight[num_old:] = new_weight.to(linear.weight)
                if linear.bias is not None and new_bias is not None:
                    linear.bias[num_old:] = new_bias.to(linear.bias)
        if self.statistics.multi_label and new_ids and linear.bias is not None:
            # Each new label decides at its F1-tuned threshold, folded into its bias (old rows are not touched).
            cuts = f1_thresholds(new_weight.double(), new_bias.double(), self.statistics.moments(new_ids))
            with torch.no_grad():
                linear.bias[num_old:] -= cuts.to(linear.bias)
            thresholds = {num_old + k: float(cut) for k, cut in enumerate(cuts)}
        # Rows refitted on every label's rows are the data's own fit; otherwise every row is a kept, trained row.
        self.kept[:] = not refit
        self.features = self.targets = None
        return thresholds
