"""Membership-inference attacks for unlearning, as an `evaluate` metric (wraps `hf_unlearn.metrics`)."""

import datasets
import evaluate
import numpy as np

from hf_unlearn.metrics import attack_power, mia_efficacy, mia_entropy

_DESCRIPTION = """Two attacks fitted on the model under test, with `retain_train` rows as members and `test` rows (of
the retained classes) as non-members, applied to the `forget_train` rows:
- `mia_entropy` (SFR-on): share of forget rows a logistic regression on softmax entropy calls "member"; closer to a
  retrained model is better (about 0 after class forgetting).
- `mia_efficacy` (SalUn / l1-sparse): share of forget rows an SVC on true-class confidence calls "non-member";
  closer to a retrained model is better (about 1 after class forgetting).
- `mia_entropy_power`: the entropy attack's own ROC AUC, members against non-members; about 0.5 means it cannot tell
  them apart, and `mia_entropy` then reads only how confidently the forget rows are predicted."""

_KWARGS_DESCRIPTION = """
Args:
    probabilities (list of list of float): softmax outputs of the model, one row per sample.
    references (list of int): true class ids.
    splits (list of str): for each row, "retain_train", "test" or "forget_train".
    seed (int): seed of the attack-set subsampling.
Returns:
    mia_entropy, mia_efficacy (fractions in [0, 1]), mia_entropy_power (an AUC in [0, 1]).
"""

_CITATION = """@inproceedings{huang2024unified, title={Unified Gradient-Based Machine Unlearning with Remain Geometry
Enhancement}, author={Huang, Zhehao and others}, booktitle={NeurIPS}, year={2024}}"""


class MembershipInference(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "probabilities": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                    "splits": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, probabilities, references, splits, seed=0):
        probabilities = np.asarray(probabilities, dtype=np.float64)
        references, splits = np.asarray(references), np.asarray(splits)
        parts = {
            name: (probabilities[splits == name], references[splits == name])
            for name in ("retain_train", "test", "forget_train")
        }
        return {
            "mia_entropy": mia_entropy(parts["retain_train"][0], parts["test"][0], parts["forget_train"][0], seed=seed),
            "mia_efficacy": mia_efficacy(*parts["retain_train"], *parts["test"], *parts["forget_train"], seed=seed),
            "mia_entropy_power": attack_power(parts["retain_train"][0], parts["test"][0]),
        }
