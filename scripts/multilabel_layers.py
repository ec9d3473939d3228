"""Which vector should a multi-label head read? A diagnostic on cached frozen MiniLM features of GoEmotions.

The forgetting benchmark's GoEmotions protocol (4 increments of 7 labels, strictly incremental, rows fully
annotated), with the library's per-label discriminants and F1-tuned thresholds (``RidgeStatistics``: what the Linear's
closed form and the multi-label kernel LDA head solve), on one of these representations of the frozen encoder:

- ``pooler``: BERT's pooler output (what the model's Linear reads);
- ``topK``: the mean-pooled, L2-normalised hidden states of the top K layers, concatenated (the kernel head's input);
- ``topK:D``: the same through D random Fourier features at ``factor`` x the first increment's median distance.

Every representation is solved on the same rows, with the increments' labels ordered as the benchmark orders them.
Prints per increment micro / macro-F1 (%) over the labels seen. The rows and their annotation are the benchmark's
(each increment's rows carry one of its labels and annotate every label seen; a label added later counts the earlier
rows as rows without it, as the library's statistics do), so ``pooler`` and ``top4`` reproduce its ``lda`` and
``kernel_lda`` rows.

    PYTHONPATH=. python scripts/multilabel_layers.py --data_dir ../shared/data --specs pooler top1 top4 top6 top4:5000
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from benchmark_forgetting import ForgettingBenchmarkArguments, load_task
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer, HfArgumentParser

from hf_incr.closed_form import RidgeStatistics
from hf_incr.kernel_head import RandomFourierFeatures, median_pairwise_distance
from hf_incr.loading import default_encoder


@dataclass
class LayerArguments:
    specs: list[str] = field(default_factory=lambda: ["pooler", "top4", "top4:5000"],
                             metadata={"help": "Representations: pooler, topK, or topK:D (D random features)."})
    factor: float = field(default=1.0, metadata={"help": "Bandwidth: this x the first increment's median distance."})
    data_dir: str = field(default="../shared/data", metadata={"help": "Folder of the shared data sets."})
    cache: str = field(default="outputs/goemotions_layers.safetensors",
                       metadata={"help": "Where the encoded states are cached (about 230 MB)."})
    ceiling: bool = field(default=False, metadata={
        "help": "After the last increment, also score the head at thresholds tuned on the training rows and on the "
                "test rows (an upper bound, not a method), and per-label logistic regression at test-tuned ones."})


def f1(predicted: torch.Tensor, gold: torch.Tensor) -> tuple[float, float]:
    """Micro- and macro-F1 (%) of 0/1 predictions against 0/1 gold, (rows, labels)."""
    hits = (predicted * gold).sum(0)
    micro = 2 * hits.sum() / (predicted.sum() + gold.sum())
    macro = (2 * hits / (predicted.sum(0) + gold.sum(0)).clamp_min(1)).mean()
    return 100 * float(micro), 100 * float(macro)


def tuned_cuts(scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Per label, the score cut (among 400 quantiles of its scores) with the best F1 on these rows."""
    cuts = []
    for j in range(scores.shape[1]):
        grid = torch.quantile(scores[:, j], torch.linspace(0.5, 0.999, 400, dtype=scores.dtype))
        predicted = (scores[:, j, None] > grid).double()
        hits = (predicted * gold[:, j, None]).sum(0)
        cuts.append(grid[(2 * hits / (predicted.sum(0) + gold[:, j].sum()).clamp_min(1)).argmax()])
    return torch.stack(cuts)


@torch.no_grad()
def encode(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Per text: the mean-pooled states of every layer (embeddings first) and the pooler output, (rows, L + 2, h)."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=64)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    layers = model.config.num_hidden_layers + 1
    out = torch.empty(len(texts), layers + 1, model.config.hidden_size)
    for start in range(0, len(texts), 64):
        index = order[start : start + 64]
        batch = tokenizer([texts[i] for i in index], truncation=True, max_length=64, padding=True, return_tensors="pt")
        output = model(**batch, output_hidden_states=True)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        out[index, :layers] = torch.stack([(h * mask).sum(1) / mask.sum(1) for h in output.hidden_states], 1)
        out[index, layers] = output.pooler_output
    return out


def representation(states: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "pooler":
        return states[:, -1]
    k = int(kind[3:])
    return torch.nn.functional.normalize(states[:, -1 - k : -1], dim=2).flatten(1)


def main(args: LayerArguments) -> None:
    torch.set_num_threads(2)
    task = load_task(ForgettingBenchmarkArguments(datasets=["goemotions"], data_dir=args.data_dir), "goemotions")
    cache = Path(args.cache)
    if not cache.exists():
        path = default_encoder()
        tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"train": encode(model, tokenizer, task.train_texts),
                   "test": encode(model, tokenizer, task.test_texts)}, str(cache))
    data = load_file(str(cache))

    for spec in args.specs:
        kind, _, features = spec.partition(":")
        train, test = representation(data["train"], kind).double(), representation(data["test"], kind).double()
        if features:
            first = [i for i, names in enumerate(task.train_labels) if any(n in task.increments[0] for n in names)]
            bandwidth = args.factor * median_pairwise_distance(train[first].float())
            projection = RandomFourierFeatures(train.shape[1], int(features), bandwidth, seed=0)
            train, test = projection(train.float(), torch.float64), projection(test.float(), torch.float64)
        started = time.perf_counter()
        figures, last = solve_increments(task, train, test)
        print(f"{spec}: micro / macro-F1 per increment {', '.join(figures)} ({time.perf_counter() - started:.0f} s)",
              flush=True)
        if args.ceiling:
            ceiling(task, train, *last)


