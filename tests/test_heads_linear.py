"""The Linear's closed form (hf_incr.heads.linear): LDA over increments equal to the joint solve, written into the
model's output Linear, its statistics file (and the earlier versions' hf_incr_ridge.safetensors) read back or refused
by name; and the recipe solving it over increments, saved and continued."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from text_models import as_label_lists, text_dataset, tiny_bert, tokenizer, training_args
from torch import nn

from hf_incr import ConfigError, DataError, IncrementConfig, train_base_classifier, train_increment
from hf_incr.errors import SavedStateError
from hf_incr.features import extract_head_inputs
from hf_incr.head import ClassifierHead, find_classifier_head
from hf_incr.heads import ClassStatistics, KeptRowsHead, LinearHead, PassRows
from hf_incr.heads.lda import binary_discriminants, f1_thresholds, oas_shrinkage
from hf_incr.heads.linear import LEGACY_FILENAME, LEGACY_FORMAT, STATISTICS_FILENAME, write_rows


def _linear(**values) -> IncrementConfig:
    """The recipe with the Linear's closed form answering (whatever the default head)."""
    return IncrementConfig(head="linear", **values)


def _feed(head: LinearHead, x, targets, *, num_old=0, num_labels=None, annotated=None, batch=None):
    """One increment's frozen pass into the head (in batches of ``batch`` rows)."""
    num_labels = num_labels or (targets.shape[1] if head.statistics.multi_label else int(targets.max()) + 1)
    head.begin(PassRows(num_old=num_old, num_labels=num_labels, annotated=annotated, own=len(x), total=len(x)))
    step = batch or len(x)
    for start in range(0, len(x), step):
        head.add(list(range(start, min(start + step, len(x)))), x[start : start + step], targets[start : start + step])
    head.end()
    return head


def _multi_label_rows(n: int, generator: torch.Generator, prevalence=(0.3, 0.2, 0.03), dim=12, scale=2.0):
    """Rows whose labels each shift the features along their own direction (label 2 is rare)."""
    centres = scale * torch.randn(len(prevalence), dim, generator=generator, dtype=torch.float64)
    targets = (torch.rand(n, len(prevalence), generator=generator) < torch.tensor(prevalence)).double()
    return targets @ centres + torch.randn(n, dim, generator=generator, dtype=torch.float64), targets


def _legacy_file(folder, x, targets, *, kept=None, unannotated=None):
    """What earlier versions saved: raw moments over [head input, 1] (``gram``, ``cross``)."""
    x1 = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    tensors = {"gram": x1.T @ x1, "cross": x1.T @ targets.double()}
    if kept is not None:
        tensors["kept"] = kept.to(torch.uint8)
    if unannotated is not None:
        tensors["unannotated"] = unannotated
    save_file(tensors, str(folder / LEGACY_FILENAME), metadata={"count": str(len(x)), "format": LEGACY_FORMAT})


# -- the solve ------------------------------------------------------------------------------------------------------


def test_incremental_solution_equals_the_joint_solution():
    generator = torch.Generator().manual_seed(0)
    dim, sizes = 24, [(3, 40), (2, 30), (4, 50)]  # (new labels, rows) per increment
    head = LinearHead(ClassStatistics(dim))
    all_x, all_ids, seen = [], [], 0
    for new, rows in sizes:
        x = torch.randn(rows, dim, generator=generator, dtype=torch.float64)
        ids = torch.randint(seen, seen + new, (rows,), generator=generator)
        _feed(head, x.float(), ids, num_old=seen, num_labels=seen + new, batch=7)
        seen += new
        all_x.append(x.float().double())
        all_ids.append(ids)
    # The joint LDA of every row at once: class means, pooled covariance shrunk by OAS, priors from counts.
    x, ids = torch.cat(all_x), torch.cat(all_ids)
    counts = torch.bincount(ids).double()
    means = torch.stack([x[ids == c].mean(0) for c in range(seen)])
    covariance = (x - means[ids]).T @ (x - means[ids]) / (len(x) - seen)
    rho = oas_shrinkage(covariance, len(x))
    shrunk = (1 - rho) * covariance + rho * torch.trace(covariance) / dim * torch.eye(dim, dtype=torch.float64)
    w_joint = torch.linalg.solve(shrunk, means.T).T
    b_joint = -0.5 * (w_joint * means).sum(1) + torch.log(counts / len(x))
    w_inc, b_inc, thresholds = head.solution()
    rel = ((w_inc - w_joint).norm() / w_joint.norm()).item()
    assert rel < 1e-6 and thresholds is None
    torch.testing.assert_close(b_inc, b_joint, rtol=1e-6, atol=1e-9)
    assert head.statistics.num_rows == sum(rows for _, rows in sizes)


