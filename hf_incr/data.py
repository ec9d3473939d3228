"""Data alignment: read text data sets, find the new labels in them, map their labels onto a model's ``label2id``.

Labels may be strings, a ``ClassLabel`` in any order, or (multi-label) lists of strings / ``ClassLabel`` ids.
Single-label data ends with an int ``labels`` column; multi-label data with a multi-hot float ``labels`` column
sized to the model's label space.
"""

from __future__ import annotations

import hashlib
import json
import re
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
from .errors import DataError, DiskFullError, causes
from .faults import reason, write_fault

logger = logging.get_logger(__name__)


_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_text_data(source: str | Path, split: str | None = None, *, columns: Sequence[str] | None = None,
                   **kwargs) -> Dataset | DatasetDict:
    """Load a data set from a local CSV / JSON Lines / Parquet file or folder, or a Hub data set name.

    A file path goes through ``load_dataset(builder, data_files=...)`` and returns its ``train`` split unless
    ``split`` says otherwise; anything else is passed to ``load_dataset(source, split=split)`` as is. A file that
    cannot be read as it should (empty, a header without rows, a malformed JSON line, another CSV separator, a column
    that mixes kinds of values, e.g. numbers and names) is a :class:`DataError` naming the file, the line and the fix;
    ``columns`` (e.g. the text and label columns) limits the check of mixed kinds to those columns. CSV options such as
    ``delimiter=";"`` go to the CSV reader.
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
        if builder != "csv":
            kwargs.pop("delimiter", None)  # a CSV option (`--delimiter`), not the JSON or Parquet reader's
        return _load_file(path, builder, split or "train", columns, kwargs)
    if path.suffix.lower() in _FILE_BUILDERS and not path.exists():
        raise DataError(
            f"The data file {str(path)!r} does not exist (expected a .csv, .tsv, .json, .jsonl or .parquet file). "
            "Check the path (it is relative to the folder you run in)."
        )
    return load_dataset(str(source), split=split, **kwargs)


_EXPECTED = {
    "csv": "a header line naming the columns (e.g. `text,label`) and one row per line below it",
    "json": 'one JSON object per line, e.g. `{"text": "my card was declined", "label": "card"}`',
    "parquet": "a Parquet table with a text and a label column",
}


def _load_file(path: Path, builder: str, split: str, columns: Sequence[str] | None, kwargs: dict) -> Dataset:
    """One local file through ``load_dataset``, every way a file a user made can fail named with its fix."""
    if path.stat().st_size == 0:
        raise DataError(f"The data file {str(path)!r} is empty (0 bytes). Expected {_EXPECTED[builder]}. Check that "
                        "it was written completely, or pass the right file.")
    try:
        with _quiet_reader_errors():
            dataset = load_dataset(builder, data_files=str(path), split=split, **kwargs)
    except Exception as error:
        if write_fault(error) == "full":  # datasets writes the file's rows into its cache first
            raise DiskFullError(
                f"Reading {str(path)!r} failed: datasets writes its rows to its cache "
                f"({datasets.config.HF_DATASETS_CACHE}), and {reason('full', error)}. Nothing was changed. Free "
                "space there, or point `HF_DATASETS_CACHE` at a disk with room, then rerun.", path=path,
            ) from error
        if any(isinstance(c, OSError) and c.errno is not None for c in causes(error)):
            raise  # a fault of the machine (permissions, I/O), not of the file's content
        raise _unreadable(path, builder, error, kwargs) from error
    if builder == "csv":
        _check_separator(path, dataset, kwargs)
        _check_fields(path, dataset, kwargs)
    if len(dataset) == 0:
        raise DataError(f"The data file {str(path)!r} holds no rows. Expected {_EXPECTED[builder]}.")
    if builder == "json":
        _check_kinds(path, dataset, columns)
    return dataset


@contextmanager
def _quiet_reader_errors():
    """datasets logs a reader's failure (``Failed to load JSON from file ...``) before raising it; the error raised
    here says it in the user's terms, once."""
    logger_ = logging.get_logger("datasets")
    drop = _DropErrors()
    logger_.addFilter(drop)
    for handler in logger_.handlers:
        handler.addFilter(drop)
    try:
        yield
    finally:
        logger_.removeFilter(drop)
        for handler in logger_.handlers:
            handler.removeFilter(drop)


