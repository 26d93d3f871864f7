"""The metric functions on constructed inputs whose answers are known, and the shipped `evaluate` modules."""

import numpy as np
import pytest

from hf_unlearn.metrics import (
    accuracy,
    attack_power,
    feature_probe,
    gap_to_reference,
    mia_auc,
    mia_efficacy,
    mia_entropy,
    per_class_accuracy,
    unlearning_metrics,
)


def one_hot_logits(predictions, num_classes=3, scale=10.0):
    return np.eye(num_classes)[predictions] * scale


def confident(labels, num_classes=3):
    """Probabilities peaked on the true class (low entropy, high confidence): how a model treats its members."""
    probs = np.full((len(labels), num_classes), 0.01)
    probs[np.arange(len(labels)), labels] = 1 - 0.01 * (num_classes - 1)
    return probs


def uncertain(labels, num_classes=3, rng=None):
    """Flat probabilities (high entropy, low true-class confidence): how a model treats unseen data."""
    rng = rng or np.random.default_rng(0)
    probs = rng.dirichlet(np.full(num_classes, 50.0), size=len(labels))
    return probs


def test_accuracy_and_per_class():
    labels = np.array([0, 0, 1, 1, 2, 2])
    logits = one_hot_logits([0, 1, 1, 1, 2, 0])
    assert accuracy(logits, labels) == pytest.approx(4 / 6)
    assert accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int)) is None
    assert per_class_accuracy(logits, labels, {0: "a", 1: "b", 2: "c"}) == {"a": 0.5, "b": 1.0, "c": 0.5}


def test_mia_entropy_direction():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    members, non_members = confident(labels), uncertain(labels, rng=rng)
    # Forget rows the model still treats like members are flagged as members; forgotten ones are not.
    assert mia_entropy(members, non_members, confident(labels[:50])) == 1.0
    assert mia_entropy(members, non_members, uncertain(labels[:50], rng=rng)) == 0.0


def test_attack_power_says_whether_the_entropy_attack_sees_membership():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 200)
    assert attack_power(confident(labels), uncertain(labels, rng=rng)) == 1.0
    # Members and non-members drawn alike: no power, and the entropy MIA reads only the forget rows' confidence
    alike = [uncertain(labels, rng=np.random.default_rng(seed)) for seed in (5, 6)]
    assert attack_power(*alike) == pytest.approx(0.5, abs=0.06)
    assert attack_power(alike[0], np.zeros((0, 3))) is None
    metrics = unlearning_metrics(forget_train=(np.log(confident(labels[:20])), labels[:20]),
                                 retain_train=(np.log(alike[0]), labels), eval_forget=(np.zeros((0, 3)), labels[:0]),
                                 eval_retain=(np.log(alike[1]), labels), class_level=True)  # fmt: skip
    assert metrics["mia_entropy_power"] == pytest.approx(attack_power(*alike))


def test_mia_efficacy_direction():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 200)
    members, non_members = confident(labels), uncertain(labels, rng=rng)
    target_labels = labels[:50]
    assert mia_efficacy(members, labels, non_members, labels, confident(target_labels), target_labels) == 0.0
    assert mia_efficacy(members, labels, non_members, labels, uncertain(target_labels, rng=rng), target_labels) == 1.0


def test_mia_auc():
    labels = np.array([0, 1, 2] * 20)
    assert mia_auc(confident(labels), labels, uncertain(labels), labels) == 1.0
    same = uncertain(labels, rng=np.random.default_rng(3))
    assert mia_auc(same, labels, same, labels) == pytest.approx(0.5)


