"""Benchmark of head surgery: what ``hf_incr.add_labels`` costs on models of growing size and heads of growing size.

The claim measured: the cost of growing a head is proportional to the head (rows x hidden size), not to the model.
Models are built from configs (random weights, no download), from a 4 M-parameter BERT to a 560 M-parameter
XLM-R large (a 250 k-token vocabulary) and a 340 M-parameter Llama-style decoder whose head is ``score``. For each
model, head size (existing labels) and ``init``, the script reports

- the wall time of ``add_labels(model, new_labels, init=...)``: median of ``--runs`` calls, the head restored
  (untimed) between calls;
- the extra memory of the call: the peak of bytes held by tensors the call allocated (torch allocations, traced with a
  ``TorchDispatchMode``; not RSS, which the allocator's caching makes meaningless at this scale), beside the size of
  the grown head it must allocate anyway;
- how many of the model's other parameters and buffers the call read (through any torch op): it should be 0;

and, per model, the time of ``find_classifier_head`` alone, by the table of known paths and by the structural probe
used for unknown classes (which walks the modules once).

    python scripts/benchmarks/add_labels.py                         # everything, about a minute on 2 cores
    python scripts/benchmarks/add_labels.py --models bert-tiny bert-large --label_counts 10 1000 --output_json out.json

Timings use one intra-op thread by default (``--num_threads``): on a shared machine, waking a second OpenMP thread
for a copy of a few hundred kB cost 10-20 ms here, which measured the scheduler rather than ``add_labels``.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers as T
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from tqdm.auto import tqdm
from transformers import HfArgumentParser

import hf_incr
from hf_incr import find_classifier_head

# Not exported by hf_incr: the `init` values add_labels accepts, measured one by one.
from hf_incr.head import INIT_METHODS

# Configs of the models measured (random weights). Sizes are the parameter counts without the head.
PRESETS = {
    "bert-tiny": lambda: T.BertConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512
    ),
    "bert-base": lambda: T.BertConfig(),  # hidden 768, 12 layers: 110 M
    "bert-large": lambda: T.BertConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),  # 335 M
    "llama-340m": lambda: T.LlamaConfig(
        vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
        num_key_value_heads=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ),  # Llama-style decoder, bias-free `score` head
    "xlmr-large": lambda: T.XLMRobertaConfig(
        vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
    ),  # 560 M, most of it the 250 k x 1024 embedding
}


@dataclass
class AddLabelsBenchmarkArguments:
    models: list[str] = field(
        default_factory=lambda: list(PRESETS),
        metadata={"help": f"Models to build from their configs, among {list(PRESETS)}."},
    )
    label_counts: list[int] = field(
        default_factory=lambda: [10, 1000, 10000],
        metadata={"help": "Labels the head has before the call (head size = labels x hidden size)."},
    )
    new_labels: int = field(default=50, metadata={"help": "Labels added by each call."})
    inits: list[str] = field(default_factory=lambda: list(INIT_METHODS), metadata={"help": "`init` values measured."})
    runs: int = field(default=7, metadata={"help": "Timed calls per setting; the median is reported."})
    num_threads: int = field(default=1, metadata={"help": "torch intra-op threads during the measurements."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights."})
    output_json: str | None = field(default=None, metadata={"help": "Also write the figures to this JSON file."})


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


def build_model(name: str, num_labels: int, seed: int = 0) -> nn.Module:
    config = PRESETS[name]()
    config.id2label = {i: f"label_{i}" for i in range(num_labels)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(seed)
    return T.AutoModelForSequenceClassification.from_config(config).eval()


@dataclass
class HeadState:
    """A head of a given size and the config that goes with it, to put back before every measured call."""

    linear: nn.Linear
    id2label: dict[int, str]

    def restore(self, model: nn.Module, path: str) -> None:
        parent_path, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, name, self.linear)
        model.config.id2label = dict(self.id2label)
        model.config.label2id = {v: k for k, v in self.id2label.items()}
        if hasattr(model, "num_labels"):
            model.num_labels = len(self.id2label)


def head_of_size(template: nn.Linear, num_labels: int, seed: int) -> HeadState:
    torch.manual_seed(seed)
    linear = nn.Linear(template.in_features, num_labels, bias=template.bias is not None)
    nn.init.normal_(linear.weight, std=0.02)
    if linear.bias is not None:
        nn.init.normal_(linear.bias, std=0.02)
    return HeadState(linear.eval(), {i: f"label_{i}" for i in range(num_labels)})


def _median_seconds(call, setup, runs: int) -> float:
    times = []
    # One collection before the runs, none between them: a full collection just before a call evicts the CPU
    # caches and made a 10 µs lookup take 100 µs here, which measured the collector rather than the call.
    gc.collect()
    for _ in range(runs):
        setup()
        gc.disable()  # a collection inside a sub-millisecond call would be measured as the call
        try:
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        finally:
            gc.enable()
    return statistics.median(times)


def _param_storages(model: nn.Module, exclude: nn.Module) -> set[int]:
    skip = {id(t) for t in [*exclude.parameters(), *exclude.buffers()]}
    return {
        t.untyped_storage().data_ptr()
        for t in [*model.parameters(), *model.buffers()]
        if id(t) not in skip and t.device.type != "meta"
    }


def measure_model(name: str, bench: AddLabelsBenchmarkArguments, progress) -> tuple[list[dict], dict]:
    model = build_model(name, bench.label_counts[0], bench.seed)
    location = find_classifier_head(model)
    path, template = location.path, location.linear
    head_params = sum(p.numel() for p in template.parameters())
    model_params = sum(p.numel() for p in model.parameters()) - head_params
    new = [f"new_{i}" for i in range(bench.new_labels)]
    generator = torch.Generator().manual_seed(bench.seed)
    examples = {label: torch.randn(8, template.in_features, generator=generator) for label in new}
    gc.collect()

    rows = []
    for count in bench.label_counts:
        state = head_of_size(template, count, bench.seed)
        state.restore(model, path)
        others = _param_storages(model, state.linear)  # every tensor of the model but the head being grown
        for init in bench.inits:
            kwargs = {"init": init, "examples": examples if init == "imprint" else None}
            seconds = _median_seconds(
                lambda kwargs=kwargs: hf_incr.add_labels(model, new, **kwargs),
                lambda state=state: state.restore(model, path),
                bench.runs,
            )
            state.restore(model, path)
            with TensorTracker() as tracker:
                hf_incr.add_labels(model, new, **kwargs)
            grown = find_classifier_head(model).linear
            grown_bytes = sum(p.numel() * p.element_size() for p in grown.parameters())
            rows.append(
                {
                    "model": name,
                    "model_params": model_params,
                    "labels_before": count,
                    "labels_added": len(new),
                    "head_params_before": sum(p.numel() for p in state.linear.parameters()),
                    "init": init,
                    "median_ms": 1e3 * seconds,
                    "peak_extra_bytes": tracker.peak_bytes,
                    "allocated_bytes": tracker.total_bytes,
                    "grown_head_bytes": grown_bytes,
                    "other_tensors_read": len(tracker.read & others),
                }
            )
            progress.update(1)
        state.restore(model, path)

    # find_classifier_head alone: the table of known paths, then the probe (the head's attribute renamed, as for an
    # architecture the table does not know).
    table_s = _median_seconds(lambda: find_classifier_head(model), lambda: None, bench.runs)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    linear = getattr(parent, attr)
    delattr(parent, attr)
    parent.renamed_head = linear
    probe_path = find_classifier_head(model).path
    probe_s = _median_seconds(lambda: find_classifier_head(model), lambda: None, bench.runs)
    del parent.renamed_head
    setattr(parent, attr, linear)
    find = {
        "model": name,
        "model_params": model_params,
        "modules": sum(1 for _ in model.modules()),
        "head_path": path,
        "table_us": 1e6 * table_s,
        "probe_path": probe_path,
        "probe_us": 1e6 * probe_s,
    }
    return rows, find


def format_tables(rows: list[dict], finds: list[dict]) -> str:
    """One row per model and head size, one column per ``init`` (median time and peak extra memory), then the
    ``find_classifier_head`` table."""
    inits = list(dict.fromkeys(r["init"] for r in rows))
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["labels_before"]), []).append(r)
    lines = [
        "| model | params (M) | labels | head params before | grown head (MB) | "
        + " | ".join(f"`{i}`: ms, extra MB" for i in inits)
        + " | max extra / grown head | other tensors read |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(inits) + "---:|---:|",
    ]
    for (model, count), group in groups.items():
        first = group[0]
        by_init = {r["init"]: r for r in group}
        cells = [
            f"{by_init[i]['median_ms']:.2f}, {by_init[i]['peak_extra_bytes'] / 2**20:.2f}" if i in by_init else "—"
            for i in inits
        ]
        ratio = max(r["peak_extra_bytes"] / r["grown_head_bytes"] for r in group)
        lines.append(
            f"| {model} | {first['model_params'] / 1e6:.1f} | {count:,} + {first['labels_added']} "
            f"| {first['head_params_before']:,} | {first['grown_head_bytes'] / 2**20:.2f} | " + " | ".join(cells)
            + f" | {ratio:.2f} | {sum(r['other_tensors_read'] for r in group)} |"
        )
    lines += [
        "",
        "| model | params (M) | modules | head | find_classifier_head, table (µs) | probe (µs) |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for f in finds:
        lines.append(
            f"| {f['model']} | {f['model_params'] / 1e6:.1f} | {f['modules']:,} | `{f['head_path']}` "
            f"| {f['table_us']:.1f} | {f['probe_us']:.1f} |"
        )
    return "\n".join(lines)


def main(bench: AddLabelsBenchmarkArguments) -> dict:
    unknown = [m for m in bench.models if m not in PRESETS]
    if unknown:
        raise SystemExit(f"Unknown model(s) {unknown}; choose among {list(PRESETS)}.")
    bad_inits = [i for i in bench.inits if i not in INIT_METHODS]
    if bad_inits:
        raise SystemExit(f"Unknown init(s) {bad_inits}; choose among {list(INIT_METHODS)}.")
    threads, verbosity = torch.get_num_threads(), T.logging.get_verbosity()
    torch.set_num_threads(bench.num_threads)
    T.logging.set_verbosity_error()  # no "newly initialized weights" notices between the progress bar's updates
    rows, finds = [], []
    total = len(bench.models) * len(bench.label_counts) * len(bench.inits)
    start = time.perf_counter()
    try:
        with tqdm(total=total, desc="add_labels settings", unit="setting") as progress:
            for name in bench.models:
                progress.set_postfix_str(name)
                model_rows, find = measure_model(name, bench, progress)
                rows += model_rows
                finds.append(find)
                gc.collect()  # the model is gone with measure_model's frame: free it before building the next
    finally:
        torch.set_num_threads(threads)
        T.logging.set_verbosity(verbosity)
    result = {
        "settings": asdict(bench),
        "torch": torch.__version__,
        "transformers": T.__version__,
        "wall_s": time.perf_counter() - start,
        "add_labels": rows,
        "find_classifier_head": finds,
    }
    print(format_tables(rows, finds))
    if bench.output_json:
        path = Path(bench.output_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"Figures written to {path}")
    return result


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(AddLabelsBenchmarkArguments).parse_args_into_dataclasses()
    main(arguments)
