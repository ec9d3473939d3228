"""Pushing to the Hub over real HTTP: the real huggingface_hub client against a fake Hub on 127.0.0.1.

Asserts what arrives (files, the ndjson commit, LFS objects), the round trip through ``snapshot_download`` + plain
transformers, that a push mirrors hf_incr's own files and changes visibility only towards private, and that every
failure (regular or LFS upload) leaves the local save complete and raises a HubPushError that shows no token.

The ``hub`` fixture decides upload modes as the Hub does (binary files such as ``model.safetensors`` go through LFS)
with Xet turned off in the client, so the plain LFS protocol runs; ``regular_hub`` answers ``regular`` for every file
and leaves the client as installed (with ``hf_xet``: its streamed upload pipeline).
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
import torch
from hub_server import LFS_THRESHOLD, FakeHub, is_binary, sha256
from huggingface_hub import CommitOperationAdd, HfApi, constants, snapshot_download
from tiny_models import tiny_model
from transformers import AutoModelForSequenceClassification, BertTokenizer, pipeline

from hf_incr.errors import HfIncrError, HubPushError
from hf_incr.hub import default_commit_message, push_saved_model, push_to_hub
from hf_incr.lineage import LINEAGE_ATTRIBUTE, get_lineage
from hf_incr.replay import ReplayMemory
from hf_incr.saving import save_increment

TOKEN = "hf_TestTokenThatMustNeverLeak0123456789"
REPO = "test-user/tiny-grown"


def _lineage():
    def record(k, kind, added, ids, after, forgetting=None):
        return {"increment": k, "kind": kind, "labels_added": added, "label_ids": ids, "num_labels": ids[-1] + 1,
                "base_model": "org/tiny-bert" if k == 0 else "/tmp/step0", "recipe": {"init": "imprint"},
                "metrics": {"before": {}, "after": after, "forgetting": forgetting},
                "date": "2026-11-22T10:00:00+00:00"}

    return [
        record(0, "base", ["alpha", "beta"], [0, 1], {"accuracy": 0.9, "new_accuracy": 0.9}),
        record(1, "increment", ["gamma"], [2], {"accuracy": 0.8, "old_accuracy": 0.85, "new_accuracy": 0.7}, 0.05),
    ]


def _tokenizer(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)])
    )
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


def _serve(server: FakeHub, monkeypatch, tmp_path) -> FakeHub:
    """Point huggingface_hub at ``server`` (env and the constants it read at import), with no stored token."""
    import transformers.utils.hub

    server.start()
    # transformers keeps one HfApi for the process, made with the endpoint of its first use: a later test's
    # from_pretrained(repo_id) would resolve revisions on an earlier test's server.
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    # hf_hub_download builds file URLs from this template (made from ENDPOINT at import) and only swaps in
    # `endpoint=` when the URL starts with constants.ENDPOINT: patching ENDPOINT alone sends downloads to the internet.
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))
    return server


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake Hub that sends binary and large files through LFS, and a client that uses plain LFS for them.

    huggingface_hub uploads LFS files through Xet whenever ``hf_xet`` is installed (a dependency of it), whatever the
    server says; this fake has no Xet storage, so the client's switch ``HF_HUB_DISABLE_XET`` is turned on.
    """
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    server = _serve(FakeHub(token=TOKEN, lifetime=60), monkeypatch, tmp_path)
    yield server
    server.stop()


