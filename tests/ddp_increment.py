"""Run by tests/test_distributed.py, alone or under `accelerate launch --multi_gpu --num_processes 2` on CPU.

Runs one phase (the last argument) of an increment of a tiny BERT (dropout off, fixed seed) and writes, per rank,
what the test compares: the final weights and the training loss, or the heads' statistics and the rows encoded.
"""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))

from text_models import text_dataset, tiny_bert, tokenizer, training_args

from hf_incr import IncrementConfig, train_increment


def one_text_per_batch() -> None:
    """One text per encoder batch: a text's features then do not depend on which texts share its batch (padding to
    another length changes float32 results in the last bits), so the tests see the summation over processes alone."""
    import hf_incr.features

    hf_incr.features.BATCH_SIZE = 1


def statistics_tensors(stats, prefix: str = "") -> dict:
    """The tensors of a ClassStatistics that the processes sum (multi-label: also the per-label annotated rows and
    every row's sum)."""
    tensors = {"counts": stats.counts, "sums": stats.sums, "scatter": stats.scatter}
    if stats.multi_label:
        tensors.update(annotated_counts=stats.annotated_counts, annotated_sums=stats.annotated_sums,
                       row_sum=stats.row_sum)
    return {prefix + name: tensor for name, tensor in tensors.items()}


def closed_form(out_dir: Path, stream: bool = False) -> None:
    """A closed-form increment on top of statistics of the old labels: the frozen pass is sharded over the processes
    and the statistics summed; writes the statistics, the head and the rows this process encoded. ``stream``: the
    increment's data comes as a streamed IterableDataset (written to disk by every process, then encoded a share a
    process)."""
    labels = ["refund", "delivery", "login"]
    model = tiny_bert(labels, dropout=0.0)
    one_text_per_batch()
    base = IncrementConfig(head="linear", finetune_layers=0, distill_weight=0.0)
    args = training_args(out_dir, per_device_eval_batch_size=4)
    first = train_increment(model, tokenizer(), text_dataset(labels, 5), config=base, args=args, save=False,
                            kind="base")
    data = text_dataset(["repair", "colour"], 7)
    result = train_increment(model, tokenizer(), data.to_iterable_dataset(num_shards=2) if stream else data,
                             config=base, args=args, save=False, heads=first.heads)
    stats = result.heads["linear"].statistics
    rank = args.process_index
    save_file({**statistics_tensors(stats), "weight": model.classifier.weight.detach().contiguous()},
              str(out_dir / f"rank{rank}.safetensors"))
    (out_dir / f"rank{rank}.json").write_text(json.dumps({
        "world_size": args.world_size, "count": stats.num_rows, "rows_encoded": result.rows_encoded,
        "num_labels": model.config.num_labels,
    }))


def streamed(out_dir: Path) -> None:
    """The Linear's statistics of the same 14 rows fed three ways: a map-style column through the frozen pass alone
    (split by rows_of_this_process, a LinearHead as its consumer), and a streamed IterableDataset of 1 shard and of 2
    shards through a base increment (the recipe writes the stream to disk, then shards the pass); writes each one's
    summed statistics and the rows this process encoded."""
    import torch

    from hf_incr import find_classifier_head, frozen_pass
    from hf_incr.heads import LinearHead, PassRows

    labels = ["repair", "colour"]
    data = text_dataset(labels, 7)
    ids = torch.tensor([labels.index(name) for name in data["label"]])
    args = training_args(out_dir)  # joins the process group under accelerate launch
    tok = tokenizer()
    one_text_per_batch()
    config = IncrementConfig(head="linear", finetune_layers=0, distill_weight=0.0)
    tensors, encoded = {}, {}
    for kind in ("column", "stream1", "stream2"):
        model = tiny_bert(labels, dropout=0.0)
        if kind == "column":
            location = find_classifier_head(model)
            head = LinearHead.start(model, location, multi_label=False, kept_labels=[])
            head.begin(PassRows(num_old=0, num_labels=2, annotated=None, own=len(data), total=len(data)))
            count = frozen_pass(model, tok, data["text"], [head], lambda index: ids[index], location=location,
                                show_progress=False)
            head.end()
        else:
            result = train_increment(model, tok, data.to_iterable_dataset(num_shards=int(kind[-1])), config=config,
                                     args=args, save=False, kind="base")
            head, count = result.heads["linear"], result.rows_encoded
        tensors.update(statistics_tensors(head.statistics, prefix=f"{kind}_"))
        encoded[kind] = count
    rank = args.process_index
    save_file(tensors, str(out_dir / f"rank{rank}.safetensors"))
    (out_dir / f"rank{rank}.json").write_text(json.dumps({"world_size": args.world_size, "rows_encoded": encoded}))


