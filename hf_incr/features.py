"""The frozen-encoder fast path: run the encoder once and keep what the head receives.

With the encoder frozen, every warm-up epoch would re-encode the same texts to the same vectors. Encoding them once
(eval mode, no grad, batches of similar length) and training the output Linear on the cached vectors gives the same
head far faster; the head is the model's own Linear, so the result is a normal model again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from datasets import Dataset, IterableDataset
from datasets.arrow_dataset import Column
from torch import nn
from tqdm.auto import tqdm
from transformers.modeling_outputs import SequenceClassifierOutput

from .console import heading
from .distributed import gather_rows, rows_of_this_process, shard_of_this_process
from .errors import DataError
from .head import ClassifierHead, find_classifier_head
from .losses import increment_loss

# Texts read and tokenized at once to find their lengths: bounded, so a huge data set is never read or tokenized in
# one call. 2048, not more: the tokenizer's Python lists for 8192 texts raised the peak memory by about 40 MB.
_LENGTH_CHUNK = 2048
# Rows of a streamed (iterable) data set sorted by length together: batches of similar length within this window.
STREAM_WINDOW = 8192


def _text_reader(texts) -> Callable[[np.ndarray], list[str]]:
    """``read(row_ids) -> texts``. A datasets ``Column`` (``dataset["text"]``) is read from its Arrow table a chunk
    at a time: indexing it text by text builds a new Dataset per text, and ``list(column)`` would hold every text as
    a Python string (about 100 bytes each; 90 MB of the peak memory at 300,000 texts)."""
    if isinstance(texts, Column) and isinstance(texts.source, Dataset):
        name = texts.column_name
        table = texts.source.select_columns([name])
        return lambda rows: table[rows.tolist()][name]
    return lambda rows: [texts[i] for i in rows.tolist()]


def _token_lengths(tokenizer, texts: list[str], max_length: int) -> list[int]:
    encoded = tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]
    return [len(ids) for ids in encoded]


def _encode(model, tokenizer, head: ClassifierHead, texts: list[str], max_length: int, device) -> torch.Tensor:
    batch = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return head.inputs(model, {k: v.to(device) for k, v in batch.items()})


def head_input_batches(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int = 128,
    device: torch.device | str | None = None,
    show_progress: bool = True,
    head: ClassifierHead | None = None,
    rows: Sequence[int] | None = None,
    desc: str = "Encoding",
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(row indices, head inputs)`` batch by batch: what the output Linear receives for ``texts[rows]``
    (default: every row), in the model's dtype and on its device, batches of similar length (sorting made the pass
    3.5x faster on BANKING77). Nothing is kept between batches, so a consumer that folds them into statistics needs
    memory independent of the number of texts. The model runs in eval mode under ``torch.no_grad``; its mode is
    restored afterwards. ``head``: the model's output Linear, when the caller has found it already.

    ``texts``: a sequence of strings, or a datasets column (``dataset["text"]``), which is read from its Arrow table
    in bounded chunks: only int arrays of row ids and token lengths (about 20 bytes a text) are held for the whole set.
    """
    head = head or find_classifier_head(model)
    device = torch.device(device) if device is not None else head.linear.weight.device
    read = _text_reader(texts)
    # Row ids and lengths as int arrays (4-8 bytes a text), not Python lists and dicts: on a large data set this
    # bookkeeping is the only memory the pass needs per text.
    rows = np.arange(len(texts)) if rows is None else np.asarray(rows, dtype=np.int64)
    lengths = np.empty(len(rows), dtype=np.int32)
    for start in range(0, len(rows), _LENGTH_CHUNK):
        chunk = rows[start : start + _LENGTH_CHUNK]
        lengths[start : start + len(chunk)] = _token_lengths(tokenizer, read(chunk), max_length)
    # Longest first: the largest activations are allocated at the start and every later batch fits in memory they
    # freed; shortest first grew the allocator's heap with each longer batch at the end (scripts/results/scale.md).
    order = rows[np.argsort(-lengths, kind="stable")]
    del lengths
    if show_progress:
        heading(f"{desc}: {len(order)} texts through the frozen encoder")
    progress = tqdm(total=len(order), desc=desc.lower(), unit="text", disable=not show_progress)
    try:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            yield index.tolist(), _encode(model, tokenizer, head, read(index), max_length, device)
            progress.update(len(index))
    finally:
        progress.close()