def test_tuned_thresholds_make_a_rare_label_fire_and_fold_into_the_bias():
    # Labels that overlap (small shifts): a sigmoid's 0.5 then misses most rows of the rare label.
    x, targets = _multi_label_rows(3000, torch.Generator().manual_seed(6), scale=0.5)
    test_x, test_targets = x[1500:], targets[1500:]
    x, targets = x[:1500], targets[:1500]
    head = LinearHead(ClassStatistics(x.shape[1], multi_label=True).update(x, targets))
    moments = head.statistics.moments()
    weight, bias = binary_discriminants(moments)

    def f1(logits, k):
        predicted, actual = logits[:, k] > 0, test_targets[:, k] == 1
        true_positive = (predicted & actual).sum().item()
        return 2 * true_positive / (predicted.sum().item() + actual.sum().item())

    cuts = f1_thresholds(weight, bias, moments)
    assert cuts[2] < 0  # the rare label: predicted below posterior 0.5
    at_half, tuned = test_x @ weight.T + bias, test_x @ weight.T + bias - cuts
    assert f1(tuned, 2) > f1(at_half, 2) + 0.1
    # The head's rows fold the same thresholds into the bias; tuning the folded rows again moves nothing.
    linear = nn.Linear(x.shape[1], 3).double()
    folded = write_rows(linear, *head.solution())
    assert list(folded) == [0, 1, 2]
    torch.testing.assert_close(torch.tensor(list(folded.values()), dtype=torch.float64), cuts)
    torch.testing.assert_close(linear.bias.detach(), bias - cuts)
    again = f1_thresholds(linear.weight.detach(), linear.bias.detach(), moments)
    assert again.abs().max() < 0.05 * cuts.abs().max()


def test_writing_only_some_labels_leaves_the_other_rows_bit_for_bit():
    generator = torch.Generator().manual_seed(7)
    x, targets = _multi_label_rows(400, generator)
    head = _feed(LinearHead(ClassStatistics(x.shape[1], multi_label=True)), x[:200].float(), targets[:200])
    later = targets[200:].clone()
    later[:, :2] = 0
    _feed(head, x[200:].float(), later, num_old=3, annotated=[2])
    model = nn.Sequential(nn.Linear(x.shape[1], 3))
    linear = model[0]
    location = ClassifierHead("0", model, "0", linear)
    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    # The increment's rows annotate label 2 only: solve writes its row alone.
    thresholds = head.solve(model, location)
    assert list(thresholds) == [2]
    assert torch.equal(linear.weight[:2], weight[:2]) and torch.equal(linear.bias[:2], bias[:2])
    assert not torch.equal(linear.weight[2], weight[2])
    with pytest.raises(SavedStateError, match=r"3 labels x 12 head inputs but the head is \(2, 12\)"):
        write_rows(nn.Linear(x.shape[1], 2), *head.solution())


# -- files ----------------------------------------------------------------------------------------------------------


def test_statistics_round_trip_through_safetensors(tmp_path):
    head = _feed(LinearHead(ClassStatistics(4)), torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1]))
    assert head.save(tmp_path) == [tmp_path / STATISTICS_FILENAME]
    loaded = LinearHead.load(tmp_path)
    assert type(loaded) is LinearHead and loaded.num_labels == 2 and loaded.statistics.num_rows == 5
    for name in ("counts", "sums", "scatter"):
        assert torch.equal(getattr(loaded.statistics, name), getattr(head.statistics, name)), name
    assert LinearHead.load(tmp_path / "missing") is None
    # Kept, trained rows (a classifier trained elsewhere) come back marked, and continue as kept rows; a multi-label
    # head keeps its kind.
    head.kept[1] = True
    head.save(tmp_path)
    kept = LinearHead.load(tmp_path)
    assert kept.kept.tolist() == [False, True] and kept.keeps_trained_rows
    continued = KeptRowsHead.continuing(kept)
    assert continued.kept.tolist() == [False, True] and continued.statistics is kept.statistics
    x, targets = _multi_label_rows(30, torch.Generator().manual_seed(1))
    multi = LinearHead(ClassStatistics(12, multi_label=True).update(x, targets))
    multi.save(tmp_path)
    again = LinearHead.load(tmp_path, multi_label=True).statistics
    assert again.multi_label
    for name in ("counts", "sums", "scatter", "row_count", "row_sum", "annotated_counts", "annotated_sums"):
        assert torch.equal(getattr(again, name), getattr(multi.statistics, name)), name


