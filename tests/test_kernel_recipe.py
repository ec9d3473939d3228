"""The kernel LDA head wired into the recipe (``head="kernel"``): attached on the encoder's pooled top layers, saved as
an inference file and a statistics file, loaded back by ``hf_incr.load_model`` (folder and Hub), continued exactly by
the next increment, while plain ``from_pretrained`` keeps the linear closed-form head."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_hub import REPO, TOKEN, hub  # noqa: F401  (the fake Hub fixture and its credentials)
from text_models import as_label_lists, minilm_path, text_dataset, tiny_bert, tokenizer, training_args
from tiny_models import ARCHITECTURES, tiny_batch, tiny_model
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

import hf_incr
from hf_incr import ConfigError, IncrementConfig, train_increment
from hf_incr import model_card as model_card_module
from hf_incr.cli import parse_args
from hf_incr.config import REMOVED
from hf_incr.errors import HeadConfigMismatchError
from hf_incr.heads import ClassStatistics, KernelHead, PassRows
from hf_incr.heads.kernel import (
    KERNEL_FILENAME,
    KERNEL_STATISTICS_FILENAME,
    block_paths,
    member_features,
    sentence_pooling,
)
from hf_incr.heads.modeling_hf_incr_kernel import KernelConfig, PooledCapture, capture_pooled, pool
from hf_incr.hub import push_to_hub
from hf_incr.info import model_info
from hf_incr.loading import load_heads
from hf_incr.report import format_info, format_probability

CONFIG = dict(head="kernel", kernel_features=64, finetune_layers=0, replay_per_label=0, distill_weight=0.0)
TEXTS = ["please help with password number 3", "please help with parcel number 1", "refund number 40"]


@pytest.fixture(autouse=True)
def _this_checkouts_template(monkeypatch):
    # The editable install maps hf_incr.model_cards to one checkout; the card must come from this one's template.
    template = Path(__file__).resolve().parents[1] / "model_cards" / model_card_module.TEMPLATE_NAME
    monkeypatch.setattr(model_card_module, "template_path", lambda: template)


def _logits(model, tok, texts=TEXTS):
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def _kernel(model) -> KernelHead | None:
    """The kernel head attached to ``model`` (its ``classifier`` is what answers), or ``None``."""
    return KernelHead.attached(model, hf_incr.find_classifier_head(model))


def _pooled(model, tok, texts, layers=2):
    """What the kernel head reads, straight from the encoder's ``hidden_states`` (not its hooks): the mean-pooled
    states of the top ``layers`` layers (the tiny model's 2 by default), each L2-normalised when more than one, then
    concatenated. One padded batch, rows in the frozen pass's order (by length, longest first), so each row is the
    same floats as in the recipe's pass."""
    texts = list(texts)
    order = sorted(range(len(texts)), key=lambda i: -len(tok(texts[i])["input_ids"]))
    batch = tok([texts[i] for i in order], return_tensors="pt", padding=True, truncation=True, max_length=128)
    with torch.no_grad():
        states = model.bert(**batch, output_hidden_states=True).hidden_states[-layers:]
    parts = [pool(hidden, batch["attention_mask"], "mean") for hidden in states]
    if layers > 1:
        parts = [torch.nn.functional.normalize(part, dim=1) for part in parts]
    pooled = torch.empty(len(texts), layers * states[0].shape[-1])
    pooled[order] = torch.cat(parts, dim=1)
    return pooled


def _train_base(tmp_path, config=None, model=None):
    tok = tokenizer()
    config = IncrementConfig(**(config or CONFIG))
    model = model if model is not None else tiny_bert(["refund", "delivery"])
    first = text_dataset(["refund", "delivery"], 6)
    base = train_increment(model, tok, first, config=config,
                           args=training_args(tmp_path, output_dir=str(tmp_path / "a")), kind="base")
    return tok, config, model, first, base


def _relative(mine: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((mine - theirs).norm() / theirs.norm()).item()


def test_kernel_head_round_trip_continuation_and_plain_transformers(tmp_path):
    tok, config, model, first, base = _train_base(tmp_path)
    state = base.heads["kernel"]
    assert state is not None and _kernel(model).classifier is state.classifier
    assert state.config.bandwidth is not None and state.config.pooling == "mean" and state.config.normalize
    # The top 4 layers, capped at the encoder's depth: both layers of the 2-layer encoder, concatenated.
    assert state.config.layers == 2 and state.config.in_features == 2 * model.config.hidden_size
    folder_a = tmp_path / "a"
    assert (folder_a / KERNEL_FILENAME).is_file() and (folder_a / KERNEL_STATISTICS_FILENAME).is_file()

    # Same predictions after save + hf_incr.load_model; the bandwidth chosen at the first increment is recorded.
    reloaded = hf_incr.load_model(str(folder_a))
    loaded = _kernel(reloaded)
    assert loaded is not None and loaded.config.bandwidth == state.config.bandwidth
    torch.testing.assert_close(_logits(reloaded, tok), _logits(model, tok), rtol=1e-5, atol=1e-5)
    # The kernel head's logits are the classifier's scores of the pooled states (not the pooler's Linear).
    torch.testing.assert_close(_logits(model, tok), state.classifier(_pooled(model, tok, TEXTS)), rtol=1e-5,
                               atol=1e-5)

    # A second increment continues the statistics exactly: equal to the saved head fed the new rows, and (up to the
    # float32 statistics files) to one head fed every row at once.
    second = text_dataset(["login"], 6)
    test = text_dataset(["refund", "delivery", "login"], 3, offset=50)
    result = train_increment(reloaded, tok, second, test, config=config,
                             args=training_args(tmp_path, output_dir=str(tmp_path / "b")))
    assert result.metrics_before["old_accuracy"] is not None and "accuracy" in result.metrics_after
    folder_b = tmp_path / "b"
    continued = KernelHead.load(folder_b)
    assert continued.can_continue and len(continued.statistics) == continued.config.num_members == 1
    # Pooled as the recipe's frozen pass batched them (one padded batch per increment), so that the rows are the
    # same floats and only the accumulation differs.
    first_rows, second_rows = _pooled(reloaded, tok, first["text"]), _pooled(reloaded, tok, second["text"])
    projection = continued.projections[0]
    exact = KernelHead.load(folder_a).statistics[0]  # the base's statistics as its file holds them
    exact.update(member_features(continued.config, projection, second_rows), torch.tensor([2] * 6))
    joint = KernelHead(dataclasses.replace(continued.config, labels=[]), projections=continued.projections,
                       statistics=[ClassStatistics(continued.dim)])
    joint.begin(PassRows(num_old=0, num_labels=3, annotated=None, own=18, total=18))
    joint.add(list(range(18)), torch.cat([first_rows, second_rows]), torch.tensor([0] * 6 + [1] * 6 + [2] * 6))
    joint.end()
    # What the increment accumulated is the saved statistics plus the new rows; what it saved, every row at once up
    # to the files' float32 scatter.
    for mine, theirs, tolerance in ((result.heads["kernel"].statistics[0], exact, 1e-8),
                                    (continued.statistics[0], joint.statistics[0], 1e-6)):
        assert torch.equal(mine.counts, theirs.counts)
        assert _relative(mine.sums, theirs.sums) <= 1e-8
        assert _relative(mine.scatter, theirs.scatter) <= tolerance
    # ... with the bandwidth of the first increment (recorded in the lineage, with how it was chosen), and the same
    # predictions after loading.
    assert continued.config.bandwidth == state.config.bandwidth
    lineage = hf_incr.get_lineage(reloaded)
    assert [r["kernel_lda"]["bandwidth"] for r in lineage] == [state.config.bandwidth] * 2
    assert set(lineage[0]["kernel_lda"]["bandwidth_choice"]["held_out_accuracy"]) == {"0.5", "1.0", "2.0"}
    assert "bandwidth_choice" not in lineage[1]["kernel_lda"]
    assert "kernel_lda_s" in result.timings
    torch.testing.assert_close(_logits(hf_incr.load_model(str(folder_b)), tok), _logits(reloaded, tok), rtol=1e-5,
                               atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(_logits(reloaded, tok), joint.solve_classifier()(_pooled(reloaded, tok, TEXTS)),
                                   rtol=1e-4, atol=1e-4)

    # Plain transformers loads every weight and serves the linear closed-form head (the model's own Linear).
    plain, loading = AutoModelForSequenceClassification.from_pretrained(folder_b, output_loading_info=True)
    assert not any(loading.values()), loading
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, plain.classifier(plain.bert(**batch).pooler_output))
    assert _kernel(plain) is None

    # The card says how to get the kernel head and what each file weighs.
    card = (folder_b / "README.md").read_text()
    assert "This model has a kernel LDA head** (1 × 64 random Fourier" in card
    assert "mean-pooled, L2-normalised hidden states of its top 2 layers, concatenated" in card
    assert "`hf_incr_kernel_lda.safetensors` | inference with the kernel head |" in card
    assert "`hf_incr_kernel_lda_statistics.safetensors` | the next increment only |" in card

    # Detaching gives the model's own Linear back.
    location = hf_incr.find_classifier_head(reloaded)
    assert KernelHead.detach(reloaded, location) is not None and _kernel(reloaded) is None
    torch.testing.assert_close(_logits(reloaded, tok), plain(**batch).logits, rtol=1e-5, atol=1e-5)


def test_the_statistics_file_is_float32_and_continues_closely(tmp_path):
    *_, base = _train_base(tmp_path)
    path = tmp_path / "a" / KERNEL_STATISTICS_FILENAME
    with safe_open(str(path), framework="pt") as handle:
        assert handle.get_tensor("member0.scatter_upper").dtype == torch.float32  # half a float64 file's bytes
    state = KernelHead.load(tmp_path / "a")
    exact = base.heads["kernel"].statistics[0]
    assert state.statistics[0].scatter.dtype == torch.float64 and exact.scatter.dtype == torch.float64
    assert _relative(state.statistics[0].scatter, exact.scatter) < 1e-6


def test_hub_round_trip_through_load_model_and_pushing_without_statistics(hub, tmp_path):  # noqa: F811
    tok, _, model, *_ = _train_base(tmp_path)
    folder = tmp_path / "a"
    push_to_hub(folder, REPO, token=TOKEN, push_statistics=False)
    repo = hub.repos[REPO]
    files = repo.trees[repo.branches["main"]]
    assert KERNEL_FILENAME in files and KERNEL_STATISTICS_FILENAME not in files
    from_hub = hf_incr.load_model(REPO, token=TOKEN, cache_dir=tmp_path / "cache")
    assert _kernel(from_hub) is not None
    torch.testing.assert_close(_logits(from_hub, tok), _logits(model, tok), rtol=1e-5, atol=1e-5)
    # Plain transformers from the Hub: the linear head, no kernel file read.
    plain = AutoModelForSequenceClassification.from_pretrained(REPO, token=TOKEN, cache_dir=tmp_path / "cache2")
    assert _kernel(plain) is None

    push_to_hub(folder, REPO, token=TOKEN)  # now with the statistics the next increment needs
    files = repo.trees[repo.branches["main"]]
    assert KERNEL_STATISTICS_FILENAME in files and files[KERNEL_STATISTICS_FILENAME] == (
        folder / KERNEL_STATISTICS_FILENAME).read_bytes()


def test_without_the_models_kernel_statistics_an_increment_answers_with_the_linear(tmp_path):
    tok = tokenizer()
    linear_only = {**CONFIG, "head": "linear"}
    model = tiny_bert(["refund", "delivery"])
    train_increment(model, tok, text_dataset(["refund", "delivery"], 4), config=IncrementConfig(**linear_only),
                    args=training_args(tmp_path, output_dir=str(tmp_path / "a")), kind="base")
    reloaded = hf_incr.load_model(str(tmp_path / "a"))
    # A kernel head started now would lack the old labels' rows: the Linear answers, and the warning says why.
    with pytest.warns(UserWarning, match=r"no kernel LDA head \(its base was trained without it\) and one cannot "
                                         r"start now.*answers with the Linear"):
        result = train_increment(reloaded, tok, text_dataset(["login"], 4), config=IncrementConfig(**CONFIG),
                                 args=training_args(tmp_path, output_dir=str(tmp_path / "b")))
    assert result.plan.path == "solve" and result.plan.answering == "linear" and list(result.heads) == ["linear"]
    assert _kernel(reloaded) is None and "kernel_lda" not in result.record
    assert not (tmp_path / "b" / KERNEL_FILENAME).exists()


def test_without_its_statistics_file_the_head_still_predicts_but_an_increment_drops_it(tmp_path):
    tok, config, model, *_ = _train_base(tmp_path)
    folder = tmp_path / "a"
    (folder / KERNEL_STATISTICS_FILENAME).unlink()  # as a push with push_statistics=False leaves the Hub
    loaded = hf_incr.load_model(str(folder))
    torch.testing.assert_close(_logits(loaded, tok), _logits(model, tok), rtol=1e-5, atol=1e-5)
    inference_only = KernelHead.load(folder)
    assert inference_only is not None and not inference_only.can_continue and not inference_only.statistics
    assert not load_heads(folder, multi_label=False)["kernel"].can_continue
    info = model_info(str(folder))
    assert info["heads"]["kernel"] == "yes, without its statistics"
    assert "kernel LDA head: yes, without its statistics" in format_info(info)
    with pytest.warns(UserWarning, match=r"kernel LDA head cannot continue: its statistics \("
                                         + re.escape(KERNEL_STATISTICS_FILENAME) + r"\) were not saved or pushed"):
        result = train_increment(loaded, tok, text_dataset(["login"], 4), config=config,
                                 args=training_args(tmp_path, output_dir=str(tmp_path / "b")))
    assert result.plan.answering == "linear" and "kernel" not in result.heads and _kernel(loaded) is None
    assert not (tmp_path / "b" / KERNEL_FILENAME).exists() and "kernel_lda" not in result.record
    # `hf-incr info` said so beforehand: what the next increment does names the kernel head it cannot continue.
    assert re.search(r"kernel LDA head (cannot continue|is dropped)", info["next_increment"]), info["next_increment"]


@pytest.mark.parametrize(
    "name, value, replacement",
    [
        ("kernel_members", 2, "one member"),
        ("kernel_pooling", "max", "pools as a sentence-transformers encoder was trained"),
        ("kernel_layers", 1, "top 4 layers"),
        ("kernel_statistics_dtype", "float64", "saved in float32"),
        ("kernel_push_statistics", False, "`push_statistics`"),
        ("random_features", 64, "`head: kernel`"),
        ("closed_form_head", False, "`head: trained`"),
    ],
)
def test_removed_kernel_settings_are_refused_naming_their_replacement(name, value, replacement):
    assert replacement in REMOVED[name]
    with pytest.raises(ConfigError, match=rf"`{name}` -> .*{replacement}"):
        IncrementConfig.from_dict({"head": "kernel", name: value})
    with pytest.raises(ConfigError, match=rf"The command line set\(s\) \['{name}'\].*{replacement}"):
        parse_args(["--head", "kernel", f"--{name}", str(value)])


@pytest.mark.parametrize(
    "values, message",
    [
        ({"head": "kernel", "kernel_features": 0}, "kernel_features"),
        ({"head": "random_features"}, r"`head` should be one of \['beside_kept', 'kernel', 'linear', 'trained'\]"),
        ({"head": "kernel", "finetune_increments": True}, "--head trained"),
    ],
)
def test_config_refuses_inconsistent_kernel_settings(values, message):
    with pytest.raises(ConfigError, match=message):
        IncrementConfig(**values)


def test_pooling_follows_the_sentence_transformers_model_and_the_attention_mask():
    minilm = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    assert sentence_pooling(minilm) == ("mean", True)  # all-MiniLM-L6-v2: mean pooling, then Normalize
    assert sentence_pooling(tiny_bert(["a", "b"])) == ("mean", True)  # no sentence-transformers files: the default
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(pool(hidden, mask, "mean"), torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)]))
    torch.testing.assert_close(pool(hidden, mask, "cls"), hidden[:, 0])
    # The hook pools what the encoder returned with the mask it was called with (padding changes nothing).
    tok = tokenizer()
    model = tiny_bert(["a", "b"])
    capture = PooledCapture("mean")
    handle = model.bert.register_forward_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**tok(["short", "a much longer text than the first one"], return_tensors="pt", padding=True))
            padded = capture.pooled[0].clone()
            model(**tok(["short"], return_tensors="pt"))
    finally:
        handle.remove()
    torch.testing.assert_close(padded, capture.pooled[0], rtol=1e-5, atol=1e-5)


