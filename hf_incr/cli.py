"""The ``hf-incr`` command: train a base classifier, add labels and train the increment, evaluate, push, demo.

Every subcommand parses ``HfArgumentParser`` dataclasses (:class:`ScriptArguments`, :class:`~hf_incr.IncrementConfig`,
``TrainingArguments``), so ``--help`` prints each field's ``help``; ``--config file.yaml|json`` sets defaults that
flags override, and ``--save_config file.yaml`` writes the merged settings for a re-run. The subcommands call the
same functions as the Python API, and ``scripts/*.py`` wrap them for ``accelerate launch``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments

from .config import IncrementConfig, check_removed
from .console import is_verbose, quiet_run
from .errors import ConfigError, HfIncrError
from .heads import extra_heads
from .model_card import CARD_FILENAME, PLOT_FILENAME
from .report import PLAIN_ROW, answering_thresholds, format_summary

# The commands import what they run (the Trainer stack, datasets, the Hub client) when they run: `hf-incr --help`
# and `hf-incr info` start at the cost of torch and transformers' argument classes.

SUBCOMMANDS = ("train-base", "increment", "evaluate", "info", "push", "demo")


@dataclass
class ScriptArguments:
    """Where the model and the data come from (the recipe's settings are in IncrementConfig)."""

    _argument_group_name = "Model and data"  # its heading in --help

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "train-base: the pretrained encoder (Hub id or folder); increment / evaluate: the trained "
            "classifier to extend. Default: the offline all-MiniLM-L6-v2 from PyPI (train-base only)."
        },
    )
    train_file: str | None = field(
        default=None, metadata={"help": "Training data: a CSV / JSON Lines / Parquet file."}
    )
    eval_file: str | None = field(
        default=None, metadata={"help": "Held-out data (same format) for metrics before/after."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hub data set instead of files, e.g. `banking77` (needs network)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub data set's configuration."})
    train_split: str = field(default="train", metadata={"help": "Split of `dataset_name` to train on."})
    eval_split: str | None = field(default=None, metadata={"help": "Split of `dataset_name` to evaluate on."})
    repo_id: str | None = field(
        default=None,
        metadata={"help": "push: the Hub repo to push the saved folder to (train-base / increment use `--push_to_hub "
                  "--hub_model_id`)."},
    )
    delimiter: str | None = field(
        default=None,
        metadata={"help": "The column separator of CSV data files, e.g. `;` (default: `,` for .csv, a tab for .tsv)."},
    )
    new_head: bool = field(
        default=False,
        metadata={"help": "train-base: `--model_name_or_path` may be a trained classifier; its head and labels are "
                  "discarded and a new head is trained over its encoder (to keep them, use `increment`)."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code from the Hub. Off unless you trust the repo."}
    )
    config: str | None = field(
        default=None, metadata={"help": "A YAML or JSON file of settings (any flag's name); flags given override it."}
    )
    save_config: str | None = field(
        default=None, metadata={"help": "Write the merged settings of this run to this YAML file, for a re-run."}
    )
    verbose: bool = field(
        default=False,
        metadata={"help": "Show Trainer's logs (the per-step loss dicts, info messages) and the data-processing bars; "
                  "same as `--log_level info`. Default: one heading and one progress bar per phase."},
    )


@dataclass
class TrainerArguments(TrainingArguments):
    """transformers' ``TrainingArguments``, under a heading of their own in ``--help`` (after hf_incr's)."""

    _argument_group_name = "Trainer (transformers' TrainingArguments: batch size, precision, seed, saving, the Hub)"


def make_parser():
    """Three groups in ``--help``, hf_incr's first: where the model and data come from, the recipe, then Trainer's."""
    return HfArgumentParser((ScriptArguments, IncrementConfig, TrainerArguments),
                            usage="hf-incr COMMAND [--flag value ...]   (every flag, by group, below)")


_SECRET_FIELDS = ("hub_token", "push_to_hub_token")


def _read_config_file(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"`--config {path}` does not exist. Pass a YAML or JSON file of settings.")
    text = file.read_text(encoding="utf-8")
    values = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    if not isinstance(values, dict):
        raise ConfigError(
            f"`--config {path}` should hold a mapping of setting names to values, got {type(values).__name__}."
        )
    return values


def parse_args(argv: list[str] | None = None):
    """Parse ``(ScriptArguments, IncrementConfig, TrainingArguments)`` from a config file and flags."""
    parser = make_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    original_defaults = {action.dest: action.default for action in parser._actions}
    config_path = None
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise ConfigError("`--config` needs a file name.")
        config_path = argv[index + 1]
    check_removed([arg[2:].split("=")[0] for arg in argv if arg.startswith("--")], "The command line")
    if config_path:
        values = _read_config_file(config_path)
        check_removed(values, f"`{config_path}`")
        unknown = sorted(set(values) - set(original_defaults))
        if unknown:
            raise ConfigError(
                f"`{config_path}` has unknown setting(s) {unknown}. Check the spelling against `hf-incr <command> "
                "--help`; nothing was run."
            )
        # A settings file is data: it may say what to train and where the model goes (`output_dir`, checked before
        # saving), but not which other files this command reads settings from or writes settings to.
        chained = sorted(set(values) & set(_FLAG_ONLY))
        if chained:
            raise ConfigError(
                f"`{config_path}` sets {chained}, which only a flag may set (a settings file must not choose other "
                f"files to read or write); nothing was run. Remove them from the file and pass "
                f"{' / '.join('--' + name + ' FILE' for name in chained)} on the command line if you want them."
            )
        parser.set_defaults(**values)
    script_args, recipe, training_args = parser.parse_args_into_dataclasses(args=argv)
    if script_args.save_config:
        namespace, _ = parser.parse_known_args(argv)
        save_config(script_args.save_config, vars(namespace), original_defaults)
    return script_args, recipe, training_args


# Settings that name files of settings: accepted as flags, refused inside a `--config` file.
_FLAG_ONLY = ("config", "save_config")
_SETTINGS_SUFFIXES = (".yaml", ".yml")


def save_config(path: str, values: dict, defaults: dict) -> None:
    """Write the settings that differ from the defaults, as given (never a token), to a YAML file.

    The name must end in ``.yaml`` / ``.yml``, so a settings file can never overwrite a model's ``config.json``,
    weights or tokenizer."""
    target = Path(path)
    if target.suffix.lower() not in _SETTINGS_SUFFIXES or target.is_dir():
        raise ConfigError(
            f"`--save_config {path}` should name a YAML file (ending in .yaml or .yml), so that it can never "
            "overwrite a model's files; nothing was run. Pass e.g. `--save_config run.yaml`."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    kept = {
        name: value
        for name, value in values.items()
        if name not in _SECRET_FIELDS and name not in ("config", "save_config") and value != defaults.get(name)
    }
    target.write_text(yaml.safe_dump(json.loads(json.dumps(kept, default=str)), sort_keys=True), encoding="utf-8")


def _file_options(script_args: ScriptArguments, recipe: IncrementConfig | None) -> dict:
    """What ``load_text_data`` needs to read a data file: the CSV separator, the columns checked for mixed kinds."""
    options = {"delimiter": script_args.delimiter} if script_args.delimiter else {}
    if recipe is not None:
        options["columns"] = (recipe.text_column, recipe.label_column)
    return options


def load_data(script_args: ScriptArguments, recipe: IncrementConfig | None = None):
    """The training and eval data sets named by ``script_args``."""
    from .data import load_text_data

    if script_args.train_file:
        train = load_text_data(script_args.train_file, **_file_options(script_args, recipe))
    elif script_args.dataset_name:
        train = load_text_data(
            script_args.dataset_name, split=script_args.train_split, name=script_args.dataset_config_name
        )
    else:
        raise ConfigError("No training data: pass `--train_file FILE` or `--dataset_name NAME`.")
    return train, load_eval_data(script_args, recipe)


def load_eval_data(script_args: ScriptArguments, recipe: IncrementConfig | None = None):
    """Only the eval data set named by ``script_args`` (``None`` if none is named)."""
    from .data import load_text_data

    if script_args.eval_file:
        return load_text_data(script_args.eval_file, **_file_options(script_args, recipe))
    if script_args.dataset_name and script_args.eval_split:
        return load_text_data(
            script_args.dataset_name, split=script_args.eval_split, name=script_args.dataset_config_name
        )
    return None


def check_run_paths(training_args, model_dir: str | None = None) -> None:
    """Before anything is loaded or written: the output folder can be replaced safely and
    ``resume_from_checkpoint`` points into it (see :mod:`hf_incr.validation`)."""
    from .validation import check_output_dir, check_resume_from_checkpoint

    check_output_dir(training_args.output_dir, model_dir)
    check_resume_from_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)


def run_train_base(script_args: ScriptArguments, recipe: IncrementConfig, training_args):
    """``hf-incr train-base``: a first classifier on the data's labels."""
    from .loading import default_encoder
    from .recipe import train_base_classifier

    check_run_paths(training_args, script_args.model_name_or_path)
    train, evaluation = load_data(script_args, recipe)
    model_path = script_args.model_name_or_path or default_encoder()
    model, _, result = train_base_classifier(
        model_path, train, evaluation, config=recipe, args=training_args,
        trust_remote_code=script_args.trust_remote_code, new_head=script_args.new_head,
    )
    _finish(result, training_args, model, "train-base")
    return result


def run_increment(script_args: ScriptArguments, recipe: IncrementConfig, training_args):
    """``hf-incr increment``: add the new labels of the data to a trained classifier and train the increment."""
    from .loading import load_classifier
    from .recipe import train_increment
    from .validation import check_checkpoint, check_trained_classifier

    if not script_args.model_name_or_path:
        raise ConfigError("`hf-incr increment` needs `--model_name_or_path`: the trained classifier to extend.")
    check_run_paths(training_args, script_args.model_name_or_path)
    check_checkpoint(script_args.model_name_or_path)
    train, evaluation = load_data(script_args, recipe)
    started = time.perf_counter()
    model, tokenizer = load_classifier(script_args.model_name_or_path, script_args.trust_remote_code)
    check_trained_classifier(model, script_args.model_name_or_path)  # a Hub id's config, read by the load
    loaded = time.perf_counter() - started
    result = train_increment(model, tokenizer, train, evaluation, config=recipe, args=training_args)
    result.timings = {"load_s": loaded, **result.timings}
    _finish(result, training_args, model)
    return result


def run_evaluate(script_args: ScriptArguments, recipe: IncrementConfig, training_args):
    """``hf-incr evaluate``: metrics of a saved classifier on data; old/new split from its last increment."""
    from .data import encode_labels, is_multi_label_model, model_columns, tokenize
    from .lineage import get_lineage
    from .loading import load_classifier
    from .trainer import evaluate_model

    if not script_args.model_name_or_path:
        raise ConfigError("`hf-incr evaluate` needs `--model_name_or_path`: the classifier to evaluate.")
    model, tokenizer = load_classifier(script_args.model_name_or_path, script_args.trust_remote_code)
    evaluation = load_eval_data(script_args, recipe)
    if evaluation is None:
        raise ConfigError(
            "`hf-incr evaluate` needs data: `--eval_file FILE` (or `--dataset_name` with `--eval_split`)."
        )
    lineage = get_lineage(model)
    new_ids = set(lineage[-1]["label_ids"]) if lineage and lineage[-1].get("kind") != "base" else set()
    old_ids = [i for i in range(len(model.config.id2label)) if i not in new_ids]
    multi_label = is_multi_label_model(model)
    encoded = encode_labels(evaluation, model.config.label2id, recipe.label_column, multi_label)
    tokenized = model_columns(tokenize(encoded, tokenizer, recipe.text_column, recipe.max_length), tokenizer)
    metrics = evaluate_model(model, tokenized, training_args, old_ids, multi_label=multi_label,
                             threshold=recipe.threshold, tokenizer=tokenizer)
    print(format_summary("evaluate", {"model": metrics}, multi_label=multi_label))
    return metrics


def run_push(script_args: ScriptArguments, recipe: IncrementConfig, training_args):
    """``hf-incr push``: upload a saved folder (model, card, lineage, plot, replay memory) to the Hub."""
    from .hub import push_to_hub

    if not script_args.model_name_or_path or not script_args.repo_id:
        raise ConfigError("`hf-incr push` needs `--model_name_or_path FOLDER` (a saved model) and `--repo_id`.")
    return push_to_hub(
        script_args.model_name_or_path, script_args.repo_id, token=training_args.hub_token,
        private=bool(training_args.hub_private_repo), revision=getattr(training_args, "hub_revision", None),
        push_statistics=recipe.push_statistics,  # `--push_statistics false`: inference only
    )


def _finish(result, training_args, model, title: str = "increment") -> None:
    """Print the summary: old / new / all table, labels added, time per phase, where things were written."""
    if training_args.process_index != 0:
        return
    from .data import is_multi_label_model

    print()
    print(summary_of(result, title, multi_label=is_multi_label_model(model)))


def summary_of(result, title: str, *, multi_label: bool, rows: dict | None = None) -> str:
    """:func:`~hf_incr.report.format_summary` of an :class:`~hf_incr.IncrementResult` (``rows``: the table's rows,
    default before / after)."""
    output = Path(result.output_dir) if result.output_dir else None

    def written(name: str) -> str | None:
        return str(output / name) if output is not None and (output / name).is_file() else None

    record = result.record or {}
    hub_id = None
    if result.hub_url:
        hub_id = "/".join(str(result.hub_url).rstrip("/").split("/")[-2:])
    if rows is None:
        rows = {"before": result.metrics_before, "after": result.metrics_after}
        if result.metrics_plain:
            rows[PLAIN_ROW] = result.metrics_plain
    return format_summary(
        title, rows, multi_label=multi_label, labels_added=result.new_labels, forgetting=result.forgetting,
        timings=result.timings, output_dir=result.output_dir, card=written(CARD_FILENAME),
        lineage=written("lineage.json"), plot=written(PLOT_FILENAME), hub_url=result.hub_url, model=hub_id,
        thresholds=answering_thresholds(record), adaptation=record.get("adaptation"),
        best_head=next((cls.title for cls in extra_heads() if written(cls.files[0])), None),
        remote_code=any(written(cls.modeling_file.name) for cls in extra_heads() if cls.modeling_file),
    )


def run_info(argv: list[str]) -> dict:
    """``hf-incr info MODEL``: labels, lineage, last metrics, saved state and what the next increment does."""
    parser = argparse.ArgumentParser(
        prog="hf-incr info", description="Describe a classifier (a folder or a Hub id) without loading its weights."
    )
    parser.add_argument("model", help="A saved model folder or a Hub repo id.")
    parser.add_argument("--revision", default=None, help="Branch, tag or commit of a Hub repo.")
    parser.add_argument("--token", default=None, help="Hub token for a private repo (default: the stored one).")
    args = parser.parse_args(argv)
    from .info import model_info
    from .report import format_info

    info = model_info(args.model, revision=args.revision, token=args.token)
    print(format_info(info))
    return info


COMMANDS = {
    "train-base": run_train_base,
    "increment": run_increment,
    "evaluate": run_evaluate,
    "push": run_push,
}


def run_command(command: str, script_args: ScriptArguments, recipe: IncrementConfig, training_args):
    """Run one subcommand quietly (one heading and bar per phase; ``--verbose`` or ``--log_level info``: Trainer's
    logs and the data-processing bars)."""
    if script_args.verbose:
        training_args.log_level = "info"
    with quiet_run(verbose=is_verbose(training_args)):
        return COMMANDS[command](script_args, recipe, training_args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print(
            "usage: hf-incr {train-base,increment,evaluate,info,push,demo} [--help] [flags]\n\n"
            "  train-base  train a first classifier on a data set's labels\n"
            "  increment   add the data's new labels to a trained classifier and train the increment\n"
            "  evaluate    old / new / all metrics of a saved classifier on data\n"
            "  info        a saved classifier's labels, lineage, metrics and what its next increment does\n"
            "              (`hf-incr info FOLDER_OR_HUB_ID`; reads config.json and the file list only)\n"
            "  push        upload a saved folder (model, card, lineage, plot) to the Hub\n"
            "  demo        offline demo: 7 labels, then an 8th, on the embedded data set "
            "(--multi_label for sigmoid)\n\n"
            "Runs are quiet (one heading and one bar per phase, then a summary); `--verbose` shows Trainer's logs.\n"
            "`hf-incr COMMAND --help` lists every flag."
        )
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "demo":
            from .demo import main as demo_main

            demo_main(rest)
            return 0
        if command == "info":
            run_info(rest)
            return 0
        run_command(command, *parse_args(rest))
    except HfIncrError as error:
        print(f"hf-incr {command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
