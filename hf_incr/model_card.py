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
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers.utils import logging

from .lineage import LINEAGE_ATTRIBUTE, get_lineage

logger = logging.get_logger(__name__)

TEMPLATE_NAME = "hf_incr_model_card.md"
PLOT_FILENAME = "increments.png"
CARD_FILENAME = "README.md"
MULTI_LABEL = "multi_label_classification"
TAGS = ["hf_incr", "class-incremental", "text-classification"]
# A line in every card that names the number of increments it describes; `card_has_lineage` checks it before a push.
LINEAGE_MARKER = "<!-- hf_incr:lineage increments={n} -->"
_STAGING_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-[0-9a-f]{8}$")  # save_increment's temporary folder
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_EXAMPLES_PER_LABEL = 2
_EXAMPLE_CHARS = 80


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
    **card_data_kwargs: Any,
) -> Path:
    """Write ``README.md`` (and the increments plot, when the lineage has metrics) into ``directory``.

    Args:
        model_or_config: The model (or its config). A model without lineage gets a card too.
        directory: The saved model folder. Example texts per label are read from its replay memory, if it has one.
        model_id: What the loading snippet passes to ``from_pretrained``: the Hub repo id when pushing. Default: the
            folder itself (``save_increment``'s temporary folder is mapped to its final name).
        plot_filename: File name of the plot, linked relatively from the card.
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
    **card_data_kwargs: Any,
) -> ModelCard:
    """The card as a ``huggingface_hub.ModelCard`` (metadata header with ``model-index``, and the Markdown body)."""
    config = getattr(model_or_config, "config", model_or_config)
    context = card_context(
        config, model_id=model_id, plot_filename=plot_filename, examples=examples, versions=versions
    )
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


def eval_results(model_or_config, dataset_name: str = "held-out evaluation set") -> list[EvalResult]:
    """``EvalResult`` entries for the card's ``model-index``: per increment, the metric on all / old / new labels,
    macro-F1 and forgetting. Each increment is its own ``dataset_config`` (its evaluation set covers the labels
    known at that increment)."""
    config = getattr(model_or_config, "config", model_or_config)
    multi = getattr(config, "problem_type", None) == MULTI_LABEL
    metric_type, metric_label = ("f1", "Micro-F1") if multi else ("accuracy", "Accuracy")
    results = []
    for record in get_lineage(config):
        after = (record.get("metrics") or {}).get("after") or {}
        k = record.get("increment", len(results))
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
    id2label = {int(i): str(name) for i, name in (getattr(config, "id2label", None) or {}).items()}
    added_in = {}
    for record in lineage:
        for name in record.get("labels_added") or []:
            added_in.setdefault(name, record.get("increment"))
    labels = [
        {
            "id": i,
            "name": _md(name),
            "added_in": _increment_name(added_in[name], lineage) if name in added_in else "before hf_incr",
            "examples": "<br>".join(_md(_clip(t)) for t in examples.get(name, [])[:_EXAMPLES_PER_LABEL]),
        }
        for i, name in sorted(id2label.items())
    ]
    increments = []
    for record in lineage:
        metrics = record.get("metrics") or {}
        after, before = metrics.get("after") or {}, metrics.get("before") or {}
        k = record.get("increment", len(increments))
        added = record.get("labels_added") or []
        increments.append(
            {
                "increment": k,
                "kind": record.get("kind", "increment"),
                "labels_added": ", ".join(f"`{_md(n)}`" for n in added) or "none (more training)",
                "num_added": len(added),
                "num_labels": record.get("num_labels", ""),
                "started_from": _model_link(record.get("base_model")),
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
        )
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
        "increments": increments,
        "num_increments": len(lineage),
        "lineage_marker": LINEAGE_MARKER.format(n=len(lineage)),
        "lineage_attribute": LINEAGE_ATTRIBUTE,
        "has_metrics": has_metrics,
        "plot_filename": plot_filename if has_metrics else None,
        "recipe_rows": _recipe_rows(lineage),
        "example_text": _py_string(_clip(example_text, 200)),
        "last_labels": ", ".join(f"`{_md(n)}`" for n in (last or {}).get("labels_added") or []),
        "versions": versions if versions is not None else framework_versions(),
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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xs = [record.get("increment", i) for i, (record, _) in enumerate(points)]
    fig = Figure(figsize=(7.5, 4.2), dpi=120, layout="constrained")
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
    _label_final_values(ax, finals, spacing=(102 - bottom) * 0.045)
    ticks = []
    for record, _ in points:
        added = len(record.get("labels_added") or [])
        kind = "base" if record.get("kind") == "base" else f"+{added} label{'s' if added != 1 else ''}"
        ticks.append(f"{record.get('increment', len(ticks))}\n{kind}\n({record.get('num_labels', '?')} total)")
    ax.set_xticks(xs, ticks, fontsize=8)
    ax.set_xlim(min(xs) - 0.4, max(xs) + 0.6)
    ax.set_ylim(bottom, 102)
    ax.set_ylabel(f"{metric_name} (%)")
    ax.set_xlabel("Increment")
    ax.set_title(f"{metric_name} on the held-out set after each increment", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="lower left", fontsize=8, frameon=False)
    path = Path(path)
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def framework_versions() -> dict[str, str]:
    """Versions of the libraries the card was rendered with (shown under "Framework versions")."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"Python": platform.python_version()}
    for name, dist in (("hf_incr", "hf_incr"), ("Transformers", "transformers"), ("PyTorch", "torch"),
                       ("Hugging Face Hub", "huggingface_hub")):
        try:
            versions[name] = version(dist)
        except PackageNotFoundError:
            continue
    return versions


# -- helpers ---------------------------------------------------------------------------------------------------------


def _label_final_values(ax, finals, spacing: float) -> None:
    """Write each series' last value right of its last point, nudged apart vertically so the numbers never overlap."""
    finals = sorted(finals, key=lambda item: item[0][1])
    placed: list[float] = []
    for (x, y), color in finals:
        text_y = y if not placed else max(y, placed[-1] + spacing)
        placed.append(text_y)
        ax.annotate(f"{y:.1f}", (x, y), xytext=(x + 0.12, text_y), textcoords="data", va="center", color=color,
                    fontsize=9)


def _final_folder(directory: Path) -> Path:
    match = _STAGING_NAME.match(directory.name)
    return directory.parent / match.group("name") if match else directory


def _metric_name(config) -> str:
    return "Micro-F1" if getattr(config, "problem_type", None) == MULTI_LABEL else "Accuracy"


def _base_model(config, lineage) -> str | None:
    if lineage and lineage[0].get("base_model"):
        return str(lineage[0]["base_model"])
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    return str(name) if name else None


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and _HUB_ID.match(name) is not None and not Path(name).exists()


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


def _recipe_rows(lineage) -> list[dict[str, Any]]:
    """One row per recipe setting, one cell per increment (settings in the order the recipe lists them)."""
    names: list[str] = []
    for record in lineage:
        for name in record.get("recipe") or {}:
            if name not in names:
                names.append(name)
    return [
        {"name": name, "values": [_setting((r.get("recipe") or {}).get(name, "")) for r in lineage]} for name in names
    ]


def _setting(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(_md(str(v)) for v in value) or "—"
    return _md(str(value))


def _replay_examples(directory: Path) -> dict[str, list[str]]:
    """Example texts per label from the replay memory saved in ``directory`` (empty when it has none)."""
    path = directory / "replay_memory" / "memory.parquet"
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
    """Text safe inside a Markdown table cell (no pipes, no raw HTML)."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _py_string(text: str) -> str:
    """A Python string literal for the code snippets."""
    return repr(str(text))