def _one_layer_bert(labels):
    """tiny_bert's encoder with a single layer (its depth caps the layers the kernel head reads)."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )
    return BertForSequenceClassification(config).eval()


def test_one_layer_reads_the_last_hidden_states_and_the_layer_hooks_come_off_with_the_head(tmp_path):
    tok, _, model, _, base = _train_base(tmp_path, model=_one_layer_bert(["refund", "delivery"]))
    state = base.heads["kernel"]
    assert state.config.layers == 1 and state.config.in_features == model.config.hidden_size
    torch.testing.assert_close(_logits(model, tok), state.classifier(_pooled(model, tok, TEXTS, layers=1)),
                               rtol=1e-5, atol=1e-5)
    assert hf_incr.get_lineage(model)[0]["kernel_lda"]["layers"] == 1

    # Two layers: one hook on the encoder, one on the block below the top; detaching removes both.
    two = hf_incr.load_model(str(_train_base(tmp_path / "two")[-1].output_dir))
    hooked = [block for block in two.bert.encoder.layer if block._forward_hooks]
    assert len(hooked) == 1 and hooked[0] is two.bert.encoder.layer[0]
    KernelHead.detach(two, hf_incr.find_classifier_head(two))
    assert not two.bert._forward_hooks and not any(block._forward_hooks for block in two.bert.encoder.layer)


def test_more_layers_than_the_encoder_has_are_refused_where_the_capture_is_built():
    model = tiny_bert(["a", "b"])
    with pytest.raises(HeadConfigMismatchError, match=r"top 3 layers, but the encoder has 2"):
        block_paths(model, 3)
    head = KernelHead(KernelConfig(in_features=96, num_features=8, num_members=1, layers=3))
    with pytest.raises(HeadConfigMismatchError, match=r"top 3 layers, but the encoder has 2"):
        head.capture(model, hf_incr.find_classifier_head(model))
    # The inference module alone needs the blocks named (hf_incr writes them into the head's file).
    with pytest.raises(ValueError, match=r"top 3 layers, but its file names 0 block"):
        capture_pooled(model, head.config)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_top_layers_are_read_on_every_architecture(arch):
    """The hooks pool the blocks the model's own ``hidden_states`` name as its top two layers (the decoder's for
    BART, the normalised last state for decoders with a final norm), and the attached head answers with its own
    logits, also where the score Linear runs on every token (decoders pick the last one)."""
    model = tiny_model(arch)
    batch = tiny_batch(arch)
    if arch == "albert":  # one block shared by every layer: one distinct layer (the recipe reads just that one)
        with pytest.raises(HeadConfigMismatchError, match="encoder has 1"):
            block_paths(model, 2)
        return
    config = KernelConfig(in_features=2 * 32, num_features=16, num_members=1, normalize=True, layers=2,
                          block_paths=block_paths(model, 2))
    capture, hooks = capture_pooled(model, config)
    try:
        with torch.no_grad():
            out = model.base_model(**batch, output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    states = getattr(out, "decoder_hidden_states", None) or out.hidden_states
    expected = torch.cat([torch.nn.functional.normalize(pool(h, batch["attention_mask"], "mean"), dim=1)
                          for h in states[-2:]], dim=1)
    torch.testing.assert_close(capture.pooled, expected, rtol=1e-5, atol=1e-5)

    head = KernelHead(dataclasses.replace(config, labels=[]))
    head.begin(PassRows(num_old=0, num_labels=3, annotated=None, own=8, total=8))
    head.add(list(range(8)), torch.cat([expected, expected + 0.01]), torch.tensor([0, 1, 2, 0] * 2))
    head.end()
    head.classifier = head.solve_classifier()
    location = hf_incr.find_classifier_head(model)
    head.attach(model, location)
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, head.classifier(expected).to(logits.dtype), rtol=1e-4, atol=1e-4)
    KernelHead.detach(model, location)
    assert KernelHead.attached(model, location) is None


def test_multi_label_kernel_head_keeps_unannotated_labels_and_reloads(tmp_path):
    tok = tokenizer()
    old = ["refund", "delivery", "login"]
    config = IncrementConfig(**CONFIG, label_column="labels")
    model = tiny_bert(old, problem_type="multi_label_classification", seed=2)
    base = train_increment(model, tok, as_label_lists(text_dataset(old, 8), extra="refund"), config=config,
                           args=training_args(tmp_path, output_dir=str(tmp_path / "a")), kind="base")
    state = base.heads["kernel"]
    assert state.config.multi_label and _kernel(model).classifier is state.classifier
    assert set(base.record["kernel_lda"]["thresholds"]) == set(old)
    before = _logits(model, tok)
    # The kernel head answers with per-label logits (sigmoid > 0.5 decides), those of its classifier.
    torch.testing.assert_close(before, state.classifier(_pooled(model, tok, TEXTS)), rtol=1e-5, atol=1e-5)

    # A new label whose rows annotate only it: the old labels' kernel rows, and so their decisions, stay bit for bit.
    reloaded = hf_incr.load_model(str(tmp_path / "a"))
    torch.testing.assert_close(_logits(reloaded, tok), before, rtol=1e-5, atol=1e-5)
    test = as_label_lists(text_dataset([*old, "repair"], 3, offset=30))
    with pytest.warns(UserWarning, match="rows carry old labels"):
        result = train_increment(reloaded, tok, as_label_lists(text_dataset(["repair"], 8), extra="refund"), test,
                                 config=IncrementConfig(**CONFIG, label_column="labels"),
                                 args=training_args(tmp_path, output_dir=str(tmp_path / "b")))
    grown = _kernel(reloaded).classifier
    for index in range(state.config.num_members):
        assert torch.equal(grown.weights[index][:3], state.classifier.weights[index])
        assert torch.equal(grown.biases[index][:3], state.classifier.biases[index])
    after = _logits(reloaded, tok)
    assert after.shape[1] == 4 and torch.equal(after[:, :3] > 0, before > 0)
    assert list(result.record["kernel_lda"]["thresholds"]) == ["repair"]
    # The summary shows what plain transformers gets (the model's Linear) beside the kernel head's figures.
    assert result.metrics_plain and set(result.metrics_plain) >= {"old_micro_f1", "new_micro_f1"}
    assert "after_plain_transformers" in result.record["metrics"]
    from hf_incr.cli import summary_of
    summary = summary_of(result, "increment", multi_label=True)
    assert "after, plain transformers (its Linear)" in summary
    assert "trust_remote_code=True, top_k=None)  (the kernel LDA head)" in summary  # its code ships with the model
    # Saved and loaded again: the same logits; the card says what the head is (no random features here).
    torch.testing.assert_close(_logits(hf_incr.load_model(str(tmp_path / "b")), tok), after, rtol=1e-5, atol=1e-5)
    assert state.config.num_features == 0 and state.config.num_members == 1
    card = (tmp_path / "b" / "README.md").read_text()
    assert "This model has a kernel LDA head** (per-label linear discriminants on" in card
    assert "| inference with the kernel head | 0.0 MB" not in card  # a few kB, shown as such
    # The label table shows the decisions of the head that answers (the kernel head's thresholds).
    repair = next(line for line in card.splitlines() if line.startswith("| 3 | `repair`"))
    assert format_probability(result.record["kernel_lda"]["thresholds"]["repair"]) in repair
    assert result.record["kernel_lda"]["thresholds"]["repair"] != result.record["thresholds"]["repair"]


def test_a_multi_label_classifier_trained_elsewhere_starts_a_kernel_head_beside_its_linear(tmp_path):
    # No hf_incr statistics: the old labels keep the Linear's logits bit for bit, the new one is the kernel head's.
    tok = tokenizer()
    old = ["refund", "delivery", "login"]
    model = tiny_bert(old, problem_type="multi_label_classification", seed=2)
    texts = list(text_dataset([*old, "repair", "colour"], 2, offset=30)["text"])
    before = _logits(model, tok, texts)
    config = IncrementConfig(label_column="labels", head="kernel", kernel_features=64)
    train = as_label_lists(text_dataset(["repair", "refund"], 6))
    with pytest.warns(UserWarning):  # no saved statistics; rows carry old labels
        result = train_increment(model, tok, train, config=config,
                                 args=training_args(tmp_path, output_dir=str(tmp_path / "b")))
    kernel = _kernel(model).classifier
    assert kernel is not None and kernel.config.linear_labels == [0, 1, 2]
    assert result.record["head_rows"] == "kept" and result.record["kernel_lda"]["linear_labels"] == [0, 1, 2]
    assert list(result.record["kernel_lda"]["thresholds"]) == ["repair"] and "kernel_lda_s" in result.timings
    after = _logits(model, tok, texts)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "b").eval()
    plain_logits = _logits(plain, tok, texts)
    # The old labels: the Linear's own logits (what plain transformers computes), the same decisions as before.
    assert torch.equal(after[:, :3], plain_logits[:, :3]) and torch.equal(after[:, :3] > 0, before > 0)
    torch.testing.assert_close(after[:, :3], before, rtol=0, atol=1e-6)
    # The new label: the kernel head's discriminant on the pooled top layers, not the Linear's new row.
    torch.testing.assert_close(after[:, 3], kernel(_pooled(model, tok, texts))[:, 3], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after[:, 3], plain_logits[:, 3])
    reloaded = hf_incr.load_model(str(tmp_path / "b"))
    torch.testing.assert_close(_logits(reloaded, tok, texts), after, rtol=0, atol=0)
    card = " ".join((tmp_path / "b" / "README.md").read_text().split())
    assert 'the 3 label(s) the classifier came with, "refund", "delivery", "login", keep its Linear' in card
    # `hf-incr info`: the next increment keeps the Linear's trained rows and continues the saved kernel head (it does
    # not start one), which answers.
    info = model_info(str(tmp_path / "b"))
    assert info["heads"] == {"linear": "yes", "kernel": "yes, with its statistics", "beside_kept": None}
    plan = info["next_increment"]
    assert plan.startswith("every trained row of the Linear kept bit for bit") and "the encoder's pooled top" in plan
    assert "starts here" not in plan and plan.endswith("the model answers with the kernel LDA head")

    # The next increment continues the kernel head: `repair` keeps its kernel rows, the old labels their Linear's.
    with pytest.warns(UserWarning, match="rows carry old labels"):
        again = train_increment(reloaded, tok, as_label_lists(text_dataset(["colour", "refund"], 6)), config=config,
                                args=training_args(tmp_path, output_dir=str(tmp_path / "c")))
    assert again.plan.path == "kept_rows" and again.plan.starts == () and again.plan.answering == "kernel"
    grown = _kernel(reloaded).classifier
    assert grown.config.linear_labels == [0, 1, 2] and list(again.record["kernel_lda"]["thresholds"]) == ["colour"]
    assert torch.equal(grown.weights[0][3], kernel.weights[0][3]) and torch.equal(grown.biases[0][3],
                                                                                    kernel.biases[0][3])
    last = _logits(reloaded, tok, texts)
    assert last.shape[1] == 5 and torch.equal(last[:, :3] > 0, before > 0)
    torch.testing.assert_close(last[:, :4], after, rtol=0, atol=1e-6)


def test_a_single_label_classifier_trained_elsewhere_with_the_linear_asked_for_keeps_its_rows(tmp_path):
    model = tiny_bert(["refund", "delivery"], seed=2)
    linear = hf_incr.find_classifier_head(model).linear
    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    # `head=linear`: the Linear answers, its new row fitted beside the kept ones (no head beside them).
    with pytest.warns(UserWarning, match="old label"):
        result = train_increment(model, tokenizer(), text_dataset(["login"], 4),
                                 config=IncrementConfig(head="linear"),
                                 args=training_args(tmp_path), save=False)
    assert result.plan.path == "kept_rows" and result.plan.answering == "linear" and list(result.heads) == ["linear"]
    assert _kernel(model) is None and "kernel_lda" not in result.record
    grown = hf_incr.find_classifier_head(model).linear
    assert torch.equal(grown.weight[:2], weight) and torch.equal(grown.bias[:2], bias)
