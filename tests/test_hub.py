"""Pushing to the Hub over real HTTP: the real huggingface_hub client against a fake Hub on 127.0.0.1.

Asserts what arrives (files, the ndjson commit), the round trip through ``snapshot_download`` + plain transformers,
and that every failure leaves the local save complete and raises a HubPushError that shows no token.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import time
import traceback
from pathlib import Path

import pytest
from huggingface_hub import constants, snapshot_download
from transformers import AutoModelForSequenceClassification, BertTokenizer, pipeline

from hf_incr.errors import HfIncrError, HubPushError
from hf_incr.replay import ReplayMemory
from hf_incr.hub import default_commit_message, push_saved_model, push_to_hub
from hf_incr.lineage import LINEAGE_ATTRIBUTE, get_lineage
from hf_incr.saving import save_increment
from hub_server import FakeHub
from tiny_models import tiny_model

TOKEN = "hf_TestTokenThatMustNeverLeak0123456789"
REPO = "test-user/tiny-grown"


def _lineage():
    def record(k, kind, added, ids, after, forgetting=None):
        return {"increment": k, "kind": kind, "labels_added": added, "label_ids": ids, "num_labels": ids[-1] + 1,
                "base_model": "org/tiny-bert" if k == 0 else "/tmp/step0", "recipe": {"init": "imprint"},
                "metrics": {"before": {}, "after": after, "forgetting": forgetting}, "date": "2026-11-22T10:00:00+00:00"}

    return [
        record(0, "base", ["alpha", "beta"], [0, 1], {"accuracy": 0.9, "new_accuracy": 0.9}),
        record(1, "increment", ["gamma"], [2], {"accuracy": 0.8, "old_accuracy": 0.85, "new_accuracy": 0.7}, 0.05),
    ]


def _tokenizer(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]))
    return BertTokenizer.from_pretrained(directory)


def _grown_model():
    model = tiny_model()
    setattr(model.config, LINEAGE_ATTRIBUTE, _lineage())
    return model


@pytest.fixture
def saved(tmp_path):
    """A folder as an increment saves it: model, tokenizer, lineage, replay memory, card, plot (and a checkpoint)."""
    replay = ReplayMemory([{"text": "w5 w6", "labels": ["alpha"]}, {"text": "w7 w8", "labels": ["gamma"]}])
    folder = save_increment(_grown_model(), tmp_path / "grown", _tokenizer(tmp_path / "tok"), replay=replay)
    (folder / "checkpoints" / "warmup").mkdir(parents=True)
    (folder / "checkpoints" / "warmup" / "optimizer.pt").write_bytes(b"not for the Hub")
    return folder


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake Hub; huggingface_hub pointed at it (env and the constants it read at import), no stored token."""
    server = FakeHub(token=TOKEN, lifetime=60).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    # hf_hub_download builds file URLs from this template (made from ENDPOINT at import) and only swaps in
    # `endpoint=` when the URL starts with constants.ENDPOINT: patching ENDPOINT alone sends downloads to the internet.
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))
    yield server
    server.stop()


class _NoWaitTime:
    """``time`` for huggingface_hub's HTTP module only: its retry back-off (1+2+4+8+8 s) does not wait in tests."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds):
        return None


@pytest.fixture
def no_backoff(monkeypatch):
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http, "time", _NoWaitTime())


def _folder_state(folder: Path) -> dict[str, bytes]:
    """Every file of a saved folder except the card (which a push rewrites with the repo id)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != "README.md"}


def _assert_no_token(error: BaseException) -> None:
    shown = "".join(traceback.format_exception(error)) + repr(error) + str(error.args)
    assert TOKEN not in shown


def test_hub_push_error_is_an_hf_incr_error_not_a_value_error():
    assert issubclass(HubPushError, HfIncrError) and not issubclass(HubPushError, ValueError)


