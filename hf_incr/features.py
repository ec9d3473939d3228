"""The frozen pass: an increment's texts through the frozen encoder once, every consumer fed from the same forward.

:func:`frozen_pass` runs this process's share of the texts (under ``accelerate launch`` each process encodes about
``1/N`` of them), in batches of similar length (sorting made the pass 3.5x faster on BANKING77), longest first (the
largest activations are allocated first and every later batch fits in memory they freed), under ``torch.no_grad`` in
eval mode. Each *consumer* says which features it reads (``feature_key``) and how they are captured during the
forward pass (``capture``); one capture per key serves every consumer of it, and each batch's features are fed to
them (``feed(rows, features, targets)``). The heads (:mod:`hf_incr.heads`) are consumers; so is :class:`RowCache`,
which keeps the rows' features in memory where a step needs them all (the cached warm-up, imprinting, herding).

Only int arrays of row ids and token lengths (about 20 bytes a text) are held for the whole set; a datasets column
(``dataset["text"]``) is read from its Arrow table a chunk at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .console import heading
from .distributed import gather_rows, rows_of_this_process
from .head import ClassifierHead, find_classifier_head, last_token

HEAD_INPUTS = "head_inputs"  # the feature key of what the output Linear receives
# Texts per batch of the frozen pass (an implementation choice: large enough that a CPU is busy, small enough that a
# long text's activations fit).
BATCH_SIZE = 64
# Texts read and tokenized at once to find their lengths: bounded, so a huge data set is never read or tokenized in
# one call. 2048, not more: the tokenizer's Python lists for 8192 texts raised the peak memory by about 40 MB.
_LENGTH_CHUNK = 2048


class Capture:
    """Reads one kind of feature during a forward pass of the model; :meth:`read` after each batch."""

    def read(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def remove(self) -> None:
        """Undo the hooks."""


class HeadInputsCapture(Capture):
    """What the output Linear receives, one vector per text (a decoder's last real token), by a forward pre-hook."""

    def __init__(self, model: nn.Module, location: ClassifierHead):
        self.model, self.inputs = model, None
        self.handle = location.linear.register_forward_pre_hook(self._keep)

    def _keep(self, module, args) -> None:
        self.inputs = args[0].detach()

    def read(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        features = self.inputs
        return last_token(features, batch, self.model) if features.dim() == 3 else features

    def remove(self) -> None:
        self.handle.remove()


def _text_reader(texts) -> Callable[[np.ndarray], list[str]]:
    """``read(row_ids) -> texts``. A datasets ``Column`` (``dataset["text"]``) is read from its Arrow table a chunk
    at a time: indexing it text by text builds a new Dataset per text, and ``list(column)`` would hold every text as
    a Python string (about 100 bytes each; 90 MB of the peak memory at 300,000 texts)."""
    from datasets import Dataset
    from datasets.arrow_dataset import Column

    if isinstance(texts, Column) and isinstance(texts.source, Dataset):
        name = texts.column_name
        table = texts.source.select_columns([name])
        return lambda rows: table[rows.tolist()][name]
    return lambda rows: [texts[i] for i in rows.tolist()]


def length_sorted_batches(tokenizer, texts, rows: Sequence[int], batch_size: int, max_length: int
                          ) -> tuple[list[np.ndarray], Callable[[np.ndarray], list[str]]]:
    """``rows`` of ``texts`` in batches of similar token length, longest first; and the text reader."""
    read = _text_reader(texts)
    rows = np.asarray(rows, dtype=np.int64)
    lengths = np.empty(len(rows), dtype=np.int32)
    for start in range(0, len(rows), _LENGTH_CHUNK):
        chunk = rows[start : start + _LENGTH_CHUNK]
        encoded = tokenizer(read(chunk), truncation=True, max_length=max_length, return_attention_mask=False,
                            return_token_type_ids=False)["input_ids"]
        lengths[start : start + len(chunk)] = [len(ids) for ids in encoded]
    order = rows[np.argsort(-lengths, kind="stable")]
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)], read


