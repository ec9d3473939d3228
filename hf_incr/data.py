"""Data alignment: read text data sets, find the new labels in them, map their labels onto a model's ``label2id``.

Labels may be strings, a ``ClassLabel`` in any order, or (multi-label) lists of strings / ``ClassLabel`` ids.
Single-label data ends with an int ``labels`` column; multi-label data with a multi-hot float ``labels`` column
sized to the model's label space.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Features, IterableDataset, List, Value, load_dataset
from datasets import Sequence as HFSequence
from transformers.utils import logging

from .config import MULTI_LABEL
from .distributed import distributed_launch, every_process_agrees
from .errors import DataError

logger = logging.get_logger(__name__)


_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_text_data(source: str | Path, split: str | None = None, **kwargs) -> Dataset | DatasetDict:
    """Load a data set from a local CSV / JSON Lines / Parquet file or folder, or a Hub data set name.

    A file path goes through ``load_dataset(builder, data_files=...)`` and returns its ``train`` split unless
    ``split`` says otherwise; anything else is passed to ``load_dataset(source, split=split)`` as is.
    """
    path = Path(source)
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(
                f"Cannot read {str(path)!r}: expected a .csv, .tsv, .json, .jsonl or .parquet file, got "
                f"{path.suffix!r}. Convert it, or load it yourself with `datasets.load_dataset` and pass the Dataset."
            )
        if path.suffix.lower() == ".tsv":
            kwargs.setdefault("delimiter", "\t")
        return load_dataset(builder, data_files=str(path), split=split or "train", **kwargs)
    if path.suffix.lower() in _FILE_BUILDERS and not path.exists():
        raise DataError(
            f"The data file {str(path)!r} does not exist (expected a .csv, .tsv, .json, .jsonl or .parquet file). "
            "Check the path (it is relative to the folder you run in)."
        )
    return load_dataset(str(source), split=split, **kwargs)


def _label_feature(dataset: Dataset, label_column: str):
    if label_column not in dataset.column_names:
        raise DataError(
            f"The data set has no label column {label_column!r}; its columns are {dataset.column_names}. "
            "Pass `label_column=` naming the column that holds the labels."
        )
    return dataset.features[label_column]


def is_multi_label_column(dataset: Dataset, label_column: str) -> bool:
    """Whether the label column holds a list of labels per row (multi-label) rather than one label."""
    return isinstance(_label_feature(dataset, label_column), (HFSequence, List))


def is_multi_label_model(model) -> bool:
    """Whether ``model`` is a sigmoid (multi-label) classifier."""
    return getattr(model.config, "problem_type", None) == MULTI_LABEL


def names_in_row(value, feature) -> list[str]:
    """The label names of one row's label ``value`` (a name, a ``ClassLabel`` id, or a list of either); ``feature``
    is the column's feature. Missing values and ``ClassLabel`` -1 give no name."""
    inner = feature.feature if isinstance(feature, (HFSequence, List)) else feature
    values = value if isinstance(feature, (HFSequence, List)) else [value]
    names = []
    for item in values:
        if item is None:
            continue
        if isinstance(inner, ClassLabel):
            if int(item) < 0:  # ClassLabel's "no label"
                continue
            names.append(inner.int2str(int(item)))
        else:
            names.append(str(item))
    return names


def label_names_in(dataset: Dataset, label_column: str = "label") -> list[str]:
    """Every label name that occurs in ``dataset``, in ``ClassLabel`` order if the column has one, else sorted."""
    feature = _label_feature(dataset, label_column)
    inner = feature.feature if isinstance(feature, (HFSequence, List)) else feature
    seen: set[str] = set()
    for value in dataset[label_column]:
        seen.update(names_in_row(value, feature))
    if isinstance(inner, ClassLabel):
        return [name for name in inner.names if name in seen]
    return sorted(seen)


