"""hf_incr.heads.kept_rows: new head rows beside the kept, trained rows of a classifier trained elsewhere (tiny random
tensors and a tiny BERT)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_incr.errors import DataError
from hf_incr.heads import kept_rows as nr

D, NUM_OLD, NUM_NEW, PER_LABEL = 12, 4, 3, 25


def blobs(seed: int = 0):
    """Gaussian blobs per label and a head trained on the old labels' blobs (a stand-in for a fine-tuned head)."""
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(NUM_OLD + NUM_NEW, D, generator=g)
    y = torch.arange(NUM_OLD + NUM_NEW).repeat_interleave(PER_LABEL)
    x = means[y] + torch.randn(len(y), D, generator=g)
    head = torch.nn.Linear(D, NUM_OLD)
    old = y < NUM_OLD
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(head(x[old]), y[old]).backward()
        opt.step()
    return x, y, head.weight.detach().clone(), head.bias.detach().clone()


def accuracy(weight, bias, x, y):
    return float(((x @ weight.T + bias).argmax(1) == y).float().mean())


@pytest.mark.parametrize("old_rows", [0, 5, PER_LABEL])
def test_add_new_rows_keeps_old_rows_bit_exact_and_learns_new_labels(old_rows):
    x, y, w_old, b_old = blobs()
    w_copy, b_copy = w_old.clone(), b_old.clone()
    rank = torch.arange(len(y)) % PER_LABEL  # position of each row within its label
    rows = (y >= NUM_OLD) | (rank < old_rows)
    out = nr.add_new_rows(x[rows], y[rows], w_old, b_old, NUM_NEW, allow_refit=False)
    assert out["case"] == ("with_old" if old_rows else "new_only") and not out["refit"]
    assert out["weight"].shape == (NUM_OLD + NUM_NEW, D) and out["bias"].shape == (NUM_OLD + NUM_NEW,)
    assert torch.equal(out["weight"][:NUM_OLD], w_copy) and torch.equal(out["bias"][:NUM_OLD], b_copy)
    assert torch.equal(w_old, w_copy) and torch.equal(b_old, b_copy)  # inputs not modified
    new = y >= NUM_OLD
    assert accuracy(out["weight"], out["bias"], x[new], y[new]) > 0.9
    assert accuracy(out["weight"], out["bias"], x[~new], y[~new]) > 0.9


def test_refit_replaces_old_rows_only_when_the_held_out_check_prefers_it():
    x, y, w_old, b_old = blobs()
    w_bad, b_bad = torch.randn(NUM_OLD, D, generator=torch.Generator().manual_seed(1)), torch.zeros(NUM_OLD)
    out = nr.add_new_rows(x, y, w_bad, b_bad, NUM_NEW)  # an untrained old head: the refit wins
    assert out["refit"] and out["held_out_old_refit"] > out["held_out_old_kept"]
    assert not torch.equal(out["weight"][:NUM_OLD], w_bad)
    assert torch.equal(out["kept_weight"][:NUM_OLD], w_bad)
    kept = nr.add_new_rows(x, y, w_old, b_old, NUM_NEW)
    if not kept["refit"]:
        assert torch.equal(kept["weight"][:NUM_OLD], w_old)


def test_anchors_are_classified_as_their_old_label_by_the_trained_head():
    x, y, w_old, b_old = blobs()
    anchors = nr.old_label_anchors(x[y >= NUM_OLD], w_old)
    assert anchors.shape == (NUM_OLD, D)
    assert ((anchors @ w_old.T + b_old).argmax(1) == torch.arange(NUM_OLD)).all()
    torch.testing.assert_close(anchors.norm(dim=1).mean(), x[y >= NUM_OLD].norm(dim=1).mean(), rtol=0.05, atol=0)


def test_aligned_rows_sit_on_the_old_rows_scale():
    x, y, w_old, b_old = blobs()
    new = y >= NUM_OLD
    w, b = nr.fit_new_rows(x[new], y[new], w_old, b_old, NUM_NEW, scale="aligned")
    torch.testing.assert_close(w.norm(dim=1), w_old.norm(dim=1).mean().expand(NUM_NEW), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.mean(), b_old.mean(), rtol=1e-5, atol=1e-5)


def test_fold_calibration_equals_affine_of_logits():
    x = blobs()[0]
    w, b = torch.randn(NUM_NEW, D), torch.randn(NUM_NEW)
    wa, ba = nr.fold_calibration(w, b, 1.7, -0.3)
    torch.testing.assert_close(x @ wa.T + ba, 1.7 * (x @ w.T + b) - 0.3)


def test_logit_calibration_lowers_overconfident_new_logits():
    x, y, w_old, b_old = blobs()
    old_logits = x @ w_old.T + b_old
    good = torch.randn(len(y), NUM_NEW) * 0.1
    good[torch.arange(len(y))[y >= NUM_OLD], y[y >= NUM_OLD] - NUM_OLD] = old_logits.max() + 1
    _, c = nr.fit_logit_calibration(old_logits, good + 100.0, y)  # every new logit 100 too high
    assert c < -50


