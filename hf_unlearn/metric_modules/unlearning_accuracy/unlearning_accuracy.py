"""Forget / retain / per-class accuracy for unlearning, as an `evaluate` metric (wraps `hf_unlearn.metrics`)."""

import datasets
import evaluate
import numpy as np

from hf_unlearn.metrics import per_class_accuracy

_DESCRIPTION = """Accuracy split by the classes an unlearning request forgets: `forget_accuracy` (rows of the forget
classes; lower is better, a retrained model gives 0), `retain_accuracy` (other rows; higher is better) and
`per_class_accuracy`. Fractions in [0, 1]."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    forget_classes (list of int): the forgotten class ids.
Returns:
    forget_accuracy, retain_accuracy (None when a part has no rows), per_class_accuracy (dict id -> accuracy).
"""

_CITATION = """@article{kodge2024deep, title={Deep Unlearning: Fast and Efficient Gradient-free Class Forgetting},
author={Kodge, Sangamesh and Saha, Gobinda and Roy, Kaushik}, journal={TMLR}, year={2024}}"""


class UnlearningAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, forget_classes=()):
        predictions, references = np.asarray(predictions), np.asarray(references)
        forget = np.isin(references, list(forget_classes))

        def share(mask):
            return float((predictions[mask] == references[mask]).mean()) if mask.any() else None

        if not len(references):
            return {"forget_accuracy": None, "retain_accuracy": None, "per_class_accuracy": {}}
        one_hot = np.eye(int(max(predictions.max(), references.max())) + 1)[predictions]
        return {
            "forget_accuracy": share(forget),
            "retain_accuracy": share(~forget),
            "per_class_accuracy": per_class_accuracy(one_hot, references),
        }
