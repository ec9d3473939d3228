"""Damaged or foreign files saved beside a model: each is checked when read and gives a named
:class:`~hf_incr.SavedStateError` (file, what is lost, the way forward); the model folder stays as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from text_models import text_dataset, tiny_bert, tokenizer, training_args

import hf_incr
from hf_incr import IncrementConfig, SavedStateError, train_base_classifier, train_increment
from hf_incr.cli import main
from hf_incr.closed_form import RIDGE_FILENAME, RidgeStatistics
from hf_incr.random_features import RANDOM_FEATURES_FILENAME
from hf_incr.replay import REPLAY_DIRNAME, REPLAY_FILENAME, ReplayMemory

OLD = ["refund", "delivery", "login"]
BASE = dict(finetune_layers=0, warmup_epochs=1, distill_weight=0.0, max_length=16)


def disk(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tok):
    """A base trained by hf_incr with closed-form statistics, a random-feature head and a replay memory."""
    root = tmp_path_factory.mktemp("saved")
    model = tiny_bert(OLD)
    model.save_pretrained(root / "encoder")
    tok.save_pretrained(root / "encoder")
    config = IncrementConfig(**BASE, random_features=16, replay_per_label=2, replay_selection="random")
    train_base_classifier(str(root / "encoder"), text_dataset(OLD, 4), config=config,
                          args=training_args(root, output_dir=str(root / "base")))
    return root / "base"


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    for name, data in disk(folder).items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(data)
    return target


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _increment(folder: Path, tok, tmp_path: Path, **config):
    model = hf_incr.load_model(str(folder))
    return train_increment(model, tok, text_dataset(["repair"], 3),
                           config=IncrementConfig(**{**BASE, "replay_per_label": 2, "replay_selection": "random",
                                                     **config}),
                           args=training_args(tmp_path, output_dir=str(tmp_path / "v2")))


def test_the_saved_files_are_there(saved):
    names = set(disk(saved))
    assert {RIDGE_FILENAME, RANDOM_FEATURES_FILENAME, f"{REPLAY_DIRNAME}/{REPLAY_FILENAME}"} <= names


def test_statistics_cut_in_half_name_the_file_what_is_lost_and_the_fix(saved, tok, tmp_path):
    folder = _copy(saved, tmp_path)
    _cut_in_half(folder / RIDGE_FILENAME)
    before = disk(tmp_path)
    with pytest.raises(SavedStateError) as info:
        _increment(folder, tok, tmp_path, random_features=16)
    message = str(info.value)
    assert RIDGE_FILENAME in message and "could not be read" in message
    assert "Without it, the next increment cannot solve the old labels' rows" in message
    assert "Restore" in message and "add a few rows of every old label" in message
    assert info.value.path == folder / RIDGE_FILENAME and isinstance(info.value, ValueError)
    assert disk(tmp_path) == before  # nothing written: no output folder, the model folder byte for byte


def test_the_cli_reports_damaged_statistics_without_a_traceback(saved, tmp_path, capsys):
    folder = _copy(saved, tmp_path)
    _cut_in_half(folder / RIDGE_FILENAME)
    train = tmp_path / "new.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in text_dataset(["repair"], 3).to_list()), encoding="utf-8")
    before = disk(folder)
    code = main(["increment", "--model_name_or_path", str(folder), "--train_file", str(train),
                 "--output_dir", str(tmp_path / "v2"), "--use_cpu", "--report_to", "none", "--random_features", "16",
                 "--finetune_layers", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "error:" in err and RIDGE_FILENAME in err and "Traceback" not in err
    assert disk(folder) == before and not (tmp_path / "v2").exists()


@pytest.mark.parametrize("damage", ["cut", "not_safetensors", "missing_tensor", "nan"])
def test_each_kind_of_damage_to_the_statistics_is_named(saved, tmp_path, damage):
    folder = _copy(saved, tmp_path)
    path = folder / RIDGE_FILENAME
    if damage == "cut":
        _cut_in_half(path)
    elif damage == "not_safetensors":
        path.write_text("gram,cross\n1,2\n", encoding="utf-8")
    else:
        from safetensors.torch import save_file

        stats = RidgeStatistics.load(folder)
        tensors = {"gram": stats.gram}
        if damage == "nan":
            tensors["cross"] = stats.cross.clone().fill_(float("nan"))
        save_file(tensors, str(path))
    with pytest.raises(SavedStateError, match=RIDGE_FILENAME):
        RidgeStatistics.load(folder)


def test_a_damaged_random_feature_head_fails_at_load_not_silently(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _cut_in_half(folder / RANDOM_FEATURES_FILENAME)
    with pytest.raises(SavedStateError, match=RANDOM_FEATURES_FILENAME) as info:
        hf_incr.load_model(str(folder))
    assert "delete it to use the model's linear head" in str(info.value)
    # Plain transformers never reads it.
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(folder).config.num_labels == 3


def test_a_damaged_replay_memory_is_named(saved, tok, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / REPLAY_DIRNAME / REPLAY_FILENAME).write_bytes(b"PAR1 not really parquet")
    with pytest.raises(SavedStateError, match=REPLAY_FILENAME) as info:
        ReplayMemory.load(folder)
    assert "replays no stored example" in str(info.value)
    before = disk(tmp_path)
    with pytest.raises(SavedStateError, match=REPLAY_FILENAME):
        _increment(folder, tok, tmp_path, random_features=16)
    assert disk(tmp_path) == before


def test_statistics_of_another_model_are_refused_before_anything_changes(saved, tok, tmp_path):
    folder = _copy(saved, tmp_path)
    RidgeStatistics.empty(32, 5).update(torch.randn(4, 32), torch.eye(5)[[0, 1, 2, 3]]).save(folder)
    model = hf_incr.load_model(str(folder))
    weight = hf_incr.find_classifier_head(model).linear.weight.detach().clone()
    before = disk(tmp_path)
    with pytest.raises(SavedStateError, match="belongs to another model"):
        train_increment(model, tok, text_dataset(["repair"], 3), config=IncrementConfig(**BASE, random_features=16),
                        args=training_args(tmp_path, output_dir=str(tmp_path / "v2")))
    assert disk(tmp_path) == before and model.config.num_labels == 3
    assert torch.equal(hf_incr.find_classifier_head(model).linear.weight, weight)


def test_a_replay_memory_of_another_model_is_refused(saved, tok, tmp_path):
    folder = _copy(saved, tmp_path)
    ReplayMemory([{"text": "hello", "labels": ["weather"]}]).save(folder)
    with pytest.raises(SavedStateError, match="weather"):
        _increment(folder, tok, tmp_path, random_features=16)


def test_a_malformed_lineage_in_config_is_named(tmp_path):
    model = tiny_bert(OLD)
    model.config.hf_incr_lineage = ["not a record"]
    with pytest.raises(SavedStateError, match="hf_incr_lineage"):
        hf_incr.get_lineage(model)

