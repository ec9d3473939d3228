"""Which layers should a multi-label head read for new labels on a classifier trained elsewhere? GoEmotions, case (i).

The base of ``scripts/benchmark_elsewhere.py`` (plain ``Trainer``, 14 labels, its cached model folder) encodes the new
labels' training rows (annotated with the new labels only, as case (i) brings them) and the test rows; per-label
discriminants with F1-tuned thresholds from the statistics (:func:`hf_incr.kernel_head.solve_multi_label`, what a
multi-label kernel head solves) are fitted on one representation at a time:

- ``pooler``: BERT's pooler output (what the model's Linear reads);
- ``topK``: the mean-pooled, L2-normalised hidden states of the top K layers, concatenated (the kernel head's input).

Prints the new labels' micro- / macro-F1 (%) on the test split, and with ``--ceiling`` the micro-F1 at thresholds
tuned on the test rows (an upper bound, not a method). ``--without_new`` adds, to the new labels' rows, a seeded
sample of the training texts that carry none of them (as a fraction of the new labels' rows; case (i') of the
benchmark is all of them), annotated as carrying none.

    PYTHONPATH=. python scripts/elsewhere_layers.py --data_dir ../shared/data \\
        --base_dir /work/cache/elsewhere_full/goemotions/base --specs pooler top1 top2 top3 top4 top5 top6
    PYTHONPATH=. python scripts/elsewhere_layers.py --data_dir ../shared/data \\
        --base_dir /work/cache/elsewhere_full/goemotions/base --specs pooler top4 top6 --without_new 0 0.1 0.25 0.5 1e9
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from benchmark_elsewhere import load_task, restrict, targets
from multilabel_layers import encode, f1, representation, tuned_cuts
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer, HfArgumentParser

from hf_incr.kernel_head import MultiLabelStatistics, solve_multi_label


@dataclass
class ElsewhereLayerArguments:
    base_dir: str = field(metadata={"help": "The base model folder benchmark_elsewhere.py fine-tuned (cache_dir/"
                                            "goemotions/base)."})
    specs: list[str] = field(default_factory=lambda: ["pooler", "top4", "top6"],
                             metadata={"help": "Representations: pooler or topK."})
    data_dir: str = field(default="../shared/data", metadata={"help": "Folder of the shared data sets."})
    seed: int = field(default=0, metadata={"help": "The label order's seed (as the benchmark's)."})
    cache: str = field(default="outputs/elsewhere_layers_all.safetensors",
                       metadata={"help": "Where the encoded states of every training text are cached (about 600 MB)."})
    ceiling: bool = field(default=False, metadata={"help": "Also score at thresholds tuned on the test rows."})
    without_new: list[float] = field(default_factory=lambda: [0.0], metadata={
        "help": "Texts without a new label added to the new labels' rows, as fractions of their number (1e9: all)."})


def main(args: ElsewhereLayerArguments) -> dict[tuple[str, float], tuple[float, float]]:
    task = load_task("goemotions", args.data_dir, args.seed)
    new = task["new"]
    every = task["base"] + new
    rows, test = restrict(task["train"], every), restrict(task["test"], every)
    cache = Path(args.cache)
    if not cache.exists():
        tokenizer, model = AutoTokenizer.from_pretrained(args.base_dir), AutoModel.from_pretrained(args.base_dir)
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"train": encode(model.eval(), tokenizer, [r["text"] for r in rows]),
                   "test": encode(model, tokenizer, [r["text"] for r in test])}, str(cache))
    states = load_file(str(cache))

    def new_targets(some):  # annotated with the new labels only, as the increment's rows are
        return targets([{"labels": [lab for lab in r["labels"] if lab in new]} for r in some], new, True)

    y_train, y_test = new_targets(rows), new_targets(test)
    carrying = torch.nonzero(y_train.any(1)).flatten().tolist()
    without = torch.nonzero(~y_train.any(1)).flatten().tolist()
    found = {}
    for spec in args.specs:
        train, held = representation(states["train"], spec), representation(states["test"], spec)
        for fraction in args.without_new:
            added = random.Random(args.seed).sample(without, min(round(fraction * len(carrying)), len(without)))
            statistics = MultiLabelStatistics(train.shape[1])
            statistics.update(train[carrying + added], y_train[carrying + added])
            weight, bias, _ = solve_multi_label(statistics)
            scores = (held.double() @ weight.T + bias).float()
            micro, macro = found[spec, fraction] = f1((scores > 0).float(), y_test)
            line = f"{spec} + {len(added)} texts without a new label: micro / macro-F1 {micro:.1f} / {macro:.1f}"
            if args.ceiling:
                ceiling = f1((scores > tuned_cuts(scores, y_test)).float(), y_test)[0]
                line += f"; at test-tuned thresholds {ceiling:.1f}"
            print(line, flush=True)
    return found


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(ElsewhereLayerArguments).parse_args_into_dataclasses()
    main(arguments)