class _DropErrors:
    def filter(self, record) -> bool:
        return record.levelno < 40  # ERROR and above: the exception that follows says it


def _unreadable(path: Path, builder: str, error: Exception, kwargs: dict) -> DataError:
    """Why ``load_dataset`` could not read a file, in the user's terms: no rows, the first malformed line, or the
    reader's own message."""
    if any("corresponds to no data" in str(c) for c in causes(error)):
        if builder == "csv":
            header = _first_line(path)
            return DataError(f"The data file {str(path)!r} has a header ({header!r}) but no rows. Expected "
                             f"{_EXPECTED['csv']}.")
        return DataError(f"The data file {str(path)!r} holds no rows (only blank lines). Expected "
                         f"{_EXPECTED[builder]}.")
    if builder == "json":
        problem = _json_problem(path)
        if problem:
            return DataError(f"The data file {str(path)!r} cannot be read: {problem}. Expected {_EXPECTED['json']}. "
                             "Fix or delete that line, then rerun.")
    innermost = list(causes(error))[-1]
    detail = " ".join(f"{type(innermost).__name__}: {innermost}".split())[:300]
    return DataError(f"The data file {str(path)!r} could not be read as {builder.upper()} ({detail}). Expected "
                     f"{_EXPECTED[builder]}.")


def _first_line(path: Path, limit: int = 200) -> str:
    with open(path, "rb") as handle:
        return handle.readline(limit).decode("utf-8", errors="replace").rstrip("\r\n")


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_problem(path: Path) -> str | None:
    """The first line of a JSON Lines file that is not one JSON object (or where a JSON file is malformed)."""
    with open(path, "rb") as handle:
        start = handle.read(4096).lstrip()
    if start.startswith(b"["):  # one JSON document (an array of rows), not JSON Lines
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            where = f"line {error.lineno}, column {error.colno}: " if hasattr(error, "lineno") else ""
            return f"{where}{getattr(error, 'msg', error)}"
        return None
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                return f"line {number} is not UTF-8 text ({error.reason} at byte {error.start})"
            except ValueError as error:
                line = raw.decode("utf-8", errors="replace").strip()
                return f"line {number} is not valid JSON ({error.msg} at column {error.colno}): {_clip(line)!r}"
            if not isinstance(value, dict):
                line = _clip(raw.decode("utf-8").strip())
                return f"line {number} is a JSON {type(value).__name__}, not an object: {line!r}"
    return None


_SEPARATORS = (",", ";", "\t", "|")


def _check_separator(path: Path, dataset: Dataset, kwargs: dict) -> None:
    """A CSV read with the wrong separator comes back as one column named after the whole header (``text;label``):
    say which columns were found and how to pass the separator."""
    used = kwargs.get("delimiter") or kwargs.get("sep") or ","
    header = _first_line(path)
    for separator in _SEPARATORS:
        if separator == used or len(header.split(separator)) < 2:
            continue
        if len(dataset.column_names) == 1 or any(separator in name for name in dataset.column_names):
            shown = "'\\t'" if separator == "\t" else repr(separator)
            flag = "$'\\t'" if separator == "\t" else repr(separator)
            raise DataError(
                f"The data file {str(path)!r} was read with {used!r} between columns and gave the column(s) "
                f"{dataset.column_names}, but its header {header!r} looks separated by {shown}. Pass the separator: "
                f"`--delimiter {flag}` (Python: `load_text_data({str(path)!r}, delimiter={shown})`)"
                + (", or name the file .tsv." if separator == "\t" else ".")
            )