def test_logit_calibration_refuses_new_rows_only():
    x, y, w_old, _ = blobs()
    new = y >= NUM_OLD
    with pytest.raises(DataError, match="old AND new"):
        nr.fit_logit_calibration(x[new] @ w_old.T, torch.zeros(int(new.sum()), NUM_NEW), y[new])


def test_multilabel_old_predictions_bit_exact_in_a_tiny_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=D, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        num_labels=NUM_OLD, problem_type="multi_label_classification",
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(1, 50, (40, 7))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        features = model.bert(input_ids=ids).pooler_output
    targets = torch.zeros(40, NUM_OLD + NUM_NEW)
    targets[torch.arange(40), NUM_OLD + torch.arange(40) % NUM_NEW] = 1
    fitted = nr.fit_multilabel_new_rows(features, targets, NUM_OLD)
    head = model.classifier
    weight, bias = nr.grow_rows(head.weight, head.bias, fitted["new_weight"], fitted["new_bias"])
    grown = torch.nn.Linear(D, NUM_OLD + NUM_NEW)
    with torch.no_grad():
        grown.weight.copy_(weight)
        grown.bias.copy_(bias)
    model.classifier = grown
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.equal(after[:, :NUM_OLD] > 0, before > 0)
    assert torch.equal(grown.weight[:NUM_OLD], head.weight) and torch.equal(grown.bias[:NUM_OLD], head.bias)
    assert fitted["l2"] in nr.L2_GRID


def test_multilabel_rows_learn_their_label():
    x, y, _, _ = blobs()
    targets = F.one_hot(y, NUM_OLD + NUM_NEW).float()
    fitted = nr.fit_multilabel_new_rows(x, targets, NUM_OLD, l2=1e-3)
    pred = (x @ fitted["new_weight"].T + fitted["new_bias"]) > 0
    assert float((pred == targets[:, NUM_OLD:].bool()).float().mean()) > 0.95


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, y, w, b: nr.fit_new_rows(x, y, w[0], b, NUM_NEW), r"shape \(num_old, hidden\)"),
        (lambda x, y, w, b: nr.fit_new_rows(x, y, w, b[:2], NUM_NEW), r"old_bias must have shape \(4,\)"),
        (lambda x, y, w, b: nr.fit_new_rows(x[:, :5], y, w, b, NUM_NEW), r"expected features of shape \(rows, 12\)"),
        (lambda x, y, w, b: nr.fit_new_rows(x, y[:-1], w, b, NUM_NEW), "one label id per feature row"),
        (lambda x, y, w, b: nr.fit_new_rows(x, y.float(), w, b, NUM_NEW), "integer tensor"),
        (lambda x, y, w, b: nr.fit_new_rows(x, y + 10, w, b, NUM_NEW), r"must lie in \[0, 7\)"),
        (lambda x, y, w, b: nr.fit_new_rows(x[y < 5], y[y < 5], w, b, NUM_NEW), "found none for ids"),
        (lambda x, y, w, b: nr.fit_multilabel_new_rows(x, torch.zeros(len(y) - 1, 7), NUM_OLD), "multi-hot matrix"),
        (lambda x, y, w, b: nr.grow_rows(w, b, torch.zeros(2, 5), None), r"\(num_new, 12\)"),
        (lambda x, y, w, b: nr.fit_new_rows(torch.zeros(0, D), y[:0], w, b, NUM_NEW), "non-empty"),
    ],
)
def test_bad_inputs_raise_data_error_saying_what_and_how(call, match):
    x, y, w, b = blobs()
    with pytest.raises(DataError, match=match) as info:
        call(x, y, w, b)
    assert isinstance(info.value, ValueError)
    assert "found" in str(info.value) or "got" in str(info.value)  # what was passed, beside what was expected


def test_old_labels_are_represented_when_their_median_has_half_the_new_median_rows():
    # Labels 0-2 old, 3-5 new with 10, 10, 40 rows: the median new label has 10, so the median old label needs 5.
    def labels(old_counts):
        counts = [*old_counts, 10, 10, 40]
        return torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])

    assert nr.represents_old_labels(labels([1, 5, 12]), 3, 6)  # unbalanced, as real data is
    assert not nr.represents_old_labels(labels([4, 4, 12]), 3, 6)  # a few rows per old label
    assert not nr.represents_old_labels(labels([0, 12, 12]), 3, 6)  # an old label without rows
    # Nothing old, or nothing new: no joint fine-tune to run.
    assert not nr.represents_old_labels(labels([5, 5, 12]), 0, 6)
    assert not nr.represents_old_labels(torch.tensor([0, 0, 1, 1, 2]), 3, 6)
