"""Damaged or foreign files saved beside a model: each is checked when read and gives a named
:class:`~hf_incr.SavedStateError` (file, what is lost, the way forward); the model folder stays as it was."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from text_models import text_dataset, tiny_bert, tokenizer, training_args

import hf_incr
from hf_incr import IncrementConfig, SavedStateError, train_base_classifier, train_increment
from hf_incr.cli import main
from hf_incr.features import extract_head_inputs
from hf_incr.heads import ClassStatistics, LinearHead
from hf_incr.heads.kernel import KERNEL_FILENAME, KERNEL_STATISTICS_FILENAME
from hf_incr.heads.linear import LEGACY_FILENAME, LEGACY_FORMAT, RETIRED_FILENAME, STATISTICS_FILENAME
from hf_incr.replay import REPLAY_DIRNAME, REPLAY_FILENAME, ReplayMemory

OLD = ["refund", "delivery", "login"]
BASE = dict(finetune_layers=0, warmup_epochs=1, distill_weight=0.0, max_length=16)
# The base's heads: the Linear's closed form and a kernel head beside it (what a later increment continues).
HEADS = dict(head="kernel", kernel_features=16)


def disk(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tok):
    """A base trained by hf_incr with closed-form statistics, a kernel head and a replay memory."""
    root = tmp_path_factory.mktemp("saved")
    model = tiny_bert(OLD)
    model.save_pretrained(root / "encoder")
    tok.save_pretrained(root / "encoder")
    config = IncrementConfig(**BASE, **HEADS, replay_per_label=2)
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
                           config=IncrementConfig(**{**BASE, **HEADS, "replay_per_label": 2, **config}),
                           args=training_args(tmp_path, output_dir=str(tmp_path / "v2")))


def test_the_saved_files_are_there(saved):
    names = set(disk(saved))
    assert {STATISTICS_FILENAME, KERNEL_FILENAME, KERNEL_STATISTICS_FILENAME,
            f"{REPLAY_DIRNAME}/{REPLAY_FILENAME}"} <= names
    assert LEGACY_FILENAME not in names  # the name earlier versions wrote is read, never written


def test_statistics_cut_in_half_name_the_file_what_is_lost_and_the_fix(saved, tok, tmp_path):
    folder = _copy(saved, tmp_path)
    _cut_in_half(folder / STATISTICS_FILENAME)
    before = disk(tmp_path)
    with pytest.raises(SavedStateError) as info:
        _increment(folder, tok, tmp_path)
    message = str(info.value)
    assert STATISTICS_FILENAME in message and "could not be read" in message
    assert "Without it, the next increment cannot solve the old labels' rows" in message
    assert "Restore" in message and "add a few rows of every old label" in message
    assert info.value.path == folder / STATISTICS_FILENAME and isinstance(info.value, ValueError)
    assert disk(tmp_path) == before  # nothing written: no output folder, the model folder byte for byte


def test_the_cli_reports_damaged_statistics_without_a_traceback(saved, tmp_path, capsys):
    folder = _copy(saved, tmp_path)
    _cut_in_half(folder / STATISTICS_FILENAME)
    train = tmp_path / "new.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in text_dataset(["repair"], 3).to_list()), encoding="utf-8")
    before = disk(folder)
    code = main(["increment", "--model_name_or_path", str(folder), "--train_file", str(train),
                 "--output_dir", str(tmp_path / "v2"), "--use_cpu", "--report_to", "none", "--head", "kernel",
                 "--kernel_features", "16", "--finetune_layers", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "error:" in err and STATISTICS_FILENAME in err and "Traceback" not in err
    assert disk(folder) == before and not (tmp_path / "v2").exists()


@pytest.mark.parametrize("damage", ["cut", "not_safetensors", "missing_tensor", "nan"])
def test_each_kind_of_damage_to_the_statistics_is_named(saved, tmp_path, damage):
    folder = _copy(saved, tmp_path)
    path = folder / STATISTICS_FILENAME
    if damage == "cut":
        _cut_in_half(path)
    elif damage == "not_safetensors":
        path.write_text("counts,sums\n1,2\n", encoding="utf-8")
    else:  # a file of the right format (its metadata kept) with a tensor left out, or not finite
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        if damage == "nan":
            tensors["sums"] = tensors["sums"].clone().fill_(float("nan"))
        else:
            del tensors["scatter_upper"]
        save_file(tensors, str(path), metadata=metadata)
    problem = {"missing_tensor": r"lacks the tensor\(s\) \['scatter_upper'\]", "nan": "holds non-finite numbers"}
    with pytest.raises(SavedStateError, match=STATISTICS_FILENAME) as info:
        LinearHead.load(folder)
    if damage in problem:
        assert re.search(problem[damage], str(info.value))


def test_a_damaged_kernel_head_fails_at_load_not_silently(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _cut_in_half(folder / KERNEL_FILENAME)
    with pytest.raises(SavedStateError, match=KERNEL_FILENAME) as info:
        hf_incr.load_model(str(folder))
    assert "the kernel LDA head cannot score" in str(info.value)
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
        _increment(folder, tok, tmp_path)
    assert disk(tmp_path) == before


def test_statistics_of_another_model_are_refused_before_anything_changes(saved, tok, tmp_path):
    folder = _copy(saved, tmp_path)
    LinearHead(ClassStatistics(32).grow(5).update(torch.randn(4, 32), torch.tensor([0, 1, 2, 3]))).save(folder)
    model = hf_incr.load_model(str(folder))
    weight = hf_incr.find_classifier_head(model).linear.weight.detach().clone()
    before = disk(tmp_path)
    with pytest.raises(SavedStateError, match="belongs to another model"):
        train_increment(model, tok, text_dataset(["repair"], 3), config=IncrementConfig(**BASE, **HEADS),
                        args=training_args(tmp_path, output_dir=str(tmp_path / "v2")))
    assert disk(tmp_path) == before and model.config.num_labels == 3
    assert torch.equal(hf_incr.find_classifier_head(model).linear.weight, weight)


def test_a_replay_memory_of_another_model_is_refused(saved, tok, tmp_path):
    folder = _copy(saved, tmp_path)
    ReplayMemory([{"text": "hello", "labels": ["weather"]}]).save(folder)
    with pytest.raises(SavedStateError, match="weather"):
        _increment(folder, tok, tmp_path)


def _legacy_tensors(features: torch.Tensor, labels: torch.Tensor, num_labels: int) -> dict[str, torch.Tensor]:
    """What earlier versions saved as hf_incr_ridge.safetensors: raw moments over ``[head input, 1]``."""
    x = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    y = torch.nn.functional.one_hot(labels, num_labels).double()
    return {"gram": x.T @ x, "cross": x.T @ y, "kept": torch.zeros(num_labels, dtype=torch.uint8),
            "unannotated": torch.zeros(x.shape[1], num_labels, dtype=torch.float64)}


def test_statistics_saved_by_an_earlier_version_are_continued_as_the_new_file_would_be(saved, tok, tmp_path,
                                                                                        caplog):
    # The base's rows through its head, as the earlier version's frozen pass fed them to its statistics.
    model = hf_incr.load_model(str(saved))
    rows = text_dataset(OLD, 4)
    features = extract_head_inputs(model, tok, rows["text"], max_length=BASE["max_length"], show_progress=False)
    labels = torch.tensor([model.config.label2id[name] for name in rows["label"]])
    # The same rows' statistics beside the same model: in the earlier version's file (with the random-feature head
    # it could save beside it) and in this version's.
    legacy = _copy(saved, tmp_path / "legacy")
    (legacy / STATISTICS_FILENAME).unlink()
    save_file(_legacy_tensors(features, labels, len(OLD)), str(legacy / LEGACY_FILENAME),
              metadata={"count": str(len(labels)), "format": "hf_incr ridge statistics over [head input, 1]"})
    save_file({"weight": torch.zeros(2, 2)}, str(legacy / RETIRED_FILENAME), metadata={"format": "random features"})
    current = _copy(saved, tmp_path / "current")
    LinearHead(ClassStatistics(features.shape[1]).update(features, labels)).save(current)

    with caplog.at_level("WARNING"):
        read = LinearHead.load(legacy, multi_label=False)
    assert RETIRED_FILENAME in caplog.text  # not read: the model answers with its Linear
    expected = LinearHead.load(current, multi_label=False)
    assert LEGACY_FORMAT == "hf_incr ridge statistics over [head input, 1]"
    assert type(read) is LinearHead and read.kept.tolist() == [False] * 3 and read.statistics.num_rows == 12
    assert torch.equal(read.statistics.counts, expected.statistics.counts)
    torch.testing.assert_close(read.statistics.sums, expected.statistics.sums, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(read.statistics.scatter, expected.statistics.scatter, rtol=1e-9, atol=1e-12)

    # An increment continues either folder into the same head; it saves the new file only.
    results = {name: _increment(folder, tok, tmp_path / name) for name, folder in (("legacy", legacy),
                                                                                    ("current", current))}
    (weight, bias, _), (expected_weight, expected_bias, _) = [r.heads["linear"].solution() for r in results.values()]
    assert ((weight - expected_weight).norm() / expected_weight.norm()).item() < 1e-6
    assert ((bias - expected_bias).norm() / expected_bias.norm()).item() < 1e-6
    assert results["legacy"].record["head_rows"] == results["current"].record["head_rows"] == "solved"
    saved_files = set(disk(tmp_path / "legacy" / "v2"))
    assert STATISTICS_FILENAME in saved_files and not {LEGACY_FILENAME, RETIRED_FILENAME} & saved_files
    continued = LinearHead.load(tmp_path / "legacy" / "v2")
    assert continued.statistics.num_rows == 15 and continued.num_labels == 4


@pytest.mark.parametrize("damage", ["cut", "missing_tensor", "inconsistent"])
def test_damage_to_an_earlier_versions_statistics_file_is_named(saved, tmp_path, damage):
    folder = _copy(saved, tmp_path)
    (folder / STATISTICS_FILENAME).unlink()
    tensors = _legacy_tensors(torch.randn(12, 32), torch.arange(12) % 3, 3)
    if damage == "missing_tensor":
        del tensors["cross"]
    elif damage == "inconsistent":
        tensors["cross"] = tensors["cross"][1:]
    path = folder / LEGACY_FILENAME
    save_file(tensors, str(path), metadata={"count": "12", "format": "hf_incr ridge statistics over [head input, 1]"})
    if damage == "cut":
        _cut_in_half(path)
    with pytest.raises(SavedStateError, match=LEGACY_FILENAME) as info:
        LinearHead.load(folder)
    assert "Without it, the next increment cannot solve the old labels' rows" in str(info.value)


def test_a_malformed_lineage_in_config_is_named(tmp_path):
    model = tiny_bert(OLD)
    model.config.hf_incr_lineage = ["not a record"]
    with pytest.raises(SavedStateError, match="hf_incr_lineage"):
        hf_incr.get_lineage(model)

