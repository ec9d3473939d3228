"""How should the kernel LDA head's bandwidth be chosen? A diagnostic on the cached frozen MiniLM features of
``scripts/benchmark_kernel.py`` (run that first; it writes the cache).

For each data set and label order (``seeds``): the head's input (the top 4 layers, each mean-pooled and
L2-normalised, concatenated), then

- what the first increment's held-out tenth says (:func:`hf_incr.kernel_head.choose_bandwidth`: errors per factor),
  the factor the library's rule takes (the smoothest within one standard error of the fewest errors) and the one the
  previous rule took (held-out accuracy, then mean log-likelihood, then the larger factor);
- the final test accuracy (all labels) of one member (D = 5,000) at each factor of ``factors`` x the first increment's
  median distance, fed every training row at once (the statistics after the last increment are exactly these).

    PYTHONPATH=. python scripts/kernel_bandwidth.py --datasets banking77 clinc150 --seeds 0 1 2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from benchmark_kernel import INCREMENTS, KernelBenchmarkArguments, Protocol, cached_features, top_layers
from kernel_levers import final_accuracy
from transformers import HfArgumentParser

from hf_incr.kernel_head import KernelLDAConfig, KernelLDAHead, choose_bandwidth


@dataclass
class BandwidthArguments:
    datasets: list[str] = field(default_factory=lambda: list(INCREMENTS), metadata={"help": "banking77, clinc150."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Label orders (and member seeds)."})
    factors: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0],
                                 metadata={"help": "Bandwidth factors x median distance to score at the end."})
    output: str = field(default="scripts/results/kernel_bandwidth.md", metadata={"help": "Markdown table."})
    threads: int = field(default=2, metadata={"help": "torch threads."})


def previous_rule(report: dict) -> float:
    """The rule used before 2026-12-01: held-out accuracy, then mean log-likelihood, then the larger factor."""
    return max(report["factors"], key=lambda f: (report["factors"][f]["accuracy"],
                                                 report["factors"][f]["log_likelihood"], f))


def main(args: BandwidthArguments) -> None:
    torch.set_num_threads(args.threads)
    lines = ["| data set | seed | held-out errors (of rows) at " + " / ".join(map(str, (0.5, 1.0, 2.0)))
             + " | chosen now | chosen before | final accuracy at " + " / ".join(map(str, args.factors)) + " |",
             "|---|---|---|---|---|---|"]
    for name in args.datasets:
        cache = KernelBenchmarkArguments()
        train, train_labels, _ = cached_features(cache, name, "train")
        test, test_labels, _ = cached_features(cache, name, "test")
        train_x, test_x = top_layers(train, 4), top_layers(test, 4)
        for seed in args.seeds:
            proto = Protocol(train_labels, test_labels, INCREMENTS[name], seed)
            first, every = proto.train_rows(0), proto.train_y >= 0
            config = KernelLDAConfig(in_features=train_x.shape[1], num_features=5000, num_members=1, seed=seed,
                                     normalize=True)
            _, report = choose_bandwidth(train_x[first], proto.train_y[first], config)
            finals = []
            for factor in args.factors:
                trial = KernelLDAConfig(in_features=train_x.shape[1], num_features=5000, num_members=1, seed=seed,
                                        normalize=True, bandwidth=factor * report["median_distance"],
                                        bandwidth_factor=factor)
                head = KernelLDAHead(trial)
                head.update(train_x[every], proto.train_y[every])
                finals.append(100 * final_accuracy(head.solve(), test_x, proto))
            errors = " / ".join(str(r["errors"]) for r in report["factors"].values())
            line = (f"| {name} | {seed} | {errors} (of {report['held_out_rows']}) | {report['chosen_factor']} | "
                    f"{previous_rule(report)} | " + " / ".join(f"{a:.2f}" for a in finals) + " |")
            print(line, flush=True)
            lines.append(line)
    Path(args.output).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(BandwidthArguments).parse_args_into_dataclasses()
    main(arguments)