def test_the_earlier_versions_ridge_file_is_read_as_the_same_statistics(tmp_path):
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(40, 6, generator=generator, dtype=torch.float64)
    ids = torch.arange(40) % 3
    _legacy_file(tmp_path, x, torch.eye(3, dtype=torch.float64)[ids])
    loaded = LinearHead.load(tmp_path)
    expected = ClassStatistics(6).update(x, ids)
    assert type(loaded) is LinearHead and loaded.path == tmp_path / LEGACY_FILENAME
    torch.testing.assert_close(loaded.statistics.counts, expected.counts)
    torch.testing.assert_close(loaded.statistics.sums, expected.sums)
    torch.testing.assert_close(loaded.statistics.scatter, expected.scatter)
    # A save writes the new file only; the new file is read first from then on.
    loaded.save(tmp_path)
    assert LinearHead.load(tmp_path).path == tmp_path / STATISTICS_FILENAME
    # Multi-label, with rows that did not annotate labels 0 and 1 (earlier versions' `unannotated` sums of [x, 1]),
    # and kept rows.
    x, targets = _multi_label_rows(50, generator)
    later = targets.clone()
    later[30:, :2] = 0
    x1 = torch.cat([x[30:], torch.ones(20, 1, dtype=torch.float64)], 1)
    unannotated = torch.zeros(13, 3, dtype=torch.float64)
    unannotated[:, :2] = x1.sum(0)[:, None]
    folder = tmp_path / "multi"
    folder.mkdir()
    _legacy_file(folder, x, later, kept=torch.tensor([True, False, False]), unannotated=unannotated)
    loaded = LinearHead.load(folder, multi_label=True)
    expected = ClassStatistics(12, multi_label=True).update(x[:30], later[:30])
    expected.update(x[30:], later[30:], annotated=[2])
    assert loaded.keeps_trained_rows and loaded.kept.tolist() == [True, False, False]
    for name in ("counts", "sums", "scatter", "row_count", "row_sum", "annotated_counts", "annotated_sums"):
        torch.testing.assert_close(getattr(loaded.statistics, name), getattr(expected, name), msg=name)


def test_a_damaged_statistics_file_is_refused_by_name_saying_what_is_lost_and_what_to_do(tmp_path):
    head = _feed(LinearHead(ClassStatistics(4)), torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))
    path = head.save(tmp_path)[0]
    whole = path.read_bytes()
    lost = r"Without it, the next increment cannot solve the old labels' rows of the head exactly"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SavedStateError, match=rf"hf_incr_linear_statistics\.safetensors' could not be read.*{lost}"):
        LinearHead.load(tmp_path)
    save_file({"counts": torch.zeros(3)}, str(path), metadata={"format": "something else"})
    with pytest.raises(SavedStateError, match=r"is not a hf_incr\.linear\.statistics file \(format 'something"):
        LinearHead.load(tmp_path)
    tensors = {**head.statistics.to_tensors(), "kept": torch.zeros(3, dtype=torch.uint8)}
    tensors["sums"] = tensors["sums"][:, :3].contiguous()
    save_file(tensors, str(path), metadata={"format": "hf_incr.linear.statistics", "version": "2", "dim": "4",
                                            "multi_label": "false"})
    with pytest.raises(SavedStateError, match=r"inconsistent shapes \(sums \(3, 3\);.*Restore hf_incr_linear"):
        LinearHead.load(tmp_path)
    tensors["sums"] = torch.full((3, 4), float("nan"), dtype=torch.float64)
    save_file(tensors, str(path), metadata={"format": "hf_incr.linear.statistics", "version": "2", "dim": "4",
                                            "multi_label": "false"})
    with pytest.raises(SavedStateError, match="non-finite"):
        LinearHead.load(tmp_path)
    path.unlink()
    (tmp_path / LEGACY_FILENAME).write_bytes(b"not safetensors")
    with pytest.raises(SavedStateError, match=r"hf_incr_ridge\.safetensors' could not be read"):
        LinearHead.load(tmp_path)
    # Statistics of another model's head: refused where they meet the model.
    model = tiny_bert(["a", "b"])
    with pytest.raises(SavedStateError, match=r"describes 3 labels x 4 head inputs, but the model's head has 2 x 32"):
        head.check_model(model, find_classifier_head(model))


