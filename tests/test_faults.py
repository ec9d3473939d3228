"""Faults of the machine and of the user's hands: each ends in a named HfIncrError that says what failed, where and
what to do, nothing that existed is lost, no partial folder is left where a model is expected, and a rerun succeeds.

* a full disk or a file-size limit while writing each thing hf_incr writes: the writer of each file raises what it
  really raises on a full disk (measured: see hf_incr/faults.py), and the kernel's own limit (``RLIMIT_FSIZE``, set in
  this process with SIGXFSZ ignored, as ``ulimit -f`` does) stops the real ``hf-incr increment`` save and the real
  Trainer checkpoints;
* the output path: a file, a parent that does not exist or is a file, the folder replaced or removed while the run
  works, a second run on the same folder (a second process: it waits its turn and says so);
* the wrong model in the wrong place: ``train-base`` on a classifier, ``increment`` on an encoder, a head that does not
  match its config, a tokenizer of another vocabulary;
* data files as users make them, for training and eval data alike.

The Hub's faults are in tests/test_hub.py. The tests run as root: no fault relies on permission bits.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from text_models import text_dataset, tiny_bert, tokenizer, training_args

import hf_incr.recipe
from hf_incr import ConfigError, DataError, DiskFullError, HfIncrError, IncrementConfig, SaveError, train_increment
from hf_incr.cli import main
from hf_incr.errors import HeadConfigMismatchError, TokenizerError
from hf_incr.lineage import get_lineage
from hf_incr.loading import load_classifier, load_heads
from hf_incr.replay import ReplayMemory
from hf_incr.saving import save_increment

FLAGS = ["--use_cpu", "--report_to", "none", "--save_strategy", "no", "--per_device_train_batch_size", "8",
         "--disable_tqdm", "true", "--seed", "0", "--kernel_features", "64", "--warmup_epochs", "1",
         "--finetune_epochs", "1", "--finetune_layers", "1", "--replay_per_label", "2"]
BASE_LABELS = ["refund", "delivery", "login"]


def _jsonl(path: Path, dataset) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in dataset.to_list()))
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(folder: Path) -> list[str]:
    """Hidden folders a save or a run leaves beside ``folder`` (a partial ``.tmp-``, a ``.new-``, a lock)."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


@contextlib.contextmanager
def file_size_limit(limit: int):
    """``ulimit -f``: no file of this process may grow past ``limit`` bytes; a write past it fails with EFBIG (27),
    as on a full disk, since SIGXFSZ (which would kill the process) is ignored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """An encoder folder (a tiny BERT saved as ``BertModel``), a classifier that ``hf-incr train-base`` trained on it
    (kernel head, statistics, replay memory), and data files: the new label's rows and eval rows of every label."""
    root = tmp_path_factory.mktemp("faults")
    encoder = root / "encoder"
    tiny_bert(["LABEL_0", "LABEL_1"], dropout=0.0).bert.save_pretrained(encoder)  # no labels of its own
    tokenizer().save_pretrained(encoder)
    data = {"base_rows": _jsonl(root / "base.jsonl", text_dataset(BASE_LABELS, 6)),
            "new": _jsonl(root / "new.jsonl", text_dataset(["repair"], 6)),
            "fresh": _jsonl(root / "fresh.jsonl", text_dataset(["colour", "repair"], 6)),
            "eval": _jsonl(root / "eval.jsonl", text_dataset([*BASE_LABELS, "repair"], 2, 30)),
            "base_eval": _jsonl(root / "base_eval.jsonl", text_dataset(BASE_LABELS, 2, 30))}
    # The rerun of `increment` on an encoder (test_increment_on_an_encoder_names_train_base): the right command.
    assert main(["train-base", "--model_name_or_path", str(encoder), "--train_file", str(data["base_rows"]),
                 "--eval_file", str(data["base_eval"]), "--output_dir", str(root / "base"), *FLAGS]) == 0
    return {"root": root, "encoder": encoder, "base": root / "base", **data}


def _increment(work, output_dir, *extra, train="new", eval_file="eval") -> int:
    args = ["increment", "--model_name_or_path", str(work["base"]), "--train_file", str(work[train]),
            "--output_dir", str(output_dir), *FLAGS, *extra]
    if eval_file:
        args[5:5] = ["--eval_file", str(work[eval_file])]
    return main(args)