def adapt(out_dir: Path, batch_size: int) -> None:
    """A model trained elsewhere (no statistics) given every old label's rows and a new label's: the encoder is
    adapted by DDP, then the head solved from statistics summed over the processes; writes the weights, the record's
    head_rows and the statistics' row count."""
    labels = ["refund", "delivery", "login"]
    model = tiny_bert(labels, dropout=0.0)
    args = training_args(out_dir, per_device_train_batch_size=batch_size, dataloader_drop_last=False)
    result = train_increment(model, tokenizer(), text_dataset([*labels, "repair"], 8),
                             config=IncrementConfig(adapt_learning_rate=1e-3), args=args, save=False)
    rank = args.process_index
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(out_dir / f"rank{rank}.safetensors"))
    (out_dir / f"rank{rank}.json").write_text(json.dumps({
        "world_size": args.world_size, "head_rows": result.record["head_rows"],
        "count": result.heads["linear"].statistics.num_rows, "kept": result.heads["linear"].kept.tolist(),
    }))


def kernel(out_dir: Path, multi_label: bool, elsewhere: bool = False) -> None:
    """A kernel LDA head's first increment and a continuation, the frozen pass sharded over the processes; writes
    the head's statistics (its one member), bandwidth and solved weights, and the rows this process encoded.
    ``elsewhere``: no base increment; a multi-label classifier trained elsewhere starts the head on the new labels."""
    labels = ["refund", "delivery", "login"]
    column = "labels" if multi_label else "label"

    def rows(names, count):
        data = text_dataset(names, count)
        if not multi_label:
            return data
        # every other row also carries "refund": rows with two labels
        return data.map(lambda row, i: {"labels": [row["label"]] + (["refund"] if i % 2 else [])},
                        with_indices=True).remove_columns("label")

    model = tiny_bert(labels, dropout=0.0, **({"problem_type": "multi_label_classification"} if multi_label else {}))
    # One text per encoder batch (see one_text_per_batch); the rows annotate every label ("all") in the multi-label
    # case. The statistics are accumulated in float64 in memory.
    one_text_per_batch()
    config = IncrementConfig(head="kernel", kernel_features=32, finetune_layers=0, distill_weight=0.0,
                             label_column=column, multi_label_annotation="all")
    args = training_args(out_dir, per_device_eval_batch_size=4)
    heads = None
    if not elsewhere:
        first = train_increment(model, tokenizer(), rows(labels, 6), config=config, args=args, save=False,
                                kind="base")
        heads = first.heads
    result = train_increment(model, tokenizer(), rows(["repair", "colour"], 7), config=config, args=args,
                             save=False, heads=heads)
    head = result.heads["kernel"]
    tensors = {"weight": head.classifier.weights[0], "bias": head.classifier.biases[0],
               **statistics_tensors(head.statistics[0])}
    rank = args.process_index
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / f"rank{rank}.safetensors"))
    (out_dir / f"rank{rank}.json").write_text(json.dumps({
        "world_size": args.world_size, "bandwidth": head.config.bandwidth, "rows_encoded": result.rows_encoded,
        "linear_labels": head.config.linear_labels,
    }))


def main(out: str, batch_size: int, accumulation: int, phase: str) -> None:
    out_dir = Path(out)
    if phase in ("kernel", "kernel_multi_label", "kernel_elsewhere"):
        kernel(out_dir, multi_label=phase != "kernel", elsewhere=phase == "kernel_elsewhere")
        return
    if phase in ("closed_form", "closed_form_stream"):
        closed_form(out_dir, stream=phase == "closed_form_stream")
        return
    if phase == "streamed":
        streamed(out_dir)
        return
    if phase == "stream_mismatch":
        # Each process streams other rows (as a shuffle without a seed would): the increment must refuse.
        rank = training_args(out_dir).process_index
        stream = text_dataset(["repair"], 4, offset=rank).to_iterable_dataset()
        train_increment(tiny_bert(["refund"], dropout=0.0), tokenizer(), stream, args=training_args(out_dir),
                        save=False)
        return
    if phase == "adapt":
        adapt(out_dir, batch_size)
        return
    model = tiny_bert(["refund", "delivery", "login"], dropout=0.0)
    if phase == "warmup":
        import hf_incr.trainer

        hf_incr.trainer.CACHED_BATCH_SIZE = batch_size  # rows per process and step of the cached warm-up
        config = IncrementConfig(warmup_epochs=2, head="trained")
    else:
        config = IncrementConfig(warmup_epochs=0, finetune_layers=-1, finetune_epochs=2,
                                 head="trained", finetune_increments=True,
                                 finetune_learning_rate=1e-3, layer_lr_decay=0.9)
    args = training_args(
        out_dir, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
        dataloader_drop_last=False,
    )
    result = train_increment(model, tokenizer(), text_dataset(["repair"], 16), config=config, args=args, save=False)
    rank = args.process_index
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / f"rank{rank}.safetensors"))
    (out_dir / f"rank{rank}.json").write_text(json.dumps({
        "world_size": args.world_size, "train_loss": result.train_metrics[phase]["train_loss"],
        "num_labels": model.config.num_labels,
    }))


def shut_down() -> None:
    """Leave the process group together before exiting, as PyTorch asks: a process that exits with the group's
    threads still running can abort ("terminate called without an active exception"; seen once in a CI run of the
    streamed phase)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    shut_down()