# -- the recipe -----------------------------------------------------------------------------------------------------


def test_closed_form_head_over_increments_saved_and_continued(tmp_path):
    tok = tokenizer()
    model = tiny_bert(["refund", "delivery"])
    config = _linear(finetune_layers=0)
    first = train_increment(model, tok, text_dataset(["refund", "delivery"], 6), config=config,
                            args=training_args(tmp_path, output_dir=str(tmp_path / "a")), kind="increment")
    assert (tmp_path / "a" / STATISTICS_FILENAME).is_file() and first.new_labels == []
    from transformers import AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a")
    train_increment(reloaded, tok, text_dataset(["login"], 6), config=config,
                    args=training_args(tmp_path, output_dir=str(tmp_path / "b")))
    head = LinearHead.load(tmp_path / "b")
    assert head.statistics.num_rows == 18 and head.num_labels == 3
    # The head written into the model is the LDA solution over the statistics of all 18 rows.
    weight, bias, _ = head.solution()
    torch.testing.assert_close(reloaded.classifier.weight.double(), weight, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reloaded.classifier.bias.double(), bias, atol=1e-5, rtol=1e-4)


def test_first_session_adaptation_closed_form_statistics_describe_the_adapted_encoder(tmp_path, monkeypatch):
    tok = tokenizer()
    monkeypatch.setattr(
        "transformers.AutoModelForSequenceClassification.from_pretrained",
        lambda *a, **k: tiny_bert(list(k["id2label"].values()), dropout=0.0),
    )
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: tok)
    config = _linear(finetune_layers=1, finetune_epochs=2, finetune_increments=False, warmup_epochs=2,
                             replay_per_label=0, distill_weight=0.0, finetune_learning_rate=1e-3)
    train = text_dataset(["refund", "delivery"], 6)
    model, _, base = train_base_classifier("tiny", train, config=config, args=training_args(tmp_path), save=False)
    encoder_after_base = {n: p.detach().clone() for n, p in model.named_parameters() if "classifier" not in n}
    pristine = tiny_bert(["refund", "delivery"], dropout=0.0)
    moved = [n for n, p in pristine.named_parameters() if n in encoder_after_base
             and not torch.equal(p, encoder_after_base[n])]
    assert any(".layer.1." in n for n in moved) and not any(".layer.0." in n for n in moved)
    assert "finetune" in base.train_metrics and "closed_form_s" in base.timings
    # The statistics are those of the fine-tuned encoder's features, and the head is their LDA solution.
    features = extract_head_inputs(model, tok, train["text"], show_progress=False).double()
    statistics = base.heads["linear"].statistics
    torch.testing.assert_close(statistics.scatter + statistics.group_moments(), features.T @ features, rtol=1e-5,
                               atol=1e-5)
    weight, _bias, _ = base.heads["linear"].solution()
    torch.testing.assert_close(model.classifier.weight.double(), weight, rtol=1e-4, atol=1e-4)

    # A later increment keeps the encoder frozen (no fine-tuning) and solves the head in closed form.
    result = train_increment(model, tok, text_dataset(["login"], 6), config=config, args=training_args(tmp_path),
                             heads=base.heads, save=False)
    assert "finetune" not in result.train_metrics
    for name, param in model.named_parameters():
        if name in encoder_after_base:
            assert torch.equal(param, encoder_after_base[name]), name
    assert result.heads["linear"].statistics.num_rows == 18 and model.config.num_labels == 3


