"""The model card of a grown classifier: ``README.md`` rendered from ``model_cards/hf_incr_model_card.md`` through
``huggingface_hub.ModelCard.from_template``, plus a plot of accuracy on all / old / new labels across increments.

Everything the card says comes from the model's config: its labels and the lineage recorded in
``config.hf_incr_lineage``. :func:`write_model_card` is called on every save (:func:`~hf_incr.saving.save_increment`)
and again before every push with the Hub repo id, so the loading snippet names the repo the card lives in.
"""

from __future__ import annotations

import importlib.resources
import math
import platform
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers.utils import logging

from .config import MULTI_LABEL
from .lineage import LINEAGE_ATTRIBUTE, get_lineage
from .replay import REPLAY_DIRNAME, REPLAY_FILENAME
from .report import answering_thresholds, format_probability

logger = logging.get_logger(__name__)

TEMPLATE_NAME = "hf_incr_model_card.md"
PLOT_FILENAME = "increments.png"
CARD_FILENAME = "README.md"
TAGS = ["hf_incr", "class-incremental", "text-classification"]
# A line in every card that names the number of increments it describes; `card_has_lineage` checks it before a push.
LINEAGE_MARKER = "<!-- hf_incr:lineage increments={n} -->"
_STAGING_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-[0-9a-f]{8}$")  # save_increment's temporary folder
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_EXAMPLES_PER_LABEL = 2
_EXAMPLE_CHARS = 80
# A card must stay readable (and small) on a model with thousands of labels and a long lineage; `config.json` and
# `lineage.json` keep everything, the card shows it up to these sizes:
LABEL_TABLE_LIMIT = 100  # more labels: one row per run of ids added together, not one row per label
NAMES_PER_CELL = 10  # label names listed in one table cell before "… and N more"
GROWTH_STEPS_LIMIT = 6  # more increments: the opening sentence summarises them instead of naming each
MODEL_INDEX_INCREMENTS = 10  # the metadata's model-index covers the latest increments only (the body has all)
PLOT_FULL_TICKS = 8  # more increments: the plot's x ticks are thinned and the legend moves below the axes


def template_path() -> Path:
    """The card template shipped with the package (``model_cards/`` in a checkout, ``hf_incr.model_cards`` when
    installed)."""
    return Path(str(importlib.resources.files("hf_incr.model_cards") / TEMPLATE_NAME))


def write_model_card(
    model_or_config,
    directory: str | Path,
    *,
    model_id: str | None = None,
    plot_filename: str = PLOT_FILENAME,
    revision: str | None = None,
    **card_data_kwargs: Any,
) -> Path:
    """Write ``README.md`` (and the increments plot, when the lineage has metrics) into ``directory``.

    Args:
        model_or_config: The model (or its config). A model without lineage gets a card too.
        directory: The saved model folder. Example texts per label are read from its replay memory, if it has one.
        model_id: What the loading snippet passes to ``from_pretrained``: the Hub repo id when pushing. Default: the
            folder itself (``save_increment``'s temporary folder is mapped to its final name).
        plot_filename: File name of the plot, linked relatively from the card.
        revision: The Hub commit the loading lines pin (a push pins the commit it made).
        **card_data_kwargs: Extra metadata for the card header (``license``, ``language``, ``datasets``, ...).

    Returns:
        The path of ``README.md``.
    """
    directory = Path(directory)
    config = getattr(model_or_config, "config", model_or_config)
    lineage = get_lineage(config)
    if model_id is None:
        model_id = str(_final_folder(directory))
    plot_path = directory / plot_filename
    has_plot = plot_increments(lineage, plot_path, metric_name=_metric_name(config)) is not None
    if not has_plot and plot_path.exists():
        plot_path.unlink()  # a stale plot of an earlier save
    card = render_model_card(
        config,
        model_id=model_id,
        plot_filename=plot_filename if has_plot else None,
        examples=_replay_examples(directory),
        head_sections=head_sections(directory, config, model_id),
        remote_code=remote_code(directory, config),
        revision=revision,
        **card_data_kwargs,
    )
    path = directory / CARD_FILENAME
    card.save(path)
    return path


