"""The kernel head wherever the model goes: a folder (or Hub repo) saved with it carries its inference code, so that
``from_pretrained(..., trust_remote_code=True)`` and ``pipeline(..., trust_remote_code=True)`` answer with it in an
environment where hf_incr is not installed, prediction for prediction as :func:`hf_incr.load_model` does; plain
loading still gives the native class and its Linear; the code file is the same bytes for every model.

Each "user" here is a child Python process in which ``import hf_incr`` fails (a meta-path finder refuses it), with
its own ``HF_MODULES_CACHE``, as on a machine that never installed hf_incr.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_hub import REPO, TOKEN, hub  # noqa: F401  (the fake Hub fixture and its credentials)
from text_models import as_label_lists, text_dataset, tiny_bert, tokenizer, training_args
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

import hf_incr
from hf_incr import IncrementConfig, train_increment
from hf_incr import model_card as model_card_module
from hf_incr.heads import KernelHead
from hf_incr.heads import modeling_hf_incr_kernel as modeling
from hf_incr.hub import push_to_hub

CONFIG = dict(head="kernel", kernel_features=64, finetune_layers=0, replay_per_label=0, distill_weight=0.0)
OLD = ["refund", "delivery", "login"]
CODE = "modeling_hf_incr_kernel.py"
TEXTS = ["please help with password number 3", "refund number 40", "shipping of my parcel",
         "please help with courier number 7", "sign in please", "money back number 12"]

# The user's process: hf_incr cannot be imported; it loads the model the three ways a Hub user would and prints what
# each one answers (one JSON line).
CHILD = r'''
import importlib.abc, json, sys


class NoHfIncr(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "hf_incr" or name.startswith("hf_incr."):
            raise ImportError("hf_incr is not installed here")


sys.meta_path.insert(0, NoHfIncr())
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

source, texts, extra = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
try:
    import hf_incr  # noqa: F401
    raise SystemExit("hf_incr was importable")
except ImportError:
    pass
tok = AutoTokenizer.from_pretrained(source, **extra)
batch = tok(texts, padding=True, return_tensors="pt")
out = {}
remote = AutoModelForSequenceClassification.from_pretrained(source, trust_remote_code=True, **extra).eval()
plain = AutoModelForSequenceClassification.from_pretrained(source, **extra).eval()
with torch.no_grad():
    out["remote"] = remote(**batch).logits.tolist()
    out["plain"] = plain(**batch).logits.tolist()
    # One text at a time (no padding) gives the same logits as the padded batch.
    out["one_by_one"] = [remote(**tok([t], return_tensors="pt")).logits[0].tolist() for t in texts]
    half = AutoModelForSequenceClassification.from_pretrained(source, trust_remote_code=True, dtype=torch.bfloat16,
                                                              **extra).eval()
    logits = half(**batch).logits
    out["bf16_dtype"], out["bf16"] = str(logits.dtype), logits.float().tolist()
out["remote_class"], out["plain_class"] = type(remote).__name__, type(plain).__name__
out["remote_auto_map"] = getattr(remote.config, "auto_map", None)
pipe = pipeline("text-classification", model=source, trust_remote_code=True, top_k=None, **extra)
out["pipeline"] = [{item["label"]: item["score"] for item in answer} for answer in pipe(texts)]
print(json.dumps(out))
'''


def _as_user(source: str | Path, tmp_path: Path, texts=TEXTS, extra: dict | None = None, env: dict | None = None):
    """What a user without hf_incr gets from ``source`` (a folder or Hub repo id)."""
    environment = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HOME": str(tmp_path / "home"),
                   "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    # The child must not find hf_incr through the test's own path either (the meta-path finder would refuse it
    # anyway; this keeps the check honest for a source checkout on PYTHONPATH).
    environment.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(source), json.dumps(texts), json.dumps(extra or {})],
                          capture_output=True, text=True, env=environment, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _logits(model, texts=TEXTS) -> torch.Tensor:
    batch = tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(autouse=True)
def _this_checkouts_template(monkeypatch):
    template = Path(__file__).resolve().parents[1] / "model_cards" / model_card_module.TEMPLATE_NAME
    monkeypatch.setattr(model_card_module, "template_path", lambda: template)


def _base(tmp_path, labels=OLD, name="base", multi_label=False, data=None, **config):
    tok = tokenizer()
    problem = "multi_label_classification" if multi_label else None
    model = tiny_bert(labels, problem_type=problem, seed=1, dropout=0.0)
    data = data if data is not None else text_dataset(labels, 8)
    if multi_label:
        data = as_label_lists(data, extra=labels[0])
        config.setdefault("label_column", "labels")
    train_increment(model, tok, data, config=IncrementConfig(**{**CONFIG, **config}), kind="base",
                    args=training_args(tmp_path, output_dir=str(tmp_path / name)))
    return tmp_path / name


def _assert_same_answers(user: dict, reference: torch.Tensor, plain: torch.Tensor) -> None:
    remote = torch.tensor(user["remote"])
    torch.testing.assert_close(remote, reference, rtol=1e-5, atol=1e-5)
    assert torch.equal(remote.argmax(1), reference.argmax(1))
    torch.testing.assert_close(torch.tensor(user["one_by_one"]), reference, rtol=1e-4, atol=1e-4)
    # Plain loading: the native class with its Linear, whose logits differ from the kernel head's.
    assert user["plain_class"] == "BertForSequenceClassification"
    torch.testing.assert_close(torch.tensor(user["plain"]), plain, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(remote, torch.tensor(user["plain"]), atol=1e-3)
    # The factory returns the checkpoint's own class, whose config no longer names code it would not save.
    assert user["remote_class"] == "BertForSequenceClassification" and not user["remote_auto_map"]
    # bf16 runs (encoder and head in bf16) and stays near the float32 logits.
    assert user["bf16_dtype"] == "torch.bfloat16"
    bf16 = torch.tensor(user["bf16"])
    assert ((bf16 - reference).norm() / reference.norm()).item() < 0.1


def _pipeline_scores(user: dict, names: list[str]) -> torch.Tensor:
    return torch.tensor([[answer[name] for name in names] for answer in user["pipeline"]])


def test_a_saved_folder_and_its_continuation_answer_with_the_kernel_head_without_hf_incr(tmp_path):
    folder = _base(tmp_path)
    assert json.loads((folder / "config.json").read_text())["auto_map"] == {
        "AutoModelForSequenceClassification": "modeling_hf_incr_kernel.HfIncrKernelForSequenceClassification"}
    # The one copy of the inference code: the package's own module, byte for byte.
    assert (folder / CODE).read_bytes() == Path(modeling.__file__).read_bytes()
    reference = _logits(hf_incr.load_model(str(folder)))
    plain = _logits(AutoModelForSequenceClassification.from_pretrained(folder).eval())
    user = _as_user(folder, tmp_path)
    _assert_same_answers(user, reference, plain)
    torch.testing.assert_close(_pipeline_scores(user, OLD), reference.softmax(1), rtol=1e-5, atol=1e-6)

    # A later increment continues the kernel head: its folder's code still loads, with the new label answering.
    grown = hf_incr.load_model(str(folder))
    train_increment(grown, tokenizer(), text_dataset(["repair"], 8), config=IncrementConfig(**CONFIG),
                    args=training_args(tmp_path, output_dir=str(tmp_path / "next")))
    assert KernelHead.attached(grown, hf_incr.find_classifier_head(grown)) is not None
    assert (tmp_path / "next" / CODE).read_bytes() == (folder / CODE).read_bytes()
    reference = _logits(hf_incr.load_model(str(tmp_path / "next")))
    plain = _logits(AutoModelForSequenceClassification.from_pretrained(tmp_path / "next").eval())
    user = _as_user(tmp_path / "next", tmp_path)
    _assert_same_answers(user, reference, plain)
    assert reference.shape[1] == 4 and list(user["pipeline"][0]).count("repair") == 1
    torch.testing.assert_close(_pipeline_scores(user, [*OLD, "repair"]), reference.softmax(1), rtol=1e-5, atol=1e-6)


def test_a_multi_label_folder_puts_each_decision_at_half_in_the_pipeline(tmp_path):
    folder = _base(tmp_path, multi_label=True)
    reference = _logits(hf_incr.load_model(str(folder)))
    plain = _logits(AutoModelForSequenceClassification.from_pretrained(folder).eval())
    user = _as_user(folder, tmp_path)
    _assert_same_answers(user, reference, plain)
    scores = _pipeline_scores(user, OLD)
    torch.testing.assert_close(scores, reference.sigmoid(), rtol=1e-5, atol=1e-6)
    assert torch.equal(scores > 0.5, reference > 0)


def test_a_hub_round_trip_answers_with_the_kernel_head_at_the_pushed_commit(hub, tmp_path):  # noqa: F811
    folder = _base(tmp_path)
    pushed = push_to_hub(folder, REPO, token=TOKEN)
    repo = hub.repos[REPO]
    files = repo.trees[pushed.oid]
    assert files[CODE] == (folder / CODE).read_bytes() and "hf_incr_kernel_lda.safetensors" in files
    # The card on the branch (a second commit) pins both loading lines to the commit that holds code and weights.
    card = repo.trees[repo.branches["main"]]["README.md"].decode()
    assert f'revision="{pushed.oid}"' in card and "trust_remote_code=True" in card
    reference = _logits(hf_incr.load_model(REPO, token=TOKEN, cache_dir=tmp_path / "cache"))
    plain = _logits(AutoModelForSequenceClassification.from_pretrained(REPO, token=TOKEN,
                                                                       cache_dir=tmp_path / "cache2").eval())
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
           "HF_TOKEN": TOKEN}
    user = _as_user(REPO, tmp_path, extra={"revision": pushed.oid}, env=env)
    _assert_same_answers(user, reference, plain)
    torch.testing.assert_close(_pipeline_scores(user, OLD), reference.softmax(1), rtol=1e-5, atol=1e-6)


def test_a_model_without_the_kernel_head_ships_no_code(tmp_path):
    # Asked for the Linear: a plain transformers folder, no auto_map, no modeling file.
    folder = _base(tmp_path, head="linear")
    assert "auto_map" not in json.loads((folder / "config.json").read_text()) and not (folder / CODE).exists()
    loaded = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    assert type(loaded) is BertForSequenceClassification

    # A kernel model whose statistics are gone: the increment falls back to the Linear in one line and the folder it
    # saves no longer points at the kernel head's code.
    kernel_folder = _base(tmp_path, name="kernel")
    (kernel_folder / "hf_incr_kernel_lda_statistics.safetensors").unlink()
    model = hf_incr.load_model(str(kernel_folder))
    with pytest.warns(UserWarning, match="kernel LDA head") as caught:
        result = train_increment(model, tokenizer(), text_dataset(["repair"], 8), config=IncrementConfig(**CONFIG),
                                 args=training_args(tmp_path, output_dir=str(tmp_path / "after")))
    fallback = [str(w.message) for w in caught if "kernel LDA head" in str(w.message)]
    assert len(fallback) == 1 and "\n" not in fallback[0].strip()
    assert result.plan.answering == "linear"
    saved = json.loads((tmp_path / "after" / "config.json").read_text())
    assert "auto_map" not in saved and not (tmp_path / "after" / CODE).exists()
    assert type(AutoModelForSequenceClassification.from_pretrained(tmp_path / "after", trust_remote_code=True)) is (
        BertForSequenceClassification)


def test_the_code_file_is_the_same_bytes_whatever_the_labels(tmp_path):
    # A label that would be code if anything model-specific were written into the file.
    hostile = ['"); import os; ("', "refund"]
    first = _base(tmp_path, labels=OLD, name="first")
    data = text_dataset(["login", "refund"], 8).map(lambda row: {"label": row["label"].replace("login", hostile[0])})
    second = _base(tmp_path, labels=hostile, name="second", data=data, kernel_features=32)
    assert (first / CODE).read_bytes() == (second / CODE).read_bytes() == Path(modeling.__file__).read_bytes()
    # The label lives in config.json, as data.
    assert json.loads((second / "config.json").read_text())["id2label"]["0"] == hostile[0]
    source = (first / CODE).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    # Nothing beyond what a transformers install has (transformers' own check of remote code reads these too).
    assert imported - set(sys.stdlib_module_names) == {"torch", "transformers", "safetensors", "huggingface_hub"}
    assert not imported & {"pickle", "marshal", "subprocess", "shelve"}
    calls = {ast.unparse(node.func) for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)}
    assert not calls & {"torch.load", "eval", "exec", "__import__", "compile", "pickle.loads"}


def test_trainer_checkpoints_of_a_kernel_model_load_as_plain_models(tmp_path, monkeypatch):
    # transformers issue #46165: Trainer's checkpoints may lack custom code files, so none of them may name any. The
    # default base adapts the top layers by Trainer (checkpoints) and then solves the kernel head; a continued kernel
    # model's next base-like run starts from a config that points at the code.
    folder = _base(tmp_path)
    model = hf_incr.load_model(str(folder))
    assert model.config.auto_map
    seen = []
    monkeypatch.setattr("hf_incr.recipe.remove_checkpoints", lambda output_dir: seen.append(output_dir))
    config = IncrementConfig(**{**CONFIG, "finetune_layers": 1, "finetune_epochs": 1})
    train_increment(model, tokenizer(), text_dataset(OLD, 8), config=config, kind="base",
                    args=training_args(tmp_path, output_dir=str(tmp_path / "next"), save_strategy="epoch"))
    checkpoints = sorted((tmp_path / "next" / "checkpoints").rglob("checkpoint-*/config.json"))
    assert seen and checkpoints
    for path in checkpoints:
        assert "auto_map" not in json.loads(path.read_text()), path
        assert not (path.parent / CODE).exists()
        loaded = AutoModelForSequenceClassification.from_pretrained(path.parent, trust_remote_code=True)
        assert type(loaded) is BertForSequenceClassification
    # The finished folder itself ships the code.
    assert json.loads((tmp_path / "next" / "config.json").read_text())["auto_map"]
    assert (tmp_path / "next" / CODE).is_file()
