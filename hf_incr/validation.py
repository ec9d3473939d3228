"""Checks run before an increment changes anything: the model, tokenizer, data and recipe must fit together.

:func:`check_increment_inputs` is called first thing by :func:`~hf_incr.train_increment`, so bad input fails with a
clear message while the model, the files on disk and the Hub repo are still as they were. The other public helpers
check what the command line reads and writes before it loads or writes anything: the output folder
(:func:`check_output_dir`), ``resume_from_checkpoint`` (:func:`check_resume_from_checkpoint`) and a checkpoint folder
whose ``config.json`` and weights disagree (:func:`check_checkpoint`).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

from datasets import ClassLabel, Dataset, List, Value
from datasets import Sequence as HFSequence
from safetensors import safe_open
from torch import nn

from .checkpoints import parse_resume
from .config import IncrementConfig
from .data import check_label_kinds, check_texts, find_new_labels, is_multi_label_model, label_names_in
from .errors import (
    ConfigError,
    DataError,
    HeadConfigMismatchError,
    HeadNotFoundError,
    TokenizerError,
    damaged_file_error,
)
from .head import (
    KNOWN_HEAD_PATHS,
    ClassifierHead,
    check_head_matches_config,
    check_new_label_names,
    check_not_peft,
    find_classifier_head,
)
from .replay import REPLAY_DIRNAME, REPLAY_FILENAME
from .saving import CHECKPOINTS_DIRNAME, blocking_file, foreign_entries

_TOKENIZE_CHUNK = 1024  # texts tokenized at once when the tokenizer's ids must be checked against the embeddings


def check_increment_inputs(
    model,
    tokenizer,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    config: IncrementConfig,
) -> ClassifierHead:
    """Raise a :class:`~hf_incr.HfIncrError` (also a ``ValueError``) naming the problem and the fix; return the
    model's output Linear (found once, here).

    Checked, in order: the model (a plain classification model, not a PEFT wrapper; head and ``config.id2label``
    agree), the texts of both data sets (present, not empty), their labels (every row has one, names not ids, no
    unknown labels in the eval data, valid new label names with examples), the tokenizer (its ids fit the model's
    embeddings, a padding token) and ``max_length`` against the model's position embeddings.
    Only reads: nothing is modified, moved to a device or written.
    """
    location = check_model(model)
    check_texts(train_dataset, config.text_column, what="training data")
    if eval_dataset is not None:
        check_texts(eval_dataset, config.text_column, what="eval data")
    check_labels(model, train_dataset, eval_dataset, config)
    check_tokenizer(model, tokenizer, {"training data": train_dataset, "eval data": eval_dataset}, config, location)
    check_max_length(model, config.max_length)
    return location


# -- the model --------------------------------------------------------------------------------------------------------


def check_model(model) -> ClassifierHead:
    """A plain classification model whose head and ``config.id2label`` / ``label2id`` agree; returns its output
    Linear."""
    check_not_peft(model, "train an increment of")
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "id2label", None):
        raise HeadNotFoundError(
            f"{type(model).__name__} has no `config.id2label`, so it is not a classification model. Load it with "
            "`AutoModelForSequenceClassification.from_pretrained(...)`."
        )
    location = find_classifier_head(model)
    check_head_matches_config(model, location)
    return location


# -- the labels -------------------------------------------------------------------------------------------------------


def _is_list_feature(feature) -> bool:
    return isinstance(feature, (HFSequence, List))


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip()
    )


def _is_number_feature(feature) -> bool:
    return isinstance(feature, Value) and feature.dtype.startswith(("int", "uint", "float"))


def _names_are_numbers(names: Iterable) -> bool:
    try:
        for name in names:
            float(str(name))
    except ValueError:
        return False
    return True


def _check_label_column(model, dataset: Dataset, column: str, what: str) -> None:
    """One data set's label column: present, a label on every row, of the model's kind, names not ids."""
    multi_label = is_multi_label_model(model)
    model_names = list(model.config.id2label.values())
    if column not in dataset.column_names:
        raise DataError(
            f"The {what} has no label column {column!r}; its columns are {dataset.column_names}. Pass "
            "`label_column=` naming the column that holds the labels."
        )
    feature = dataset.features[column]
    is_list = _is_list_feature(feature)
    if is_list and not multi_label:
        raise DataError(
            f"Column {column!r} of the {what} holds lists of labels but the model is single-label "
            f"(problem_type={model.config.problem_type!r}). Start from a multi-label model (`multi_label=True` "
            "when training the base), or keep one label per row."
        )
    inner = feature.feature if is_list else feature
    check_label_kinds(dataset, column, model_names, what)
    values = dataset[column]
    if is_list:
        missing = [i for i, value in enumerate(values) if value is None]
        blank = [i for i, value in enumerate(values) if value is not None and any(
            (isinstance(item, float) and math.isnan(item)) or (isinstance(item, str) and not item.strip())
            for item in value)]
        if missing or blank:
            rows = missing or blank
            found = "no label list (None)" if missing else "empty or NaN label names"
            raise DataError(
                f"{len(rows)} row(s) of the {what} have {found} "
                f"in column {column!r}, e.g. rows {rows[:5]}. Expected a list of label names per row (`[]` for a "
                "row with none of the labels). Replace them with `[]`, or drop those rows."
            )
    else:
        missing = [
            i for i, value in enumerate(values)
            if _is_missing(value) or (isinstance(inner, ClassLabel) and value is not None and int(value) < 0)
        ]
        if missing:
            raise DataError(
                f"{len(missing)} row(s) of the {what} have no label in column {column!r} (None, NaN, empty, or "
                f"ClassLabel -1), e.g. rows {missing[:5]}; every row needs one label. Drop them first, e.g. "
                f"`dataset.filter(lambda row: row[{column!r}] is not None)`."
            )
    if _is_number_feature(inner) and not _names_are_numbers(model_names):
        example = next((item for value in values for item in (value if is_list else [value])), None)
        raise DataError(
            f"Column {column!r} of the {what} holds numbers ({inner.dtype}, e.g. {example!r}) but the model's "
            f"labels are names ({model_names[:5]}{' ...' if len(model_names) > 5 else ''}). Numbers are read as "
            "label names, so each id would become a new label such as '0'. Map ids to names first, e.g. "
            f"`dataset.map(lambda row: {{{column!r}: model.config.id2label[row[{column!r}]]}})` if they are the "
            "model's ids, or give the column its names: "
            f"`dataset.cast_column({column!r}, ClassLabel(names=[...]))`."
        )


def check_labels(model, train_dataset: Dataset, eval_dataset: Dataset | None, config: IncrementConfig) -> None:
    """Every row has a label, labels are names (or a ``ClassLabel``), the label column's kind fits the model, the new
    labels are valid names, and the eval data has no label that neither the model nor the training data has."""
    column = config.label_column
    for what, dataset in (("training data", train_dataset), ("eval data", eval_dataset)):
        if dataset is not None:
            _check_label_column(model, dataset, column, what)

    new_labels = find_new_labels(train_dataset, model.config.label2id, column, config.new_labels)
    if new_labels:
        with warnings.catch_warnings():
            # add_labels warns about near-duplicate names when it grows the head; not twice.
            warnings.simplefilter("ignore", UserWarning)
            check_new_label_names(model, new_labels)
        present = set(label_names_in(train_dataset, column))
        lacking = [name for name in new_labels if name not in present]
        if lacking:
            raise DataError(
                f"Each new label's row of the head is built from its training examples, but the new label(s) "
                f"{lacking} have none in the training data. Add examples of them, or leave them out of `new_labels`."
            )
    if eval_dataset is not None:
        known = set(model.config.label2id) | set(new_labels)
        stray = [name for name in label_names_in(eval_dataset, column) if name not in known]
        if stray:
            raise DataError(
                f"The eval data has label(s) {stray[:10]}{' ...' if len(stray) > 10 else ''} that neither the model "
                f"nor the training data has, so they could not be scored. Expected eval labels among the model's "
                "labels and this increment's new ones. Drop those rows (`eval_dataset.filter(...)`), or add training "
                "examples of them."
            )


# -- the tokenizer and the lengths ------------------------------------------------------------------------------------


def _embedding_rows(model) -> int | None:
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    weight = getattr(embeddings, "weight", None)
    return None if weight is None else int(weight.shape[0])


def check_tokenizer(model, tokenizer, datasets: dict[str, Dataset | None], config: IncrementConfig,
                    location: ClassifierHead | None = None) -> None:
    """The tokenizer is the model's: its ids fit the embedding matrix, it pads, and with the id the model expects.

    A tokenizer with more tokens than the model has embedding rows (another model's) is checked on the data itself:
    an id the model cannot embed would crash inside the forward pass, after the head was grown.
    """
    if tokenizer is None or not callable(tokenizer):
        raise TokenizerError(
            f"An increment needs the model's tokenizer, got {type(tokenizer).__name__}. Pass "
            "`AutoTokenizer.from_pretrained(<the model's folder or id>)`."
        )
    name = type(model).__name__
    if getattr(tokenizer, "pad_token_id", None) is None:
        raise TokenizerError(
            "The tokenizer has no padding token, which batching needs. Decoder models (GPT-2, Llama, ...) ship "
            "without one: set `tokenizer.pad_token = tokenizer.eos_token` and "
            "`model.config.pad_token_id = tokenizer.pad_token_id` first."
        )
    if (location or find_classifier_head(model)).path == "score":
        # Decoder heads (GPT-2, Llama, ...) score the last token that is not `config.pad_token_id`.
        model_pad = getattr(model.config, "pad_token_id", None)
        if model_pad != tokenizer.pad_token_id:
            raise TokenizerError(
                f"{name} finds each text's last token by `config.pad_token_id={model_pad}`, but the tokenizer pads "
                f"with id {tokenizer.pad_token_id}, so padded texts would be classified from a padding position. "
                "Set `model.config.pad_token_id = tokenizer.pad_token_id` (or use the model's own tokenizer)."
            )
    rows = _embedding_rows(model)
    if rows is None:
        return
    fix = (
        "Expected the tokenizer saved with the model: load it from the same checkpoint "
        "(`AutoTokenizer.from_pretrained(<the model's folder or id>)`); if you added tokens on purpose, call "
        "`model.resize_token_embeddings(len(tokenizer))` first."
    )
    special = sorted({i for i in (getattr(tokenizer, "all_special_ids", None) or []) if i is not None and i >= rows})
    if special:
        raise TokenizerError(
            f"The tokenizer does not fit {name}: its special token id(s) {special[:5]} (e.g. padding) are beyond the "
            f"model's {rows:,} embedding rows. {fix}"
        )
    vocab = len(tokenizer)
    if vocab <= rows:
        return
    for what, dataset in datasets.items():
        if dataset is None:
            continue
        texts = dataset[config.text_column]
        for start in range(0, len(texts), _TOKENIZE_CHUNK):
            chunk = list(texts[start : start + _TOKENIZE_CHUNK])
            encoded = tokenizer(chunk, truncation=True, max_length=config.max_length)["input_ids"]
            for offset, ids in enumerate(encoded):
                too_large = [i for i in ids if i >= rows]
                if too_large:
                    token = tokenizer.convert_ids_to_tokens(too_large[0])
                    raise TokenizerError(
                        f"The tokenizer does not fit {name}: it has {vocab:,} tokens but the model's embedding matrix "
                        f"has {rows:,} rows, and row {start + offset} of the {what} tokenizes to id {too_large[0]} "
                        f"({token!r}), which the model cannot embed (the forward pass would fail after the head was "
                        f"grown). {fix}"
                    )
    warnings.warn(
        f"The tokenizer has {vocab:,} tokens but {name} has {rows:,} embedding rows. This data fits, but a text with "
        "one of the extra tokens would fail. Check that the tokenizer is the model's own.",
        UserWarning,
        stacklevel=3,
    )


def position_limit(model) -> int | None:
    """The most tokens a model with a learned absolute position table can take (``None``: no such table, e.g.
    rotary or relative positions, which do not fail on long inputs)."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    tables = [
        module for name, module in model.named_modules()
        if isinstance(module, nn.Embedding) and module.num_embeddings == limit
        and ("position" in name.rsplit(".", 1)[-1] or name.rsplit(".", 1)[-1] == "wpe")
    ]
    if not tables:
        return None
    base = getattr(model, "base_model", model)
    offset = getattr(getattr(base, "embeddings", None), "padding_idx", None)
    # RoBERTa-style embeddings number positions from `padding_idx + 1`.
    return limit - (offset + 1) if isinstance(offset, int) else limit


