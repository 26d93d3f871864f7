"""Plain-text reports of an unlearning run: per-class accuracy (classifiers) or share of generated samples
(generators) before and after (and of a retrained reference when one was measured), and the headline metrics
(`hf_unlearn.metric_registry`, with the card's labels)."""

from __future__ import annotations

from .checks import measured_values
from .metric_registry import headline_metrics


def format_report(original: dict | None, unlearned: dict, retrained: dict | None, forget_names: list[str]) -> str:
    """A per-class table (accuracy, or for a generator the share of its samples, in %) and the headline metrics of the
    original, unlearned and (if given) retrained models; a model whose metrics are missing gets no column."""
    # The per-class table of the model's kind (a kind without one gets none).
    per_class = next((key for key in ("per_class_accuracy", "class_shares") if key in unlearned), None)
    columns = [
        (title, metrics)
        for title, metrics in (("original", original), ("unlearned", unlearned), ("retrain", retrained))
        if metrics
    ]
    width = 12 + 12 * len(columns)
    lines = [f"{'class':>10} |" + "".join(f" {title:>9} |" for title, _ in columns), "-" * width]
    for name in unlearned[per_class] if per_class else []:
        marker = "  <- forgotten" if name in forget_names else ""
        cells = "".join(f" {100 * (metrics.get(per_class) or {}).get(name, float('nan')):9.1f} |"
                        for _, metrics in columns)  # fmt: skip
        lines.append(f"{name:>10} |{cells}{marker}")
    lines.append("-" * width)
    for metric in headline_metrics():  # those measured (on this model's kind), with the card's labels
        key = metric.key
        cells = "  ".join(
            f"{title} {100 * metrics[key]:5.1f} %" if metric.percent else f"{title} {metrics[key]:.3f}"
            for title, metrics in columns
            if metrics.get(key) is not None
        )
        if cells:
            lines.append(f"{metric.label}: {cells}")
    check = unlearned.get("forget_check") or {}
    if check.get("passed") is not None:
        measured = ", ".join(f"{key} {100 * value:.1f} %" for key, value in measured_values(check).items())
        verdict = "passed" if check["passed"] else "FAILED (nothing is recorded as unlearned)"
        limits = f"forget at most {100 * check['threshold']:.1f} %"
        if "max_retain_drop" in check:
            limits += f", retain drop at most {100 * check['max_retain_drop']:.1f} points"
        lines.append(f"unlearning check: {verdict}: {measured} ({limits})")
    elif check.get("original_at_threshold"):
        lines.append(f"unlearning check: NOT CHECKED: the original was already at or below the forget threshold "
                     f"{100 * check['threshold']:.1f} %, so nothing shows that it forgot (nothing is recorded as "
                     "unlearned)")
    return "\n".join(lines)


def scalar_metrics(metrics: dict | None, prefix: str) -> dict[str, float]:
    """The numbers of `metrics` (no bools, nested tables or None) as floats, each key prefixed with `prefix`."""
    return {f"{prefix}{key}": float(value) for key, value in (metrics or {}).items()
            if isinstance(value, int | float) and not isinstance(value, bool)}  # fmt: skip


def loggable_metrics(metrics: dict, original: dict | None) -> dict:
    """The scalar results as `Trainer.log` records them (`unlearned/...`, `original/...`)."""
    return {**scalar_metrics(metrics, "unlearned/"), **scalar_metrics(original, "original/")}
