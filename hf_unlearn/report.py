"""Plain-text reports of an unlearning run: per-class accuracy before and after (and of a retrained reference when one
was measured), the headline metrics and the time."""

from __future__ import annotations

HEADLINE_METRICS = ("forget_accuracy", "retain_accuracy", "forget_train_accuracy", "mia_entropy", "mia_efficacy")


def format_report(original: dict | None, unlearned: dict, retrained: dict | None, forget_names: list[str]) -> str:
    """A per-class table (accuracy in %) and the headline metrics of the original, unlearned and (if given) retrained
    models; a model whose metrics are missing gets no column."""
    columns = [
        (title, metrics)
        for title, metrics in (("original", original), ("unlearned", unlearned), ("retrain", retrained))
        if metrics
    ]
    width = 12 + 12 * len(columns)
    lines = [f"{'class':>10} |" + "".join(f" {title:>9} |" for title, _ in columns), "-" * width]
    for name in unlearned["per_class_accuracy"]:
        marker = "  <- forgotten" if name in forget_names else ""
        cells = "".join(
            f" {100 * metrics['per_class_accuracy'].get(name, float('nan')):9.1f} |" for _, metrics in columns
        )
        lines.append(f"{name:>10} |{cells}{marker}")
    lines.append("-" * width)
    for key in HEADLINE_METRICS:
        cells = "  ".join(
            f"{title} {100 * metrics[key]:5.1f} %" for title, metrics in columns if metrics.get(key) is not None
        )
        lines.append(f"{key:>22}: {cells}")
    return "\n".join(lines)