@pytest.fixture
def regular_hub(monkeypatch, tmp_path):
    """A fake Hub that takes every file as a regular one: the client as installed (Xet pipeline) never needs Xet."""
    server = _serve(FakeHub(token=TOKEN, lifetime=60, lfs=False), monkeypatch, tmp_path)
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
    # The ndjson payload: a header, then one file per line: text as base64, binary files as LFS pointers (sha256).
    assert arrived.payload[0]["key"] == "header"
    assert {line["key"] for line in arrived.payload[1:]} == {"file", "lfsFile"}
    assert arrived.lfs_files == {"model.safetensors", "increments.png", "replay_memory/memory.parquet"}
    for line in arrived.payload[1:]:
        content = (saved / line["value"]["path"]).read_bytes()
        if line["key"] == "file":
            assert line["value"]["encoding"] == "base64" and not is_binary(content[:512])
        else:
            assert line["value"] == {"path": line["value"]["path"], "algo": "sha256", "oid": sha256(content),
                                     "size": len(content)}
    assert sorted(hub.lfs_uploads) == sorted((REPO, sha256((saved / name).read_bytes())) for name in arrived.lfs_files)
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
    "case, expected, server",
    [
        ("wrong token", "HTTP 401", "regular_hub"),
        ("server error", "HTTP 500", "regular_hub"),
        ("server error", "HTTP 500", "hub"),
        ("interrupted upload", "connection", "regular_hub"),
        ("interrupted upload", "connection", "hub"),
        ("connection refused", "could not reach", "regular_hub"),
        ("no token", "no Hugging Face token", "regular_hub"),
    ],
)
def test_failures_keep_the_local_save_and_say_how_to_retry(request, saved, no_backoff, case, expected, server):
    """With hf_xet (``regular_hub``), upload_folder retries a commit 5 times on 5xx and broken connections; without
    it (``hub``: plain LFS), the commit is sent once. The failures persist past the retries."""
    hub = request.getfixturevalue(server)
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
    assert (
        str(saved) in str(error)
        and "hf_incr.push_to_hub(" in str(error)
        and f"hf-incr push --model_name_or_path {saved} --repo_id {REPO}" in str(error)
    )
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
        attempts = 6 if server == "regular_hub" else 1  # the Xet pipeline's own 5 retries; none without it
        assert sum(r.path.endswith("/commit/main") for r in hub.requests) == attempts


def test_retry_after_a_failure_uploads_once_and_does_not_duplicate_the_lineage(hub, saved, no_backoff):
    hub.fail("commit", 503, times=6)
    with pytest.raises(HubPushError, match="try again later"):
        push_to_hub(saved, REPO, token=TOKEN)
    hub.clear_failures()
    push_to_hub(saved, REPO, token=TOKEN)
    assert len(hub.commits) == 1
    stored = json.loads(hub.files(REPO)["config.json"])[LINEAGE_ATTRIBUTE]
    assert stored == _lineage() == get_lineage(AutoModelForSequenceClassification.from_pretrained(saved))
    # The LFS files reached storage before the commits failed: the retry uploaded none of them again.
    assert len(hub.lfs_uploads) == len(set(hub.lfs_uploads)) == 3
    # Pushing the same folder again changes nothing on the Hub: every file is already there.
    push_to_hub(saved, REPO, token=TOKEN)
    assert len(hub.commits) == 1 and len(hub.lfs_uploads) == 3


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


def _kernel_head(model, seed: int = 3):
    """A solved kernel LDA head for ``model``: 16 random features, fitted on random pooled states of its 3 labels."""
    import hf_incr
    from hf_incr.heads import KernelHead, PassRows

    head = KernelHead.start(model, hf_incr.find_classifier_head(model),
                            config=hf_incr.IncrementConfig(head="kernel", kernel_features=16), multi_label=False,
                            seed=seed, kept_labels=[])
    rows = 30
    generator = torch.Generator().manual_seed(seed)
    head.begin(PassRows(num_old=0, num_labels=3, annotated=None, own=rows, total=rows))
    head.add(list(range(rows)), torch.randn(rows, head.config.in_features, generator=generator),
             torch.arange(rows) % 3)
    head.end()
    head.classifier = head.solve_classifier()
    return head


