"""What a person reads at the end of a run, and from ``hf-incr info``: pure functions that return strings.

- :func:`format_metrics_table`: the old / new / all labels table, under the right metric name.
- :func:`format_summary`: the table, the labels added, the time per phase, where the model, card and lineage are, and
  the line that loads the model.
- :func:`format_info`: a saved model's labels, lineage, last metrics, saved state and what its next increment does.
"""

from __future__ import annotations

import math
from typing import Any

# IncrementResult.timings keys, with the names a reader sees (in the order they are shown).
PHASE_TIMINGS = {
    "load_s": "loading",
    "feature_cache_s": "encoding",
    "warmup_s": "warm-up",
    "finetune_s": "fine-tuning",
    "adapt_s": "adapting the encoder",
    "encode_s": "frozen pass",
    "solve_s": "solving the heads",
    "closed_form_s": None,  # the frozen pass and the solve: shown apart
    "new_rows_s": None,
    "evaluate_s": "evaluating",
    "total_s": "total",
    "save_s": "saving",
}


# The order of a lineage record's metrics in `hf-incr info` (config.json stores them sorted by name).
METRIC_ORDER = ("accuracy", "old_accuracy", "new_accuracy", "macro_f1", "old_macro_f1", "new_macro_f1", "micro_f1",
                "old_micro_f1", "new_micro_f1")


def metric_name(multi_label: bool) -> str:
    """The metric that ``accuracy`` / ``old_accuracy`` / ``new_accuracy`` hold: micro-F1 for a multi-label model."""
    return "micro-F1" if multi_label else "accuracy"


def _pct(value) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f} %"


def format_metrics_table(rows: dict[str, dict], metric: str = "accuracy") -> str:
    """A small Markdown table of old / new / all labels, one row per entry of ``rows``; ``metric`` heads the first
    column (``accuracy``, or ``micro-F1`` for multi-label: see :func:`metric_name`)."""
    lines = [f"| {metric} | old labels | new labels | all labels |", "|---|---|---|---|"]
    for name, metrics in rows.items():
        lines.append(
            f"| {name} | {_pct(metrics.get('old_accuracy'))} | {_pct(metrics.get('new_accuracy'))} | "
            f"{_pct(metrics.get('accuracy'))} |"
        )
    return "\n".join(lines)


def format_forgetting(forgetting: float | None, metric: str = "accuracy") -> str | None:
    """``Forgetting (drop of old-label accuracy): +1.2 points``; ``None`` when nothing was measured."""
    if forgetting is None or forgetting != forgetting:
        return None
    return f"Forgetting (drop of old-label {metric}): {100 * forgetting:+.1f} points"


def format_timings(timings: dict[str, float] | None) -> str | None:
    """``Time: encoding 1.2 s, warm-up 0.4 s, total 3.0 s`` from ``IncrementResult.timings`` (the phases that ran, in
    their order)."""
    if not timings:
        return None
    from .heads import extra_heads

    heads = {f"{cls.lineage_key or cls.name}_s": f"of it the {cls.title}" for cls in extra_heads()}
    keys = list(PHASE_TIMINGS)
    at = keys.index("solve_s") + 1  # each extra head's share of the solve, right after it
    names = {key: PHASE_TIMINGS.get(key, heads.get(key)) for key in [*keys[:at], *heads, *keys[at:]]}
    order = [key for key in names if key in timings] + [key for key in timings if key not in names]
    parts = [f"{names.get(key) or key.removesuffix('_s')} {timings[key]:.1f} s" for key in order
             if names.get(key, key) is not None]
    return "Time: " + ", ".join(parts)


def threshold_probability(logit: float) -> float:
    """The probability a decision threshold in logits stands for (``sigmoid``), for any size of logit."""
    return 1 / (1 + math.exp(-min(max(logit, -700.0), 700.0)))


def format_probability(logit: float) -> str:
    """A decision threshold in logits as the probability it stands for, readable at any size: a closed-form head's
    logits can be in the hundreds, and ``0.000`` would read as "always predicted"."""
    value = threshold_probability(logit)
    if value > 1 - 1e-3:
        return "> 0.999"
    return f"{value:.3f}" if value >= 1e-3 else f"{value:.1e}"


