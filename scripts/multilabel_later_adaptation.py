"""Would adapting the encoder in every increment, not only the first, close GoEmotions' gap to joint retraining?
A diagnostic for issue 14, outside the library.

The forgetting benchmark's GoEmotions protocol (4 increments of 7 labels, each increment's rows annotating every label
seen), the kernel head's reading (mean-pooled, L2-normalised top 4 layers, concatenated) and the library's per-label
discriminants and thresholds. The first increment fine-tunes the top 4 layers as ``scripts/multilabel_adapt_path.py``
does (``mean`` path); then, per ``--variant``:

- ``frozen``: the encoder stays as the first increment left it (what the library does; no text is stored);
- ``oracle``: every later increment fine-tunes the top 4 layers again for one epoch on its own rows (binary
  cross-entropy over every label seen, through a Linear started from the current closed-form head), and the
  statistics of *every* increment's rows are recomputed with the new encoder. That needs every text stored: it is
  the upper bound of any drift compensation (carrying the old statistics across the encoder's change without text).

Prints micro / macro-F1 (%) over the labels seen after each increment, and the seconds so far.

    PYTHONPATH=. python scripts/multilabel_later_adaptation.py --data_dir ../shared/data --variant oracle
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from benchmark_forgetting import ForgettingBenchmarkArguments, load_task
from multilabel_adapt_path import AdaptPathArguments, fine_tune, train_epoch
from multilabel_layers import encode, f1, label_ids, multi_hot, representation
from transformers import HfArgumentParser

from hf_incr.closed_form import RidgeStatistics

LAYERS = 4


@dataclass
class LaterAdaptationArguments:
    variant: str = field(default="oracle", metadata={"help": "frozen or oracle.", "choices": ["frozen", "oracle"]})
    learning_rate: float = field(default=1e-4, metadata={"help": "The top layers' rate in the later fine-tunes."})
    data_dir: str = field(default="../shared/data", metadata={"help": "Folder of the shared data sets."})


def features(model, tokenizer, texts: list[str]) -> torch.Tensor:
    return representation(encode(model, tokenizer, texts), f"top{LAYERS}").double()


def pooled(output, mask) -> torch.Tensor:
    """The kernel head's reading of a batch (mean-pooled, L2-normalised top layers, concatenated), with gradients."""
    return torch.cat([torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=1)
                      for h in output.hidden_states[-LAYERS:]], 1)


def refine(model, tokenizer, texts, targets, weight, bias, learning_rate: float, seed: int):
    """One epoch of the top layers (and a Linear started from the closed-form head) on one increment's rows."""
    model.requires_grad_(False)
    for block in model.encoder.layer[-LAYERS:]:
        block.requires_grad_(True)
    head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight.float())
        head.bias.copy_(bias.float())
    optimizer = torch.optim.AdamW([{"params": [p for p in model.parameters() if p.requires_grad],
                                    "lr": learning_rate}, {"params": head.parameters(), "lr": 1e-4}])
    train_epoch(model, tokenizer, texts, targets, head, pooled, optimizer, seed)
    return model.eval()


def main(args: LaterAdaptationArguments) -> list[tuple[float, float]]:
    torch.set_num_threads(2)
    task = load_task(ForgettingBenchmarkArguments(datasets=["goemotions"], data_dir=args.data_dir), "goemotions")
    ids = label_ids(task)
    started = time.perf_counter()
    model, tokenizer = fine_tune(task, "mean", AdaptPathArguments(layers=LAYERS))
    statistics, seen, found = None, 0, []
    increments = []  # (texts, targets over the labels seen then) of every increment, for the oracle only
    for t, increment in enumerate(task.increments):
        seen += len(increment)
        rows = [i for i, names in enumerate(task.train_labels) if any(n in increment for n in names)]
        texts, y = [task.train_texts[i] for i in rows], multi_hot([task.train_labels[i] for i in rows], ids, seen)
        increments.append((texts, y))
        if t > 0 and args.variant == "oracle":
            before = features(model, tokenizer, texts)
            start = copy.deepcopy(statistics).add(RidgeStatistics.empty(before.shape[1], seen).update(before, y))
            weight, bias = start.solve_binary_lda()
            model = refine(model, tokenizer, texts, y, weight, bias - start.decision_thresholds(weight, bias),
                           args.learning_rate, seed=t)
            statistics = RidgeStatistics.empty(LAYERS * model.config.hidden_size, 0)
            for some_texts, some_y in increments:
                statistics.add(RidgeStatistics.empty(statistics.gram.shape[0] - 1, some_y.shape[1]).update(
                    features(model, tokenizer, some_texts), some_y))
        else:
            x = features(model, tokenizer, texts)
            block = RidgeStatistics.empty(x.shape[1], seen).update(x, y)
            statistics = block if statistics is None else statistics.add(block)
        weight, bias = statistics.solve_binary_lda()
        cuts = statistics.decision_thresholds(weight, bias)
        test = torch.tensor(task.seen_test(t)).nonzero().flatten().tolist()
        scores = features(model, tokenizer, [task.test_texts[i] for i in test]) @ weight.T + bias
        found.append(f1((scores > cuts).double(), multi_hot([task.test_labels[i] for i in test], ids, seen)))
        print(f"{args.variant}, increment {t + 1}: micro / macro-F1 {found[-1][0]:.1f} / {found[-1][1]:.1f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    return found


if __name__ == "__main__":
    (later_args,) = HfArgumentParser(LaterAdaptationArguments).parse_args_into_dataclasses()
    main(later_args)