def test_load_model_brings_the_kernel_head_from_the_hub_and_nothing_else_otherwise(hub, saved, tmp_path):
    import hf_incr
    from hf_incr.heads import KernelHead

    push_to_hub(saved, REPO, token=TOKEN)
    plain = hf_incr.load_model(REPO, token=TOKEN, cache_dir=tmp_path / "cache")  # no kernel head file: 404
    assert KernelHead.attached(plain, hf_incr.find_classifier_head(plain)) is None

    local = AutoModelForSequenceClassification.from_pretrained(saved)
    head = _kernel_head(local)
    head.save(saved)
    push_to_hub(saved, REPO, token=TOKEN)
    model = hf_incr.load_model(REPO, token=TOKEN, cache_dir=tmp_path / "cache2")
    attached = KernelHead.attached(model, hf_incr.find_classifier_head(model))
    assert attached is not None and len(attached.classifier.weights) == len(head.classifier.weights) == 1
    assert torch.equal(attached.classifier.weights[0], head.classifier.weights[0])
    # The loaded model answers with the kernel head, as the local model does with it attached.
    head.attach(local, hf_incr.find_classifier_head(local))
    torch.testing.assert_close(_logits(model), _logits(local))
    assert not torch.allclose(_logits(model), _logits(plain))


# -- LFS -------------------------------------------------------------------------------------------------------------


def _logits(model, ids=((2, 7, 8, 9, 3), (2, 11, 3, 0, 0))):
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=(torch.tensor(ids) != 0).long()).logits


def test_weights_go_through_lfs_and_come_back_for_transformers_and_load_model(hub, saved, tmp_path):
    import hf_incr

    push_to_hub(saved, REPO, token=TOKEN)
    assert "model.safetensors" in hub.lfs_files(REPO)
    routes = hub.routes_called()
    assert f"POST /{REPO}.git/info/lfs/objects/batch" in routes
    weights_oid = sha256((saved / "model.safetensors").read_bytes())
    assert f"PUT /lfs/{REPO}/{weights_oid}" in routes and f"POST /{REPO}.git/info/lfs/objects/verify" in routes
    # Uploads to storage carry no Hub token (pre-signed URL), as on the real Hub.
    assert all(r.authorization is None for r in hub.requests if r.path.startswith("/lfs/"))

    path = snapshot_download(REPO, endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "cache")
    assert f"GET /lfs/{REPO}/{weights_oid}" in hub.routes_called()  # followed the resolve redirect to storage
    for name in ("model.safetensors", "increments.png", "replay_memory/memory.parquet", "config.json"):
        assert (Path(path) / name).read_bytes() == (saved / name).read_bytes(), name
    expected = _logits(AutoModelForSequenceClassification.from_pretrained(saved))
    torch.testing.assert_close(_logits(AutoModelForSequenceClassification.from_pretrained(path)), expected)
    loaded = hf_incr.load_model(REPO, token=TOKEN, cache_dir=tmp_path / "cache2")
    torch.testing.assert_close(_logits(loaded), expected)