def label_ids(task) -> dict[str, int]:
    """Each label's id: its place in the increments' order."""
    return {name: i for i, name in enumerate(name for increment in task.increments for name in increment)}


def multi_hot(rows: list[list[str]], ids: dict[str, int], seen: int) -> torch.Tensor:
    """0/1 targets (rows, seen) of the labels with an id below ``seen``."""
    y = torch.zeros(len(rows), seen, dtype=torch.float64)
    for r, names in enumerate(rows):
        for name in names:
            if ids.get(name, seen) < seen:
                y[r, ids[name]] = 1
    return y


def solve_increments(task, train: torch.Tensor, test: torch.Tensor) -> tuple[list[str], tuple]:
    """The library's per-label discriminants and thresholds over the task's increments, on these features: the
    micro / macro-F1 figures per increment, and (the last increment's test rows, gold, weight, bias, cuts)."""
    ids = label_ids(task)
    statistics, figures, seen = RidgeStatistics.empty(train.shape[1], 0), [], 0
    for t, increment in enumerate(task.increments):
        seen += len(increment)
        rows = [i for i, names in enumerate(task.train_labels) if any(n in increment for n in names)]
        # As the library does: the rows annotate every label seen so far, and a label added now counts every
        # earlier row as a row without it (RidgeStatistics.grow).
        statistics.add(RidgeStatistics.empty(train.shape[1], seen).update(
            train[rows], multi_hot([task.train_labels[i] for i in rows], ids, seen)))
        weight, bias = statistics.solve_binary_lda()
        cuts = statistics.decision_thresholds(weight, bias)
        mask = torch.tensor(task.seen_test(t))
        predicted = (test[mask] @ weight.T + bias > cuts).double()
        gold = multi_hot([task.test_labels[i] for i in mask.nonzero().flatten().tolist()], ids, seen)
        figures.append("{:.1f} / {:.1f}".format(*f1(predicted, gold)))
    return figures, (test[mask], gold, weight, bias, cuts)


def ceiling(task, train, test, gold, weight, bias, cuts) -> None:
    """Where the last increment's head loses F1: its thresholds or its ranking (every row is in its statistics)."""
    from sklearn.linear_model import LogisticRegression

    seen = gold.shape[1]
    ids = label_ids(task)
    rows = [i for i, names in enumerate(task.train_labels) if names]
    train_gold = multi_hot([task.train_labels[i] for i in rows], ids, seen)
    scores, train_scores = test @ weight.T + bias, train[rows] @ weight.T + bias
    print("  statistics' thresholds: {:.1f} / {:.1f}".format(*f1((scores > cuts).double(), gold)))
    print("  thresholds tuned on the training rows: {:.1f} / {:.1f}".format(
        *f1((scores > tuned_cuts(train_scores, train_gold)).double(), gold)))
    print("  thresholds tuned on the test rows (upper bound): {:.1f} / {:.1f}".format(
        *f1((scores > tuned_cuts(scores, gold)).double(), gold)))
    logistic = torch.stack([torch.from_numpy(LogisticRegression(max_iter=300).fit(
        train[rows].numpy(), train_gold[:, j].numpy()).decision_function(test.numpy())) for j in range(seen)], 1)
    print("  per-label logistic regression, thresholds tuned on the test rows (upper bound): {:.1f} / {:.1f}".format(
        *f1((logistic > tuned_cuts(logistic, gold)).double(), gold)), flush=True)


if __name__ == "__main__":
    (layer_args,) = HfArgumentParser(LayerArguments).parse_args_into_dataclasses()
    main(layer_args)
