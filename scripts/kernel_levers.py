"""Does shrinkage or the bandwidth close the kernel LDA head's gap to joint retraining? A diagnostic on the cached
frozen MiniLM features of ``scripts/benchmark_kernel.py`` (run that first; it writes the cache).

For each data set: one member (D = 5,000) on L2-normalised mean pooling, fed every training row of the class-
incremental protocol at once (the statistics after the last increment are exactly these), then the final test
accuracy (all labels) for

- shrinkage: Oracle-Approximating (what the head uses) and fixed values, at the bandwidth the recipe chooses;
- bandwidth: factors x the first increment's median pairwise distance, with OAS.

    PYTHONPATH=. python scripts/kernel_levers.py --datasets clinc150 banking77
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from benchmark_kernel import INCREMENTS, KernelBenchmarkArguments, Protocol, cached_features
from transformers import HfArgumentParser

from hf_incr.kernel_head import KernelLDAClassifier, KernelLDAConfig, KernelLDAHead, choose_bandwidth, solve_lda


@dataclass
class LeverArguments:
    datasets: list[str] = field(default_factory=lambda: list(INCREMENTS), metadata={"help": "banking77, clinc150."})
    shrinkages: list[float] = field(default_factory=lambda: [0.0, 0.02, 0.05, 0.1, 0.2, 0.4],
                                    metadata={"help": "Fixed shrinkage values (OAS is always included)."})
    factors: list[float] = field(default_factory=lambda: [0.35, 0.5, 0.75],
                                 metadata={"help": "Bandwidth factors x median distance."})
    threads: int = field(default=1, metadata={"help": "torch threads."})


def final_accuracy(classifier, test_x, proto: Protocol) -> float:
    rows = proto.test_rows(proto.num_increments - 1)
    return float((classifier(test_x[rows]).argmax(1) == proto.test_y[rows]).double().mean())


def main(args: LeverArguments) -> None:
    torch.set_num_threads(args.threads)
    for name in args.datasets:
        cache = KernelBenchmarkArguments()
        train, train_labels, _ = cached_features(cache, name, "train")
        test, test_labels, _ = cached_features(cache, name, "test")
        proto = Protocol(train_labels, test_labels, INCREMENTS[name], 0)
        first = proto.train_rows(0)
        every = proto.train_y >= 0
        config = KernelLDAConfig(in_features=train["mean"].shape[1], num_features=5000, num_members=1, seed=0,
                                 normalize=True)
        _, report = choose_bandwidth(train["mean"][first], proto.train_y[first], config)
        head = KernelLDAHead(config)
        head.update(train["mean"][every], proto.train_y[every])
        print(f"{name}: bandwidth factor {report['chosen_factor']} (median {report['median_distance']:.3f})")
        for shrinkage in ["oas", *args.shrinkages]:
            weight, bias, rho = solve_lda(head.statistics[0], shrinkage)
            accuracy = final_accuracy(KernelLDAClassifier(config, head.projections, [weight], [bias]), test["mean"],
                                      proto)
            print(f"  shrinkage {shrinkage} (rho {rho:.4f}): final {100 * accuracy:.2f} %", flush=True)
        for factor in args.factors:
            trial = KernelLDAConfig(in_features=config.in_features, num_features=5000, num_members=1, seed=0,
                                    normalize=True, bandwidth=factor * report["median_distance"],
                                    bandwidth_factor=factor)
            other = KernelLDAHead(trial)
            other.update(train["mean"][every], proto.train_y[every])
            accuracy = final_accuracy(other.solve(), test["mean"], proto)
            print(f"  bandwidth factor {factor}: final {100 * accuracy:.2f} %", flush=True)


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(LeverArguments).parse_args_into_dataclasses()
    main(arguments)