def test_server_decides_upload_modes_as_the_hub_does(hub, tmp_path):
    """The real decision: a gitattributes LFS pattern, 10 MiB or more, or a binary sample (a NUL byte) means LFS."""
    from huggingface_hub._commit_api import _fetch_upload_modes  # what upload_folder / create_commit call

    HfApi(endpoint=hub.url, token=TOKEN).create_repo(REPO)
    files = {
        "config.json": b'{"a": 1}',
        "big.txt": b"a" * LFS_THRESHOLD,
        "just_under.txt": b"a" * (LFS_THRESHOLD - 1),
        "increments.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "notes.md": "héllo, wörld\n".encode(),
        "weights.safetensors": b"text but matched by .gitattributes",
        "deep/dir/data.parquet": b"PAR1 text-looking",
    }
    additions = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content) for name, content in files.items()]
    _fetch_upload_modes(additions=additions, repo_type="model", repo_id=REPO,
                        headers={"authorization": f"Bearer {TOKEN}"}, revision="main", endpoint=hub.url)
    modes = {op.path_in_repo: op._upload_mode for op in additions}
    assert modes == {"config.json": "regular", "big.txt": "lfs", "just_under.txt": "regular", "increments.png": "lfs",
                     "notes.md": "regular", "weights.safetensors": "lfs", "deep/dir/data.parquet": "lfs"}
    # Only the sample (512 bytes) and the size went to preupload, never the 10 MiB.
    assert all(len(r.body) < 4096 for r in hub.requests if "/preupload/" in r.path)

    # A commit that sends a binary file as a regular one is refused, as the Hub refuses it.
    import urllib.error
    import urllib.request

    line = {"key": "file", "value": {"path": "w.bin", "encoding": "base64",
                                     "content": base64.b64encode(b"\x00\x01").decode()}}
    body = "\n".join(json.dumps(x) for x in ({"key": "header", "value": {"summary": "x"}}, line)).encode()
    commit = urllib.request.Request(f"{hub.url}/api/models/{REPO}/commit/main", data=body, method="POST",
                                    headers={"Authorization": f"Bearer {TOKEN}",
                                             "Content-Type": "application/x-ndjson"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(commit, timeout=10)
    assert refused.value.code == 422 and "binary" in json.loads(refused.value.read())["error"] and not hub.commits


def test_the_lfs_threshold_is_configurable_and_a_large_text_file_goes_through_lfs(monkeypatch, saved, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    hub = _serve(FakeHub(token=TOKEN, lifetime=60, lfs_threshold=1024), monkeypatch, tmp_path)
    try:
        assert (saved / "config.json").stat().st_size >= 1024
        push_to_hub(saved, REPO, token=TOKEN)
        [arrived] = hub.commits
        assert {"config.json", "model.safetensors"} <= arrived.lfs_files and "lineage.json" not in arrived.lfs_files
        assert hub.files(REPO)["config.json"] == (saved / "config.json").read_bytes()
        path = snapshot_download(REPO, endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "cache")
        assert get_lineage(AutoModelForSequenceClassification.from_pretrained(path)) == _lineage()
    finally:
        hub.stop()


@pytest.mark.parametrize(
    "route, status, expected",
    [
        ("lfs_batch", 401, "HTTP 401"),
        ("lfs_upload", 500, "HTTP 500"),
        ("lfs_upload", "drop", "connection"),
        ("lfs_verify", 500, "HTTP 500"),
    ],
)
def test_lfs_failures_keep_the_local_save_and_a_retry_uploads_each_file_once(hub, saved, no_backoff, route, status,
                                                                             expected):
    before = _folder_state(saved)
    # Enough failures to outlast the client's 5 retries of each of the 3 LFS files (uploaded in parallel).
    hub.fail(route, status, times=1 if status == 401 else 18, message=f"refused {TOKEN}")
    with pytest.raises(HubPushError, match=expected) as info:
        push_to_hub(saved, REPO, token=TOKEN)
    error = info.value
    assert str(saved) in str(error) and "hf_incr.push_to_hub(" in str(error) and error.repo_id == REPO
    if route != "lfs_batch":
        assert "while uploading the large file" in str(error) and "(LFS)" in str(error)
        assert error.status_code == (None if status == "drop" else status)
    else:
        assert error.status_code == 401
    _assert_no_token(error)
    assert _folder_state(saved) == before and not hub.commits
    if status == "drop":  # the uploads really were cut off mid-body
        assert any(r.method == "PUT" and 0 < len(r.body) < (saved / "model.safetensors").stat().st_size
                   for r in hub.requests if r.path.endswith(sha256((saved / "model.safetensors").read_bytes())))

    hub.clear_failures()
    uploaded_before_retry = list(hub.lfs_uploads)
    push_to_hub(saved, REPO, token=TOKEN)
    [arrived] = hub.commits
    assert len(hub.lfs_uploads) == len(set(hub.lfs_uploads)) == 3  # each LFS object stored once, failed or not
    assert set(hub.lfs_uploads) == {
        (REPO, line["value"]["oid"]) for line in arrived.payload if line["key"] == "lfsFile"
    }
    if route == "lfs_verify":  # the objects had arrived; only the verification failed: nothing is uploaded again
        assert len(uploaded_before_retry) == 3
    paths = [line["value"]["path"] for line in arrived.payload[1:]]
    assert len(paths) == len(set(paths))
    assert {name: hub.files(REPO)[name] for name in before if not name.startswith("checkpoints/")} == {
        name: content for name, content in before.items() if not name.startswith("checkpoints/")}


# -- mirroring hf_incr's own files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["hub", "regular_hub"])
def test_a_push_deletes_hf_incr_files_the_folder_no_longer_has_and_keeps_the_users(request, saved, tmp_path, server):
    hub = request.getfixturevalue(server)
    push_to_hub(saved, REPO, token=TOKEN)
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.upload_file(path_or_fileobj=b"my notes", path_in_repo="notes.txt", repo_id=REPO)
    api.upload_file(path_or_fileobj=b"mine", path_in_repo="docs/lineage.json", repo_id=REPO)
    api.upload_file(path_or_fileobj=b"mine too", path_in_repo="replay_memory_notes.txt", repo_id=REPO)
    assert "replay_memory/memory.parquet" in hub.files(REPO)

    save_increment(_grown_model(), saved, _tokenizer(tmp_path / "tok"))  # saved again, without a replay memory
    assert not (saved / "replay_memory").exists()
    push_to_hub(saved, REPO, token=TOKEN)
    last = hub.commits[-1]
    assert len(hub.commits) == 5  # 1 push + 3 user uploads + 1 push: one commit did both: the upload and the deletions
    assert last.deleted == ["replay_memory/memory.parquet"]
    assert {line["key"] for line in last.payload if line["key"].startswith("deleted")} == {"deletedFile"}
    files = hub.files(REPO)
    assert not any(name.startswith("replay_memory/") for name in files)
    assert files["notes.txt"] == b"my notes" and files["docs/lineage.json"] == b"mine"
    assert files["replay_memory_notes.txt"] == b"mine too"
    assert files["config.json"] == (saved / "config.json").read_bytes() and "increments.png" in files
    path = snapshot_download(REPO, endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "cache")
    assert not (Path(path) / "replay_memory").exists() and (Path(path) / "notes.txt").read_bytes() == b"my notes"


def test_a_stale_kernel_head_is_removed_and_the_older_commit_still_has_it(hub, saved, tmp_path):
    import hf_incr
    from hf_incr.heads import KernelHead
    from hf_incr.heads.kernel import KERNEL_FILENAME, KERNEL_STATISTICS_FILENAME

    _kernel_head(AutoModelForSequenceClassification.from_pretrained(saved)).save(saved)
    with_head = push_to_hub(saved, REPO, token=TOKEN).oid
    assert {KERNEL_FILENAME, KERNEL_STATISTICS_FILENAME} <= set(hub.files(REPO))
    (saved / KERNEL_FILENAME).unlink()
    (saved / KERNEL_STATISTICS_FILENAME).unlink()
    without_head = push_to_hub(saved, REPO, token=TOKEN).oid
    assert not {KERNEL_FILENAME, KERNEL_STATISTICS_FILENAME} & set(hub.files(REPO))
    latest = hf_incr.load_model(REPO, token=TOKEN, cache_dir=tmp_path / "c1")
    assert KernelHead.attached(latest, hf_incr.find_classifier_head(latest)) is None
    pinned = hf_incr.load_model(REPO, token=TOKEN, revision=with_head, cache_dir=tmp_path / "c2")
    assert KernelHead.attached(pinned, hf_incr.find_classifier_head(pinned)) is not None
    assert with_head != without_head


def test_a_push_removes_head_files_earlier_versions_wrote(hub, saved):
    """Files of removed heads (the random-feature head) and earlier names of the statistics (the ridge file) are
    hf_incr's own: a push of a folder without them deletes them from the Hub."""
    from hf_incr.heads.linear import LEGACY_FILENAME, RETIRED_FILENAME

    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(REPO)
    for name in (LEGACY_FILENAME, RETIRED_FILENAME):
        api.upload_file(path_or_fileobj=b"written by an earlier version", path_in_repo=name, repo_id=REPO)
    push_to_hub(saved, REPO, token=TOKEN)
    assert not {LEGACY_FILENAME, RETIRED_FILENAME} & set(hub.files(REPO))
    assert sorted(hub.commits[-1].deleted) == sorted([LEGACY_FILENAME, RETIRED_FILENAME])


# -- visibility ------------------------------------------------------------------------------------------------------


def test_private_true_makes_an_existing_public_repo_private_and_warns(hub, saved):
    push_to_hub(saved, REPO, token=TOKEN)
    api = HfApi(endpoint=hub.url, token=TOKEN)
    assert api.repo_info(REPO).private is False
    with pytest.warns(UserWarning, match="was public; it was made private"):
        push_to_hub(saved, REPO, token=TOKEN, private=True)
    assert hub.repos[REPO].private and api.repo_info(REPO).private is True
    [settings] = [r for r in hub.requests if r.method == "PUT" and r.path.endswith("/settings")]
    assert json.loads(settings.body) == {"visibility": "private"}


def test_private_false_never_makes_a_private_repo_public(hub, saved, recwarn):
    push_to_hub(saved, REPO, token=TOKEN, private=True)
    assert hub.repos[REPO].private
    push_to_hub(saved, REPO, token=TOKEN)  # private=False, the default
    push_to_hub(saved, REPO, token=TOKEN, private=True)  # already private: nothing to change, no warning
    assert hub.repos[REPO].private and HfApi(endpoint=hub.url, token=TOKEN).repo_info(REPO).private is True
    assert not any(r.path.endswith("/settings") for r in hub.requests)
    assert not [w for w in recwarn if "private" in str(w.message)]


def test_a_failed_visibility_change_is_a_hub_push_error(hub, saved, no_backoff):
    push_to_hub(saved, REPO, token=TOKEN)
    hub.fail("settings", 403, message="You cannot change the visibility of this repo")
    with pytest.raises(HubPushError, match="HTTP 403"):
        push_to_hub(saved, REPO, token=TOKEN, private=True)
    assert not hub.repos[REPO].private and len(hub.commits) == 1


# -- faults of the network and of the Hub: the repo ends at the old commit or the new one, and a retry completes ------


def _next_version(saved: Path, tmp_path: Path) -> None:
    """Save the folder again as the next version: a fourth label (new weights, an LFS upload) and its record."""
    from hf_incr import add_labels

    model = _grown_model()
    add_labels(model, ["delta"], init="zeros")
    lineage = get_lineage(model)
    setattr(model.config, LINEAGE_ATTRIBUTE, [*lineage, {**lineage[-1], "increment": 2, "labels_added": ["delta"],
                                                         "label_ids": [3], "num_labels": 4}])
    replay = ReplayMemory([{"text": "w5 w6", "labels": ["alpha"]}, {"text": "w7 w8", "labels": ["delta"]}])
    save_increment(model, saved, _tokenizer(tmp_path / "tok"), replay=replay)


def _shared(folder: Path) -> dict[str, bytes]:
    """What a push of ``folder`` puts on the Hub (Trainer's checkpoints stay local)."""
    return {name: content for name, content in _folder_state(folder).items() if not name.startswith("checkpoints/")}


def _on_hub(hub: FakeHub, names) -> dict[str, bytes]:
    files = hub.files(REPO)
    return {name: files.get(name) for name in names}


@pytest.mark.parametrize(
    "route, fault, expected",
    [
        ("lfs_upload", "drop", "connection"),  # the connection cut in the middle of uploading the weights
        ("commit", "drop", "connection"),  # ... in the middle of sending the commit
        ("commit", "drop_after", "connection"),  # ... after the Hub committed, before the client heard of it
        ("commit", 500, "HTTP 500"),
        ("commit", 401, "HTTP 401"),
        ("commit", 403, "HTTP 403"),
        ("commit", 429, "HTTP 429"),  # with a Retry-After longer than a push waits
    ],
)
def test_a_push_cut_by_a_fault_leaves_the_old_or_the_new_commit_and_a_retry_completes(hub, saved, tmp_path,
                                                                                      no_backoff, route, fault,
                                                                                      expected):
    old = push_to_hub(saved, REPO, token=TOKEN).oid
    old_files = hub.files(REPO)
    _next_version(saved, tmp_path)
    local = _shared(saved)
    assert local["model.safetensors"] != old_files["model.safetensors"]
    hub.fail(route, fault, times=18 if route == "lfs_upload" else 1, message=f"refused {TOKEN}",
             headers={"Retry-After": "3600"} if fault == 429 else None)
    with pytest.raises(HubPushError, match=expected) as info:
        push_to_hub(saved, REPO, token=TOKEN)
    error = info.value
    assert f"hf-incr push --model_name_or_path {saved} --repo_id {REPO}" in str(error) and error.folder == saved
    assert error.status_code == (fault if isinstance(fault, int) else None)
    _assert_no_token(error)
    if fault == 429:
        assert "rate-limiting" in str(error) and "asks to wait 3600 s, so retry after" in str(error)
    assert _shared(saved) == local  # the local folder as it was saved
    head = hub.repos[REPO].branches["main"]
    if fault == "drop_after":  # the commit landed whole: the new version
        assert head != old and _on_hub(hub, local) == local
    else:  # nothing landed: the old version, every file of it
        assert head == old and hub.files(REPO) == old_files
    hub.clear_failures()
    commit = push_to_hub(saved, REPO, token=TOKEN)  # the retry
    assert hub.repos[REPO].branches["main"] == commit.oid and _on_hub(hub, local) == local
    assert len(hub.commits) == 2  # the first push and the new version's one commit (never a partial one)
    assert json.loads(hub.files(REPO)["config.json"])[LINEAGE_ATTRIBUTE][-1]["labels_added"] == ["delta"]


class _Sleeps:
    """``time`` for hf_incr.hub only: its waits on a rate limit are recorded, not slept."""

    def __init__(self):
        self.slept = []

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds):
        self.slept.append(seconds)


def test_a_rate_limited_push_waits_as_asked_a_bounded_number_of_times(hub, saved, monkeypatch):
    import hf_incr.hub

    sleeps = _Sleeps()
    monkeypatch.setattr(hf_incr.hub, "time", sleeps)
    hub.fail("commit", 429, times=2, headers={"Retry-After": "2"})
    commit = push_to_hub(saved, REPO, token=TOKEN)  # two 429s, then the commit lands
    assert sleeps.slept == [2, 2] and hub.repos[REPO].branches["main"] == commit.oid and len(hub.commits) == 1
    assert sum(r.path.endswith("/commit/main") for r in hub.requests) == 3

    _next_version(saved, Path(saved).parent)
    hub.fail("commit", 429, times=hf_incr.hub.RATE_LIMIT_TRIES, headers={"Retry-After": "1"})
    with pytest.raises(HubPushError, match="HTTP 429") as info:
        push_to_hub(saved, REPO, token=TOKEN)
    assert sleeps.slept == [2, 2, 1, 1] and info.value.status_code == 429  # bounded: RATE_LIMIT_TRIES tries in all
    assert hub.repos[REPO].branches["main"] == commit.oid and "retry after" in str(info.value)
    push_to_hub(saved, REPO, token=TOKEN)
    assert len(hub.commits) == 2