def render_model_card(
    model_or_config,
    *,
    model_id: str,
    plot_filename: str | None = PLOT_FILENAME,
    examples: dict[str, list[str]] | None = None,
    versions: dict[str, str] | None = None,
    head_sections: list[str] | None = None,
    remote_code: dict[str, str] | None = None,
    revision: str | None = None,
    **card_data_kwargs: Any,
) -> ModelCard:
    """The card as a ``huggingface_hub.ModelCard`` (metadata header with ``model-index``, and the Markdown body).
    ``head_sections``: what the extra heads saved with the model say of themselves (:func:`head_sections`);
    ``remote_code``: the head whose code ships with the model, and each loading's figures (:func:`remote_code`);
    ``revision``: the commit the loading lines pin."""
    config = getattr(model_or_config, "config", model_or_config)
    context = card_context(
        config, model_id=model_id, plot_filename=plot_filename, examples=examples, versions=versions
    )
    context.update(head_sections=head_sections or [], remote_code=remote_code, revision=revision)
    card_data = build_card_data(config, model_id=model_id, **card_data_kwargs)
    return ModelCard.from_template(card_data, template_path=str(template_path()), **context)


def build_card_data(model_or_config, *, model_id: str, **card_data_kwargs: Any) -> ModelCardData:
    """The card's YAML header: library, task, tags, base model (when it is a Hub id) and one ``model-index`` entry
    per metric and increment."""
    config = getattr(model_or_config, "config", model_or_config)
    lineage = get_lineage(config)
    base = _base_model(config, lineage)
    values: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "tags": TAGS,
        "base_model": base if _is_hub_id(base) else None,
        "model_name": _short_name(model_id),
        "eval_results": eval_results(config) or None,
    }
    extra_tags = card_data_kwargs.pop("tags", None) or []
    values["tags"] = TAGS + [t for t in extra_tags if t not in TAGS]
    values.update(card_data_kwargs)
    return ModelCardData(**values)


def eval_results(
    model_or_config,
    dataset_name: str = "held-out evaluation set",
    *,
    last: int | None = MODEL_INDEX_INCREMENTS,
) -> list[EvalResult]:
    """``EvalResult`` entries for the card's ``model-index``: per increment, the metric on all / old / new labels,
    macro-F1 and forgetting. Each increment is its own ``dataset_config`` (its evaluation set covers the labels
    known at that increment). Only the ``last`` increments are included (``None``: all), so the metadata header
    stays a bounded size on a long lineage; the card's body tabulates every increment."""
    config = getattr(model_or_config, "config", model_or_config)
    multi = getattr(config, "problem_type", None) == MULTI_LABEL
    metric_type, metric_label = ("f1", "Micro-F1") if multi else ("accuracy", "Accuracy")
    results = []
    lineage = get_lineage(config)
    for position, record in enumerate(lineage):
        if last is not None and position < len(lineage) - last:
            continue
        after = (record.get("metrics") or {}).get("after") or {}
        k = record.get("increment", position)
        metrics = [
            (metric_type, f"{metric_label} (all labels)", after.get("accuracy")),
            (metric_type, f"{metric_label} (old labels)", after.get("old_accuracy")),
            (metric_type, f"{metric_label} (new labels)", after.get("new_accuracy")),
            ("f1", "Macro-F1 (all labels)", after.get("macro_f1")),
            ("forgetting", f"Forgetting ({metric_label.lower()} on old labels, before - after)",
             (record.get("metrics") or {}).get("forgetting")),
        ]
        for metric, name, value in metrics:
            if _number(value) is None:
                continue
            results.append(
                EvalResult(
                    task_type="text-classification",
                    task_name="Text Classification",
                    dataset_type="hf_incr-increment-eval",
                    dataset_name=f"{dataset_name} (increment {k})",
                    dataset_config=f"increment-{k}",
                    dataset_split="eval",
                    metric_type=metric,
                    metric_name=name,
                    metric_value=round(float(value), 4),
                )
            )
    return results


