"""Which path should the first increment's fine-tune train through, when the kernel LDA head reads the top layers?
A diagnostic for GoEmotions (issue 14), outside the library.

The library adapts a base by fine-tuning its top layers through BERT's pooler (the [CLS] vector) and the Linear; the
multi-label kernel head then reads the mean-pooled top 4 layers, which that fine-tune shapes only indirectly. Here the
top 4 layers of the offline MiniLM are fine-tuned on the first increment's rows (one epoch, batch 32, AdamW at 1e-4,
a fresh linear head at 1e-3, binary cross-entropy, random batches) through either

- ``pooler``: the pooler output and a Linear (what the library trains through), or
- ``mean``: the mean-pooled top 4 layers, concatenated, and a Linear (what the kernel head reads),

then the adapted encoder's top 4 layers are read as the kernel head reads them and solved with the library's
per-label discriminants and thresholds over the forgetting benchmark's 4 increments (as
``scripts/multilabel_layers.py`` does). Prints micro / macro-F1 (%) per increment and the seconds.

Read with care: built into the recipe (a probe on the pooled layers during the fine-tune), the path made no difference
in the forgetting benchmark (48.0 against 48.2 through the pooler at 3e-4); the gap here comes from this loop's
learning rates (see docs/benchmarks.md, Multi-label decisions).

    PYTHONPATH=. python scripts/multilabel_adapt_path.py --data_dir ../shared/data --paths pooler mean
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch
from benchmark_forgetting import ForgettingBenchmarkArguments, load_task
from multilabel_layers import encode, label_ids, multi_hot, representation, solve_increments
from transformers import AutoModel, AutoTokenizer, HfArgumentParser

from hf_incr.loading import default_encoder


@dataclass
class AdaptPathArguments:
    paths: list[str] = field(default_factory=lambda: ["pooler", "mean"],
                             metadata={"help": "Paths to fine-tune through: pooler, mean."})
    data_dir: str = field(default="../shared/data", metadata={"help": "Folder of the shared data sets."})
    layers: int = field(default=4, metadata={"help": "Top layers fine-tuned (and read by the head)."})
    epochs: int = field(default=1, metadata={"help": "Epochs over the first increment's rows."})
    seed: int = field(default=0, metadata={"help": "Seed of the batches and the fresh head."})


def fine_tune(task, path: str, args: AdaptPathArguments):
    """The encoder with its top ``args.layers`` layers fine-tuned on the first increment through ``path``."""
    torch.manual_seed(args.seed)
    source = default_encoder()
    tokenizer, model = AutoTokenizer.from_pretrained(source), AutoModel.from_pretrained(source)
    first = [i for i, names in enumerate(task.train_labels) if any(n in task.increments[0] for n in names)]
    size = len(task.increments[0])
    targets = multi_hot([task.train_labels[i] for i in first], label_ids(task), size).float()
    model.requires_grad_(False)
    trained = list(model.encoder.layer[-args.layers:]) + ([model.pooler] if path == "pooler" else [])
    for module in trained:
        module.requires_grad_(True)
    head = torch.nn.Linear(model.config.hidden_size * (1 if path == "pooler" else args.layers), size)
    optimizer = torch.optim.AdamW([{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-4},
                                   {"params": head.parameters(), "lr": 1e-3}])

    def pool(output, mask):
        if path == "pooler":
            return output.pooler_output
        return torch.cat([(h * mask).sum(1) / mask.sum(1) for h in output.hidden_states[-args.layers:]], 1)

    texts = [task.train_texts[i] for i in first]
    for epoch in range(args.epochs):
        train_epoch(model, tokenizer, texts, targets, head, pool, optimizer, seed=args.seed + epoch)
    return model.eval(), tokenizer


def train_epoch(model, tokenizer, texts: list[str], targets: torch.Tensor, head: torch.nn.Module, pool,
                optimizer: torch.optim.Optimizer, seed: int) -> None:
    """One epoch of binary cross-entropy on ``texts`` in seeded random batches of 32: ``head(pool(output, mask))``
    against ``targets``, where ``output`` is the model's (with every hidden state) and ``mask`` the attention mask
    as a (batch, tokens, 1) float."""
    model.train()
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    for start in range(0, len(order), 32):
        index = order[start : start + 32]
        batch = tokenizer([texts[i] for i in index], truncation=True, max_length=64, padding=True,
                          return_tensors="pt")
        output = model(**batch, output_hidden_states=True)
        pooled = pool(output, batch["attention_mask"].unsqueeze(-1).float())
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(pooled), targets[index].float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main(args: AdaptPathArguments) -> None:
    torch.set_num_threads(2)
    task = load_task(ForgettingBenchmarkArguments(datasets=["goemotions"], data_dir=args.data_dir), "goemotions")
    for path in args.paths:
        started = time.perf_counter()
        model, tokenizer = fine_tune(task, path, args)
        tuned = time.perf_counter() - started
        train = representation(encode(model, tokenizer, task.train_texts), f"top{args.layers}").double()
        test = representation(encode(model, tokenizer, task.test_texts), f"top{args.layers}").double()
        figures, _ = solve_increments(task, train, test)
        print(f"{path}: micro / macro-F1 per increment {', '.join(figures)} (fine-tune {tuned:.0f} s, all "
              f"{time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    (adapt_args,) = HfArgumentParser(AdaptPathArguments).parse_args_into_dataclasses()
    main(adapt_args)