def test_closed_form_without_statistics_keeps_the_trained_rows_and_fits_new_ones_beside_them(tmp_path):
    # No statistics and only new labels (a classifier trained without hf_incr): its trained rows are kept and the new
    # rows fitted beside them, with a warning naming the labels that nothing calibrates against and the fix; the
    # statistics of the new rows are kept, every row marked as a kept, trained row.
    config = _linear(finetune_layers=0, warmup_epochs=1)
    fallback = tiny_bert(["refund", "delivery"])
    with pytest.warns(UserWarning,
                      match=r"lacks its label\(s\) \['refund', 'delivery'\].*Rows of the old labels buy accuracy"):
        result = train_increment(fallback, tokenizer(), text_dataset(["login"], 4), config=config,
                                 args=training_args(tmp_path), save=False)
    assert "new_rows_s" in result.timings and "warmup" not in result.train_metrics
    assert "closed_form_s" not in result.timings
    assert result.heads["linear"].kept.tolist() == [True] * 3 and fallback.config.num_labels == 3


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(head="linear", finetune_layers=2, finetune_increments=True), "finetune_increments=False"),
        (dict(head="svm"), r"`head` should be one of \['beside_kept', 'kernel', 'linear', 'trained'\]"),
    ],
)
def test_config_refuses_inconsistent_closed_form_settings(values, message):
    with pytest.raises(ConfigError, match=message):
        IncrementConfig(**values)


# -- the recipe, multi-label ----------------------------------------------------------------------------------------

OLD = ["refund", "delivery", "login"]


def _multi_label_base(tmp_path):
    model = tiny_bert(OLD, problem_type="multi_label_classification", seed=2)
    base = train_increment(model, tokenizer(), as_label_lists(text_dataset(OLD, 8)),
                           config=_linear(label_column="labels", finetune_layers=0),
                           args=training_args(tmp_path), save=False, kind="base")
    return model, base.heads


def test_multi_label_increment_of_new_labels_keeps_old_rows_and_saves_its_thresholds(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model, heads = _multi_label_base(tmp_path)
    assert set(model.config.hf_incr_lineage[-1]["thresholds"]) == set(OLD)  # the base tuned every label
    weight, bias = model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone()
    test = as_label_lists(text_dataset([*OLD, "repair"], 3, offset=30))
    batch = tokenizer()(list(test["text"]), padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).logits.clone()
    # Rows of the new label, half of them also carrying an old one (which 'new' annotation does not use).
    train = as_label_lists(text_dataset(["repair"], 8), extra="refund")
    with pytest.warns(UserWarning, match=r"rows carry old labels.*multi_label_annotation='all'"):
        result = train_increment(model, tokenizer(), train, config=_linear(label_column="labels"),
                                 args=training_args(tmp_path, output_dir=str(tmp_path / "v2")), heads=heads)
    assert torch.equal(model.classifier.weight[:3], weight) and torch.equal(model.classifier.bias[:3], bias)
    with torch.no_grad():
        after = model(**batch).logits
    assert torch.equal(after[:, :3] > 0, before > 0)
    assert list(result.record["thresholds"]) == ["repair"]
    # The statistics say no row of this increment annotated an old label.
    assert result.heads["linear"].statistics.annotated_counts.tolist() == [24.0, 24.0, 24.0, 32.0]
    # A plain transformers load applies the folded threshold: the same logits, no hf_incr needed.
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "v2").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, after)
    card = (tmp_path / "v2" / "README.md").read_text()
    assert "| Decides at |" in card and "`repair`" in card


def test_fully_annotated_multi_label_increment_refits_and_retunes_old_labels(tmp_path):
    model, heads = _multi_label_base(tmp_path)
    weight = model.classifier.weight.detach().clone()
    train = as_label_lists(text_dataset(["repair", "refund"], 8), extra="refund")
    result = train_increment(model, tokenizer(), train,
                             config=_linear(label_column="labels", multi_label_annotation="all"),
                             args=training_args(tmp_path), save=False, heads=heads)
    assert not torch.equal(model.classifier.weight[:3], weight)
    assert set(result.record["thresholds"]) == {*OLD, "repair"}
    assert result.heads["linear"].statistics.annotated_counts.tolist() == [40.0] * 4


def test_multi_label_rows_without_a_new_label_under_new_annotation_are_refused(
    tmp_path, snapshot, assert_unchanged
):
    model, heads = _multi_label_base(tmp_path)
    before = snapshot(model)
    with pytest.raises(DataError, match=r"brings no new label.*multi_label_annotation='all'"):
        train_increment(model, tokenizer(), as_label_lists(text_dataset(["refund"], 4)),
                        config=_linear(label_column="labels"), args=training_args(tmp_path), save=False,
                        heads=heads)
    assert_unchanged(model, before)