def frozen_pass(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    consumers: Sequence,
    targets: Callable[[list[int]], torch.Tensor] | None = None,
    *,
    location: ClassifierHead | None = None,
    max_length: int = 128,
    device: torch.device | str | None = None,
    show_progress: bool = True,
    desc: str = "Encoding",
    batch_size: int | None = None,
) -> int:
    """Run the frozen encoder once over this process's share of ``texts`` and feed every batch's features to each
    consumer (``consumer.feed(row_ids, features, targets(row_ids))``, features CPU float32). Returns the number of
    rows this process encoded. The model's train/eval mode is restored afterwards."""
    location = location or find_classifier_head(model)
    device = torch.device(device) if device is not None else location.linear.weight.device
    rows = rows_of_this_process(len(texts))
    batches, read = length_sorted_batches(tokenizer, texts, rows, batch_size or BATCH_SIZE, max_length)
    captures: dict[str, Capture] = {}
    for consumer in consumers:
        if consumer.feature_key not in captures:
            captures[consumer.feature_key] = consumer.capture(model, location)
    if show_progress:
        heading(f"{desc}: {len(rows)} texts through the frozen encoder")
    progress = tqdm(total=len(rows), desc=desc.lower(), unit="text", disable=not show_progress)
    was_training = model.training
    model.eval()
    try:
        for index in batches:
            batch = tokenizer(read(index), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.no_grad():
                model(**batch)
            features = {key: capture.read(batch).float().cpu() for key, capture in captures.items()}
            ids = index.tolist()
            batch_targets = targets(ids) if targets is not None else None
            for consumer in consumers:
                consumer.feed(ids, features[consumer.feature_key], batch_targets)
            progress.update(len(index))
    finally:
        progress.close()
        model.train(was_training)
        for capture in captures.values():
            capture.remove()
    return len(rows)


class RowCache:
    """A consumer that keeps every row's features (and targets): after :meth:`end`, ``features`` is the
    ``(rows, dim)`` float32 matrix in row order, gathered from every process under a distributed launch."""

    def __init__(self, num_rows: int, feature_key: str = HEAD_INPUTS, capture: Callable | None = None):
        self.num_rows, self.feature_key = num_rows, feature_key
        self._capture = capture
        self._batches: list[tuple[list[int], torch.Tensor]] = []
        self.features: torch.Tensor | None = None

    def capture(self, model, location) -> Capture:
        return self._capture(model, location) if self._capture else HeadInputsCapture(model, location)

    def feed(self, rows: list[int], features: torch.Tensor, targets=None) -> None:
        self._batches.append((rows, features))

    def end(self) -> torch.Tensor:
        share = rows_of_this_process(self.num_rows)
        dim = self._batches[0][1].shape[1] if self._batches else 0
        local = torch.zeros(len(share), dim)
        for rows, features in self._batches:
            local[torch.tensor(rows) - share.start] = features  # a process's rows are contiguous
        self._batches = []
        self.features = gather_rows(local, share, self.num_rows)
        return self.features


def extract_head_inputs(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    location: ClassifierHead | None = None,
    max_length: int = 128,
    device: torch.device | str | None = None,
    show_progress: bool = True,
    batch_size: int | None = None,
) -> torch.Tensor:
    """A float32 CPU tensor ``(len(texts), in_features)`` of what the output Linear receives for each text (e.g.
    BERT's pooler output), in the input order; every process returns the whole matrix."""
    cache = RowCache(len(texts))
    frozen_pass(model, tokenizer, texts, [cache], location=location, max_length=max_length, device=device,
                show_progress=show_progress, batch_size=batch_size)
    return cache.end()



def encode_for_heads(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    heads: dict,
    *,
    location: ClassifierHead | None = None,
    max_length: int = 128,
    device: torch.device | str | None = None,
    show_progress: bool = True,
    desc: str = "Encoding",
) -> dict[str, torch.Tensor]:
    """What each head reads for each text, from one frozen pass: ``{name: (len(texts), dim)}`` float32, in text order
    (the Linear's inputs under ``"linear"``, whatever the other heads read under their names). With a frozen encoder
    this is all it takes to score every head: ``head.logits(features[name], linear_logits)``."""
    caches = {}
    by_key: dict[str, RowCache] = {}
    for name, head in heads.items():
        key = head.feature_key
        if key not in by_key:
            by_key[key] = RowCache(len(texts), key, head.capture)
        caches[name] = by_key[key]
    frozen_pass(model, tokenizer, texts, list(by_key.values()), location=location, max_length=max_length,
                device=device, show_progress=show_progress, desc=desc)
    matrices = {key: cache.end() for key, cache in by_key.items()}
    return {name: matrices[cache.feature_key] for name, cache in caches.items()}


class HeadInputs:
    """A reader of what the output Linear receives, for :func:`encode_for_heads` (the Linear's own feature key)."""

    feature_key = HEAD_INPUTS

    @staticmethod
    def capture(model: nn.Module, location: ClassifierHead) -> Capture:
        return HeadInputsCapture(model, location)