def check_max_length(model, max_length: int) -> None:
    """``max_length`` must fit the model's position table, or a long text crashes the forward pass mid-increment."""
    limit = position_limit(model)
    if limit is not None and max_length > limit:
        raise ConfigError(
            f"`max_length={max_length}` but {type(model).__name__} has learned position embeddings for {limit} "
            f"tokens: a text longer than {limit} tokens would fail in the forward pass after the head was grown. "
            f"Set `max_length` to at most {limit} (longer texts are truncated)."
        )


# -- files the command line reads and writes --------------------------------------------------------------------------


def check_output_dir(output_dir: str | os.PathLike, model_dir: str | os.PathLike | None = None) -> None:
    """Refuse an output folder whose replacement would delete something that is not a saved model.

    An increment is saved by writing a temporary folder beside ``output_dir`` and swapping it in: whatever the old
    folder held is deleted (only ``checkpoints/`` and ``runs/`` are carried over). So ``output_dir`` must be new,
    empty, a saved model folder (one with a ``config.json``, e.g. the model being extended), or hold only
    ``checkpoints/`` / ``runs/`` of an interrupted run; and it must not be the working folder, one of its parents,
    or a folder that contains the model being extended.
    """
    out = Path(output_dir).expanduser()
    resolved = out.resolve()
    here = Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        raise ConfigError(
            f"`output_dir` {str(output_dir)!r} is the working folder or one of its parents. An increment is saved by "
            "replacing the output folder as a whole, which would delete everything in it. Pass a new folder, e.g. "
            "`--output_dir outputs/v2`."
        )
    if model_dir is not None and Path(model_dir).is_dir():
        source = Path(model_dir).expanduser().resolve()
        if resolved in source.parents:
            raise ConfigError(
                f"`output_dir` {str(output_dir)!r} contains the model being extended ({str(model_dir)!r}). Saving "
                "replaces the output folder as a whole, which would delete that model. Pass a folder beside it, e.g. "
                f"{str(source.parent / (source.name + '-v2'))!r}, or the model folder itself to overwrite it."
            )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"`output_dir` {str(output_dir)!r} is a file; expected a folder. Pass another `output_dir`.")
    blocked = blocking_file(out.parent)
    if blocked is not None:
        raise ConfigError(
            f"`output_dir` {str(output_dir)!r} cannot be made: {str(blocked)!r} is a file, not a folder. Pass an "
            "`output_dir` whose parents are folders (missing ones are created)."
        )
    if others := foreign_entries(out):
        raise ConfigError(
            f"`output_dir` {str(output_dir)!r} exists and holds files that are not a saved model "
            f"({others[:5]}{' ...' if len(others) > 5 else ''}). Saving replaces the output folder as a whole, so "
            "they would be deleted. Expected a new or empty folder, or a model folder to overwrite. Pass another "
            "`output_dir`."
        )


