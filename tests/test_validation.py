"""Bad input: an increment either works end to end or fails with a clear ``HfIncrError`` (what was expected, what was
found, the fix) before anything changed: the model in memory (weights bit for bit, config with labels and lineage,
modules, trainability) and every file on disk (no new file, no leftover temporary folder). Safe loading: nothing
hf_incr reads or writes is a pickle, ``trust_remote_code`` stays off, and no setting or saved folder can point hf_incr
at paths outside the output / model folder."""

from __future__ import annotations

import copy
import fnmatch
import io
import json
import re
import struct
import tokenize
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from datasets import ClassLabel, Dataset, Features, Value, concatenate_datasets
from huggingface_hub import ModelCard
from safetensors import safe_open
from text_models import text_dataset, tiny_bert, tokenizer, training_args
from tiny_models import tiny_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
)

import hf_incr
from hf_incr import (
    ConfigError,
    DataError,
    HeadConfigMismatchError,
    HfIncrError,
    IncrementConfig,
    LabelError,
    add_labels,
    train_increment,
)
from hf_incr.cli import COMMANDS, ScriptArguments, main, parse_args
from hf_incr.errors import TokenizerError, UnsupportedModelError
from hf_incr.replay import ReplayMemory
from hf_incr.validation import check_increment_inputs, check_output_dir, check_resume_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]
OLD = ["refund", "delivery", "login"]
# A quick recipe, spelled out so that changes of the defaults do not change what these tests exercise.
FAST = {"head": "trained", "warmup_epochs": 1, "finetune_layers": 0, "distill_weight": 0.0, "replay_per_label": 2}
CLI_FLAGS = ["--head", "trained", "--warmup_epochs", "1", "--finetune_layers", "0", "--distill_weight", "0",
             "--use_cpu", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"]


def fast(**overrides) -> IncrementConfig:
    return IncrementConfig(**{**FAST, **overrides})


def disk(root: Path) -> dict[str, bytes | str]:
    """Every file (its bytes) and folder under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else "<dir>"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture
def previous(tmp_path):
    """The output folder already holds the previous version of the model, as a re-run finds it."""
    out = tmp_path / "out"
    tiny_bert(OLD, seed=1).save_pretrained(out)
    return out


@pytest.fixture
def fails_cleanly(tmp_path, snapshot, assert_unchanged):
    """``fails_cleanly(call, error, *fragments, model=m)``: the call raises ``error`` (an HfIncrError and ValueError)
    whose message holds every fragment, and neither ``m`` nor any file under ``tmp_path`` changed."""

    def check(call, error, *fragments, model=None):
        files = disk(tmp_path)
        state = snapshot(model) if model is not None else None
        with pytest.raises(error) as info:
            call()
        assert isinstance(info.value, HfIncrError) and isinstance(info.value, ValueError)
        message = str(info.value)
        for fragment in fragments:
            assert fragment in message, f"{fragment!r} not in: {message}"
        if model is not None:
            assert_unchanged(model, state)
        assert disk(tmp_path) == files, "files changed"
        return message

    return check


def run(model, tok, train, evaluation, tmp_path, config=None, **args):
    return train_increment(model, tok, train, evaluation, config=config or fast(),
                           args=training_args(tmp_path, **args))


# -- label names ------------------------------------------------------------------------------------------------------


def test_labels_colliding_after_case_or_whitespace_are_added_with_a_warning_naming_both(tmp_path, tok):
    model = tiny_bert(OLD)
    data = Dataset.from_dict({"text": ["money back please", "fix my bike", "broken brake"],
                              "label": ["Refund", "Repair", "repair "]})
    with pytest.warns(UserWarning) as caught:
        result = run(model, tok, data, None, tmp_path)
    collisions = sorted(str(w.message) for w in caught if "only by case or whitespace" in str(w.message))
    assert len(collisions) == 2  # once each: the pre-flight check does not warn a second time
    assert collisions[0].startswith("The new label 'Refund' differs from the label 'refund' only by case")
    assert collisions[1].startswith("The new label 'repair ' differs from the new label 'Repair' only by case")
    assert result.new_labels == ["Refund", "Repair", "repair "]
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert reloaded.config.id2label == {0: "refund", 1: "delivery", 2: "login", 3: "Refund", 4: "Repair", 5: "repair "}


STRANGE = ["😀 smile", "日本語のラベル", "תווית בעברית", "../../evil", "a/b", "/etc/passwd", "C:\\x", "x" * 1000,
           "| pipe <b>bold</b>"]


def test_unusual_label_names_work_end_to_end_and_never_become_paths(tmp_path, tok):
    model = tiny_bert(OLD, dropout=0.0)
    data = Dataset.from_dict({"text": [f"please help with case {i}" for i in range(len(STRANGE))], "label": STRANGE})
    evaluation = Dataset.from_dict({"text": ["please help with case 4", "money back"], "label": ["a/b", "refund"]})
    result = run(model, tok, data, evaluation, tmp_path)
    out = tmp_path / "out"
    assert result.new_labels == sorted(STRANGE)
    # Everything was written inside the output folder, and no file or folder is named after a label.
    written = list(tmp_path.rglob("*"))
    assert all(p == out or out in p.parents for p in written)
    parts = {part for p in written for part in p.relative_to(tmp_path).parts}
    assert not parts & {"evil", "a", "b", "etc", "passwd", "C:", "x" * 1000}
    assert not (out / "../../evil").resolve().exists() and not (out / "replay_memory/../../evil").resolve().exists()

    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert reloaded.config.id2label == model.config.id2label and len(reloaded.config.id2label) == 3 + len(STRANGE)
    batch = tok(["please help with case 4"], return_tensors="pt")
    torch.testing.assert_close(reloaded(**batch).logits, model.eval()(**batch).logits)
    assert json.loads((out / "lineage.json").read_text(encoding="utf-8"))[-1]["labels_added"] == sorted(STRANGE)
    card = ModelCard.load(out / "README.md")
    assert card.data.to_dict()["library_name"] == "transformers"
    for name in ("😀 smile", "日本語のラベル", "תווית בעברית", "../../evil", "x" * 1000):
        assert f"`{name}`" in card.text
    assert "<b>" not in card.text and "&lt;b&gt;" in card.text  # no raw HTML, no broken table cell


@pytest.mark.parametrize("name", ["two\nlines", "tab\there", "nul\x00"], ids=["newline", "tab", "nul"])
def test_label_names_with_control_characters_are_refused(name, tmp_path, tok, fails_cleanly):
    model = tiny_model("bert")
    fails_cleanly(lambda: add_labels(model, ["fine", name]), LabelError, "without control characters", repr(name),
                  model=model)
    bert = tiny_bert(OLD)
    data = Dataset.from_dict({"text": ["fix my bike"], "label": [name]})
    fails_cleanly(lambda: run(bert, tok, data, None, tmp_path), LabelError, "control characters", model=bert)


# -- data sets --------------------------------------------------------------------------------------------------------


def test_data_with_only_old_labels_continues_without_growing(tmp_path, tok):
    model = tiny_bert(OLD, dropout=0.0)
    head = model.classifier.weight.detach().clone()
    result = run(model, tok, text_dataset(["refund", "login"], 3), text_dataset(OLD, 2, 30), tmp_path)
    assert result.new_labels == [] and result.new_label_ids == []
    assert model.classifier.out_features == 3 and model.config.num_labels == 3
    assert not torch.equal(model.classifier.weight, head)  # it trained
    record = hf_incr.get_lineage(model)[-1]
    assert record["labels_added"] == [] and record["num_labels"] == 3
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert reloaded.config.id2label == {0: "refund", 1: "delivery", 2: "login"}
    assert (tmp_path / "out" / "README.md").is_file()


def test_data_with_only_new_labels_one_with_a_single_example(tmp_path, tok):
    model = tiny_bert(OLD, dropout=0.0)
    data = concatenate_datasets([text_dataset(["repair"], 4), text_dataset(["colour"], 1)])
    result = run(model, tok, data, text_dataset([*OLD, "repair", "colour"], 2, 30), tmp_path)
    assert result.new_labels == ["colour", "repair"]
    assert model.config.id2label == {0: "refund", 1: "delivery", 2: "login", 3: "colour", 4: "repair"}
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [row["labels"] for row in result.replay_memory.rows].count(["colour"]) == 1  # its one example is kept
    assert 0.0 <= result.metrics_after["accuracy"] <= 1.0
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert reloaded.config.id2label == model.config.id2label and (tmp_path / "out" / "README.md").is_file()


@pytest.mark.parametrize("split", ["training", "eval"])
def test_empty_split_fails_before_anything_changes(split, tmp_path, tok, previous, fails_cleanly):
    model = tiny_bert(OLD)
    train, evaluation = text_dataset(["repair"], 2), text_dataset(OLD, 1)
    if split == "training":
        train = train.select([])
    else:
        evaluation = evaluation.select([])
    fix = "Check the file or split" if split == "training" else "`eval_dataset=None`"
    fails_cleanly(lambda: run(model, tok, train, evaluation, tmp_path), DataError,
                  f"The {split} data is empty (0 rows)", fix, model=model)


@pytest.mark.parametrize("bad", [None, float("nan"), "", "   "], ids=["none", "nan", "empty", "blank"])
def test_missing_texts_fail_before_anything_changes(bad, tmp_path, tok, previous, fails_cleanly):
    model = tiny_bert(OLD)
    data = Dataset.from_pandas(pd.DataFrame({"text": ["fix my bike", bad, "broken brake"], "label": ["repair"] * 3}))
    fails_cleanly(lambda: run(model, tok, data, None, tmp_path), DataError,
                  "1 row(s) of the training data have no text in column 'text'", "rows [1]", "dataset.filter",
                  model=model)


def _with_missing_label(kind: str) -> Dataset:
    texts = ["fix my bike", "broken brake", "paint"]
    if kind == "classlabel":
        feature = ClassLabel(names=["repair", "colour"])
        return Dataset.from_dict({"text": texts, "label": [0, -1, 1]},
                                 features=Features({"text": Value("string"), "label": feature}))
    missing = {"none": None, "nan": float("nan"), "blank": " "}[kind]
    return Dataset.from_pandas(pd.DataFrame({"text": texts, "label": ["repair", missing, "colour"]}))


@pytest.mark.parametrize("kind", ["none", "nan", "blank", "classlabel"])
def test_rows_without_a_label_fail_before_the_head_grows(kind, tmp_path, tok, previous, fails_cleanly):
    """(These used to fail in `encode_labels`, after `add_labels` had grown the head.)"""
    model = tiny_bert(OLD)
    fails_cleanly(lambda: run(model, tok, _with_missing_label(kind), None, tmp_path), DataError,
                  "1 row(s) of the training data have no label in column 'label'", "rows [1]", "dataset.filter",
                  model=model)
    evaluation = _with_missing_label(kind)
    fails_cleanly(lambda: run(model, tok, text_dataset(["repair"], 2), evaluation, tmp_path), DataError,
                  "of the eval data have no label", model=model)


def test_label_ids_without_names_are_refused(tmp_path, tok, previous, fails_cleanly):
    model = tiny_bert(OLD)
    data = Dataset.from_dict({"text": ["money back", "parcel late", "fix my bike"], "label": [0, 1, 3]})
    fails_cleanly(lambda: run(model, tok, data, None, tmp_path), DataError,
                  "holds numbers (int64, e.g. 0)", "['refund', 'delivery', 'login']", "model.config.id2label",
                  "ClassLabel(names=", model=model)
    # A model whose labels are numbers (a base trained on numeric labels) takes them as names.
    check_increment_inputs(tiny_bert(["0", "1", "2"]), tok, data, None, fast())


def test_texts_far_over_max_length_are_truncated(tmp_path, tok):
    model = tiny_bert(OLD, dropout=0.0)
    long_text = "please give my money back now " * 3500
    assert len(long_text) > 100_000
    data = Dataset.from_dict({"text": [long_text, "fix my bike"], "label": ["refund", "repair"]})
    result = run(model, tok, data, Dataset.from_dict({"text": [long_text], "label": ["refund"]}), tmp_path,
                 config=fast(max_length=32))
    assert result.new_labels == ["repair"] and result.metrics_after["num_old"] == 1
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert len(card) < 30_000 and long_text not in card


def test_multi_label_rows_with_unknown_names(tmp_path, tok, fails_cleanly):
    model = tiny_bert(OLD, problem_type="multi_label_classification", dropout=0.0)
    train = Dataset.from_dict({"text": ["refund and repair", "fix my bike", "sign in and typo"],
                               "label": [["refund", "repair"], ["repair"], ["login", "typo_label"]]})
    fails_cleanly(lambda: run(model, tok, train, None, tmp_path, config=fast(new_labels=["repair"])), DataError,
                  "label(s) ['typo_label'] that the model does not know and that are not among `new_labels`",
                  model=model)
    evaluation = Dataset.from_dict({"text": ["money back"], "label": [["refund", "zzz"]]})
    fails_cleanly(lambda: run(model, tok, train, evaluation, tmp_path), DataError,
                  "The eval data has label(s) ['zzz'] that neither the model nor the training data has",
                  "Drop those rows", model=model)
    no_list = Dataset.from_dict({"text": ["fix my bike", "money back"], "label": [["repair"], None]})
    fails_cleanly(lambda: run(model, tok, no_list, None, tmp_path), DataError, "no label list (None)", "`[]`",
                  model=model)
    # Undeclared, the unknown names are this increment's new labels.
    result = run(model, tok, train, None, tmp_path)
    assert result.new_labels == ["repair", "typo_label"] and model.config.num_labels == 5


# -- model, tokenizer, precision, adapters ----------------------------------------------------------------------------


def test_checkpoint_whose_config_and_weights_disagree_is_refused_at_load(tmp_path, tok, capsys):
    base = tmp_path / "base"
    tiny_bert(["refund", "delivery", "login", "repair"]).save_pretrained(base)
    tok.save_pretrained(base)
    config = json.loads((base / "config.json").read_text())
    config["id2label"]["4"], config["label2id"]["colour"] = "colour", 4
    (base / "config.json").write_text(json.dumps(config))
    train = tmp_path / "new.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in text_dataset(["colour"], 2).to_list()))
    files = disk(tmp_path)
    code = main(["increment", "--model_name_or_path", str(base), "--train_file", str(train), "--output_dir",
                 str(tmp_path / "out"), *CLI_FLAGS])
    error = capsys.readouterr().err
    assert code == 1
    assert "config.json names 5 labels" in error and "`classifier.weight` have 4 rows" in error
    assert "Restore the config.json" in error and "ignore_mismatched_sizes=True" in error
    assert disk(tmp_path) == files


def test_model_whose_config_and_head_disagree_is_refused_before_the_increment(tmp_path, tok, previous,
                                                                              fails_cleanly):
    model = tiny_bert(OLD)
    model.config.id2label = {**model.config.id2label, 3: "repair"}
    model.config.label2id = {name: i for i, name in model.config.id2label.items()}
    fails_cleanly(lambda: run(model, tok, text_dataset(["colour"], 2), None, tmp_path), HeadConfigMismatchError,
                  "has 3 outputs but `config.id2label` has 4 labels", "Fix the config", model=model)


def _bert(vocab_size: int, labels=OLD):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=37, id2label=dict(enumerate(labels)),
                        label2id={n: i for i, n in enumerate(labels)})
    return BertForSequenceClassification(config).eval()


@pytest.mark.parametrize("vocab_size, found", [
    (99, "special token id(s) [100, 101, 102, 103]"),
    (1000, "has 30,522 tokens but the model's embedding matrix has 1,000 rows"),
])
def test_tokenizer_of_another_model_is_refused_before_the_head_grows(vocab_size, found, tmp_path, tok, previous,
                                                                     fails_cleanly):
    model = _bert(vocab_size)
    # A recipe that grows the head before the first forward pass (no caching pass to crash first: the Linear's closed
    # form on a model without statistics keeps its trained rows, nothing is warmed up, imprinted or herded).
    config = fast(head="linear", replay_per_label=0)
    fails_cleanly(lambda: run(model, tok, text_dataset(["repair"], 2), None, tmp_path, config=config),
                  TokenizerError, found, "AutoTokenizer.from_pretrained", "resize_token_embeddings", model=model)


def test_larger_tokenizer_whose_ids_fit_this_data_warns(tok):
    data = Dataset.from_dict({"text": ["! ! !"], "label": ["refund"]})  # MiniLM ids 101, 999, 102
    with pytest.warns(UserWarning, match="tokenizer has 30,522 tokens but BertForSequenceClassification has 1,000"):
        check_increment_inputs(_bert(1000), tok, data, None, fast())


def test_decoder_padding_must_match_the_tokenizer(tmp_path, tok, fails_cleanly):
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(
        vocab_size=30522, n_embd=32, n_layer=1, n_head=4, pad_token_id=5, id2label=dict(enumerate(OLD)),
        label2id={n: i for i, n in enumerate(OLD)})).eval()
    data = text_dataset(["repair"], 2)
    fails_cleanly(lambda: run(model, tok, data, None, tmp_path), TokenizerError,
                  "`config.pad_token_id=5`, but the tokenizer pads with id 0",
                  "model.config.pad_token_id = tokenizer.pad_token_id", model=model)
    no_pad = copy.deepcopy(tok)
    no_pad.pad_token = None
    fails_cleanly(lambda: run(model, no_pad, data, None, tmp_path), TokenizerError, "no padding token",
                  "tokenizer.pad_token = tokenizer.eos_token", model=model)


def test_max_length_beyond_the_position_embeddings_is_refused(tmp_path, tok, previous, fails_cleanly):
    model = tiny_bert(OLD)  # 512 learned positions
    fails_cleanly(lambda: run(model, tok, text_dataset(["repair"], 2), None, tmp_path, config=fast(max_length=1000)),
                  ConfigError, "`max_length=1000`", "position embeddings for 512 tokens", "at most 512", model=model)


@pytest.mark.parametrize("dtype, stored", [(torch.bfloat16, "BF16"), (torch.float16, "F16")])
def test_half_precision_model_grows_and_trains_in_its_own_dtype(dtype, stored, tmp_path, tok):
    model = tiny_bert(OLD, dropout=0.0).to(dtype)
    old_rows = model.classifier.weight.detach().clone()
    config = fast(finetune_layers=1, finetune_epochs=1, finetune_increments=True, distill_weight=1.0)
    result = run(model, tok, text_dataset(["repair"], 4), text_dataset([*OLD, "repair"], 2, 30), tmp_path,
                 config=config)
    assert result.new_labels == ["repair"] and model.classifier.weight.shape == (4, 32)
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model.classifier.weight[:3], old_rows)  # the phases trained it
    out = tmp_path / "out"
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.get_slice("classifier.weight").get_dtype() == stored
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    batch = tok(["fix my bike"], return_tensors="pt")
    assert reloaded.classifier.weight.dtype == dtype
    assert torch.equal(reloaded(**batch).logits, model.eval()(**batch).logits)


def _lora(model, task: bool = True):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=2, target_modules=["query", "value"],
                             **({"task_type": peft.TaskType.SEQ_CLS} if task else {}))
    return peft.get_peft_model(model, config)


def test_peft_model_is_refused_with_the_merge_fix(tmp_path, tok, previous, fails_cleanly):
    base = tiny_bert(OLD)
    wrapped = _lora(base)
    data = text_dataset(["repair"], 2)
    fails_cleanly(lambda: run(wrapped, tok, data, None, tmp_path), UnsupportedModelError,
                  "got a PEFT model (`PeftModelForSequenceClassification`)", "model.merge_and_unload()", model=wrapped)
    # The model inside it carries the injected LoRA layers (and a wrapped head): refused as well.
    fails_cleanly(lambda: run(base, tok, data, None, tmp_path), UnsupportedModelError, "adapter layers injected",
                  "merge_and_unload", model=base)
    # add_labels cannot grow the wrapped head either: "several Linear layers could be the head" (its head lookup runs
    # first), and naming one of the copies, as that message suggests, reaches the PEFT refusal.
    fails_cleanly(lambda: add_labels(wrapped, ["repair"]), HfIncrError, model=wrapped)
    copy_path = "base_model.model.classifier.modules_to_save.default"
    fails_cleanly(lambda: add_labels(wrapped, ["repair"], head_path=copy_path), UnsupportedModelError,
                  "merge_and_unload", model=wrapped)


def test_add_labels_refuses_a_peft_wrapper_instead_of_growing_the_wrong_module(snapshot, assert_unchanged):
    """Without `modules_to_save`, the wrapper forwards attribute access to the model: `add_labels` used to set a new
    `classifier` on the wrapper and update the config, leaving the real head (3 rows) disagreeing with 4 labels."""
    wrapped = _lora(tiny_model("bert"), task=False)
    before = snapshot(wrapped)
    with pytest.raises(UnsupportedModelError, match=r"merge_and_unload\(\)"):
        add_labels(wrapped, ["delta"])
    assert_unchanged(wrapped, before)
    assert wrapped.base_model.model.classifier.out_features == 3 and wrapped.config.num_labels == 3


def test_adapters_added_through_transformers_are_refused(tmp_path, tok, fails_cleanly):
    """`model.add_adapter` / `load_adapter`: `save_pretrained` would then write the adapter only, not the grown head.
    """
    peft = pytest.importorskip("peft")
    model = peft.inject_adapter_in_model(peft.LoraConfig(r=2, target_modules=["query", "value"]), tiny_bert(OLD))
    # What `load_adapter` / `add_adapter` set on the model (transformers 5.24 needs peft >= 0.22 to call them).
    model._hf_peft_config_loaded = True
    fails_cleanly(lambda: add_labels(model, ["repair"]), UnsupportedModelError, "PEFT adapters loaded into it",
                  "merge_and_unload", model=model)
    fails_cleanly(lambda: run(model, tok, text_dataset(["repair"], 2), None, tmp_path), UnsupportedModelError,
                  "PEFT adapters loaded into it", model=model)


def test_merged_peft_model_increments(tmp_path, tok):
    merged = _lora(tiny_bert(OLD, dropout=0.0)).merge_and_unload()
    assert type(merged) is BertForSequenceClassification
    result = run(merged, tok, text_dataset(["repair"], 2), None, tmp_path)
    assert result.new_labels == ["repair"] and merged.classifier.out_features == 4
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").config.num_labels == 4


# -- safe loading -----------------------------------------------------------------------------------------------------

UNSAFE = {
    "pickle module": re.compile(r"^\s*(import|from)\s+(c?pickle|_pickle|dill|cloudpickle|joblib|shelve|marshal)\b",
                                re.MULTILINE),
    "pickle call": re.compile(r"\b(c?pickle|dill|cloudpickle|joblib|shelve|marshal)\.(load|loads|dump|dumps|open)\b"),
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"),
    "torch.save (a pickle)": re.compile(r"torch\.save\("),
    "numpy allow_pickle": re.compile(r"allow_pickle\s*=\s*True"),
    "pandas pickle": re.compile(r"\.(read_pickle|to_pickle)\("),
    "trust_remote_code=True": re.compile(r"trust_remote_code\s*=\s*True"),
}


def _code_only(text: str) -> str:
    """``text`` with its comments and string literals (docstrings, messages, f-strings) blanked out, lines kept: what
    the scan reads is what runs. Text that does not tokenize (a fragment) is scanned whole."""
    lines = text.splitlines(keepends=True)
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return text
    blanked = {tokenize.COMMENT, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    for token in reversed(tokens):
        if token.type not in blanked:
            continue
        (row, col), (end_row, end_col) = token.start, token.end
        for line in range(row, end_row + 1):
            start = col if line == row else 0
            stop = end_col if line == end_row else len(lines[line - 1].rstrip("\r\n"))
            lines[line - 1] = lines[line - 1][:start] + " " * (stop - start) + lines[line - 1][stop:]
    return "".join(lines)


def unsafe_uses(text: str) -> list[tuple[str, int]]:
    code = _code_only(text)
    return [(name, code[: m.start()].count("\n") + 1)
            for name, pattern in UNSAFE.items() for m in pattern.finditer(code)]


def test_the_pickle_scan_finds_every_unsafe_pattern():
    for sample in ["import pickle", "from joblib import load", "x = cloudpickle.loads(b)", "torch.load(path)",
                   "torch.load(path,\n    weights_only=False)", "np.load(f, allow_pickle=True)", "torch.save(obj, f)",
                   "frame.to_pickle(p)", "AutoModel.from_pretrained(p, trust_remote_code=True)"]:
        assert unsafe_uses(sample), sample
    assert unsafe_uses("torch.load(path, weights_only=True)\n# Nothing here is a pickle.\n") == []
    # Documentation of a setting is not a use of it: comments, docstrings and messages are not scanned.
    documented = ('"""Loaded by ``from_pretrained(..., trust_remote_code=True)``."""\n'
                  '# never torch.save(obj, f) here\n'
                  'line = f\'pipeline("text-classification", trust_remote_code=True)\'\n')
    assert unsafe_uses(documented) == []
    assert unsafe_uses(documented + "model = AutoModel.from_pretrained(\n    p, trust_remote_code=True)\n") == [
        ("trust_remote_code=True", 5)]


# Reviewed uses, in scripts only (never in hf_incr/): the inference benchmark loads, with the kernel head's shipped
# code, the folder it has just saved itself, to time that way of loading.
REVIEWED = {("scripts/benchmarks/inference.py", "trust_remote_code=True")}


def test_no_source_reads_or_writes_a_pickle():
    sources = sorted((ROOT / "hf_incr").rglob("*.py")) + sorted((ROOT / "scripts").rglob("*.py"))
    assert len(sources) > 15
    found = {f"{p.relative_to(ROOT)}:{line}": name for p in sources for name, line in unsafe_uses(p.read_text())
             if (p.relative_to(ROOT).as_posix(), name) not in REVIEWED}
    assert found == {}


def _file_kind(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"PAR1" and data[-4:] == b"PAR1":
        return "parquet"
    if len(data) > 8:
        size = struct.unpack("<Q", data[:8])[0]
        if 8 + size <= len(data):
            try:
                header = json.loads(data[8 : 8 + size])
            except ValueError:
                header = None
            if isinstance(header, dict):
                return "safetensors"
    text = data.decode("utf-8")  # raises on a binary file
    try:
        json.loads(text)
        return "json"
    except ValueError:
        return "text"


EXPECTED_KIND = {".safetensors": "safetensors", ".json": "json", ".parquet": "parquet", ".png": "png", ".md": "text",
                 ".txt": "text", ".jinja": "text", ".py": "text"}


def test_files_an_increment_writes_are_never_pickles(tmp_path, tok):
    from hf_incr.heads.kernel import KERNEL_FILENAME, KERNEL_STATISTICS_FILENAME
    from hf_incr.heads.linear import STATISTICS_FILENAME
    from hf_incr.hub import IGNORE_PATTERNS

    gradient = run(tiny_bert(OLD), tok, text_dataset(["repair"], 3), text_dataset([*OLD, "repair"], 1, 30), tmp_path,
                   save_strategy="epoch")
    closed_model = tiny_bert(OLD)
    closed = train_increment(closed_model, tok, text_dataset(OLD, 3), config=fast(head="kernel",
                             kernel_features=16), args=training_args(tmp_path, output_dir=str(tmp_path / "closed")),
                             kind="base")
    model_files = trainer_files = 0
    for folder in (Path(gradient.output_dir), Path(closed.output_dir)):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder).as_posix()
            if relative.startswith("checkpoints/"):
                # Trainer's own checkpoints (its optimizer state is a torch pickle): never pushed with the model.
                assert any(fnmatch.fnmatch(relative, pattern) for pattern in IGNORE_PATTERNS)
                trainer_files += 1
                continue
            assert not path.read_bytes().startswith((b"\x80", b"PK\x03\x04")), f"{relative} is a pickle"
            assert path.suffix in EXPECTED_KIND, relative
            assert _file_kind(path) == EXPECTED_KIND[path.suffix], relative
            model_files += 1
    names = {p.name for f in (Path(gradient.output_dir), Path(closed.output_dir)) for p in f.rglob("*")}
    assert {"model.safetensors", "config.json", "lineage.json", "README.md", "increments.png", "memory.parquet",
            STATISTICS_FILENAME, KERNEL_FILENAME, KERNEL_STATISTICS_FILENAME} <= names
    # The kernel head's inference code ships beside its weights (plain text, read with `trust_remote_code=True` only).
    assert "modeling_hf_incr_kernel.py" in names
    # A finished run removes Trainer's checkpoints (their optimizer state is a torch pickle); none are left to push.
    assert trainer_files == 0 and not (Path(gradient.output_dir) / "checkpoints").exists()
    assert model_files >= 14


def test_trust_remote_code_is_off_unless_the_user_sets_it(tmp_path, monkeypatch):
    class Loaded(Exception):
        pass

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code", "not passed"))
        raise Loaded

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", spy)
    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", spy)
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in text_dataset(["repair"], 2).to_list()))
    assert ScriptArguments().trust_remote_code is False
    for command in ("increment", "evaluate", "train-base"):
        for flags, expected in (([], False), (["--trust_remote_code"], True)):
            script, recipe, training = parse_args([
                "--model_name_or_path", "my-org/classifier", "--train_file", str(train), "--eval_file", str(train),
                "--output_dir", str(tmp_path / "out"), "--use_cpu", "--report_to", "none", *flags])
            assert script.trust_remote_code is expected
            with pytest.raises(Loaded):
                COMMANDS[command](script, recipe, training)
            assert seen[-1] is expected, command
    assert not (tmp_path / "out").exists()


# -- paths from settings and saved folders ----------------------------------------------------------------------------


@pytest.fixture
def cli_base(tmp_path, tok):
    base = tmp_path / "models" / "base"
    tiny_bert(OLD).save_pretrained(base)
    tok.save_pretrained(base)
    train = tmp_path / "new.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in text_dataset(["repair"], 2).to_list()))
    return base, train


def test_a_config_file_cannot_choose_files_to_read_or_write(tmp_path, cli_base, capsys):
    base, train = cli_base
    outside = [f"../../hf_incr_test_{uuid.uuid4().hex}.yaml", str(tmp_path.parent / f"x-{uuid.uuid4().hex}.yaml")]
    for key, value in [("save_config", outside[0]), ("save_config", outside[1]), ("config", "other.yaml")]:
        settings = tmp_path / "run.yaml"
        settings.write_text(yaml.safe_dump({key: value, "output_dir": str(tmp_path / "out")}))
        files = disk(tmp_path)
        code = main(["increment", "--config", str(settings), "--model_name_or_path", str(base), "--train_file",
                     str(train), *CLI_FLAGS])
        error = capsys.readouterr().err
        assert code == 1 and f"sets ['{key}'], which only a flag may set" in error and "nothing was run" in error
        assert disk(tmp_path) == files
    assert not any(Path(p).exists() for p in outside)


def test_save_config_writes_only_a_yaml_file(tmp_path, cli_base):
    base, _ = cli_base
    files = disk(tmp_path)
    for target in (base / "config.json", base / "model.safetensors", base):
        with pytest.raises(ConfigError, match="should name a YAML file"):
            parse_args(["--save_config", str(target), "--output_dir", str(tmp_path / "out")])
    assert disk(tmp_path) == files
    parse_args(["--save_config", str(tmp_path / "settings" / "run.yaml"), "--output_dir", str(tmp_path / "out")])
    assert yaml.safe_load((tmp_path / "settings" / "run.yaml").read_text())["output_dir"] == str(tmp_path / "out")


def test_output_dir_whose_replacement_would_lose_files_is_refused(tmp_path, cli_base, capsys, monkeypatch):
    base, train = cli_base
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    (tmp_path / "file.txt").write_text("keep me too")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    cases = {
        str(tmp_path / "notes"): "holds files that are not a saved model (['todo.txt'])",
        str(tmp_path / "models"): f"contains the model being extended ({str(base)!r})",
        ".": "is the working folder or one of its parents",
        "..": "is the working folder or one of its parents",
        str(tmp_path / "file.txt"): "is a file",
    }
    for output_dir, found in cases.items():
        files = disk(tmp_path)
        code = main(["increment", "--model_name_or_path", str(base), "--train_file", str(train), "--output_dir",
                     output_dir, *CLI_FLAGS])
        error = capsys.readouterr().err
        assert code == 1 and found in error and "Pass" in error, output_dir
        assert disk(tmp_path) == files
    # What may be replaced: a new or empty folder, a saved model (the one being extended too), an interrupted run.
    (tmp_path / "interrupted" / "checkpoints").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for output_dir in ("new", tmp_path / "empty", base, tmp_path / "interrupted"):
        check_output_dir(output_dir, base)


def test_resume_from_checkpoint_outside_the_output_folder_is_refused(tmp_path, cli_base, capsys):
    base, train = cli_base
    elsewhere = tmp_path / "elsewhere" / "checkpoint-5"
    elsewhere.mkdir(parents=True)
    (elsewhere / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    out = tmp_path / "out"
    for resume in (str(elsewhere), "../../checkpoint-5", str(out / "checkpoints" / ".." / ".." / "elsewhere")):
        files = disk(tmp_path)
        code = main(["increment", "--model_name_or_path", str(base), "--train_file", str(train), "--output_dir",
                     str(out), "--resume_from_checkpoint", resume, *CLI_FLAGS])
        error = capsys.readouterr().err
        assert code == 1 and "is outside this run's checkpoint folder" in error
        assert "`--resume_from_checkpoint true`" in error
        assert disk(tmp_path) == files
    inside = out / "checkpoints" / "warmup" / "checkpoint-1"
    inside.mkdir(parents=True)
    for resume in (None, True, "true", "False", str(inside)):
        check_resume_from_checkpoint(resume, out)
    with pytest.raises(ConfigError, match="does not exist"):
        check_resume_from_checkpoint(str(out / "checkpoints" / "warmup" / "checkpoint-9"), out)


def test_missing_data_file_or_model_is_a_clear_error(tmp_path, cli_base, capsys):
    base, train = cli_base
    files = disk(tmp_path)
    code = main(["increment", "--model_name_or_path", str(base), "--train_file", str(tmp_path / "nope.jsonl"),
                 "--output_dir", str(tmp_path / "out"), *CLI_FLAGS])
    assert code == 1 and "nope.jsonl' does not exist" in capsys.readouterr().err
    code = main(["increment", "--model_name_or_path", str(tmp_path / "no_model"), "--train_file", str(train),
                 "--output_dir", str(tmp_path / "out"), *CLI_FLAGS])
    error = capsys.readouterr().err
    assert code == 1 and f"Could not load the classifier {str(tmp_path / 'no_model')!r}" in error
    assert "Expected a folder written by hf-incr" in error
    assert disk(tmp_path) == files


def test_a_saved_folder_cannot_redirect_what_an_increment_reads(tmp_path, tok):
    decoy = tmp_path / "decoy"
    ReplayMemory([{"text": "someone else's text", "labels": ["refund"]}]).save(decoy)
    base = tmp_path / "base"
    tiny_bert(OLD).save_pretrained(base)
    config = json.loads((base / "config.json").read_text())
    config["_name_or_path"] = str(decoy)
    (base / "config.json").write_text(json.dumps(config))
    model = AutoModelForSequenceClassification.from_pretrained(base)
    assert Path(model.config._name_or_path).resolve() == base.resolve()
    result = run(model, tok, text_dataset(["repair"], 2), None, tmp_path)
    assert [row["text"] for row in result.replay_memory.rows if row["labels"] == ["refund"]] == []