def extract_head_inputs(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int = 128,
    device: torch.device | str | None = None,
    show_progress: bool = True,
    head: ClassifierHead | None = None,
    on_batch: Callable[[list[int]], None] | None = None,
) -> torch.Tensor:
    """Return a float32 CPU tensor ``(len(texts), in_features)`` of the head's inputs (e.g. BERT's pooler output), in
    the input order (see :func:`head_input_batches`; ``texts`` may be a datasets column).

    Under a distributed launch each process encodes its share of the texts and the shares are gathered, so every
    process returns the whole matrix. ``on_batch``: called after each batch's forward pass with its row indices (this
    process's rows), where a forward hook's capture of the same pass can be read.
    """
    head = head or find_classifier_head(model)
    rows = rows_of_this_process(len(texts))
    local = torch.empty(len(rows), head.linear.in_features, dtype=torch.float32)
    for index, inputs in head_input_batches(
        model, tokenizer, texts, batch_size=batch_size, max_length=max_length, device=device,
        show_progress=show_progress, head=head, rows=rows, desc="Encoding",
    ):
        # A process's rows are contiguous (rows_of_this_process): row i sits at i - rows.start.
        local[torch.tensor(index) - rows.start] = inputs.float().cpu()
        if on_batch is not None:
            on_batch(index)
    return gather_rows(local, rows, len(texts))


def accumulate_head_statistics(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    targets: Callable[[list[int]], torch.Tensor],
    accumulators: Sequence,
    *,
    batch_size: int = 64,
    max_length: int = 128,
    device: torch.device | str | None = None,
    show_progress: bool = True,
    head: ClassifierHead | None = None,
) -> int:
    """Run the frozen encoder over ``texts`` and add each batch's head inputs and targets (``targets(row_indices)``:
    one-/multi-hot rows, ``(len(batch), num_labels)``) to every accumulator (``.update(features, targets)``, e.g. a
    :class:`~hf_incr.closed_form.RidgeStatistics`), batch by batch: the feature matrix is never held.

    ``texts``: a sequence of strings or a datasets column (``dataset["text"]``, read in bounded chunks, see
    :func:`head_input_batches`). For a data set that does not fit in memory or has no length
    (``load_dataset(..., streaming=True)``), use :func:`accumulate_streamed_head_statistics`.

    Under a distributed launch this process encodes only its share of the texts (the caller adds the shares up,
    :func:`~hf_incr.distributed.sum_over_processes`). Returns the number of rows this process encoded.
    """
    if isinstance(texts, IterableDataset):
        raise DataError(
            "`accumulate_head_statistics` takes texts with a length (a list or `dataset['text']`), got an "
            "IterableDataset. Pass it to `accumulate_streamed_head_statistics(model, tokenizer, dataset, targets, "
            "accumulators, text_column=...)`, whose `targets` receives each batch's columns."
        )
    rows = rows_of_this_process(len(texts))
    for index, inputs in head_input_batches(
        model, tokenizer, texts, batch_size=batch_size, max_length=max_length, device=device,
        show_progress=show_progress, head=head, rows=rows, desc="Encoding",
    ):
        _update(accumulators, inputs, targets(index))
    return len(rows)