def check_resume_from_checkpoint(resume, output_dir: str | os.PathLike) -> None:
    """``resume_from_checkpoint`` is ``True``/``False`` or a checkpoint folder this run wrote, under
    ``<output_dir>/checkpoints/``: a setting (or a config file) cannot make hf_incr load training state elsewhere."""
    if not isinstance(parse_resume(resume), str):
        return
    folder = (Path(output_dir).expanduser() / CHECKPOINTS_DIRNAME).resolve()
    path = Path(resume).expanduser().resolve()
    if not path.is_relative_to(folder):
        raise ConfigError(
            f"`resume_from_checkpoint` {str(resume)!r} is outside this run's checkpoint folder {str(folder)!r}. "
            "hf_incr resumes only from checkpoints it wrote there (`<output_dir>/checkpoints/<phase>/checkpoint-N`), "
            "so that a setting cannot load training state from elsewhere. Pass `--resume_from_checkpoint true` to "
            "resume every phase from its last checkpoint, or a checkpoint folder inside that folder."
        )
    if not path.is_dir():
        raise ConfigError(
            f"`resume_from_checkpoint` {str(resume)!r} does not exist. Pass `--resume_from_checkpoint true` to resume "
            "every phase from its last checkpoint, if there is one."
        )


def _safetensors_shapes(folder: Path, names: list[str]) -> dict[str, list[int]]:
    """Shapes of the named tensors in a folder's safetensors weights, read from the file headers only."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = {name: folder / weight_map[name] for name in names if name in weight_map}
    elif (folder / "model.safetensors").is_file():
        files = dict.fromkeys(names, folder / "model.safetensors")
    else:
        return {}
    shapes = {}
    for name, file in files.items():
        if file.resolve().parent != folder.resolve() or not file.is_file():
            continue  # an index naming a file outside the folder is not followed
        with safe_open(str(file), framework="numpy") as handle:
            if name in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                shapes[name] = list(handle.get_slice(name).get_shape())
    return shapes


def check_checkpoint(model_name_or_path: str | os.PathLike) -> None:
    """Refuse a local checkpoint whose ``config.json`` names another number of labels than its head's weights have
    rows (``from_pretrained`` would fail with a terse message, or, with ``ignore_mismatched_sizes=True``,
    re-initialise the whole head). Reads only ``config.json`` and the safetensors headers; Hub ids are left to
    ``from_pretrained``."""
    folder = Path(model_name_or_path).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        return
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ConfigError(
            f"{str(config_file)!r} is not valid JSON ({error}). Restore the checkpoint's config.json."
        ) from error
    id2label = config.get("id2label") or {}
    check_trained_classifier(config, str(model_name_or_path))
    num_labels = len(id2label) if id2label else config.get("num_labels")
    if not isinstance(num_labels, int):
        return
    keys = [f"{path}.weight" for path in KNOWN_HEAD_PATHS]
    shapes = _safetensors_shapes(folder, keys)
    for key in keys:
        if key in shapes:
            rows = shapes[key][0]
            if rows != num_labels:
                names = list(id2label.values())
                raise HeadConfigMismatchError(
                    f"The checkpoint {str(folder)!r} is inconsistent: config.json names {num_labels} labels "
                    f"({names[:6]}{' ...' if len(names) > 6 else ''}) but its head weights `{key}` have {rows} rows; "
                    "expected one row per label. Restore the config.json that was saved with these weights (or the "
                    "weights saved with this config). Do not load it with `ignore_mismatched_sizes=True`: that "
                    "re-initialises the whole head and the old labels are lost."
                )
            return


# -- the right kind of model for the command ---------------------------------------------------------------------


_CLASSIFIER = "ForSequenceClassification"
_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


def _config_dict(model_or_config) -> dict:
    config = getattr(model_or_config, "config", model_or_config)
    return config if isinstance(config, dict) else config.to_dict()


def _is_classifier(config: dict) -> bool:
    """A checkpoint saved as a text classifier: its class is a ``*ForSequenceClassification``, its code registers one
    (``auto_map``), or hf_incr trained it (a lineage)."""
    architectures = config.get("architectures") or []
    auto_map = config.get("auto_map") or {}
    return (any(_CLASSIFIER in name for name in architectures) or "AutoModelForSequenceClassification" in auto_map
            or bool(config.get("hf_incr_lineage")))


def _has_own_labels(config: dict) -> bool:
    names = [str(name) for name in (config.get("id2label") or {}).values()]
    return bool(names) and not all(_DEFAULT_LABEL.match(name) for name in names)


def check_trained_classifier(model_or_config, where: str | None = None) -> None:
    """Refuse an encoder where an increment expects a trained classifier: a checkpoint saved as another class (e.g.
    ``BertModel``) whose config names no labels of its own, so ``AutoModelForSequenceClassification`` would give it a
    random head with the labels ``LABEL_0``, ``LABEL_1``, which the increment would then keep as old labels."""
    config = _config_dict(model_or_config)
    architectures = config.get("architectures") or []
    if not architectures or _is_classifier(config) or _has_own_labels(config):
        return
    name = where or config.get("_name_or_path") or "the model"
    raise ConfigError(
        f"{str(name)!r} is an encoder ({', '.join(architectures)}), not a trained classifier: it has no trained "
        "classification head and no labels of its own, so an increment would keep a random head's `LABEL_0`, "
        "`LABEL_1` as its old labels. `increment` (and `evaluate`) need a classifier; to train a first one on it, "
        f"run `hf-incr train-base --model_name_or_path {name} --train_file ...` (Python: "
        "`hf_incr.train_base_classifier(...)`)."
    )


def check_base_encoder(model_name_or_path: str, labels: list[str], *, new_head: bool = False,
                       trust_remote_code: bool = False) -> tuple[bool, list[str]]:
    """Refuse a trained classifier of other labels where ``train-base`` expects an encoder (its head would be thrown
    away, or, with as many labels, kept under the new labels' names), unless ``new_head``. A classifier of exactly
    these labels, in any order, is trained on as before, in its own label order (so that each trained row keeps its
    label). Returns whether a new head must be started over the checkpoint's encoder (a classifier, and
    ``new_head``) and the label order to train in. Reads only its config."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code).to_dict()
    except Exception:  # not found, no network: loading the model reports it, as before
        return False, labels
    if not _is_classifier(config):
        return False, labels
    if new_head:
        return True, labels
    own = [str(name) for _, name in sorted((config.get("id2label") or {}).items(), key=lambda item: int(item[0]))]
    by_name = {str(name): name for name in labels}
    if sorted(own) == sorted(by_name) and len(own) == len(labels):
        return False, [by_name[name] for name in own]
    kind = ", ".join(config.get("architectures") or []) or "a classifier"
    raise ConfigError(
        f"{model_name_or_path!r} is a trained classifier ({kind} with {len(own)} labels: {_shown(own)}), not an "
        f"encoder, and this data's labels are {_shown(labels)}. `train-base` starts a new classifier from an encoder. "
        f"To add this data's labels to it and keep its own, run `hf-incr increment --model_name_or_path "
        f"{model_name_or_path} --train_file ...` (Python: `hf_incr.train_increment`). To train a new classifier over "
        "its encoder instead (its head and labels are discarded), pass `--new_head true` (Python: "
        "`train_base_classifier(..., new_head=True)`)."
    )


def _shown(names, limit: int = 6) -> str:
    return f"{list(names)[:limit]}{' ...' if len(names) > limit else ''}"


# -- the state saved beside the model ---------------------------------------------------------------------------------


def check_saved_state(model, location: ClassifierHead, heads: dict, replay_memory, folder=None) -> None:
    """The heads and replay memory read from beside the model belong to it: each head's sizes fit the model's head
    (:meth:`~hf_incr.heads.Head.check_model`), memory rows are only of the model's labels. Raises
    :class:`~hf_incr.errors.SavedStateError` naming the file, what is lost without it, and the way forward."""
    for head in heads.values():
        head.check_model(model, location)
    if replay_memory is not None and len(replay_memory):
        foreign = [name for name in replay_memory.labels() if name not in model.config.label2id]
        if foreign:
            raise damaged_file_error(
                Path(folder or ".") / REPLAY_DIRNAME / REPLAY_FILENAME,
                f"holds examples of label(s) {foreign[:5]} that the model does not have: it belongs to another model",
                "the next increment replays no stored example of the old labels",
                f"Restore the model's own memory, or delete the folder {REPLAY_DIRNAME}.",
            )
