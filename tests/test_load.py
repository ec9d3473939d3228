"""Load: an increment on a large label space, a long chain of increments through saved folders, and head surgery
whose cost follows the head, not the model (asserted structurally with :class:`TensorTracker`; the timings are in
``scripts/benchmarks/add_labels.py``, which has its own copy of the tracker)."""

from __future__ import annotations

import json
import struct
import weakref
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from huggingface_hub import ModelCard
from text_models import tiny_bert, tokenizer, training_args
from tiny_models import ARCHITECTURES, tiny_model
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import hf_incr
import hf_incr.recipe
from hf_incr import IncrementConfig, train_increment
from hf_incr.head import INIT_METHODS
from hf_incr.lineage import LINEAGE_FILENAME, get_lineage
from hf_incr.model_card import PLOT_FILENAME, card_has_lineage
from hf_incr.replay import ReplayMemory


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


def _rows(labels, n, offset=0) -> Dataset:
    texts, names = [], []
    for label in labels:
        texts += [f"question about {label.replace('_', ' ')} case {i + offset}" for i in range(n)]
        names += [label] * n
    return Dataset.from_dict({"text": texts, "label": names})


def _concat(*datasets) -> Dataset:
    return Dataset.from_dict({c: [v for d in datasets for v in d[c]] for c in ("text", "label")})