def test_mia_auc_is_not_moved_by_the_class_mix_nor_by_saturated_confidences():
    """No membership signal, only an easy class (confidence 0.9) and a hard one (0.3), with the forgotten rows mostly
    of the easy class and the held-out rows evenly of both: the AUC stays at 0.5. And rows whose logits lead by 20
    and by 30 (both 1.0 in float32) are still told apart."""
    def probs(labels):
        confidence = np.where(labels == 0, 0.9, 0.3)
        rows = np.tile(((1 - confidence) / 2)[:, None], (1, 3))
        rows[np.arange(len(labels)), labels] = confidence
        return rows

    target, held_out = np.array([0] * 90 + [1] * 10), np.array([0] * 50 + [1] * 50)
    assert mia_auc(probs(target), target, probs(held_out), held_out) == pytest.approx(0.5)
    labels = np.zeros(10, dtype=int)
    sure, surer = one_hot_logits(labels, scale=20.0).astype(np.float32), one_hot_logits(labels, scale=30.0)
    metrics = unlearning_metrics(
        forget_train=(surer.astype(np.float32), labels), retain_train=(sure, labels),
        eval_forget=(np.zeros((0, 3)), np.zeros(0, dtype=int)), eval_retain=(sure, labels), class_level=False,
    )  # fmt: skip
    assert metrics["mia_auc"] == 1.0


def test_unlearning_metrics_for_class_and_sample_level():
    labels = np.array([0, 1, 2] * 10)
    forget = labels == 2
    parts = {
        "forget_train": (one_hot_logits(np.zeros(10, dtype=int)), labels[forget]),  # all wrong: forgotten
        "retain_train": (one_hot_logits(labels[~forget]), labels[~forget]),
        "eval_forget": (one_hot_logits(np.ones(10, dtype=int)), labels[forget]),
        "eval_retain": (one_hot_logits(labels[~forget]), labels[~forget]),
    }
    metrics = unlearning_metrics(**parts, class_level=True, id2label={0: "a", 1: "b", 2: "c"})
    assert metrics["forget_accuracy"] == 0.0 and metrics["forget_train_accuracy"] == 0.0
    assert metrics["retain_accuracy"] == 1.0 and metrics["retain_train_accuracy"] == 1.0
    assert metrics["test_accuracy"] == pytest.approx(20 / 30)
    assert metrics["per_class_accuracy"] == {"a": 1.0, "b": 1.0, "c": 0.0}
    assert "mia_auc" not in metrics

    # Sample-level: no eval row is "forget"; every eval row is a held-out row for the item attack.
    parts["eval_forget"] = (np.zeros((0, 3)), np.zeros(0, dtype=int))
    parts["eval_retain"] = (one_hot_logits(labels), labels)
    metrics = unlearning_metrics(**parts, class_level=False)
    assert metrics["forget_accuracy"] is None and metrics["forget_train_accuracy"] == 0.0
    # The forgotten rows now score lower than held-out rows of their class: AUC below chance.
    assert metrics["mia_auc"] < 0.5


def test_classes_that_share_a_name_keep_a_row_each():
    """ImageNet names two classes "crane": the per-class table keys them "crane (0)" and "crane (2)" (before, the
    later class's accuracy stood in the one "crane" row)."""
    from hf_unlearn.data import class_name

    id2label = {0: "crane", 1: "dog", 2: "crane"}
    labels = np.array([0, 0, 1, 2])
    table = per_class_accuracy(one_hot_logits(np.array([0, 1, 1, 0])), labels, id2label)
    assert table == {"crane (0)": 0.5, "dog": 1.0, "crane (2)": 0.0}
    assert [class_name(id2label, c) for c in (1, 2)] == ["dog", "crane (2)"] and class_name(None, 4) == "4"


def test_non_finite_logits_are_an_error_not_class_0():
    labels = np.array([0, 1, 2] * 4)
    finite = (one_hot_logits(labels), labels)
    diverged = (np.full((12, 3), np.nan), labels)
    with pytest.raises(ValueError, match="logits on eval retain rows are not finite: the model has diverged"):
        unlearning_metrics(forget_train=finite, retain_train=finite, eval_forget=finite, eval_retain=diverged,
                           class_level=True)  # fmt: skip


def test_gap_to_reference():
    current = {"forget_train_accuracy": 0.1, "retain_train_accuracy": 0.9, "test_accuracy": 0.8, "mia_entropy": 0.2}
    reference = {"forget_train_accuracy": 0.0, "retain_train_accuracy": 1.0, "test_accuracy": 0.8, "mia_entropy": 0.0}
    gaps = gap_to_reference(current, reference)
    assert gaps["gap_forget_train_accuracy"] == pytest.approx(0.1)
    assert gaps["reference_test_accuracy"] == 0.8
    assert gaps["mean_gap"] == pytest.approx((0.1 + 0.1 + 0.0 + 0.2) / 4)