def _check_fields(path: Path, dataset: Dataset, kwargs: dict) -> None:
    """Rows with more fields than the header: pandas then takes the first ones as an index (``__index_level_0__``)
    and shifts every column; name the first such line instead."""
    if not any(name.startswith("__index_level_") for name in dataset.column_names):
        return
    import csv

    separator = kwargs.get("delimiter") or kwargs.get("sep") or ","
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        rows = csv.reader(handle, delimiter=separator)
        header = next(rows, [])
        for row in rows:
            if len(row) > len(header):
                raise DataError(
                    f"The data file {str(path)!r} has a row with {len(row)} fields on line {rows.line_num}, but its "
                    f"header names {len(header)} columns ({header}): {_clip(separator.join(row))!r}. Quote a text "
                    'that holds the separator ("a, b"), or fix that line, then rerun.'
                )


def _kind(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "an object"


def _check_kinds(path: Path, dataset: Dataset, columns: Sequence[str] | None) -> None:
    """A JSON column whose rows hold values of different kinds (the label ``1`` in one row, ``"refund"`` in another)
    is one datasets could not type: refuse it naming the lines, before ``1`` becomes a label of its own."""
    for column in columns if columns is not None else dataset.column_names:
        if column not in dataset.column_names or type(dataset.features[column]).__name__ != "Json":
            continue
        first: dict[str, int] = {}
        for row, value in enumerate(dataset[column]):
            kind = _kind(value)
            if kind is not None and kind not in first:
                first[kind] = row
        if len(first) < 2:
            continue
        lines = _row_lines(path, max(first.values()))
        values = dataset[column]
        found = "; ".join(f"line {lines.get(row, f'? (row {row})')} holds {kind} ({_clip(repr(values[row]), 40)})"
                          for kind, row in sorted(first.items(), key=lambda item: item[1]))
        raise DataError(
            f"Column {column!r} of the data file {str(path)!r} mixes kinds of values: {found}. Expected one kind per "
            "column (a label column: names, or lists of names for multi-label rows; a number would be read as a label "
            'name of its own). Write every label as a name in quotes (`"label": "1"` if 1 is a label\'s name), or map '
            "ids to names, then rerun."
        )


def _row_lines(path: Path, last_row: int) -> dict[int, int]:
    """Line numbers of the rows of a JSON Lines file (blank lines hold no row), up to ``last_row``."""
    lines, row = {}, 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if raw.strip():
                lines[row] = number
                row += 1
                if row > last_row:
                    break
    return lines


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


_NUMBER = re.compile(r"^\s*[+-]?\d+(\.\d+)?\s*$")


def check_label_kinds(dataset: Dataset, label_column: str, known=(), what: str = "data set") -> None:
    """Refuse a label column of names that also holds numbers (``"refund"`` in one row, ``"1"`` in another, as a CSV
    with a stray id gives): each number would become a label of its own. Numbers among ``known`` (the model's own
    label names) are names."""
    if label_column not in dataset.column_names:
        return
    feature = dataset.features[label_column]
    if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
        return
    known = set(known)
    number = name = None
    for row, value in enumerate(dataset[label_column]):
        if not isinstance(value, str):
            continue
        if _NUMBER.match(value):
            if value not in known:
                number = number if number is not None else (row, value)
        elif value.strip():
            name = name if name is not None else (row, value)
        if number is not None and name is not None:
            raise DataError(
                f"Column {label_column!r} of the {what} mixes label names and numbers: row {name[0]} has "
                f"{name[1]!r}, row {number[0]} has {number[1]!r} (in a CSV file, row i is on line i + 2). A number "
                f"would be read as a label name of its own, {number[1]!r}. Write every label as a name (map ids "
                "with `model.config.id2label`), or drop those rows, then rerun."
            )


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