# 1. A full disk or a file-size limit ------------------------------------------------------------------------------


def _partial(path, size: int = 100) -> None:
    """What a writer leaves before the disk fills: the start of its file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"\0" * size)


def _safetensors_full(message="Error while serializing: I/O error: No space left on device (os error 28)"):
    from safetensors import SafetensorError

    return SafetensorError(message)


def _inject(monkeypatch, target: str, tok) -> None:
    """Make the writer of ``target`` fail as it does on a full disk (or under a file-size limit)."""
    import huggingface_hub.repocard
    import matplotlib.figure
    import transformers.modeling_utils

    import hf_incr.heads.files
    import hf_incr.saving

    def failing(real, matches, error):
        def write(*args, **kwargs):
            path = kwargs.get("filename") or (args[1] if len(args) > 1 else args[0])
            if matches(str(path)):
                _partial(path)
                raise error
            return real(*args, **kwargs)

        return write

    if target == "model":
        monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", failing(
            transformers.modeling_utils.safe_save_file, lambda p: p.endswith(".safetensors"), _safetensors_full()))
    elif target in ("linear statistics", "kernel head", "kernel statistics"):
        name = {"linear statistics": "hf_incr_linear_statistics.safetensors", "kernel head":
                "hf_incr_kernel_lda.safetensors", "kernel statistics": "hf_incr_kernel_lda_statistics.safetensors"}
        error = _safetensors_full("Error while serializing: I/O error: File too large (os error 27)")
        monkeypatch.setattr(hf_incr.heads.files, "save_file", failing(
            hf_incr.heads.files.save_file, lambda p: p.endswith(name[target]), error))
    elif target == "code":
        monkeypatch.setattr(shutil, "copyfile", failing(
            shutil.copyfile, lambda p: p.endswith("modeling_hf_incr_kernel.py"),
            OSError(errno.EFBIG, os.strerror(errno.EFBIG))))
    elif target == "tokenizer":
        def save_pretrained(folder, *args, **kwargs):  # the tokenizers library: a bare Exception with the OS's words
            _partial(Path(folder) / "tokenizer.json")
            raise Exception("No space left on device (os error 28)")

        monkeypatch.setattr(tok, "save_pretrained", save_pretrained)
    elif target == "lineage":
        def write_lineage_file(folder, lineage):
            _partial(Path(folder) / "lineage.json")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(folder) / "lineage.json"))

        monkeypatch.setattr(hf_incr.saving, "write_lineage_file", write_lineage_file)
    elif target == "replay memory":
        def save(self, folder):  # pyarrow's words
            _partial(Path(folder) / "replay_memory" / "memory.parquet")
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

        monkeypatch.setattr(ReplayMemory, "save", save)
    elif target == "card":
        def save(self, path):
            _partial(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        monkeypatch.setattr(huggingface_hub.repocard.RepoCard, "save", save)
    elif target == "plot":
        def savefig(self, path, *args, **kwargs):
            _partial(path)
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)


WRITTEN = {  # what each save step writes, and the file its error names
    "model": "model.safetensors", "code": "modeling_hf_incr_kernel.py", "tokenizer": "tokenizer.json",
    "lineage": "lineage.json", "replay memory": "replay_memory/memory.parquet",
    "linear statistics": "hf_incr_linear_statistics.safetensors", "kernel head": "hf_incr_kernel_lda.safetensors",
    "kernel statistics": "hf_incr_kernel_lda_statistics.safetensors", "card": "README.md", "plot": "increments.png",
}


@pytest.mark.parametrize("target", list(WRITTEN))
def test_a_full_disk_while_saving_each_file_is_named_and_loses_nothing(work, tmp_path, monkeypatch, target):
    model, tok = load_classifier(str(work["base"]))
    heads, replay = load_heads(work["base"], False), ReplayMemory.load(work["base"])
    assert set(heads) == {"linear", "kernel"} and replay is not None and len(replay)
    folder = tmp_path / "model"
    shutil.copytree(work["base"], folder)
    before = _files(folder)
    # The new version differs from the one in the folder (another lineage record).
    model.config.hf_incr_lineage = [*get_lineage(model), {**get_lineage(model)[-1], "increment": 1}]
    with monkeypatch.context() as patched:
        _inject(patched, target, tok)
        with pytest.raises(DiskFullError) as info:
            save_increment(model, folder, tok, replay=replay, heads=heads)
    message = str(info.value)
    assert WRITTEN[target] in message and str(folder) in message, message
    assert "the disk is full or a file-size limit was reached" in message and "Nothing was lost" in message
    assert "Free space" in message and "rerun" in message and "ulimit -f" in message
    assert isinstance(info.value, SaveError) and isinstance(info.value, OSError)
    assert not isinstance(info.value, ValueError)
    assert _files(folder) == before and _leftovers(folder) == []
    save_increment(model, folder, tok, replay=replay, heads=heads)  # the rerun
    assert len(get_lineage(load_classifier(str(folder))[0])) == 2 and _leftovers(folder) == []


def test_hf_incr_increment_under_a_file_size_limit_names_the_weights_and_a_rerun_succeeds(work, tmp_path, capsys):
    """The issue's run: `hf-incr increment` whose save meets a file-size limit (4 MB of weights, a 1 MB limit)."""
    out = tmp_path / "a" / "b" / "grown"  # its parents do not exist: the rerun creates them
    base_before = _files(work["base"])
    with file_size_limit(1_000_000):
        code = _increment(work, out)
    error = capsys.readouterr().err
    assert code == 1 and "hf-incr increment: error: Writing the model" in error, error[-2000:]
    assert "model.safetensors" in error and "File too large (os error 27)" in error and "ulimit -f" in error
    assert "Traceback" not in error
    assert not out.exists() and _leftovers(out) == []
    assert _files(work["base"]) == base_before
    assert _increment(work, out) == 0  # the rerun
    assert (out / "model.safetensors").is_file() and _files(work["base"]) == base_before
    assert _leftovers(out) == []