def check_texts(dataset: Dataset, text_column: str = "text", what: str = "data set") -> None:
    """Raise :class:`DataError` naming the rows whose text is missing, empty or not a string.

    ``what`` names the data set in the message (``"training data"``, ``"eval data"``).
    """
    if isinstance(dataset, IterableDataset):
        raise DataError(
            f"The {what} is a streamed IterableDataset (no length, one pass); this step needs a map-style Dataset. "
            "`train_increment` and `train_base_classifier` take streams (they write them to disk first); elsewhere, "
            "convert it with `hf_incr.data.materialize_stream(dataset, folder)`, or load it without `streaming=True` "
            "(datasets memory-maps it from disk, so it need not fit in memory)."
        )
    if text_column not in dataset.column_names:
        raise DataError(
            f"The {what} has no text column {text_column!r}; its columns are {dataset.column_names}. "
            "Pass `text_column=` naming the column that holds the texts."
        )
    if len(dataset) == 0:
        fix = (
            "Pass `eval_dataset=None` (no `--eval_file`) to skip the evaluation, or an eval set with rows."
            if what.startswith("eval")
            else "Check the file or split you passed (a filter may have removed every row)."
        )
        raise DataError(
            f"The {what} is empty (0 rows): an increment needs at least one labelled example in it. {fix}"
        )
    bad = [i for i, text in enumerate(dataset[text_column]) if not isinstance(text, str) or not text.strip()]
    if bad:
        raise DataError(
            f"{len(bad)} row(s) of the {what} have no text in column {text_column!r} (None, NaN or empty; expected "
            f"a non-empty string), e.g. rows {bad[:5]}. Drop them first, e.g. "
            f"`dataset.filter(lambda row: isinstance(row[{text_column!r}], str) and row[{text_column!r}].strip())`."
        )