def format_adaptation(adaptation: dict) -> str:
    """One line: whether the encoder of a model trained elsewhere was adapted, and the eval figures that decided."""
    def old_and_all(figures: dict) -> str:
        return " / ".join(f"{100 * figures.get(key, float('nan')):.1f}" for key in ("old_accuracy", "accuracy"))

    checked = ""
    if "eval_kept_rows" in adaptation:
        checked = (f"; eval accuracy old / all labels: kept rows {old_and_all(adaptation['eval_kept_rows'])} %, "
                   f"adapted {old_and_all(adaptation['eval_adapted'])} %")
    if adaptation.get("kept"):
        return f"Encoder not adapted: the kept trained rows did better on the eval data{checked}"
    how = f"fine-tuned {adaptation.get('epochs', 0):g} epoch(s) on every old and new label's rows, head solved from it"
    if not checked:
        checked = " (not checked: pass eval data to compare it with keeping the trained rows)"
    return f"Encoder adapted (a model trained elsewhere, given its old labels' data): {how}{checked}"


def format_thresholds(thresholds: dict[str, float], shown: int = 5) -> str:
    """One line: the labels whose decision threshold was tuned, as the probability each is predicted above."""
    parts = [f"{name} {format_probability(logit)}" for name, logit in list(thresholds.items())[:shown]]
    more = f" and {len(thresholds) - shown} more (lineage.json)" if len(thresholds) > shown else ""
    return f"Thresholds tuned (probability, folded into the biases): {', '.join(parts)}{more}"


def answering_thresholds(record: dict) -> dict[str, float] | None:
    """The multi-label thresholds a lineage record's answering head tuned: an extra head's when it recorded some (the
    Linear's are then in the record's ``thresholds``), else the Linear's."""
    from .heads import extra_heads

    for cls in extra_heads():
        thresholds = (record.get(cls.lineage_key) or {}).get("thresholds") if cls.lineage_key else None
        if thresholds:
            return thresholds
    return record.get("thresholds")


# The summary's row of what plain transformers gets when an extra head answers in hf_incr.
PLAIN_ROW = "after, plain transformers (its Linear)"


def format_usage(model: str, best: str | None = None, remote_code: bool = False, multi_label: bool = False
                 ) -> list[str]:
    """The lines that load the model with each head: the answering head ``best`` (its title; ``None``: the Linear
    answers) through ``trust_remote_code=True`` when its code ships with the model (``remote_code``), else through
    ``hf_incr.load_model``; and plain transformers, which gets the model's own Linear."""
    top_k = ", top_k=None" if multi_label else ""
    plain = f'pipeline("text-classification", model="{model}"{top_k})'
    if best is None:
        return [plain]
    if remote_code:
        line = f'pipeline("text-classification", model="{model}", trust_remote_code=True{top_k})'
    else:
        line = f'pipeline("text-classification", model=hf_incr.load_model("{model}"), tokenizer="{model}"{top_k})'
    return [f"{line}  (the {best})", f"{plain}  (the model's own Linear, what servers without remote code serve)"]


def format_summary(
    title: str,
    rows: dict[str, dict],
    *,
    multi_label: bool = False,
    labels_added: list[str] | None = None,
    forgetting: float | None = None,
    timings: dict[str, float] | None = None,
    output_dir: str | None = None,
    card: str | None = None,
    lineage: str | None = None,
    plot: str | None = None,
    hub_url: str | None = None,
    model: str | None = None,
    thresholds: dict[str, float] | None = None,
    adaptation: dict | None = None,
    best_head: str | None = None,
    remote_code: bool = False,
) -> str:
    """The block printed at the end of every command.

    Args:
        title: What ran (``increment``, ``train-base``, ``evaluate``, ``demo``).
        rows: Metrics per table row (``{"before": {...}, "after": {...}}``); rows without metrics are left out.
        multi_label: Names the metric micro-F1 instead of accuracy.
        labels_added, forgetting, timings: From :class:`~hf_incr.IncrementResult`.
        output_dir, card, lineage, plot, hub_url: Where things were written (``None``: not written).
        model: What the usage line loads; default: ``hub_url``'s repo or ``output_dir``.
        thresholds: Multi-label decision thresholds (logits) this run tuned and folded into the biases, by label.
        adaptation: The lineage's ``adaptation`` entry (a model trained elsewhere whose encoder was fine-tuned).
        best_head: The title of the extra head the model answers with (``None``: its Linear); ``remote_code``: its
            code ships with the model. The usage lines load each head.
    """
    metric = metric_name(multi_label)
    lines = [f"== hf-incr {title}: summary =="]
    rows = {name: metrics for name, metrics in rows.items() if metrics}
    if rows:
        lines += [format_metrics_table(rows, metric)]
    for line in (format_forgetting(forgetting, metric),):
        if line:
            lines.append(line)
    if labels_added is not None:
        lines.append(f"Labels added: {', '.join(labels_added) if labels_added else 'none'}")
    if thresholds:
        lines.append(format_thresholds(thresholds))
    if adaptation:
        lines.append(format_adaptation(adaptation))
    timing = format_timings(timings)
    if timing:
        lines.append(timing)
    places = [("Model", output_dir), ("Card", card), ("Plot", plot), ("Lineage", lineage), ("Pushed to", hub_url)]
    lines += [f"{name + ':':<10} {value}" for name, value in places if value]
    model = model or output_dir
    if model:
        usage = format_usage(model, best_head, remote_code, multi_label)
        lines += [f"{'Use it:' if i == 0 else '':<10} {line}" for i, line in enumerate(usage)]
    return "\n".join(lines)