def test_push_uploads_the_folder_in_one_commit(hub, saved, caplog):
    caplog.set_level(logging.DEBUG, logger="hf_incr")
    commit = push_to_hub(saved, REPO, token=TOKEN)
    assert commit.oid == hub.repos[REPO].branches["main"]
    [arrived] = hub.commits
    assert arrived.header["summary"] == "hf_incr increment 1: add label gamma"
    assert arrived.header["summary"] == default_commit_message(_lineage())
    # The ndjson payload: a header, then one regular (base64) file per line.
    assert arrived.payload[0]["key"] == "header"
    assert {line["key"] for line in arrived.payload[1:]} == {"file"}
    assert {line["value"]["encoding"] for line in arrived.payload[1:]} == {"base64"}
    names = set(arrived.files)
    assert {"config.json", "model.safetensors", "lineage.json", "README.md", "increments.png",
            "replay_memory/memory.parquet", "tokenizer_config.json"} <= names
    assert not any(name.startswith("checkpoints/") for name in names)
    local = {str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file() and "checkpoints" not in p.parts}
    assert names == local
    for name, content in arrived.files.items():
        assert content == (saved / name).read_bytes(), name
        assert TOKEN.encode() not in content, name
    assert len(json.loads(arrived.files["config.json"])[LINEAGE_ATTRIBUTE]) == 2
    card = arrived.files["README.md"].decode()
    assert f'model_id = "{REPO}"' in card and "<!-- hf_incr:lineage increments=2 -->" in card
    assert "](increments.png)" in card
    line = next(line for line in arrived.payload if line["value"].get("path") == "lineage.json")
    assert json.loads(base64.b64decode(line["value"]["content"])) == _lineage()
    # Every request carried the token; nothing else did, and no log line shows it.
    assert {r.authorization for r in hub.requests if r.path.startswith("/api/models")} == {f"Bearer {TOKEN}"}
    assert TOKEN not in caplog.text
    assert "Pushed" in caplog.text


def test_round_trip_through_snapshot_download_and_plain_transformers(hub, saved, tmp_path):
    push_to_hub(saved, REPO, token=TOKEN)
    path = snapshot_download(REPO, endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "cache")
    routes = hub.routes_called()
    assert f"GET /api/models/{REPO}/revision/main" in routes
    assert any(r.startswith(f"GET /{REPO}/resolve/") for r in routes)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    assert list(model.config.id2label.values()) == ["alpha", "beta", "gamma"]
    assert get_lineage(model) == _lineage()
    classifier = pipeline("text-classification", model=path)
    assert classifier("w1 w2")[0]["label"] in {"alpha", "beta", "gamma"}
    assert json.loads((Path(path) / "lineage.json").read_text()) == _lineage()


def test_push_a_model_saves_first_then_uploads_to_a_new_private_branch(hub, tmp_path):
    save_dir = tmp_path / "saved-first"
    push_to_hub(_grown_model(), REPO, token=TOKEN, private=True, revision="dev",
                tokenizer=_tokenizer(tmp_path / "tok"), save_dir=save_dir, commit_message="Add gamma")
    assert (save_dir / "config.json").is_file() and (save_dir / "README.md").is_file()
    assert hub.repos[REPO].private
    assert "POST /api/models/test-user/tiny-grown/branch/dev" in hub.routes_called()
    assert "config.json" in hub.files(REPO, "dev") and "config.json" not in hub.files(REPO, "main")
    [arrived] = hub.commits
    assert arrived.revision == "dev" and arrived.header["summary"] == "Add gamma"