def test_a_file_size_limit_while_trainer_writes_a_checkpoint_then_a_resumed_rerun(work, tmp_path, capsys):
    """`train-base --new_head true` on a classifier with checkpoints every step: the fine-tuning's first checkpoint
    (the whole model, 4 MB) meets a 1 MB limit. The incomplete checkpoint is deleted; the rerun resumes."""
    out = tmp_path / "restarted"
    args = ["train-base", "--model_name_or_path", str(work["base"]), "--new_head", "true", "--train_file",
            str(work["fresh"]), "--output_dir", str(out), *FLAGS, "--save_strategy", "steps", "--save_steps", "1",
            "--replay_per_label", "0"]
    with file_size_limit(1_000_000):
        code = main(args)
    error = capsys.readouterr().err
    assert code == 1 and "Writing the Trainer checkpoints of this run to" in error, error[-2000:]
    assert "File too large" in error and "--resume_from_checkpoint true" in error
    assert "incomplete checkpoint(s) ['finetune/checkpoint-1'] were deleted" in error
    assert not (out / "config.json").exists() and not (out / "checkpoints" / "finetune" / "checkpoint-1").exists()
    assert (out / "checkpoints" / "warmup").is_dir()  # the warm-up's complete checkpoints, to resume from
    assert main([*args, "--resume_from_checkpoint", "true"]) == 0
    model, _ = load_classifier(str(out))
    assert list(model.config.id2label.values()) == ["colour", "repair"] and not (out / "checkpoints").exists()


# 2. The output path -----------------------------------------------------------------------------------------------


