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
        # a conditional GAN that collapsed into retained-looking junk forgot the class and failed
        ({"forget_share": 0.0, "retain_judge_accuracy": 0.3}, {"retain_judge_accuracy": 0.95}, "gan", True, False),
        ({"forget_share": 0.0, "retain_judge_accuracy": 0.93}, {"retain_judge_accuracy": 0.95}, "gan", True, True),
        # the original was already at the threshold (a rare class among an unconditional GAN's samples, a class the
        # classifier never learned): nothing shows forgetting, so no pass; a collapse still fails
        ({"forget_share": 0.01}, {"forget_share": 0.03}, "gan", True, None),
        ({"forget_accuracy": 0.0, "forget_train_accuracy": 0.0, "retain_accuracy": 0.9},
         {"forget_accuracy": 0.04, "forget_train_accuracy": 0.02, "retain_accuracy": 0.9}, "classifier", True, None),
        ({"forget_accuracy": 0.0, "forget_train_accuracy": 0.0, "retain_accuracy": 0.5},
         {"forget_accuracy": 0.04, "forget_train_accuracy": 0.02, "retain_accuracy": 0.9}, "classifier", True, False),
        ({"forget_share": 0.01}, {"forget_share": 0.3}, "gan", True, True),
    ],
)  # fmt: skip
def test_the_verdict(metrics, original, kind, class_level, passed):
    check = unlearning_check(metrics, original, kind=get_kind(kind), class_level=class_level, **LIMITS)
    assert check["passed"] is passed, check
    assert check["threshold"] == 0.05
    key = "retain_judge_accuracy" if kind in ("diffusion", "gan") else "retain_accuracy"
    if original and key in original and key in metrics:  # both measured: the drop is in the check, always
        assert check["retain_drop"] == pytest.approx(original[key] - metrics[key])
    else:
        assert "retain_drop" not in check


def test_a_check_the_original_made_undecidable_is_reported_as_not_checked():
    from hf_unlearn.report import format_report

    original = {"forget_share": 0.02}
    check = unlearning_check({"forget_share": 0.0}, original, kind=get_kind("gan"), class_level=True, **LIMITS)
    assert check == {"passed": None, "threshold": 0.05, "forget_share": 0.0, "original_at_threshold": True}
    report = format_report(original, {"forget_share": 0.0, "forget_check": check}, None, ["seven"])
    assert "unlearning check: NOT CHECKED: the original was already at or below the forget threshold 5.0 %" in report


def test_a_small_forget_class_cannot_hide_in_the_pooled_accuracy():
    """Two forget classes, one of 500 rows forgotten and one of 2 rows still recognised: pooled, 0.4 % (under the
    threshold); the worst class's accuracy fails the check."""
    import numpy as np

    from hf_unlearn.data import balanced_forget, subsample
    from hf_unlearn.metrics import unlearning_metrics, worst_class_accuracy

    labels = np.array([3] * 500 + [5] * 2)
    logits = np.zeros((502, 10))
    logits[:500, 0] = 1.0  # class 3's rows are called 0: forgotten
    logits[500:, 5] = 1.0  # class 5's rows are still class 5
    assert worst_class_accuracy(logits, labels) == 1.0 and worst_class_accuracy(logits[:500], labels[:500]) is None
    empty = (np.zeros((0, 10)), np.zeros(0, dtype=int))
    metrics = unlearning_metrics(forget_train=(logits, labels), retain_train=empty, eval_forget=empty,
                                 eval_retain=empty, class_level=True)  # fmt: skip
    assert metrics["forget_train_accuracy"] < 0.05 and metrics["forget_train_worst_class_accuracy"] == 1.0
    check = unlearning_check(metrics, None, kind=get_kind("classifier"), class_level=True, **LIMITS)
    assert check["passed"] is False and check["forget_train_worst_class_accuracy"] == 1.0
    # The methods' forget samples are balanced over several forget classes (the small one always gets its rows) and
    # drawn as before for one class.
    rows = subsample(np.arange(502), 50, 0, balanced_forget(labels))
    assert (labels[rows] == 5).sum() == 2
    assert balanced_forget(labels[:500]) is None