def card_context(
    model_or_config,
    *,
    model_id: str,
    plot_filename: str | None = PLOT_FILENAME,
    examples: dict[str, list[str]] | None = None,
    versions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything the template shows, as Markdown-ready strings (the template only lays them out)."""
    config = getattr(model_or_config, "config", model_or_config)
    lineage = get_lineage(config)
    examples = examples or {}
    multi = getattr(config, "problem_type", None) == MULTI_LABEL
    id2label = _id2label(config)
    added_in, thresholds = {}, {}
    for record in lineage:
        for name in record.get("labels_added") or []:
            added_in.setdefault(name, record.get("increment"))
        # The latest increment that set a label's decision wins; the kernel LDA head's when it answers (its metrics
        # are the card's).
        thresholds.update(answering_thresholds(record) or {})
    labels = [
        {
            "id": i,
            "name": _md(name),
            "added_in": _increment_name(added_in[name], lineage) if name in added_in else "before hf_incr",
            "threshold": format_probability(thresholds[name]) if name in thresholds else "0.5",
            "examples": "<br>".join(_md(_clip(t)) for t in examples.get(name, [])[:_EXAMPLES_PER_LABEL]),
        }
        for i, name in sorted(id2label.items())
    ]
    # Thousands of one-label rows make a card of hundreds of kB that nobody scrolls: past the limit the table has
    # one row per run of consecutive ids added in the same increment (id2label in config.json lists them all).
    label_groups = _label_groups(labels, sorted(id2label.items())) if len(labels) > LABEL_TABLE_LIMIT else None
    increments = [_increment_row(record, position) for position, record in enumerate(lineage)]
    has_metrics = any(row[key] != "—" for row in increments for key in ("all", "old", "new"))
    base = _base_model(config, lineage)
    architecture = (getattr(config, "architectures", None) or [type(model_or_config).__name__])[0]
    first_examples = [t for name in id2label.values() for t in examples.get(name, [])[:1]]
    example_text = first_examples[0] if first_examples else "Replace this with a text to classify."
    last = lineage[-1] if lineage else None
    return {
        "model_id": model_id,
        "model_title": _short_name(model_id),
        "architecture": architecture,
        "model_type": getattr(config, "model_type", None) or "unknown",
        "multi_label": multi,
        "metric_name": "Micro-F1" if multi else "Accuracy",
        "base_model_link": _model_link(base) if base else None,
        "num_labels": len(id2label),
        "labels": labels,
        "label_groups": label_groups,
        "increments": increments,
        "growth": _growth(increments),
        "num_increments": len(lineage),
        "has_thresholds": multi and bool(thresholds),
        "indexed_increments": min(len(lineage), MODEL_INDEX_INCREMENTS),
        "lineage_marker": LINEAGE_MARKER.format(n=len(lineage)),
        "lineage_attribute": LINEAGE_ATTRIBUTE,
        "has_metrics": has_metrics,
        "plot_filename": plot_filename if has_metrics else None,
        "recipe_columns": _recipe_columns(lineage),
        "example_text": _py_string(_clip(example_text, 200)),
        "last_labels": _names((last or {}).get("labels_added") or []),
        "versions": versions if versions is not None else framework_versions(),
    }


def _increment_row(record: dict[str, Any], position: int) -> dict[str, Any]:
    """One increment of the lineage as the card's tables show it."""
    metrics = record.get("metrics") or {}
    after, before = metrics.get("after") or {}, metrics.get("before") or {}
    added = record.get("labels_added") or []
    return {
        "increment": record.get("increment", position),
        "kind": record.get("kind", "increment"),
        "labels_added": _names(added) or "none (more training)",
        "num_added": len(added),
        "num_labels": record.get("num_labels", ""),
        "started_from": _model_link(record.get("base_model")),
        "head_rows": HEAD_ROWS.get(record.get("head_rows"), "—"),
        "train_examples": _count(metrics.get("train_examples")),
        "replayed_examples": _count(metrics.get("replayed_examples")),
        "date": str(record.get("date") or "")[:10] or "—",
        "all": _pct(after.get("accuracy")),
        "old": _pct(after.get("old_accuracy")),
        "new": _pct(after.get("new_accuracy")),
        "old_before": _pct(before.get("old_accuracy")),
        "forgetting": _pp(metrics.get("forgetting")),
        "macro_f1": _pct(after.get("macro_f1")),
    }


def card_has_lineage(card_text: str, model_or_config) -> bool:
    """Whether ``card_text`` is a card that describes every increment of the model's lineage."""
    lineage = get_lineage(getattr(model_or_config, "config", model_or_config))
    return LINEAGE_MARKER.format(n=len(lineage)) in card_text and all(
        f"| {record.get('increment')} |" in card_text for record in lineage
    )


def plot_increments(lineage: list[dict[str, Any]], path: str | Path, *, metric_name: str = "Accuracy") -> Path | None:
    """Plot the metric on all / old / new labels after each increment into a PNG at ``path``.

    Uses matplotlib's object API with the Agg canvas: no pyplot state and no global style change. Returns ``None``
    (and writes nothing) when no increment has metrics.
    """
    points = []
    for record in lineage:
        after = ((record.get("metrics") or {}).get("after")) or {}
        points.append((record, {key: _number(after.get(key)) for key in ("accuracy", "old_accuracy", "new_accuracy")}))
    if not any(v is not None for _, values in points for v in values.values()):
        return None

    xs = [record.get("increment", i) for i, (record, _) in enumerate(points)]
    long = len(points) > PLOT_FULL_TICKS
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib only where a plot is drawn
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.6 if long else 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    series = [
        ("accuracy", "All labels", "#1f4e79", "o", "-"),
        ("old_accuracy", "Old labels (known before the increment)", "#2e8b57", "s", "--"),
        ("new_accuracy", "New labels (added by the increment)", "#e07b00", "^", ":"),
    ]
    finals, lowest = [], 100.0
    for key, label, color, marker, style in series:
        ys = [math.nan if values[key] is None else 100 * values[key] for _, values in points]
        if all(math.isnan(y) for y in ys):
            continue
        lowest = min([lowest] + [y for y in ys if not math.isnan(y)])
        ax.plot(xs, ys, color=color, marker=marker, linestyle=style, linewidth=2, markersize=7, label=label)
        last = next(((x, y) for x, y in zip(reversed(xs), reversed(ys)) if not math.isnan(y)), None)
        if last is not None:
            finals.append((last, color))
    bottom = max(0.0, 10 * math.floor((lowest - 15) / 10))
    # Offsets in increments: widened on a long lineage, where one increment is a narrow slice of the axis.
    unit = max(1.0, (max(xs) - min(xs)) / (PLOT_FULL_TICKS - 1))
    _label_final_values(ax, finals, spacing=(102 - bottom) * 0.045, dx=0.12 * unit)
    ax.set_xticks(xs, _tick_labels([record for record, _ in points]), fontsize=8)
    ax.set_xlim(min(xs) - 0.4 * unit, max(xs) + 0.6 * unit)
    ax.set_ylim(bottom, 102)
    ax.set_ylabel(f"{metric_name} (%)")
    ax.set_xlabel("Increment (labels in total)" if long else "Increment")
    ax.set_title(f"{metric_name} on the held-out set after each increment", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if long:
        # Many points leave no empty corner inside the axes: the legend goes below them.
        fig.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    else:
        ax.legend(loc="lower left", fontsize=8, frameon=False)
    path = Path(path)
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def framework_versions() -> dict[str, str]:
    """Versions of the libraries the card was rendered with (shown under "Framework versions")."""

    versions = {"Python": platform.python_version()}
    for name, dist in (("hf_incr", "hf_incr"), ("Transformers", "transformers"), ("PyTorch", "torch"),
                       ("Hugging Face Hub", "huggingface_hub")):
        try:
            versions[name] = version(dist)
        except PackageNotFoundError:
            continue
    return versions


# -- helpers ---------------------------------------------------------------------------------------------------------


def _tick_labels(records: list[dict[str, Any]]) -> list[str]:
    """One x tick label per increment: number, labels added and total; on a long lineage only the number and
    total, on every few ticks (always the first and the last), so the labels never run into each other."""
    count = len(records)
    if count <= PLOT_FULL_TICKS:
        labels = []
        for record in records:
            added = len(record.get("labels_added") or [])
            kind = "base" if record.get("kind") == "base" else f"+{added} label{'s' if added != 1 else ''}"
            labels.append(f"{record.get('increment', len(labels))}\n{kind}\n({record.get('num_labels', '?')} total)")
        return labels
    step = math.ceil(count / PLOT_FULL_TICKS)
    shown = {0, count - 1} | {i for i in range(0, count, step) if count - 1 - i >= step / 2}
    return [
        f"{record.get('increment', i)}\n({record.get('num_labels', '?')})" if i in shown else ""
        for i, record in enumerate(records)
    ]


def _label_final_values(ax, finals, spacing: float, dx: float = 0.12) -> None:
    """Write each series' last value right of its last point, nudged apart vertically so the numbers never overlap."""
    finals = sorted(finals, key=lambda item: item[0][1])
    placed: list[float] = []
    for (x, y), color in finals:
        text_y = y if not placed else max(y, placed[-1] + spacing)
        placed.append(text_y)
        ax.annotate(f"{y:.1f}", (x, y), xytext=(x + dx, text_y), textcoords="data", va="center", color=color,
                    fontsize=9)


def _final_folder(directory: Path) -> Path:
    match = _STAGING_NAME.match(directory.name)
    return directory.parent / match.group("name") if match else directory


def _metric_name(config) -> str:
    return "Micro-F1" if getattr(config, "problem_type", None) == MULTI_LABEL else "Accuracy"


def _base_model(config, lineage) -> str | None:
    if lineage:
        # With a lineage, `_name_or_path` is this model's own folder once it is reloaded: naming it would make the
        # card say the model was grown from itself. No recorded base (a base built from a config) means unknown.
        return str(lineage[0]["base_model"]) if lineage[0].get("base_model") else None
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    return str(name) if name else None


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and _HUB_ID.match(name) is not None and not Path(name).exists()


# How an increment made the head's rows (the lineage's ``head_rows``), as the card's Lineage table says it.
HEAD_ROWS = {
    "solved": "solved from the statistics",
    "kept": "trained rows kept, new rows fitted",
    "refitted": "refitted on every label's rows",
    "adapted": "encoder adapted, then solved",
    "trained": "trained by gradient",
}


def _model_link(name: str | None) -> str:
    """A Hub id as a link; a local path as its folder name only (no user's directory layout in a public card)."""
    if not name:
        return "—"
    if _is_hub_id(name):
        return f"[{name}](https://huggingface.co/{name})"
    return f"`{_md(Path(name).name or name)}` (local folder)"


def _short_name(model_id: str) -> str:
    return Path(str(model_id).rstrip("/")).name or str(model_id)


def _increment_name(k, lineage) -> str:
    kind = next((r.get("kind") for r in lineage if r.get("increment") == k), None)
    return f"{k} (base)" if kind == "base" else str(k)


def _recipe_columns(lineage) -> dict[str, Any] | None:
    """The recipe table: one row per setting (in the order the recipe lists them) and one column per run of
    consecutive increments with the same settings, so twenty increments of one recipe make two columns, not 21."""
    names: list[str] = []
    for record in lineage:
        for name in record.get("recipe") or {}:
            if name not in names:
                names.append(name)
    if not names:
        return None
    runs: list[list[dict[str, Any]]] = []
    for record in lineage:
        if runs and (runs[-1][-1].get("recipe") or {}) == (record.get("recipe") or {}):
            runs[-1].append(record)
        else:
            runs.append([record])
    titles = []
    for run in runs:
        first, last = run[0].get("increment"), run[-1].get("increment")
        titles.append(f"Increment {first}" if len(run) == 1 else f"Increments {first}–{last}")
    rows = [
        {"name": name, "values": [_setting((run[0].get("recipe") or {}).get(name, "")) for run in runs]}
        for name in names
    ]
    return {"titles": titles, "rows": rows}


def _names(names, limit: int = NAMES_PER_CELL) -> str:
    """Label names as code spans for one table cell: the first ``limit``, then how many more."""
    names = list(names)
    shown = ", ".join(f"`{_md(n)}`" for n in names[:limit])
    return shown if len(names) <= limit else f"{shown}, … and {len(names) - limit} more"


def _label_groups(labels: list[dict[str, Any]], id2label: list[tuple[int, str]]) -> list[dict[str, Any]]:
    """Runs of consecutive ids added in the same increment: ids, count and (some of) the names of each run."""
    groups: list[dict[str, Any]] = []
    for label, (_, name) in zip(labels, id2label):
        if groups and groups[-1]["added_in"] == label["added_in"] and groups[-1]["last"] == label["id"] - 1:
            groups[-1]["last"] = label["id"]
            groups[-1]["names"].append(name)
        else:
            groups.append({"first": label["id"], "last": label["id"], "added_in": label["added_in"], "names": [name]})
    for group in groups:
        first, last = group["first"], group["last"]
        group["ids"] = str(first) if first == last else f"{first}–{last}"
        group["count"] = len(group["names"])
        group["names"] = _names(group["names"])
    return groups


def _growth(increments: list[dict[str, Any]]) -> str:
    """How the label set grew, for the card's opening sentence: each step, or a summary of a long lineage."""
    steps = [
        f"a base classifier with {inc['num_added']} label{'s' if inc['num_added'] != 1 else ''}"
        if inc["kind"] == "base"
        else f"increment {inc['increment']} added {inc['num_added']}"
        for inc in increments
    ]
    if len(steps) > GROWTH_STEPS_LIMIT:
        rest = increments[1:]
        added = sum(inc["num_added"] for inc in rest)
        steps = [steps[0], f"then {len(rest)} increments added {added} label{'s' if added != 1 else ''}"]
    return ", ".join(steps) + "."


def _setting(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(_md(str(v)) for v in value) or "—"
    return _md(str(value))


def _replay_examples(directory: Path) -> dict[str, list[str]]:
    """Example texts per label from the replay memory saved in ``directory`` (empty when it has none)."""
    path = directory / REPLAY_DIRNAME / REPLAY_FILENAME
    if not path.is_file():
        return {}
    try:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    except Exception as error:  # an unreadable memory must not block a save
        logger.warning("Could not read example texts from %s: %s", path, error)
        return {}
    examples: dict[str, list[str]] = {}
    for row in rows:
        for name in row.get("labels") or []:
            examples.setdefault(str(name), []).append(str(row.get("text", "")))
    return examples


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def _pct(value) -> str:
    value = _number(value)
    return "—" if value is None else f"{100 * value:.1f}"


def _pp(value) -> str:
    value = _number(value)
    return "—" if value is None else f"{100 * value:+.1f}"


def _count(value) -> str:
    return "—" if value is None else str(value)


def _clip(text: str, limit: int = _EXAMPLE_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell (no pipes, no raw HTML, no backticks that would end a code span)."""
    return (
        str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        .replace("`", "\u02cb")  # a look-alike: entities are not decoded inside code spans
    )


def _py_string(text: str) -> str:
    """A Python string literal for the code snippets."""
    return repr(str(text))


# The extra heads -----------------------------------------------------------------------------------------------


def remote_code(directory: str | Path, model_or_config) -> dict[str, str] | None:
    """The head whose inference code ships in ``directory`` (``None``: none does), with what each way of loading
    measured at the last increment: the head's metrics and the plain Linear's."""
    from .heads import extra_heads

    directory = Path(directory)
    shipping = [cls for cls in extra_heads() if cls.modeling_file and (directory / cls.modeling_file.name).is_file()]
    if not shipping:
        return None
    cls = shipping[-1]
    config = getattr(model_or_config, "config", model_or_config)
    lineage = get_lineage(config)
    metrics = (lineage[-1].get("metrics") or {}) if lineage else {}

    def figures(values: dict) -> str:
        return " / ".join(_pct(values.get(key)) for key in ("accuracy", "old_accuracy", "new_accuracy"))

    return {"title": cls.title, "file": cls.modeling_file.name, "weights_file": cls.files[0],
            "best": figures(metrics.get("after") or {}),
            "plain": figures(metrics.get("after_plain_transformers") or {})}


def head_sections(directory: str | Path, model_or_config, model_id: str) -> list[str]:
    """The Markdown each extra head saved in ``directory`` writes about itself (how to load it, its files)."""
    from .heads import extra_heads

    config = getattr(model_or_config, "config", model_or_config)
    sections = [cls.card_section(Path(directory), config, model_id) for cls in extra_heads()]
    return [section for section in sections if section]


def _id2label(config) -> dict[int, str]:
    """A model config's label names by id (config.json stores the ids as strings)."""
    return {int(i): str(name) for i, name in (getattr(config, "id2label", None) or {}).items()}
