"""The run's own verdict on an unlearning request, from the metrics it measured: were the forget classes removed, and
were the retained ones kept? A run that fails it records nothing as unlearned, and its output, log and card say so.

```python
>>> from hf_unlearn.kinds import get_kind
>>> unlearning_check({"forget_accuracy": 0.0, "retain_accuracy": 0.5}, {"retain_accuracy": 0.75},
...                  kind=get_kind("classifier"), class_level=True, forget_success_threshold=0.05, max_retain_drop=0.10)
{'passed': False, 'threshold': 0.05, 'forget_accuracy': 0.0, 'retain_drop': 0.25, 'max_retain_drop': 0.1}
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .kinds import ModelKind

#: The keys of a check that state its verdict and limits rather than a measured value.
LIMIT_KEYS = ("passed", "threshold", "max_retain_drop", "original_at_threshold")


def measured_values(check: dict) -> dict:
    """The measured values of a check (`unlearning_check`'s result), without its verdict and limits."""
    return {key: value for key, value in check.items() if key not in LIMIT_KEYS}


def unlearning_check(metrics: dict, original: dict | None, *, kind: ModelKind, class_level: bool,
                     forget_success_threshold: float, max_retain_drop: float) -> dict:  # fmt: skip
    """`{"passed": True | False | None, "threshold": ..., <the measured values>}`, from the values `kind` (a
    `hf_unlearn.kinds.ModelKind`) names: its `forget_keys` and `retain_key`.

    Forget part (class requests): every measured forget value at most `forget_success_threshold`. Rows (sample-level
    requests) have none: they should look like held-out rows, which the gap to a retrain measures. When the original
    was measured with every one of those values already at or below the threshold (a class the model never
    recognised, or an unconditional generator's class rarer than the threshold among its samples), the forget part
    cannot show anything: it is not checked (`original_at_threshold`), and the verdict is at best None, never a pass.
    Retain part (when the original was measured): the retain value fell by at most `max_retain_drop`; a collapsed model
    fails whatever it forgot. `passed` is None when neither part could be checked."""
    measured = {key: metrics[key] for key in kind.forget_keys if metrics.get(key) is not None} if class_level else {}
    forgotten = all(value <= forget_success_threshold for value in measured.values()) if measured else None
    before = [original.get(key) for key in measured] if original else []
    if before and all(value is not None and value <= forget_success_threshold for value in before):
        forgotten, measured["original_at_threshold"] = None, True
    key = kind.retain_key
    retained = None
    if key is not None and original and original.get(key) is not None and metrics.get(key) is not None:
        measured.update(retain_drop=original[key] - metrics[key], max_retain_drop=max_retain_drop)
        retained = measured["retain_drop"] <= max_retain_drop
    parts = [part for part in (forgotten, retained) if part is not None]
    passed = all(parts) if parts else None
    if passed and measured.get("original_at_threshold"):
        passed = None  # kept what it had, but nothing shows it forgot: not a pass
    return {"passed": passed, "threshold": forget_success_threshold, **measured}