def materialize_stream(dataset: IterableDataset, folder: str | Path, what: str = "data set") -> Dataset:
    """Write a streamed data set to Arrow files in ``folder`` and return it memory-mapped, fingerprinted by content.

    An increment reads its rows several times (labels, tokenizing, the frozen pass, the Trainer phases), so a stream
    is read once into ``folder`` (``Dataset.from_generator``: batch by batch, never whole in memory). datasets
    fingerprints a generator by its code and arguments, not by the rows it yields, so the fingerprint is replaced by
    a hash of the written files: the lineage's rerun check then sees the same rows as the same data, and changed rows
    as new data. ``folder`` must be empty or new (a reused folder would hand back the rows of an earlier stream).
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise DataError(f"materialize_stream: the folder {str(folder)!r} is not empty; expected a new or empty "
                        "folder (datasets would reuse the rows cached there). Pass a fresh folder.")

    yielded = False

    def rows():
        nonlocal yielded
        for row in dataset:
            yielded = True
            yield row

    try:
        # A fixed fingerprint: the folder is fresh, so nothing cached can be mistaken for these rows, and datasets
        # need not hash the stream object (slow, or impossible, for some streams); the content hash replaces it.
        written = Dataset.from_generator(rows, features=dataset.features, cache_dir=str(folder), fingerprint="stream")
    except ValueError:
        if yielded:
            raise
        # datasets refuses to build a split with no rows ("corresponds to no data"): say what it means here.
        raise DataError(
            f"The {what} is a stream that yielded no rows. Check the split or filter that produced it."
        ) from None
    digest = hashlib.sha256()
    for file in sorted(entry["filename"] for entry in written.cache_files):
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return Dataset(written.data, info=written.info, split=written.split, fingerprint=digest.hexdigest()[:16])


@contextmanager
def map_style(*datasets_: Dataset | IterableDataset | None, names: Sequence[str]) -> Iterator[list]:
    """The data sets as given, with each streamed one written to a temporary folder (:func:`materialize_stream`)
    that is deleted on exit. Under a distributed launch every process reads the stream itself, and the rows must be
    the same in every process (each then encodes its share of them)."""
    folder = None
    try:
        out = []
        for dataset, name in zip(datasets_, names):
            if not isinstance(dataset, IterableDataset):
                out.append(dataset)
                continue
            if folder is None:
                folder = Path(tempfile.mkdtemp(prefix="hf_incr-stream-", dir=_streams_parent()))
            written = materialize_stream(dataset, folder / name.replace(" ", "_"), what=name)
            if distributed_launch() and not every_process_agrees(written._fingerprint):
                raise DataError(f"The {name} is a stream that yielded different rows in different processes (a "
                                "shuffle without a fixed seed, or a stream split by node?). Every process must read "
                                "the same rows: pass the whole stream, shuffled with a seed if at all.")
            logger.info("Wrote the streamed %s to %s (%d rows; deleted after the run).", name, folder, len(written))
            out.append(written)
        yield out
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _streams_parent() -> str:
    # Where datasets writes its own cache files (the user's disk choice, HF_DATASETS_CACHE).
    parent = Path(datasets.config.HF_DATASETS_CACHE)
    parent.mkdir(parents=True, exist_ok=True)
    return str(parent)


def find_new_labels(
    dataset: Dataset,
    label2id: Mapping[str, int],
    label_column: str = "label",
    new_labels: Sequence[str] | None = None,
) -> list[str]:
    """The labels of ``dataset`` that ``label2id`` lacks, i.e. the labels an increment adds.

    With ``new_labels`` given, those are the new labels (whether or not all occur in the data) and any other
    unknown name in the data is an error that lists them.
    """
    in_data = label_names_in(dataset, label_column)
    unknown = [name for name in in_data if name not in label2id]
    if new_labels is None:
        return unknown
    declared = [name for name in new_labels if name not in label2id]
    stray = [name for name in unknown if name not in set(new_labels)]
    if stray:
        raise DataError(
            f"The data has label(s) {stray} that the model does not know and that are not among `new_labels` "
            f"{list(new_labels)}. Add them to `new_labels`, or drop those rows."
        )
    return declared


def _rows_with_unknown(dataset: Dataset, label_column: str, label2id: Mapping[str, int]) -> list[tuple[int, str]]:
    feature = dataset.features[label_column]
    found = []
    for i, value in enumerate(dataset[label_column]):
        for name in names_in_row(value, feature):
            if name not in label2id:
                found.append((i, name))
    return found


def encode_labels(
    dataset: Dataset,
    label2id: Mapping[str, int],
    label_column: str = "label",
    multi_label: bool | None = None,
) -> Dataset:
    """Return ``dataset`` with a ``labels`` column of ids from ``label2id`` (multi-hot floats for multi-label).

    Single-label ``ClassLabel`` columns go through ``Dataset.align_labels_with_mapping``; strings through ``map``.
    Every label in the data must be in ``label2id`` (grow the model first); rows without a label are an error.
    """
    feature = _label_feature(dataset, label_column)
    is_list = isinstance(feature, (HFSequence, List))
    multi_label = is_list if multi_label is None else multi_label
    unknown = _rows_with_unknown(dataset, label_column, label2id)
    if unknown:
        names = sorted({name for _, name in unknown})
        raise DataError(
            f"{len(unknown)} row(s) carry label(s) {names} missing from the model's labels "
            f"{list(label2id)}, e.g. row {unknown[0][0]}. Add them as new labels, or drop those rows."
        )
    num_labels = len(label2id)
    target = "labels"
    if multi_label:

        def to_multi_hot(batch):
            rows = []
            for value in batch[label_column]:
                hot = [0.0] * num_labels
                for name in names_in_row(value, feature):
                    hot[label2id[name]] = 1.0
                rows.append(hot)
            return {target: rows}

        features = Features({**dataset.features, target: List(Value("float32"))})
        if label_column == target:
            features[target] = List(Value("float32"))
        return dataset.map(to_multi_hot, batched=True, features=features, desc="Encoding labels")

    if is_list:
        raise DataError(
            f"Column {label_column!r} holds lists of labels but the model is single-label. Set "
            "`multi_label=True` (a sigmoid head), or keep one label per row."
        )
    empty = [i for i, value in enumerate(dataset[label_column]) if not names_in_row(value, feature)]
    if empty:
        raise DataError(
            f"{len(empty)} row(s) have no label in column {label_column!r}, e.g. rows {empty[:5]}. "
            "Drop them before training."
        )
    if isinstance(feature, ClassLabel) and len({name.lower() for name in label2id}) == len(label2id):
        # `align_labels_with_mapping` renumbers a ClassLabel in place and matches names case-insensitively,
        # so it is only used when no two labels differ by case alone.
        aligned = dataset.align_labels_with_mapping(dict(label2id), label_column)
        return aligned.map(lambda batch: {target: batch[label_column]}, batched=True, desc="Encoding labels") \
            if label_column != target else aligned

    def to_ids(batch):
        return {target: [label2id[names_in_row(value, feature)[0]] for value in batch[label_column]]}

    features = Features({**dataset.features, target: Value("int64")})
    return dataset.map(to_ids, batched=True, features=features, desc="Encoding labels")


def tokenize(dataset: Dataset, tokenizer, text_column: str = "text", max_length: int = 128) -> Dataset:
    """Tokenize ``text_column`` with truncation to ``max_length`` (padding is left to the collator)."""
    check_texts(dataset, text_column)

    def encode(batch):
        return tokenizer(batch[text_column], truncation=True, max_length=max_length)

    return dataset.map(encode, batched=True, desc="Tokenizing")


def row_label_names(dataset: Dataset, label_column: str) -> list[list[str]]:
    """Every row's label names (a list per row, one name for single-label rows)."""
    feature = dataset.features[label_column]
    return [names_in_row(value, feature) for value in dataset[label_column]]


def model_columns(tokenized: Dataset, tokenizer) -> Dataset:
    """Only the columns a model's forward takes (the tokenizer's model inputs and ``labels``)."""
    keep = [c for c in tokenized.column_names if c in set(tokenizer.model_input_names) | {"labels"}]
    return tokenized.select_columns(keep)