def test_an_output_path_that_is_a_file_or_under_a_file_is_refused_before_anything_runs(work, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    for out, expected in ((tmp_path / "notes.txt", "is a file; expected a folder"),
                          (tmp_path / "notes.txt" / "grown", "'notes.txt' is a file, not a folder")):
        assert _increment(work, out) == 1
        error = capsys.readouterr().err
        assert expected.replace("'notes.txt'", repr(str(tmp_path / "notes.txt"))) in error, error
    assert (tmp_path / "notes.txt").read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["notes.txt"]


def _train(work, out: Path, labels=("repair",)):
    model, tok = load_classifier(str(work["base"]))
    train = text_dataset(list(labels), 6)
    return train_increment(model, tok, train, None, config=IncrementConfig(kernel_features=64, replay_per_label=2),
                           args=training_args(out.parent, output_dir=str(out)))


def test_an_output_folder_replaced_while_the_run_works_is_left_alone_then_one_removed_is_made_anew(work, tmp_path,
                                                                                                  monkeypatch):
    out = tmp_path / "grown"
    real = hf_incr.recipe.run_plan

    def replaced(*args, **kwargs):
        out.write_text("a file put there while the run worked")  # the folder did not exist: now a file is there
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_incr.recipe, "run_plan", replaced)
    with pytest.raises(SaveError, match="is a file, not a folder") as info:
        _train(work, out)
    assert "Nothing was written and the file was left as it is" in str(info.value)
    assert out.read_text() == "a file put there while the run worked" and _leftovers(out) == []

    # A folder of the user's replaces the output folder: left alone too.
    out.unlink()
    shutil.copytree(work["base"], out)

    def swapped(*args, **kwargs):
        shutil.rmtree(out)
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_incr.recipe, "run_plan", swapped)
    with pytest.raises(SaveError, match=r"holds files that are not a saved model \(\['notes.txt'\]"):
        _train(work, out)
    assert _files(out) == {"notes.txt": b"mine"} and _leftovers(out) == []

    # The rerun: the folder is removed while it works; the save makes it anew.
    shutil.rmtree(out)
    shutil.copytree(work["base"], out)

    def removed(*args, **kwargs):
        shutil.rmtree(out)
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_incr.recipe, "run_plan", removed)
    result = _train(work, out)
    assert result.new_labels == ["repair"] and (out / "model.safetensors").is_file() and _leftovers(out) == []


CHILD = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import hf_incr.recipe
from hf_incr.cli import main

marker, go = Path(sys.argv[2]), Path(sys.argv[3])
real = hf_incr.recipe.run_plan


def paused(*args, **kwargs):  # the run holds its output folder; it goes on when the test says so
    marker.write_text("training")
    deadline = time.monotonic() + 240
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return real(*args, **kwargs)


