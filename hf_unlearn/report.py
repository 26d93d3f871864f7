"""Plain-text reports of an unlearning run: per-class accuracy (classifiers) or share of generated samples (GANs)
before and after (and of a retrained reference when one was measured), the headline metrics and the time."""

from __future__ import annotations

from .checks import measured_values

# (metric, shown as a percentage): classifiers' and generators' headline metrics.
HEADLINE_METRICS = {
    "per_class_accuracy": (("forget_accuracy", True), ("retain_accuracy", True), ("forget_train_accuracy", True),
                           ("mia_entropy", True), ("mia_efficacy", True), ("feature_probe", True)),
    "class_shares": (("forget_share", True), ("retain_judge_accuracy", True), ("frechet_distance", False),
                     ("discriminator_attack_auc", False)),
}  # fmt: skip


def format_report(original: dict | None, unlearned: dict, retrained: dict | None, forget_names: list[str]) -> str:
    """A per-class table (accuracy, or for a generator the share of its samples, in %) and the headline metrics of the
    original, unlearned and (if given) retrained models; a model whose metrics are missing gets no column."""
    per_class = "per_class_accuracy" if "per_class_accuracy" in unlearned else "class_shares"
    columns = [
        (title, metrics)
        for title, metrics in (("original", original), ("unlearned", unlearned), ("retrain", retrained))
        if metrics
    ]
    width = 12 + 12 * len(columns)
    lines = [f"{'class':>10} |" + "".join(f" {title:>9} |" for title, _ in columns), "-" * width]
    for name in unlearned[per_class]:
        marker = "  <- forgotten" if name in forget_names else ""
        cells = "".join(f" {100 * (metrics.get(per_class) or {}).get(name, float('nan')):9.1f} |"
                        for _, metrics in columns)  # fmt: skip
        lines.append(f"{name:>10} |{cells}{marker}")
    lines.append("-" * width)
    for key, percent in HEADLINE_METRICS[per_class]:
        cells = "  ".join(
            f"{title} {100 * metrics[key]:5.1f} %" if percent else f"{title} {metrics[key]:.3f}"
            for title, metrics in columns
            if metrics.get(key) is not None
        )
        if not cells:
            continue
        lines.append(f"{key:>22}: {cells}")
    check = unlearned.get("forget_check") or {}
    if check.get("passed") is not None:
        measured = ", ".join(f"{key} {100 * value:.1f} %" for key, value in measured_values(check).items())
        verdict = "passed" if check["passed"] else "FAILED (nothing is recorded as unlearned)"
        limits = f"forget at most {100 * check['threshold']:.1f} %"
        if "max_retain_drop" in check:
            limits += f", retain drop at most {100 * check['max_retain_drop']:.1f} points"
        lines.append(f"{'unlearning check':>22}: {verdict}: {measured} ({limits})")
    return "\n".join(lines)
