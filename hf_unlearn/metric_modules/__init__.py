"""`evaluate` metric modules shipped with the package, loadable offline by path.

`import evaluate` costs seconds, so nothing in `hf_unlearn` imports it; only these module files do, when loaded:

```python
>>> import evaluate
>>> from hf_unlearn.metric_modules import metric_path
>>> accuracy = evaluate.load(metric_path("unlearning_accuracy"))
>>> accuracy.compute(predictions=[0, 1, 3], references=[0, 1, 3], forget_classes=[3])
{'forget_accuracy': 1.0, 'retain_accuracy': 1.0, ...}
```
"""

from __future__ import annotations

from pathlib import Path

METRIC_MODULES = ("unlearning_accuracy", "membership_inference")


def metric_path(name: str) -> str:
    """Folder of the shipped `evaluate` module `name` (pass it to `evaluate.load`)."""
    if name not in METRIC_MODULES:
        raise ValueError(f"Unknown metric module '{name}'. Available: {', '.join(METRIC_MODULES)}.")
    return str(Path(__file__).parent / name)