# hf-incr info ---------------------------------------------------------------------------------------------------


def _metrics_cells(record: dict[str, Any]) -> list[str]:
    metrics = record.get("metrics") or {}
    after = metrics.get("after") or {}
    forgetting = metrics.get("forgetting")
    return [
        _pct(after.get("accuracy")), _pct(after.get("old_accuracy")), _pct(after.get("new_accuracy")),
        "-" if forgetting is None else f"{100 * forgetting:+.1f} pp",
    ]


def format_lineage_table(lineage: list[dict[str, Any]], metric: str = "accuracy") -> str:
    """One row per increment: what it added, how many labels the model had after it, and its metrics."""
    lines = [
        f"| increment | kind | labels added | labels | {metric} all | old | new | forgetting | date |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for record in lineage:
        added = record.get("labels_added") or []
        shown = ", ".join(added[:5]) + (f" … and {len(added) - 5} more" if len(added) > 5 else "")
        cells = [
            str(record.get("increment", "?")), str(record.get("kind", "?")), shown, str(record.get("num_labels", "?")),
            *_metrics_cells(record), str(record.get("date") or "-")[:10],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_info(info: dict[str, Any]) -> str:
    """``hf-incr info``'s text, from :func:`hf_incr.info.model_info`'s dict."""
    metric = metric_name(info.get("multi_label", False))
    lines = [f"== {info['source']} ==", f"Kind: {'multi-label' if info.get('multi_label') else 'single-label'} "
             f"classifier, {len(info['labels'])} labels ({info.get('model_type') or 'unknown model type'})"]
    lines += ["", "Labels (id, name, added by increment):"]
    for label_id, name, increment in info["labels"]:
        lines.append(f"  {label_id:>3}  {name}  ({'-' if increment is None else increment})")
    lineage = info.get("lineage") or []
    lines.append("")
    if lineage:
        lines += ["Lineage:", format_lineage_table(lineage, metric)]
        after = ((lineage[-1].get("metrics") or {}).get("after")) or {}
        shown = {k: v for k, v in after.items() if isinstance(v, (int, float)) and v == v}
        order = [k for k in METRIC_ORDER if k in shown] + sorted(k for k in shown if k not in METRIC_ORDER)
        if order:
            lines.append("Last metrics: " + ", ".join(f"{k} {shown[k]:.4g}" for k in order))
    else:
        lines.append("Lineage: none (a model hf_incr has not trained)")
    from .heads import HEADS

    heads = info.get("heads") or {}
    lines += ["", "Saved with it:"]
    lines += [f"  {HEADS[name].title if name in HEADS else name}{' (its statistics)' if name == 'linear' else ''}: "
              f"{line or 'no'}" for name, line in heads.items()]
    lines += [f"  replay memory: {'yes' if info.get('replay') else 'no'}", "",
              f"Next increment: {info.get('next_increment')}."]
    for name, key in (("Card", "card"), ("Plot", "plot")):
        if info.get(key):
            lines.append(f"{name}: {info[key]}")
    best = next((HEADS[name].title for name, line in heads.items()
                 if name != "linear" and name in HEADS and line not in (None, "no")), None)
    usage = format_usage(info["source"], best, bool(info.get("remote_code")), bool(info.get("multi_label")))
    lines += [f"{'Use it:' if i == 0 else '':<7} {line}" for i, line in enumerate(usage)]
    return "\n".join(lines)
