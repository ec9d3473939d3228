"""Crash safety, with real processes killed by SIGKILL (tests/crash_child.py runs the work):

* a save killed while writing, or in the window where the output folder has been renamed away, leaves a folder that
  loads with plain ``from_pretrained`` and is byte for byte the previous or the new version, never a mix;
* an increment killed in its cached warm-up or its fine-tuning phase resumes (``--resume_from_checkpoint true``) from
  its last complete checkpoint to the same labels, lineage and weights as an uninterrupted run, and a finished run
  leaves no checkpoint behind;
* running the same increment again adds no label and no lineage record twice.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from crash_child import CACHED_BATCH_SIZE, new_model, old_model
from safetensors.torch import load_file
from text_models import text_dataset, texts_for, tokenizer, training_args
from transformers import AutoModelForSequenceClassification

import hf_incr.recipe
import hf_incr.trainer
from hf_incr import IncrementConfig, train_increment
from hf_incr.checkpoints import resume_from as _resume_from
from hf_incr.errors import ConfigError
from hf_incr.lineage import find_rerun, get_lineage
from hf_incr.saving import KEPT_ENTRIES, recover_interrupted_save, save_increment

CHILD = Path(__file__).with_name("crash_child.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def _start(*args: str, log: Path) -> subprocess.Popen:
    """Start crash_child.py. Its output goes to ``log``: a pipe nobody reads could block it before its stopping point.
    """
    with open(log, "w") as out:
        child = subprocess.Popen([sys.executable, str(CHILD), *args], env=ENV, stdout=out, stderr=subprocess.STDOUT)
    child.log = log
    return child


def _finish(child: subprocess.Popen) -> None:
    assert child.wait(timeout=300) == 0, child.log.read_text()[-3000:]


def _kill_when_stopped(child: subprocess.Popen, marker: Path, delay: float = 0.0) -> None:
    """SIGKILL the child once it wrote ``marker`` (it then waits at the chosen point), after ``delay`` seconds."""
    deadline = time.monotonic() + 180
    while not marker.exists():
        if child.poll() is not None:
            pytest.fail(
                f"the child ended (code {child.returncode}) before it was killed:\n{child.log.read_text()[-3000:]}"
            )
        assert time.monotonic() < deadline, "the child never reached its stopping point"
        time.sleep(0.02)
    time.sleep(delay)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL


def _files(folder: Path, skip=()) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).parts[0] not in skip
    }


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


# Saving --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def versions(tmp_path):
    """The files of the new (3 labels) and the previous (2 labels) version, saved in the folder the test uses: the
    card names the folder, so the same model saved elsewhere differs in bytes."""
    folder = tmp_path / "work" / "model"
    tok = tokenizer()
    files = {"new": _files(save_increment(new_model(), folder, tok))}
    files["old"] = _files(save_increment(old_model(), folder, tok))
    assert files["old"]["model.safetensors"] != files["new"]["model.safetensors"]
    return files


@pytest.fixture
def previous(versions, tmp_path):
    """The folder holding the previous version, with Trainer checkpoints and logs that every save must keep."""
    folder = tmp_path / "work" / "model"
    assert _files(folder) == versions["old"]
    (folder / "checkpoints" / "warmup" / "checkpoint-2").mkdir(parents=True)
    (folder / "checkpoints" / "warmup" / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (folder / "runs").mkdir()
    (folder / "runs" / "events.log").write_text("step 2")
    return folder


KEPT = {"checkpoints/warmup/checkpoint-2/trainer_state.json": b'{"global_step": 2}', "runs/events.log": b"step 2"}


@pytest.mark.parametrize("stop", ["write", "written"])
def test_kill_before_the_swap_keeps_the_previous_version(previous, versions, tmp_path, stop):
    before = _files(previous)
    marker = tmp_path / "stopped"
    _kill_when_stopped(_start("save", stop, str(previous), str(marker), log=tmp_path / "child.log"), marker)

    (leftover,) = [previous.parent / n for n in _leftovers(previous)]
    if stop == "write":
        # The kill landed inside the save: its temporary folder holds the weights but not yet the lineage.
        assert leftover.name.startswith(".model.tmp-")
        assert (leftover / "model.safetensors").is_file() and not (leftover / "lineage.json").exists()
    else:
        # The new version was complete, but the save had not replaced the folder yet: the save did not happen.
        assert leftover.name.startswith(".model.new-")
        assert _files(leftover) == versions["new"]
    assert _files(previous) == before  # byte for byte, checkpoints included
    assert AutoModelForSequenceClassification.from_pretrained(previous).config.num_labels == 2

    # The next save deletes the leftover and keeps the checkpoints and logs.
    save_increment(new_model(), previous, tokenizer())
    assert _leftovers(previous) == []
    assert _files(previous) == {**versions["new"], **KEPT}


@pytest.mark.parametrize("stop", ["swap", "swap-kept"])
def test_kill_in_the_rename_window_is_recovered(previous, versions, tmp_path, stop):
    marker = tmp_path / "stopped"
    _kill_when_stopped(_start("save", stop, str(previous), str(marker), log=tmp_path / "child.log"), marker)

    # Killed after the folder was renamed away and before the new version took its place.
    assert not previous.exists()
    stages = sorted(n.split(".")[2].split("-")[0] for n in _leftovers(previous))
    assert stages == ["new", "old"]
    if stop == "swap":
        # Resuming an increment in this folder first puts the complete new version back, checkpoints included.
        args = training_args(tmp_path, output_dir=str(previous), resume_from_checkpoint=True)
        resumed = _resume_from(args, "warmup")
        assert resumed == str(previous / "checkpoints" / "warmup" / "checkpoint-2")
        assert _files(previous) == {**versions["new"], **KEPT}
        assert AutoModelForSequenceClassification.from_pretrained(previous).config.num_labels == 3
    else:
        # `checkpoints` was already in the new version, `runs` still in the old one: the next save gathers both.
        save_increment(old_model(), previous, tokenizer())
        assert _files(previous) == {**versions["old"], **KEPT}
    assert _leftovers(previous) == []


def test_kill_at_random_moments_leaves_one_whole_version(previous, versions, tmp_path):
    """A child saves the new and the previous version in turn, without end; it is killed at random moments."""
    whole = [versions["old"], versions["new"]]
    rng = random.Random(7)
    for attempt in range(3):
        marker = tmp_path / f"ready-{attempt}"
        child = _start("save", "loop", str(previous), str(marker), log=tmp_path / f"child-{attempt}.log")
        _kill_when_stopped(child, marker, delay=rng.uniform(0.0, 0.5))
        if previous.exists():
            assert _files(previous, skip=KEPT_ENTRIES) in whole, f"attempt {attempt}: a partial or mixed folder"
        else:  # killed inside the rename window
            assert any(".new-" in n for n in _leftovers(previous))
        recover_interrupted_save(previous)
        assert _files(previous, skip=KEPT_ENTRIES) in whole
        assert {k: v for k, v in _files(previous).items() if k in KEPT} == KEPT
        assert _leftovers(previous) == []
        loaded = AutoModelForSequenceClassification.from_pretrained(previous)
        assert loaded.config.num_labels in (2, 3)


# Training ------------------------------------------------------------------------------------------------------------

# 16 rows of one new label: warm-up 4 epochs of 4 steps (checkpoints 3, 6, 9, 12, 15, 16; the child sets
# hf_incr.trainer.CACHED_BATCH_SIZE to 4), fine-tuning of the top layer 2 epochs of 4 steps (checkpoints 3, 6, 8).
# Every flag that shapes the run is explicit.
RECIPE = [
    "--head", "trained", "--replay_per_label", "2", "--distill_weight", "1",
    "--warmup_epochs", "4", "--warmup_learning_rate", "1e-2",
    "--finetune_layers", "1", "--finetune_epochs", "2", "--finetune_increments", "true",
    "--finetune_learning_rate", "1e-3", "--layer_lr_decay", "0.8",
    "--per_device_train_batch_size", "4", "--save_strategy", "steps", "--save_steps", "3",
    "--logging_strategy", "no", "--disable_tqdm", "true", "--report_to", "none", "--use_cpu", "true", "--seed", "0",
]


@pytest.fixture(scope="module")
def increment_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("increment")
    base = old_model()
    save_increment(base, root / "base", tokenizer())
    data = root / "new.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": "login"}) + "\n" for t in texts_for("login", 16)))
    return ["--model_name_or_path", str(root / "base"), "--train_file", str(data), *RECIPE]


def _run_increment(flags: list[str], output_dir: Path, marker: Path, stop: str = "none") -> subprocess.Popen:
    return _start("train", str(marker), stop, *flags, "--output_dir", str(output_dir), log=marker.with_suffix(".log"))


@pytest.fixture(scope="module")
def uninterrupted(increment_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    _finish(_run_increment(increment_inputs, out, out.parent / "never"))
    return out


def _summary(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    lineage = json.loads((folder / "lineage.json").read_text())
    keys = ("increment", "kind", "labels_added", "label_ids", "num_labels", "base_model", "data_fingerprint")
    return {
        "id2label": config["id2label"], "label2id": config["label2id"],
        "lineage": [{k: r.get(k) for k in keys} for r in lineage],  # dates differ between runs
        "config_lineage": len(config["hf_incr_lineage"]),
    }


@pytest.mark.parametrize(
    "stop, resumed_from",
    [
        # Killed two steps after checkpoint 6 of the warm-up: steps 7 and 8 are lost and redone.
        ("warmup:step:8", "warmup/checkpoint-6"),
        # Killed while writing checkpoint 6 of the fine-tuning (weights and optimizer written, trainer state not):
        # that checkpoint is partial and must be skipped for checkpoint 3.
        ("finetune:checkpoint:6", "finetune/checkpoint-3"),
    ],
)
def test_kill_in_a_training_phase_resumes_to_the_uninterrupted_result(
    increment_inputs, uninterrupted, tmp_path, stop, resumed_from
):
    out = tmp_path / "out"
    marker = tmp_path / "stopped"
    _kill_when_stopped(_run_increment(increment_inputs, out, marker, stop), marker)
    checkpoints = out / "checkpoints"
    assert not (out / "config.json").exists(), "the kill should land before the model is saved"
    resume_state = checkpoints / resumed_from / "trainer_state.json"
    assert resume_state.is_file()
    if stop.startswith("warmup"):
        assert sorted(p.name for p in (checkpoints / "warmup").glob("checkpoint-*")) == [
            "checkpoint-3",
            "checkpoint-6",
        ]
        assert not (checkpoints / "finetune").exists()
    else:
        assert (checkpoints / "warmup" / "checkpoint-16" / "trainer_state.json").is_file()
        partial = checkpoints / "finetune" / "checkpoint-6"
        assert (partial / "model.safetensors").is_file() and not (partial / "trainer_state.json").exists()

    _finish(_run_increment([*increment_inputs, "--resume_from_checkpoint", "true"], out, tmp_path / "never"))

    # It resumed from that checkpoint (the warm-up, when it was complete, from its last one) ...
    resumed = {entry["phase"]: entry["resume"]
               for entry in map(json.loads, (tmp_path / "never.resumed").read_text().splitlines())}
    phase = stop.split(":")[0]
    assert Path(resumed[phase]).resolve() == (checkpoints / resumed_from).resolve()
    if phase == "finetune":
        assert Path(resumed["warmup"]).resolve() == (checkpoints / "warmup" / "checkpoint-16").resolve()
    else:
        assert resumed["finetune"] is None
    # ... left no checkpoint behind once finished ...
    assert not checkpoints.exists()
    # ... and ended as the uninterrupted run: labels, lineage, weights.
    expected = _summary(uninterrupted)
    assert _summary(out) == expected
    assert expected["id2label"] == {"0": "refund", "1": "delivery", "2": "login"}
    assert [r["labels_added"] for r in expected["lineage"]] == [["refund", "delivery"], ["login"]]
    reference, weights = load_file(str(uninterrupted / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert reference.keys() == weights.keys()
    for name in reference:
        torch.testing.assert_close(weights[name], reference[name], atol=1e-6, rtol=1e-5, msg=f"{name} differs")
    assert reference["classifier.weight"][2].abs().sum() > 0  # the new row (imprinted, then trained) is there
    assert _leftovers(out) == []


# Running the same increment again ----------------------------------------------------------------------------------

QUICK = {"head": "trained", "replay_per_label": 2, "warmup_epochs": 2, "finetune_layers": 1, "finetune_epochs": 1,
         "finetune_increments": True, "finetune_learning_rate": 1e-3}


@pytest.fixture(autouse=True)
def _cached_batch_size(monkeypatch):
    """The cached warm-up takes 4 rows a step here (2 steps an epoch for 8 rows), as the child does."""
    monkeypatch.setattr(hf_incr.trainer, "CACHED_BATCH_SIZE", CACHED_BATCH_SIZE)


@pytest.fixture
def base_folder(tmp_path):
    folder = tmp_path / "base"
    save_increment(old_model(), folder, tokenizer())
    return folder


def _increment(model_dir: Path, output_dir: Path, data, **args):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    result = train_increment(model, tokenizer(), data, config=IncrementConfig(**QUICK),
                             args=training_args(output_dir.parent, output_dir=str(output_dir), **args))
    return model, result


def test_rerun_in_the_same_output_folder_adds_nothing_twice(base_folder, tmp_path):
    data = text_dataset(["login"], 8)
    out = tmp_path / "out"
    steps = {"save_strategy": "steps", "save_steps": 2}
    first, _ = _increment(base_folder, out, data, **steps)
    saved = _files(out, skip=KEPT_ENTRIES)
    assert not (out / "checkpoints").exists()  # a finished run leaves no checkpoint to resume from

    # The same increment again, same base, same folder, resuming: nothing to resume, the same model again.
    second, result = _increment(base_folder, out, data, resume_from_checkpoint=True, **steps)
    assert result.new_labels == ["login"]
    assert second.config.id2label == first.config.id2label == {0: "refund", 1: "delivery", 2: "login"}
    lineage = get_lineage(AutoModelForSequenceClassification.from_pretrained(out))
    assert [r["labels_added"] for r in lineage] == [["refund", "delivery"], ["login"]]
    for name, tensor in first.state_dict().items():
        assert torch.equal(second.state_dict()[name], tensor), name
    again = _files(out, skip=KEPT_ENTRIES)
    assert again.keys() == saved.keys() and again["model.safetensors"] == saved["model.safetensors"]
    assert _leftovers(out) == []


def test_checkpoints_of_an_interrupted_run_are_resumed_only_by_the_same_run(base_folder, tmp_path):
    data = text_dataset(["login"], 8)
    steps = {"save_strategy": "steps", "save_steps": 2}
    reference, _ = _increment(base_folder, tmp_path / "reference", data, **steps)
    out = tmp_path / "out"
    # A run that fails after its warm-up (as a killed one would stop) leaves the warm-up's checkpoints.
    def stop(*args, **kwargs):
        raise RuntimeError("stopped")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hf_incr.recipe, "_fine_tune", stop)
        with pytest.raises(RuntimeError, match="stopped"):
            _increment(base_folder, out, data, **steps)
    last_warmup = out / "checkpoints" / "warmup" / "checkpoint-4" / "trainer_state.json"
    assert last_warmup.is_file() and not (out / "config.json").exists()

    # Other data in that folder must not continue these checkpoints.
    with pytest.raises(ConfigError, match="written by another run"):
        _increment(base_folder, out, text_dataset(["login"], 8, offset=3), resume_from_checkpoint=True, **steps)
    assert last_warmup.is_file()
    # The same run continues them to the uninterrupted run's model, and removes them when it is done.
    resumed, result = _increment(base_folder, out, data, resume_from_checkpoint=True, **steps)
    assert result.new_labels == ["login"] and not (out / "checkpoints").exists()
    assert [r["labels_added"] for r in get_lineage(resumed)] == [["refund", "delivery"], ["login"]]
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, atol=1e-6, rtol=1e-5, msg=f"{name} differs")


@pytest.mark.parametrize("in_place", [False, True], ids=["new-folder", "same-folder"])
def test_rerun_from_the_saved_output_adds_no_record(base_folder, tmp_path, caplog, in_place):
    data = text_dataset(["login"], 8)
    out = tmp_path / "out"
    _increment(base_folder, out, data)
    lineage = get_lineage(AutoModelForSequenceClassification.from_pretrained(out))
    assert len(lineage) == 2

    saved = {k: v.clone() for k, v in AutoModelForSequenceClassification.from_pretrained(out).state_dict().items()}
    caplog.set_level(logging.WARNING, logger="hf_incr")
    target = out if in_place else tmp_path / "again"
    model, result = _increment(out, target, data)
    assert result.new_labels == [] and result.new_label_ids == []
    # Nothing was trained: the weights are the saved result's, bit for bit, in memory and on disk.
    for state in (model.state_dict(), AutoModelForSequenceClassification.from_pretrained(target).state_dict()):
        assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert model.config.id2label == {0: "refund", 1: "delivery", 2: "login"}
    assert get_lineage(model) == lineage  # the same two records, dates included
    assert get_lineage(AutoModelForSequenceClassification.from_pretrained(target)) == lineage
    assert json.loads((target / "lineage.json").read_text()) == lineage
    assert "repeats increment 1 of the lineage" in caplog.text


def test_a_streamed_increment_trains_as_the_in_memory_one_and_its_rerun_is_recognised(base_folder, tmp_path, caplog):
    data = text_dataset(["login"], 8)
    in_memory, _ = _increment(base_folder, tmp_path / "memory", data)
    streamed, result = _increment(base_folder, tmp_path / "stream", data.to_iterable_dataset(num_shards=2))
    assert result.new_labels == ["login"]
    for name, tensor in in_memory.state_dict().items():
        assert torch.equal(streamed.state_dict()[name], tensor), name

    # The same rows streamed again are the same data (fingerprinted by content): nothing retrains.
    caplog.set_level(logging.WARNING, logger="hf_incr")
    _, again = _increment(tmp_path / "stream", tmp_path / "again", data.to_iterable_dataset())
    assert again.new_labels == [] and "repeats increment 1 of the lineage" in caplog.text
    # Changed rows from a stream with the same code are new data: a new increment.
    caplog.clear()
    _increment(tmp_path / "stream", tmp_path / "changed",
               text_dataset(["login"], 8, offset=3).to_iterable_dataset())
    assert "repeats increment" not in caplog.text
    assert len(get_lineage(AutoModelForSequenceClassification.from_pretrained(tmp_path / "changed"))) == 3


def test_find_rerun_only_matches_the_last_increments_data():
    lineage = [{"increment": 0, "labels_added": ["a", "b"], "data_fingerprint": "base"},
               {"increment": 1, "labels_added": ["c"], "data_fingerprint": "fp"}]
    assert find_rerun(lineage, "fp", ["c"])["increment"] == 1  # same data, same base
    assert find_rerun(lineage, "fp", [])["increment"] == 1  # same data on the increment's own result
    assert find_rerun(lineage, "fp", ["d"]) is None  # a label that increment did not add
    assert find_rerun(lineage, "base", []) is None  # older data: training on it again is a new increment
    assert find_rerun(lineage, None, []) is None
    assert find_rerun([], "fp", ["c"]) is None
