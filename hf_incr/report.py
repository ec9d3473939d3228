"""What a person reads at the end of a run: the old / new / all labels table."""

from __future__ import annotations


def _pct(value) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f} %"


def format_metrics_table(rows: dict[str, dict]) -> str:
    """A small Markdown table of old / new / all accuracy (micro-F1 for multi-label)."""
    lines = ["| | old labels | new labels | all labels |", "|---|---|---|---|"]
    for name, metrics in rows.items():
        lines.append(
            f"| {name} | {_pct(metrics.get('old_accuracy'))} | {_pct(metrics.get('new_accuracy'))} | "
            f"{_pct(metrics.get('accuracy'))} |"
        )
    return "\n".join(lines)