def _update(accumulators: Sequence, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    features = inputs.float().cpu()
    for accumulator in accumulators:
        accumulator.update(features, targets)


def streamed_head_input_batches(
    model: nn.Module,
    tokenizer,
    dataset: IterableDataset,
    *,
    text_column: str = "text",
    window: int = STREAM_WINDOW,
    batch_size: int = 64,
    max_length: int = 128,
    device: torch.device | str | None = None,
    show_progress: bool = True,
    head: ClassifierHead | None = None,
    desc: str = "Encoding",
) -> Iterator[tuple[dict[str, list], torch.Tensor]]:
    """Yield ``(batch columns, head inputs)`` over a datasets ``IterableDataset`` in one pass: ``window`` rows are
    read at a time and batched by length within the window, so memory depends on ``window``, not on the data set.
    ``batch columns``: the batch's rows as ``{column: list}`` (labels included), in the order of the head inputs.

    The caller passes this process's shard (:func:`~hf_incr.distributed.shard_of_this_process`)."""
    if window < batch_size:
        raise DataError(f"`window` ({window}) must hold at least one batch (`batch_size` {batch_size}); raise it.")
    head = head or find_classifier_head(model)
    device = torch.device(device) if device is not None else head.linear.weight.device
    if show_progress:
        heading(f"{desc}: a streamed data set through the frozen encoder, sorted by length {window} texts at a time")
    progress = tqdm(desc=desc.lower(), unit="text", disable=not show_progress)
    try:
        for columns in dataset.iter(batch_size=window):
            texts = columns[text_column]
            # Longest first, as in head_input_batches.
            order = np.argsort(-np.asarray(_token_lengths(tokenizer, texts, max_length)), kind="stable").tolist()
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                batch = {name: [values[i] for i in index] for name, values in columns.items()}
                yield batch, _encode(model, tokenizer, head, batch[text_column], max_length, device)
                progress.update(len(index))
    finally:
        progress.close()


def accumulate_streamed_head_statistics(
    model: nn.Module,
    tokenizer,
    dataset: IterableDataset,
    targets: Callable[[dict[str, list]], torch.Tensor],
    accumulators: Sequence,
    *,
    text_column: str = "text",
    window: int = STREAM_WINDOW,
    batch_size: int = 64,
    max_length: int = 128,
    device: torch.device | str | None = None,
    show_progress: bool = True,
    head: ClassifierHead | None = None,
) -> int:
    """:func:`accumulate_head_statistics` for a datasets ``IterableDataset`` (``load_dataset(..., streaming=True)``,
    ``Dataset.to_iterable_dataset()``): one pass, no length needed, memory bounded by ``window`` rows.

    ``targets(batch)`` receives the batch's rows as ``{column: list}`` and returns their one-/multi-hot rows, e.g.
    ``lambda batch: F.one_hot(torch.tensor(batch["labels"]), num_labels).double()``. Under a distributed launch this
    process encodes its shard only (datasets' ``split_dataset_by_node``: whole shards when their number divides
    among the processes, else every N-th row); the caller adds the shares up
    (:func:`~hf_incr.distributed.sum_over_processes`). Returns the number of rows this process encoded.
    """
    if not isinstance(dataset, IterableDataset):
        raise DataError(
            f"`accumulate_streamed_head_statistics` takes a datasets IterableDataset, got {type(dataset).__name__}. "
            "For a map-style Dataset or a list of texts use `accumulate_head_statistics(model, tokenizer, "
            "dataset['text'], targets, accumulators)`, which sorts the whole set by length."
        )
    if dataset.column_names is not None and text_column not in dataset.column_names:
        raise DataError(
            f"The streamed data set has no text column {text_column!r}; its columns are {dataset.column_names}. "
            "Pass `text_column=` naming the column that holds the texts."
        )
    count = 0
    for batch, inputs in streamed_head_input_batches(
        model, tokenizer, shard_of_this_process(dataset), text_column=text_column, window=window,
        batch_size=batch_size, max_length=max_length, device=device, show_progress=show_progress, head=head,
    ):
        _update(accumulators, inputs, targets(batch))
        count += len(inputs)
    return count


class CachedFeatureDataset(torch.utils.data.Dataset):
    """Rows of in-memory tensors (``features``, ``labels``, optional ``teacher_logits``) for Trainer.

    Indexing tensors directly keeps a step of the cached warm-up cheap; an Arrow data set in torch format was 3x
    slower per epoch here, which dominates when the model trained is a single Linear.
    """

    def __init__(self, **columns: torch.Tensor):
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"All columns need the same number of rows, got {lengths}.")
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: values[index] for name, values in self.columns.items()}


class CachedFeatureHead(nn.Module):
    """Trains a model's output Linear on cached head inputs, inside a normal ``Trainer``.

    It holds the model's own Linear (not a copy), so training it trains the model. ``forward`` takes the batch
    columns ``features``, ``labels`` and, for distillation, ``teacher_logits`` (the old head's logits on the same
    features, which a frozen encoder makes exact).
    """

    def __init__(
        self,
        linear: nn.Linear,
        multi_label: bool,
        distill_weight: float = 0.0,
        distill_temperature: float = 2.0,
    ):
        super().__init__()
        self.linear = linear
        self.multi_label = multi_label
        self.distill_weight = distill_weight
        self.distill_temperature = distill_temperature

    def forward(self, features, labels=None, teacher_logits=None):
        logits = self.linear(features.to(self.linear.weight.dtype))
        loss = None
        if labels is not None:
            loss = increment_loss(
                logits, labels, self.multi_label, teacher_logits, self.distill_weight, self.distill_temperature
            )
        return SequenceClassifierOutput(loss=loss, logits=logits)