def test_evaluate_modules_load_offline_and_agree():
    import evaluate

    from hf_unlearn.metric_modules import metric_path

    accuracy_module = evaluate.load(metric_path("unlearning_accuracy"))
    result = accuracy_module.compute(predictions=[0, 1, 2, 0, 2], references=[0, 1, 2, 2, 2], forget_classes=[2])
    assert result["forget_accuracy"] == pytest.approx(2 / 3)
    empty = accuracy_module.compute(predictions=[], references=[], forget_classes=[2])
    assert empty["forget_accuracy"] is None and empty["per_class_accuracy"] == {}
    assert result["retain_accuracy"] == 1.0
    assert result["per_class_accuracy"] == {"0": 1.0, "1": 1.0, "2": pytest.approx(2 / 3)}

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    members, non_members, forget = confident(labels[:20]), uncertain(labels[20:40], rng=rng), confident(labels[40:])
    probabilities = np.concatenate([members, non_members, forget])
    splits = ["retain_train"] * 20 + ["test"] * 20 + ["forget_train"] * 20
    mia_module = evaluate.load(metric_path("membership_inference"))
    result = mia_module.compute(probabilities=probabilities.tolist(), references=labels.tolist(), splits=splits)
    assert result["mia_entropy"] == pytest.approx(mia_entropy(members, non_members, forget))
    assert result["mia_efficacy"] == pytest.approx(
        mia_efficacy(members, labels[:20], non_members, labels[20:40], forget, labels[40:])
    )
    assert result["mia_entropy"] == 1.0 and result["mia_efficacy"] == 0.0
    assert result["mia_entropy_power"] == attack_power(members, non_members) == 1.0


def test_library_import_does_not_import_evaluate():
    import subprocess
    import sys

    code = "import sys, hf_unlearn, hf_unlearn.trainer, hf_unlearn.metrics; print('evaluate' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_feature_probe_finds_a_class_the_features_separate():
    """Features where the forget class has its own cluster: the probe recalls it; features where its rows sit on
    another class's cluster: the probe cannot tell them apart (recall about half or less)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (4, 16))

    def rows(classes, per_class, forget_centre=None):
        labels = np.repeat(classes, per_class)
        means = np.stack([centres[c] if c != 3 or forget_centre is None else centres[forget_centre] for c in labels])
        return means + rng.normal(0, 1, means.shape), labels

    train, train_labels = rows([0, 1, 2, 3], 100)
    test, test_labels = rows([3], 50)
    assert feature_probe(train, train_labels, test, test_labels) > 0.95
    hidden, hidden_labels = rows([0, 1, 2, 3], 100, forget_centre=0)
    hidden_test, _ = rows([3], 50, forget_centre=0)
    assert feature_probe(hidden, hidden_labels, hidden_test, test_labels) < 0.7
    assert feature_probe(train, train_labels, test[:0], test_labels[:0]) is None


def test_feature_probe_is_not_swayed_by_how_many_rows_a_class_has():
    """Features that carry no class at all, with 25 times more training rows of the forget class than of each other
    class (all 500 rows of a CIFAR-100 class beside a 2,000-row sample of the other 99): the probe must not recall
    the forget class from its row count alone."""
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.full(500, 3), np.repeat([0, 1, 2, 4, 5, 6, 7, 8, 9], 20)])
    train = rng.normal(size=(len(labels), 8))
    held_out = rng.normal(size=(100, 8))
    assert feature_probe(train, labels, held_out, np.full(100, 3)) < 0.3


def test_the_feature_probe_reads_the_head_a_method_was_told_to_use(trained, digits, make_args, monkeypatch):
    import hf_unlearn.kinds.classifier as classifier_kind
    from hf_unlearn import UnlearningTrainer

    found, find = [], classifier_kind.classification_head

    def recording(model, name=None):
        found.append(name)
        return find(model, name)

    monkeypatch.setattr(classifier_kind, "classification_head", recording)
    args = make_args("gppu", method_kwargs={"head_module": "classifier"})
    trainer = UnlearningTrainer(trained("vit"), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                                forget_classes=[3])  # fmt: skip
    assert trainer.evaluate_unlearning()["feature_probe"] is not None
    assert found == ["classifier"]