def test_push_refuses_to_overwrite_a_folder_that_is_not_a_model(hub, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("mine")
    with pytest.raises(HubPushError, match="does not hold a saved model"):
        push_to_hub(_grown_model(), REPO, token=TOKEN, save_dir=tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "mine" and not hub.requests


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    "case, expected",
    [
        ("wrong token", "HTTP 401"),
        ("server error", "HTTP 500"),
        ("interrupted upload", "connection"),
        ("connection refused", "could not reach"),
        ("no token", "no Hugging Face token"),
    ],
)
def test_failures_keep_the_local_save_and_say_how_to_retry(hub, saved, no_backoff, case, expected):
    """upload_folder retries a commit 5 times on 5xx and broken connections: the failures persist past that."""
    before = _folder_state(saved)
    kwargs = {"token": TOKEN}
    if case == "wrong token":
        kwargs["token"] = "hf_WrongTokenAbcdefghijklmnop123"
    elif case == "server error":
        hub.fail("commit", 500, times=6, message=f"internal error while checking {TOKEN}")  # echoes the token
    elif case == "interrupted upload":
        hub.fail("commit", "drop", times=6)
    elif case == "connection refused":
        kwargs["endpoint"] = _closed_port_url()
    elif case == "no token":
        kwargs = {}
    with pytest.raises(HubPushError, match=expected) as info:
        push_to_hub(saved, REPO, **kwargs)
    error = info.value
    assert not isinstance(error, ValueError)
    assert str(saved) in str(error) and "hf_incr.push_to_hub(" in str(error) and f"hf-incr push --model_name_or_path {saved} --repo_id {REPO}" in str(error)
    assert error.folder == saved and error.repo_id == REPO
    _assert_no_token(error)
    assert "hf_WrongToken" not in str(error)
    assert _folder_state(saved) == before
    assert AutoModelForSequenceClassification.from_pretrained(saved).config.id2label[2] == "gamma"
    assert not hub.commits
    if case == "no token":
        assert not hub.requests  # refused before touching the network
    if case == "server error":
        assert error.status_code == 500
        assert sum(r.path.endswith("/commit/main") for r in hub.requests) == 6  # the client's own 5 retries


def test_retry_after_a_failure_uploads_once_and_does_not_duplicate_the_lineage(hub, saved, no_backoff):
    hub.fail("commit", 503, times=6)
    with pytest.raises(HubPushError, match="try again later"):
        push_to_hub(saved, REPO, token=TOKEN)
    hub.clear_failures()
    push_to_hub(saved, REPO, token=TOKEN)
    assert len(hub.commits) == 1
    stored = json.loads(hub.files(REPO)["config.json"])[LINEAGE_ATTRIBUTE]
    assert stored == _lineage() == get_lineage(AutoModelForSequenceClassification.from_pretrained(saved))
    # Pushing the same folder again changes nothing on the Hub: every file is already there.
    push_to_hub(saved, REPO, token=TOKEN)
    assert len(hub.commits) == 1


def test_push_saved_model_follows_training_arguments(hub, saved):
    from transformers import TrainingArguments

    off = TrainingArguments(output_dir=str(saved), report_to="none")
    assert push_saved_model(saved, off) is None and not hub.requests
    on = TrainingArguments(output_dir=str(saved), report_to="none", push_to_hub=True, hub_model_id=REPO,
                           hub_token=TOKEN, hub_private_repo=True)
    push_saved_model(saved, on)
    assert hub.repos[REPO].private and len(hub.commits) == 1


def test_a_stale_or_missing_card_is_rewritten_from_the_config_before_upload(hub, saved):
    (saved / "README.md").write_text("---\nlicense: mit\n---\n# A card without the lineage\n")
    (saved / "lineage.json").unlink()
    (saved / "increments.png").unlink()
    push_to_hub(saved, REPO, token=TOKEN)
    files = hub.files(REPO)
    assert "<!-- hf_incr:lineage increments=2 -->" in files["README.md"].decode()
    assert "`gamma`" in files["README.md"].decode()
    assert json.loads(files["lineage.json"]) == _lineage() and "increments.png" in files


def test_retry_hint_keeps_the_branch(hub, saved):
    with pytest.raises(HubPushError) as info:
        push_to_hub(saved, REPO, revision="dev")
    assert "revision='dev'" in str(info.value) and "--hub_revision dev" in str(info.value)


def test_load_model_brings_the_random_feature_head_from_the_hub_and_nothing_else_otherwise(hub, saved, tmp_path):
    import torch

    import hf_incr
    from hf_incr.random_features import RandomFeatureHead, attached_random_feature_head

    push_to_hub(saved, REPO, token=TOKEN)
    plain = hf_incr.load_model(REPO, token=TOKEN, cache_dir=tmp_path / "cache")  # no random-feature file: 404
    assert attached_random_feature_head(plain) is None

    linear = hf_incr.find_classifier_head(plain).linear
    head = RandomFeatureHead.new(linear.in_features, 16, linear.out_features, seed=3)
    torch.nn.init.normal_(head.linear.weight)
    head.save(saved)
    push_to_hub(saved, REPO, token=TOKEN)
    model = hf_incr.load_model(REPO, token=TOKEN, cache_dir=tmp_path / "cache2")
    attached = attached_random_feature_head(model)
    assert attached is not None and torch.equal(attached.linear.weight, head.linear.weight)
    features = torch.randn(2, linear.in_features)
    torch.testing.assert_close(hf_incr.find_classifier_head(model).linear(features), head(features))