class _GrowthSpy:
    """Wraps the ``add_labels`` that ``train_increment`` calls and checks, at every growth, that the old rows came
    through bit for bit and the new labels got the next ids."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[int, list[int]]] = []
        real = hf_incr.recipe.add_labels

        def spy(model, new_labels, **kwargs):
            linear = hf_incr.find_classifier_head(model).linear
            weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
            old_count = len(model.config.id2label)
            ids = real(model, new_labels, **kwargs)
            grown = hf_incr.find_classifier_head(model).linear
            assert torch.equal(grown.weight[:old_count], weight) and torch.equal(grown.bias[:old_count], bias)
            assert ids == list(range(old_count, old_count + len(new_labels)))
            assert [model.config.id2label[i] for i in ids] == list(new_labels)
            self.calls.append((old_count, ids))
            return ids

        monkeypatch.setattr(hf_incr.recipe, "add_labels", spy)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model, state) -> None:
    current = model.state_dict()
    assert current.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(current[name], tensor), f"{name} differs"


# --------------------------------------------------------------------------------------------------------------
# 1. 1,000 labels + 50


def test_increment_adds_50_labels_to_1000_with_the_default_recipe(tmp_path, tok, monkeypatch):
    """The default IncrementConfig on a tiny BERT with 1,000 labels trained without hf_incr (no closed-form
    statistics) and data of the new labels only: the trained rows are kept and the 50 new rows fitted beside them
    (no gradient phase), with a warning; grow by 50, save, reload."""
    old = [f"topic_{i:04d}" for i in range(1000)]
    new = [f"new_topic_{i:02d}" for i in range(50)]
    model = tiny_bert(old)
    spy = _GrowthSpy(monkeypatch)
    with pytest.warns(UserWarning, match="no saved statistics"):
        result = train_increment(
            model, tok, _rows(new, 4), _concat(_rows(old[::10], 1, offset=100), _rows(new, 2, offset=100)),
            config=IncrementConfig(), args=training_args(tmp_path, output_dir=str(tmp_path / "grown")),
        )
    assert spy.calls == [(1000, list(range(1000, 1050)))]
    assert result.new_labels == new and result.new_label_ids == list(range(1000, 1050))
    assert result.old_label_ids == list(range(1000))
    assert model.num_labels == 1050 and model.classifier.weight.shape == (1050, 32)

    # Metrics before (old labels only) and after (all / old / new), on the 100 old + 100 new evaluation rows.
    assert result.metrics_before["num_old"] == 100
    assert result.metrics_after["num_old"] == 100 and result.metrics_after["num_new"] == 100
    for key in ("accuracy", "old_accuracy", "new_accuracy", "macro_f1"):
        assert 0.0 <= result.metrics_after[key] <= 1.0
    assert result.forgetting == pytest.approx(
        result.metrics_before["old_accuracy"] - result.metrics_after["old_accuracy"]
    )
    # One frozen pass, timed with the fit of the new rows (the kept-rows head caches the rows it needs itself); no
    # gradient phase.
    assert "new_rows_s" in result.timings and not {"warmup_s", "finetune_s"} & set(result.timings)

    # Reloads with plain transformers, bit for bit, labels in order.
    out = Path(result.output_dir)
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(reloaded).__name__ == "BertForSequenceClassification" and reloaded.num_labels == 1050
    assert reloaded.config.id2label == dict(enumerate(old + new))
    _assert_same_state(reloaded, _state(model))
    [record] = get_lineage(reloaded)
    assert record["labels_added"] == new and record["label_ids"] == list(range(1000, 1050))
    assert record["num_labels"] == 1050 and record["metrics"]["after"]["num_new"] == 100
    assert json.loads((out / LINEAGE_FILENAME).read_text()) == get_lineage(reloaded)

    # The defaults keep no replay memory: no training text is stored beside the model.
    assert ReplayMemory.load(out) is None and not (out / "replay_memory").exists()

    # The card stays small: 1,050 labels are grouped by the increment that added them, not listed one per row.
    text = (out / "README.md").read_text()
    assert len(text.encode()) < 12_000, len(text.encode())
    assert "| 0–999 | `topic_0000`, `topic_0001`," in text and "… and 990 more | 1000 | before hf_incr |" in text
    assert "| 1000–1049 | `new_topic_00`," in text and "… and 40 more | 50 | 0 |" in text
    assert "`topic_0500`" not in text  # not one row per label
    assert card_has_lineage(text, reloaded)
    assert {r.dataset_config for r in ModelCard(text).data.eval_results} == {"increment-0"}
    assert (out / PLOT_FILENAME).is_file()


# --------------------------------------------------------------------------------------------------------------
# 2. 20 increments in a row, each from the folder the previous one saved


def test_twenty_increments_chained_through_saved_folders(tmp_path, tok, monkeypatch):
    labels = [f"label{i:02d}" for i in range(42)]
    # The gradient recipe (cheap, still every phase of it) with a replay memory that must stay bounded.
    config = IncrementConfig(finetune_layers=0, warmup_epochs=3, replay_per_label=3, head="trained")
    spy = _GrowthSpy(monkeypatch)

    def run(model, tokenizer_, k, kind="increment"):
        own = labels[:2] if k == 0 else labels[2 * k : 2 * k + 2]
        return train_increment(
            model, tokenizer_, _rows(own, 6), _rows(labels[: 2 * k + 2], 2, offset=50), config=config, kind=kind,
            args=training_args(tmp_path, output_dir=str(tmp_path / f"s{k:02d}")),
        )

    model = tiny_bert(labels[:2])
    run(model, tok, 0, kind="base")
    for k in range(1, 21):
        state, id2label = _state(model), dict(model.config.id2label)
        folder = tmp_path / f"s{k - 1:02d}"
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        tokenizer_ = AutoTokenizer.from_pretrained(folder)
        _assert_same_state(model, state)  # what was saved is what reloads, bit for bit
        assert model.config.id2label == id2label
        result = run(model, tokenizer_, k)
        # Ids are stable: every old label keeps its id, the new ones come next.
        assert {i: model.config.id2label[i] for i in id2label} == id2label
        assert result.new_label_ids == [2 * k, 2 * k + 1]
    assert spy.calls == [(2 * k, [2 * k, 2 * k + 1]) for k in range(1, 21)]

    final = tmp_path / "s20"
    reloaded = AutoModelForSequenceClassification.from_pretrained(final)
    assert reloaded.config.id2label == dict(enumerate(labels))
    lineage = get_lineage(reloaded)
    assert [r["increment"] for r in lineage] == list(range(21))
    assert [r["kind"] for r in lineage] == ["base"] + ["increment"] * 20
    assert [r["labels_added"] for r in lineage] == [labels[2 * k : 2 * k + 2] for k in range(21)]
    assert [r["label_ids"] for r in lineage] == [[2 * k, 2 * k + 1] for k in range(21)]
    assert [r["num_labels"] for r in lineage] == [2 * k + 2 for k in range(21)]
    assert [r["base_model"] for r in lineage[1:]] == [f"./s{k:02d}" for k in range(20)]
    assert json.loads((final / LINEAGE_FILENAME).read_text()) == lineage

    # Replay memory bounded by its budget: exactly 3 rows of each of the 42 labels, each row once.
    memory = ReplayMemory.load(final)
    assert Counter(name for row in memory.rows for name in row["labels"]) == {name: 3 for name in labels}  # noqa: C420
    assert len({row["text"] for row in memory.rows}) == len(memory) == 126
    # 12 training rows, the memory of the 40 old labels mixed in (repeated at most 4x to balance the labels): the
    # rows an increment trains on grow with the labels, not with the number of increments.
    assert lineage[-1]["metrics"]["train_examples"] == 12
    assert 120 <= lineage[-1]["metrics"]["replayed_examples"] <= 4 * 120

    # Files: the same set in every folder, no staging, retired or checkpoint folders left behind (a finished run
    # removes Trainer's checkpoints), sizes growing only with the head (40 rows of 32 floats + 40 biases) and the
    # lineage (one record per increment).
    expected = {"README.md", "config.json", "increments.png", "lineage.json", "model.safetensors", "replay_memory",
                "tokenizer.json", "tokenizer_config.json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"s{k:02d}" for k in range(21)]
    for k in (0, 20):
        folder = tmp_path / f"s{k:02d}"
        assert {p.name for p in folder.iterdir()} == expected
    grown_bytes = (
        (final / "model.safetensors").stat().st_size - (tmp_path / "s00" / "model.safetensors").stat().st_size
    )
    assert 40 * 33 * 4 <= grown_bytes < 40 * 33 * 4 + 64
    assert (final / LINEAGE_FILENAME).stat().st_size < 21 * 4000
    assert (final / "config.json").stat().st_size < 21 * 4000

    # The card: every increment in the lineage and evaluation tables, one recipe column for 21 identical recipes,
    # metadata for the latest 10 increments, the growth summarised in one sentence, and a plot of every increment.
    text = (final / "README.md").read_text()
    assert len(text.encode()) < 40_000, len(text.encode())
    assert card_has_lineage(text, reloaded)
    assert "a base classifier with 2 labels, then 20 increments added 40 labels." in text
    assert "| Setting | Increments 0–20 |" in text
    assert {r.dataset_config for r in ModelCard(text).data.eval_results} == {f"increment-{k}" for k in range(11, 21)}
    assert yaml.safe_load(text.split("---")[1])["model-index"][0]["name"] == "s20"
    assert _png_size(final / PLOT_FILENAME) == (900, 552)  # 7.5 x 4.6 inches at 120 dpi: the long-lineage layout


# --------------------------------------------------------------------------------------------------------------
# 3. add_labels costs the head, not the model


_WALKS = ("named_modules", "named_parameters", "named_buffers", "state_dict", "_apply", "apply")


def _spy_module_walks(monkeypatch) -> list[tuple[str, nn.Module]]:
    """Record every call of nn.Module methods that visit a whole subtree (``to``/``float``/``cuda`` go through
    ``_apply``)."""
    calls: list[tuple[str, nn.Module]] = []
    for name in _WALKS:
        original = getattr(nn.Module, name)

        def wrapper(self, *args, __name=name, __original=original, **kwargs):
            calls.append((__name, self))
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(nn.Module, name, wrapper)
    return calls


def _other_storages(model, head: nn.Linear) -> dict[int, str]:
    """Storage pointer -> name of every parameter and buffer of ``model`` outside ``head``."""
    skip = {id(t) for t in [*head.parameters(), *head.buffers()]}
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return {t.untyped_storage().data_ptr(): n for n, t in tensors if id(t) not in skip and t.numel()}


class TensorTracker(TorchDispatchMode):
    """Records, while active, every aten op's tensors: which pre-existing storages the ops read (``read``, by data
    pointer) and the bytes of storages the ops allocated (``total_bytes`` and the peak of those alive at once,
    ``peak_bytes``). Storages on the meta device hold no memory and are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.read: set[int] = set()
        self.ops: list[str] = []
        self.total_bytes = 0
        self.peak_bytes = 0
        self._live = 0
        self._allocated: dict[int, int] = {}  # id(storage) -> bytes, while alive

    def _freed(self, key: int, size: int) -> None:
        self._allocated.pop(key, None)
        self._live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = [x for x in tree_flatten((args, kwargs or {}))[0] if isinstance(x, torch.Tensor)]
        input_storages = {x.untyped_storage().data_ptr() for x in inputs if x.device.type != "meta"}
        self.read.update(input_storages)
        out = func(*args, **(kwargs or {}))
        self.ops.append(str(func))
        for x in tree_flatten(out)[0]:
            if not isinstance(x, torch.Tensor) or x.device.type == "meta":
                continue
            storage = x.untyped_storage()
            if storage.data_ptr() in input_storages or id(storage) in self._allocated:
                continue  # a view or an in-place result: nothing new was allocated
            size = storage.nbytes()
            self._allocated[id(storage)] = size
            weakref.finalize(storage, self._freed, id(storage), size)
            self.total_bytes += size
            self._live += size
            self.peak_bytes = max(self.peak_bytes, self._live)
        return out


