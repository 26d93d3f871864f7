"""The run's verdict (`hf_unlearn.checks.unlearning_check`) from measured metrics alone: no trainer needed."""

import pytest

from hf_unlearn.checks import unlearning_check
from hf_unlearn.kinds import get_kind

LIMITS = {"forget_success_threshold": 0.05, "max_retain_drop": 0.10}


@pytest.mark.parametrize(
    "metrics, original, kind, class_level, passed",
    [
        ({"forget_accuracy": 0.0, "forget_train_accuracy": 0.02, "retain_accuracy": 0.9}, {"retain_accuracy": 0.92},
         "classifier", True, True),
        ({"forget_accuracy": 0.0, "forget_train_accuracy": 0.30, "retain_accuracy": 0.9}, {"retain_accuracy": 0.92},
         "classifier", True, False),  # the training rows still carry the class
        ({"forget_accuracy": 0.0, "retain_accuracy": 0.5}, {"retain_accuracy": 0.75}, "classifier", True, False),
        ({"forget_accuracy": 0.0}, None, "classifier", True, True),  # no original: the forget part alone
        ({"retain_accuracy": 0.5}, {"retain_accuracy": 0.9}, "classifier", False, False),  # rows: a collapse fails
        ({"retain_accuracy": 0.88}, {"retain_accuracy": 0.9}, "classifier", False, True),
        ({}, None, "classifier", False, None),  # nothing measured: nothing claimed
        ({"forget_share": 0.01}, None, "gan", True, True),
        ({"forget_share": 0.2}, None, "gan", True, False),
        ({"forget_share": 0.0, "retain_judge_accuracy": 0.5}, {"retain_judge_accuracy": 0.99}, "diffusion", True,
         False),
    ],
)  # fmt: skip
def test_the_verdict(metrics, original, kind, class_level, passed):
    check = unlearning_check(metrics, original, kind=get_kind(kind), class_level=class_level, **LIMITS)
    assert check["passed"] is passed, check
    assert check["threshold"] == 0.05
    if original and "retain_drop" in check:
        key = "retain_judge_accuracy" if kind == "diffusion" else "retain_accuracy"
        assert check["retain_drop"] == pytest.approx(original[key] - metrics[key])
