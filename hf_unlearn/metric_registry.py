"""One registry of what every reported metric is: its key, the model kinds it is measured on, its label, which value
is good, how it is shown, whether the mean gap to a retrained model averages it, and where the card's `model-index`
puts it. The metrics (`hf_unlearn.metrics`), the console report (`hf_unlearn.report`) and the model card
(`hf_unlearn.hub`) all read it, so a label or a direction is written once.

Adding a metric is one `register_metric` call. A metric with `compute` is measured for classifiers from the logits and
labels of the rows every request scores, so it reaches the results, the console report and the card with no other
change:

```python
>>> import numpy as np
>>> from hf_unlearn.metric_registry import Metric, register_metric
>>> def top2_forget(parts, class_level):  # share of forget training rows whose class is still in the top 2
...     logits, labels = parts["forget_train"]
...     return float(np.mean((np.argsort(-logits, -1)[:, :2] == labels[:, None]).any(-1))) if len(labels) else None
>>> register_metric(Metric("forget_top2_accuracy", ("classifier",), "forget rows still in the top 2", "low",
...                        compute=top2_forget))
```
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metric:
    """What the library knows about one scalar metric."""

    #: The key in the results (`UnlearningOutput.metrics`, `unlearning_results.json`).
    key: str
    #: The model kinds (`hf_unlearn.kinds`) it is measured on.
    kinds: tuple[str, ...]
    #: One label, used by the console report, the card's table and its `model-index`.
    label: str
    #: Which value is good, in words (the card's "good" column).
    good: str
    #: Shown as a percentage (a fraction in [0, 1]) or as a plain number.
    percent: bool = True
    #: Whether `mean_gap` (the gap to a retrained model) averages it.
    in_mean_gap: bool = False
    #: Whether the console report shows it (the card shows every measured metric).
    headline: bool = False
    #: `(split suffix, metric type)` of the card's `model-index` entry; None keeps it out of the index.
    model_index: tuple[str, str] | None = None
    #: For classifiers: `compute(parts, class_level) -> float | None` from the `(logits, labels)` of the rows every
    #: request scores (`parts` keys: forget_train, retain_train, eval_forget, eval_retain). None for the built-in
    #: metrics, which `hf_unlearn.metrics.unlearning_metrics` computes together.
    compute: Callable[[dict[str, tuple[np.ndarray, np.ndarray]], bool], float | None] | None = None


_METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Register `metric` (a `Metric`); a key registered before with other settings is refused."""
    if not isinstance(metric, Metric):
        raise TypeError(f"`register_metric` takes a Metric, got {type(metric).__name__}.")
    if metric.key in _METRICS and _METRICS[metric.key] != metric:
        raise ValueError(f"A metric '{metric.key}' is already registered: {_METRICS[metric.key]}.")
    _METRICS[metric.key] = metric
    return metric


def unregister_metric(key: str) -> None:
    """Remove the metric `key` (e.g. one a test registered)."""
    _METRICS.pop(key, None)


def metrics_for(kind: str) -> list[Metric]:
    """The metrics measured on models of `kind`, in registration order."""
    return [metric for metric in _METRICS.values() if kind in metric.kinds]


def headline_metrics() -> list[Metric]:
    """The metrics the console report shows (where measured)."""
    return [metric for metric in _METRICS.values() if metric.headline]


def scalar_metric_keys() -> list[str]:
    """Every registered metric's key."""
    return list(_METRICS)


def mean_gap_keys() -> list[str]:
    """The keys `mean_gap` averages."""
    return [metric.key for metric in _METRICS.values() if metric.in_mean_gap]


def computed_metrics(kind: str, parts: dict, class_level: bool) -> dict:
    """The values of the metrics of `kind` that carry their own `compute`."""
    return {metric.key: metric.compute(parts, class_level) for metric in metrics_for(kind) if metric.compute}


# ------------------------------------------------------------------------------------------ built-in metrics
_CLASSIFIER = ("classifier",)
_GENERATORS = ("gan", "diffusion")
for _metric in (
    Metric("forget_accuracy", _CLASSIFIER, "forget accuracy (eval)", "low", headline=True,
           model_index=("forget", "accuracy")),
    Metric("retain_accuracy", _CLASSIFIER, "retain accuracy (eval)", "unchanged", headline=True,
           model_index=("retain", "accuracy")),
    Metric("test_accuracy", _CLASSIFIER, "accuracy on every eval row", "close to retrain", in_mean_gap=True),
    Metric("forget_train_accuracy", _CLASSIFIER, "forget accuracy (training rows)",
           "low (classes) / as retrain (rows)", in_mean_gap=True, headline=True,
           model_index=("train-forget", "accuracy")),
    Metric("forget_train_worst_class_accuracy", _CLASSIFIER, "forget accuracy of the most recognised forget class "
           "(training rows)", "low"),
    Metric("retain_train_accuracy", _CLASSIFIER, "retain accuracy (training rows)", "unchanged", in_mean_gap=True),
    Metric("mia_entropy", _CLASSIFIER, "entropy MIA: forget rows called member", "close to retrain",
           in_mean_gap=True, headline=True, model_index=("train-forget", "mia_entropy")),
    Metric("mia_efficacy", _CLASSIFIER, "confidence MIA: forget rows called non-member", "close to retrain",
           headline=True, model_index=("train-forget", "mia_efficacy")),
    Metric("mia_entropy_power", _CLASSIFIER, "entropy attack's own power: AUC, members vs non-members",
           "context (about 0.5: it cannot tell them apart)", percent=False, headline=True),
    Metric("mia_auc", _CLASSIFIER, "MIA AUC, forget vs held-out rows", "close to retrain (~0.5)", percent=False),
    Metric("unlearned_before_accuracy", _CLASSIFIER, "accuracy on classes unlearned earlier", "low"),
    Metric("feature_probe", _CLASSIFIER, "linear probe on the features: forget rows recalled", "close to retrain",
           headline=True),
    Metric("forget_share", _GENERATORS, "judge: samples showing a forget class (conditional: of those generated "
           "for it)", "about 0", headline=True, model_index=("generated-forget", "forget_share")),
    Metric("retain_judge_accuracy", _GENERATORS, "judge: samples showing the retained class they were generated for",
           "unchanged", headline=True, model_index=("generated-retain", "accuracy")),
    Metric("frechet_distance", _GENERATORS, "Frechet distance to real retained rows (judge features)",
           "close to the original", percent=False, headline=True, model_index=("retain", "frechet_distance")),
    Metric("discriminator_attack_auc", ("gan",), "discriminator attack AUC, forget vs held-out rows",
           "close to retrain (~0.5)", percent=False, headline=True, model_index=("train-forget", "roc_auc")),
    Metric("forget_discriminator_score", ("gan",), "discriminator score on the forget rows", "like held-out rows",
           percent=False),
    Metric("generated_discriminator_score", ("gan",), "discriminator score on generated samples", "-", percent=False),
):  # fmt: skip
    register_metric(_metric)