def _examples(model, labels, per_label=2):
    width = hf_incr.find_classifier_head(model).linear.in_features
    generator = torch.Generator().manual_seed(0)
    return {label: torch.randn(per_label, width, generator=generator) for label in labels}


@pytest.mark.parametrize("init", INIT_METHODS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_add_labels_reads_and_allocates_only_for_the_head(arch, init):
    """No torch op of ``add_labels`` reads a tensor of the model outside the head, nothing but the head is replaced
    or walked, and what it allocates is bounded by the size of the grown head (the model's size does not enter)."""
    model = tiny_model(arch)
    old = hf_incr.find_classifier_head(model).linear
    others = _other_storages(model, old)
    before = {n: (p, p.data_ptr()) for n, p in model.named_parameters() if not n.startswith(_head_prefix(model))}
    new = ["delta", "epsilon", "zeta"]
    examples = _examples(model, new) if init == "imprint" else None
    modules_before = {id(m) for m in model.modules()}
    with pytest.MonkeyPatch.context() as patch, TensorTracker() as tracker:
        walks = _spy_module_walks(patch)
        hf_incr.add_labels(model, new, init=init, examples=examples)

    assert not {others[p] for p in tracker.read if p in others}, "add_labels read tensors outside the head"
    assert [(name, type(m).__name__) for name, m in walks if id(m) in modules_before and m is not old] == []
    grown = hf_incr.find_classifier_head(model).linear
    assert grown.out_features == 6
    for name, param in model.named_parameters():
        if not name.startswith(_head_prefix(model)):
            assert before[name][0] is param and param.data_ptr() == before[name][1], f"{name} was reallocated"
    # Memory: at its peak the call holds the grown head and one copy of the new rows (built, then copied in), plus
    # a few scalars; in all it allocates at most that again, plus temporaries the size of the imprint examples.
    grown_bytes = sum(p.numel() * p.element_size() for p in grown.parameters())
    new_rows_bytes = len(new) * (grown.in_features + 1) * grown.weight.element_size()
    examples_bytes = sum(x.numel() * x.element_size() for x in (examples or {}).values())
    assert grown_bytes <= tracker.peak_bytes <= grown_bytes + new_rows_bytes + 256
    assert tracker.total_bytes <= grown_bytes + 2 * new_rows_bytes + 2 * examples_bytes + 1024


def _head_prefix(model) -> str:
    return hf_incr.find_classifier_head(model).path + "."


def test_add_labels_on_a_probed_head_walks_modules_but_reads_no_other_tensor():
    model = tiny_model("bert")
    model.my_head = model.classifier  # not in the table of head paths: found by the structural probe
    del model.classifier
    others = _other_storages(model, model.my_head)
    with TensorTracker() as tracker:
        assert hf_incr.add_labels(model, ["delta"], init="mean") == [3]
    assert model.my_head.out_features == 4
    assert not {others[p] for p in tracker.read if p in others}


def test_the_structural_checks_catch_a_whole_model_copy():
    """The tracker and the walk spy above do see a surgery that touches the whole model (so they can fail)."""
    model = tiny_model("bert")
    head = hf_incr.find_classifier_head(model).linear
    others = _other_storages(model, head)
    with pytest.MonkeyPatch.context() as patch, TensorTracker() as tracker:
        walks = _spy_module_walks(patch)
        model.to(torch.float64)
    other_params = {n for n, _ in model.named_parameters() if not n.startswith("classifier.")}
    assert other_params <= {others[p] for p in tracker.read if p in others}  # (integer buffers stay as they are)
    assert tracker.total_bytes >= sum(p.numel() * p.element_size() for p in model.parameters())  # all float64 now
    assert ("_apply", model) in [(name, m) for name, m in walks]


def test_tracker_counts_peak_of_live_allocations():
    base = torch.zeros(256)  # 1 KiB, allocated before tracking
    with TensorTracker() as tracker:
        a = torch.zeros(512)  # 2 KiB
        view = a[:10]  # no allocation
        b = torch.cat([base, a])  # 3 KiB, peak 5 KiB
        del a, view
        c = torch.empty(256).copy_(base)  # 1 KiB, live 4 KiB
        base.add_(1)  # in place: no allocation
    assert tracker.total_bytes == 6 * 1024 and tracker.peak_bytes == 5 * 1024
    assert base.untyped_storage().data_ptr() in tracker.read
    del b, c