hf_incr.recipe.run_plan = paused
sys.exit(main(sys.argv[4:]))
"""


def test_a_second_run_on_the_same_output_folder_waits_its_turn_and_says_so(work, tmp_path, monkeypatch, caplog):
    out = tmp_path / "shared"
    marker, go = tmp_path / "first-is-training", tmp_path / "go"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    first_args = ["increment", "--model_name_or_path", str(work["base"]), "--train_file", str(work["new"]),
                  "--output_dir", str(out), *FLAGS]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, "-c", CHILD, str(Path(__file__).parent), str(marker), str(go),
                                  *first_args], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first run never started training"
            time.sleep(0.05)
        # The second run (this process) on the same folder: it waits until the first has saved.
        seen = {}
        real = hf_incr.recipe.run_plan

        def second_starts(*args, **kwargs):
            seen["first saved"] = (out / "config.json").is_file()
            seen["first's labels"] = [r["labels_added"] for r in json.loads((out / "lineage.json").read_text())]
            return real(*args, **kwargs)

        monkeypatch.setattr(hf_incr.recipe, "run_plan", second_starts)
        caplog.set_level("WARNING", logger="hf_incr")
        outcome = {}
        second = threading.Thread(target=lambda: outcome.update(result=_train(work, out, ("colour",))))
        second.start()
        deadline = time.monotonic() + 120
        while "is being written by another run" not in caplog.text:
            assert second.is_alive() and time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        assert f"process {first.pid} on" in caplog.text and "runs on one output folder take turns" in caplog.text
        time.sleep(0.5)
        assert not seen and second.is_alive()  # still waiting: nothing of it has run
        go.write_text("go")
        assert first.wait(timeout=240) == 0, (tmp_path / "first.log").read_text()[-3000:]
        second.join(timeout=240)
        assert not second.is_alive() and outcome["result"].new_labels == ["colour"]
    finally:
        go.write_text("go")
        if first.poll() is None:
            first.kill()
    # The second began after the first had saved: their checkpoints and saves never interleaved.
    assert seen == {"first saved": True, "first's labels": [BASE_LABELS_SORTED, ["repair"]]}
    assert "The other run on" in caplog.text and "has finished; this run goes on" in caplog.text
    lineage = json.loads((out / "lineage.json").read_text())
    assert [r["labels_added"] for r in lineage] == [BASE_LABELS_SORTED, ["colour"]] and _leftovers(out) == []


BASE_LABELS_SORTED = sorted(BASE_LABELS)


# 3. The wrong model in the wrong place ----------------------------------------------------------------------------


def test_increment_on_an_encoder_names_train_base(work, tmp_path, capsys):
    """The rerun that succeeds is the `train-base` of the module fixture, on the same encoder."""
    args = ["increment", "--model_name_or_path", str(work["encoder"]), "--train_file", str(work["new"]),
            "--output_dir", str(tmp_path / "out"), *FLAGS]
    assert main(args) == 1
    error = capsys.readouterr().err
    assert "is an encoder (BertModel), not a trained classifier" in error and "hf-incr train-base" in error
    assert not (tmp_path / "out").exists()
    # In Python too: the encoder loaded as a classifier has a random head with the labels LABEL_0, LABEL_1.
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(work["encoder"])
    with pytest.raises(ConfigError, match="not a trained classifier"):
        train_increment(model, tokenizer(), text_dataset(["repair"], 4), save=False)


def test_train_base_on_a_classifier_names_increment_and_new_head(work, tmp_path, capsys):
    """The rerun with `--new_head true` is test_a_file_size_limit_while_trainer_writes_a_checkpoint_then_..."""
    out = tmp_path / "out"
    assert main(["train-base", "--model_name_or_path", str(work["base"]), "--train_file", str(work["fresh"]),
                 "--output_dir", str(out), *FLAGS]) == 1
    error = capsys.readouterr().err
    assert "is a trained classifier (BertForSequenceClassification with 3 labels" in error
    assert "this data's labels are ['colour', 'repair']" in error
    assert f"hf-incr increment --model_name_or_path {work['base']}" in error and "--new_head true" in error
    assert "LOAD REPORT" not in error and "Traceback" not in error and not out.exists()


def test_a_head_that_does_not_match_its_config_and_a_foreign_tokenizer_then_the_rerun(work, tmp_path, capsys):
    folder = tmp_path / "classifier"
    shutil.copytree(work["base"], folder)
    config = json.loads((folder / "config.json").read_text())
    broken = {**config, "id2label": {**config["id2label"], "3": "extra"},
              "label2id": {**config["label2id"], "extra": 3}}
    (folder / "config.json").write_text(json.dumps(broken))
    args = ["increment", "--model_name_or_path", str(folder), "--train_file", str(work["new"]), "--output_dir",
            str(tmp_path / "out"), *FLAGS]
    with pytest.raises(HeadConfigMismatchError, match=r"config.json names 4 labels .* have 3 rows"):
        from hf_incr.validation import check_checkpoint

        check_checkpoint(folder)
    assert main(args) == 1 and "HeadConfigMismatch" not in capsys.readouterr().err  # a message, no traceback
    (folder / "config.json").write_text(json.dumps(config))

    # A tokenizer of another vocabulary: more tokens than the model embeds, and the data's words beyond them.
    own = {name: (folder / name).read_bytes() for name in ("tokenizer.json", "tokenizer_config.json")}
    for name in own:
        (folder / name).unlink()
    words = [f"filler{i}" for i in range(30600)]
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, "please",
                                                 "help", "with", "repair", "fix", "my", "bike", "service", "broken",
                                                 "brake", "number", *map(str, range(10))]) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    assert main(args) == 1
    error = capsys.readouterr().err
    assert "The tokenizer does not fit BertForSequenceClassification" in error
    assert "load it from the same checkpoint" in error and not (tmp_path / "out").exists()
    with pytest.raises(TokenizerError):
        model, tok = load_classifier(str(folder))
        train_increment(model, tok, text_dataset(["repair"], 4), save=False)

    (folder / "vocab.txt").unlink()
    for name, content in own.items():
        (folder / name).write_bytes(content)
    assert main(args) == 0  # the rerun, with the model's own config and tokenizer
    assert json.loads((tmp_path / "out" / "lineage.json").read_text())[-1]["labels_added"] == ["repair"]


# 4. Data files as users make them -------------------------------------------------------------------------------

GOOD = '{"text": "please help with repair", "label": "repair"}\n'
BAD_FILES = {
    "empty.jsonl": ("", "is empty (0 bytes)"),
    "empty.csv": ("", "is empty (0 bytes)"),
    "malformed.jsonl": (GOOD + '{"text": "fix my bike", "label": "repair"\n' + GOOD,
                        "line 2 is not valid JSON (Expecting ',' delimiter"),
    "header_only.csv": ("text,label\n", "has a header ('text,label') but no rows"),
    "mixed.jsonl": (GOOD + '{"text": "fix my bike", "label": 3}\n', "line 2 holds a number (3)"),
    "mixed.csv": ("text,label\nfix my bike,repair\nservice please,3\n", "mixes label names and numbers"),
    "semicolon.csv": ("text;label\nfix my bike;repair\n", "gave the column(s) ['text;label']"),
}


@pytest.mark.parametrize("which", ["train", "eval"])
def test_data_files_as_users_make_them_are_named_with_the_fix(work, tmp_path, capsys, which):
    out = tmp_path / "out"
    for name, (content, expected) in BAD_FILES.items():
        bad = tmp_path / name
        bad.write_text(content)
        args = ["increment", "--model_name_or_path", str(work["base"]), "--output_dir", str(out), *FLAGS,
                "--train_file", str(bad if which == "train" else work["new"]),
                "--eval_file", str(bad if which == "eval" else work["eval"])]
        assert main(args) == 1, name
        error = capsys.readouterr().err
        assert expected in error, (name, error[-1500:])
        assert "Traceback" not in error and not out.exists(), name
        if name in ("empty.jsonl", "malformed.jsonl", "header_only.csv", "mixed.jsonl", "semicolon.csv"):
            assert str(bad) in error, name  # the file is named
        if name == "semicolon.csv":
            assert "--delimiter ';'" in error
    if which == "eval":
        return
    # The rerun: the separator passed (and a malformed line, once fixed, reads).
    (tmp_path / "semicolon.csv").write_text("text;label\n" + "".join(
        f"{row['text']};{row['label']}\n" for row in text_dataset(["repair"], 6).to_list()))
    (tmp_path / "malformed.jsonl").write_text(GOOD + '{"text": "fix my bike", "label": "repair"}\n' + GOOD)
    from hf_incr.data import load_text_data

    assert len(load_text_data(tmp_path / "malformed.jsonl")) == 3
    args = ["increment", "--model_name_or_path", str(work["base"]), "--output_dir", str(out), *FLAGS,
            "--train_file", str(tmp_path / "semicolon.csv"), "--eval_file", str(work["eval"]), "--delimiter", ";"]
    assert main(args) == 0
    assert json.loads((out / "lineage.json").read_text())[-1]["labels_added"] == ["repair"]


def test_errors_of_machine_faults_are_hf_incr_errors_not_value_errors():
    assert issubclass(DiskFullError, SaveError) and issubclass(SaveError, HfIncrError)
    assert issubclass(SaveError, OSError) and not issubclass(SaveError, ValueError)
    assert not issubclass(DataError, OSError)


def test_train_base_on_a_classifier_of_the_same_labels_in_another_order_keeps_its_order(tmp_path):
    """Its trained rows keep their labels: the data's labels are trained in the checkpoint's order, not re-sorted."""
    from hf_incr.validation import check_base_encoder

    tiny_bert(["refund", "delivery", "login"]).save_pretrained(tmp_path / "classifier")
    assert check_base_encoder(str(tmp_path / "classifier"), ["delivery", "login", "refund"]) == (
        False, ["refund", "delivery", "login"])
    with pytest.raises(ConfigError, match="is a trained classifier"):
        check_base_encoder(str(tmp_path / "classifier"), ["delivery", "login"])
    assert check_base_encoder(str(tmp_path / "classifier"), ["delivery", "login"], new_head=True) == (
        True, ["delivery", "login"])
