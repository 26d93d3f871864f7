"""Adding a model kind, a metric or a method touches one module: everything here (a tabular model kind the library has
never heard of, its metric, a method for it, a metric for the built-in classifiers) is defined in this file alone,
and the trainer, the forget check, the console report and the card take them up."""

import json
from dataclasses import dataclass
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import PretrainedConfig

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.contract import TrainerLoopMethod, UnlearningMethod
from hf_unlearn.hub import RESULTS_FILE, render_card
from hf_unlearn.kinds import ModelKind, kind_of, register_kind, unregister_kind
from hf_unlearn.metric_registry import Metric, register_metric, unregister_metric
from hf_unlearn.metrics import accuracy
from hf_unlearn.registry import register_method, unregister_method
from hf_unlearn.report import format_report

NAMES = ["low", "middle", "high"]


class TabularNet(torch.nn.Module):
    """A model no built-in kind takes: a linear layer over `input_values`, labels in `config`."""

    def __init__(self):
        super().__init__()
        self.config = PretrainedConfig(num_labels=3, id2label=dict(enumerate(NAMES)),
                                       label2id={n: i for i, n in enumerate(NAMES)})  # fmt: skip
        self.main_input_name = "input_values"
        self.linear = torch.nn.Linear(2, 3)

    def forward(self, input_values, labels=None):
        return SimpleNamespace(logits=self.linear(input_values))


class Tabular(ModelKind):
    name = "tabular"
    forget_keys = ("forget_rows_accuracy",)
    retain_key = "retain_rows_accuracy"

    def matches(self, model):
        return isinstance(model, TabularNet)

    def training_loss(self, model, batch, reduction="mean", forget=False, **options):
        return F.cross_entropy(model(batch["input_values"]).logits, batch["labels"], reduction=reduction)

    def measure(self, trainer, model):
        views = trainer.metric_views
        return {
            "forget_rows_accuracy": accuracy(*trainer.predict_logits(views["forget_train"], model)),
            "retain_rows_accuracy": accuracy(*trainer.predict_logits(views["eval_retain"], model)),
        }


@dataclass
class RetainOnlyConfig:
    pass


class RetainOnly(TrainerLoopMethod):
    """Fine-tunes on the retained rows: works on any kind through `training_loss`."""

    model_kinds = ("tabular",)

    def training_dataset(self):
        return self.trainer.retain_view

    def compute_loss(self, model, inputs, num_items_in_batch=None):
        return kind_of(model).training_loss(model, inputs)


def top2_forget(parts, class_level):
    logits, labels = parts["forget_train"]
    return float(np.mean((np.argsort(-logits, -1)[:, :2] == labels[:, None]).any(-1))) if len(labels) else None


@pytest.fixture
def registered():
    register_kind(Tabular())
    register_metric(Metric("forget_rows_accuracy", ("tabular",), "accuracy on the forget rows", "low", headline=True,
                           model_index=("train-forget", "accuracy")))  # fmt: skip
    register_metric(Metric("retain_rows_accuracy", ("tabular",), "accuracy on held-out retained rows", "unchanged",
                           headline=True))  # fmt: skip
    register_metric(Metric("forget_top2_accuracy", ("classifier",), "forget rows still in the top 2", "low",
                           headline=True, compute=top2_forget))  # fmt: skip
    register_method("retain_only", RetainOnlyConfig, RetainOnly, description="fine-tune on the retained rows")
    yield
    unregister_kind("tabular")
    unregister_method("retain_only")
    for key in ("forget_rows_accuracy", "retain_rows_accuracy", "forget_top2_accuracy"):
        unregister_metric(key)


def tabular_data(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = np.array([[-2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    points = centres[labels] + 0.3 * rng.standard_normal((n, 2))
    return datasets.Dataset.from_dict({"input_values": points.astype(np.float32).tolist(), "label": labels.tolist()})


def test_a_new_model_kind_with_its_metrics_and_method_runs_end_to_end(registered, tmp_path):
    model = TabularNet()
    train, test = tabular_data(300, 0), tabular_data(150, 1)
    with torch.no_grad():  # a trained model: each class's centre scores its own class
        model.linear.weight.copy_(torch.tensor([[-2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]))
        model.linear.bias.zero_()
    args = UnlearnConfig(output_dir=str(tmp_path), method="retain_only", num_train_epochs=3, learning_rate=0.5,
                         report_to="none", disable_tqdm=True)  # fmt: skip
    trainer = UnlearningTrainer(model, args, train_dataset=train, eval_dataset=test, forget_classes=["high"])
    assert trainer.kind.name == "tabular"
    result = trainer.unlearn()

    original, metrics = result.original_metrics, result.metrics
    assert original["forget_rows_accuracy"] > 0.95
    assert metrics["forget_rows_accuracy"] < 0.05 and metrics["retain_rows_accuracy"] > 0.9
    # The forget check reads the kind's own keys; the class is recorded as unlearned.
    assert metrics["forget_check"]["passed"] is True and result.forgotten is True
    assert trainer.model.config.unlearned_classes == [2]
    # The console report and the card show the kind's metrics with their registered labels.
    report = format_report(original, metrics, None, ["high"])
    assert "accuracy on the forget rows: original 100.0 %  unlearned" in report
    files = trainer.create_model_card()
    context = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert RESULTS_FILE in files and context["kind"] == "tabular" and context["modality"] == "base"
    card = str(render_card(context))
    assert "accuracy on held-out retained rows" in card and "train-forget" in card


def test_a_metric_registered_with_its_computation_reaches_results_and_report(registered, trained, digits, tmp_path):
    args = UnlearnConfig(output_dir=str(tmp_path), method="neggrad_plus", num_train_epochs=1, learning_rate=1e-3,
                         report_to="none", disable_tqdm=True)  # fmt: skip
    result = UnlearningTrainer(trained("resnet"), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                               forget_classes=[3]).unlearn()  # fmt: skip
    assert result.original_metrics["forget_top2_accuracy"] > 0.9
    assert result.metrics["forget_top2_accuracy"] < result.original_metrics["forget_top2_accuracy"]
    assert "forget rows still in the top 2: original" in format_report(result.original_metrics, result.metrics, None, [])


def test_unlearn_logs_its_metrics_through_the_trainer(trained, digits, tmp_path):
    """`report_to` integrations see what `Trainer.log` sees: the unlearned and original metrics end up in the log
    history (TensorBoard, W&B and trackio read the same `on_log` events)."""
    args = UnlearnConfig(output_dir=str(tmp_path), method="svd_projection", report_to="none", disable_tqdm=True,
                         method_kwargs={"num_samples": 100, "alpha_r_grid": [30.0], "alpha_f_grid": [3.0]})  # fmt: skip
    trainer = UnlearningTrainer(trained("resnet"), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                                forget_classes=[3])  # fmt: skip
    result = trainer.unlearn()
    logged = trainer.state.log_history[-1]
    assert logged["unlearned/forget_accuracy"] == pytest.approx(result.metrics["forget_accuracy"])
    assert logged["original/retain_accuracy"] == pytest.approx(result.original_metrics["retain_accuracy"])
    assert logged["unlearned/unlearn_seconds"] > 0


def test_a_request_is_resolved_and_checked_without_a_trainer(trained, digits, tmp_path):
    from hf_unlearn import UnlearningRequest

    args = UnlearnConfig(output_dir=str(tmp_path), method="svd_projection", max_forget_samples=20)
    model = trained("resnet")
    request = UnlearningRequest.resolve(model, args, train_dataset=digits["train"], eval_dataset=digits["test"],
                                        forget_classes=["three"])  # fmt: skip
    assert request.kind.name == "classifier" and request.method.name == "svd_projection"
    assert request.split.forget_classes == [3] and 3 not in request.retained_classes
    assert len(request.forget_view) == 20 and set(request.forget_labels) == {3}
    assert request.model is not model  # a copy: the caller's model is left as it is
    assert set(request.metric_views) == {"forget_train", "retain_train", "eval_forget", "eval_retain"}
    with pytest.raises(ValueError, match="forgets whole classes, so it needs `forget_classes`"):
        UnlearningRequest.resolve(model, args, train_dataset=digits["train"], eval_dataset=digits["test"],
                                  forget_indices=[0, 1])  # fmt: skip
    with pytest.raises(ValueError, match="Method 'gan_cascade' does not unlearn classifier models"):
        UnlearningRequest.resolve(model, UnlearnConfig(output_dir=str(tmp_path), method="gan_cascade"),
                                  train_dataset=digits["train"], eval_dataset=digits["test"], forget_classes=[3])  # fmt: skip


@pytest.mark.parametrize(
    "method_class, message",
    [
        (object, "must be a subclass of hf_unlearn.UnlearningMethod"),
        (type("NoRun", (UnlearningMethod,), {}), "must define `run\\(\\)`"),
        (type("NoKinds", (UnlearningMethod,), {"run": lambda self: None, "model_kinds": ()}), "model_kinds"),
    ],
)
def test_register_method_checks_what_it_registers(method_class, message):
    with pytest.raises(TypeError, match=message):
        register_method("checked", RetainOnlyConfig, method_class, description="a method")


def test_the_originals_measurement_is_reused_only_for_the_same_model_and_rows(trained, digits, tmp_path):
    model = trained("resnet")

    def run(model, **overrides):
        args = UnlearnConfig(output_dir=str(tmp_path), method="svd_projection", report_to="none", disable_tqdm=True,
                             method_kwargs={"num_samples": 60, "alpha_r_grid": [30.0], "alpha_f_grid": [3.0]},
                             **overrides)  # fmt: skip
        return UnlearningTrainer(model, args, train_dataset=digits["train"], eval_dataset=digits["test"],
                                 forget_classes=[3]).unlearn()  # fmt: skip

    first, again = run(model, seed=11), run(model, seed=11)
    assert again.metrics["original_measurement_reused"] and again.original_metrics == first.original_metrics
    assert not run(model, seed=12).metrics["original_measurement_reused"]  # other sampled rows: measured again
    # Another eval batch size (padding changes the logits of an audio model without an attention mask): measured again.
    assert not run(model, seed=11, per_device_eval_batch_size=5).metrics["original_measurement_reused"]
    # A metric registered since (or another function under a key): measured again, so the original has it too.
    register_metric(Metric("forget_top2_accuracy", ("classifier",), "forget rows still in the top 2", "low",
                           compute=top2_forget))  # fmt: skip
    try:
        result = run(model, seed=11)
        assert not result.metrics["original_measurement_reused"] and "forget_top2_accuracy" in result.original_metrics
    finally:
        unregister_metric("forget_top2_accuracy")
    changed = first.model  # another model (the unlearned one): measured, not taken from the cache
    result = run(changed, seed=11)
    assert not result.metrics["original_measurement_reused"]
    assert result.original_metrics["forget_accuracy"] == pytest.approx(first.metrics["forget_accuracy"])


def test_kind_of_sees_through_wrappers_and_a_folder_without_config_is_named(tmp_path):
    from hf_unlearn.examples.digits import digits_classifier
    from hf_unlearn.kinds import load_model

    model = digits_classifier("resnet")
    assert kind_of(torch.compile(model)).name == "classifier"  # the wrapper torch_compile=True trains through
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a config.json"):
        load_model(str(tmp_path / "empty"))


def test_a_missing_folder_that_reads_as_a_hub_id_gets_the_prepare_hint(tmp_path, monkeypatch):
    """'outputs/digits-vit' (one slash) is a Hub ID too: offline, no model of that ID can be loaded either, and the
    error says how to prepare the folder. `~` is the home folder."""
    from hf_unlearn.kinds import load_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"'outputs/digits-vit' is no local folder.*Prepare the model first"):
        load_model("outputs/digits-vit")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"'{tmp_path}/nowhere/model' is a local path that does not exist"):
        load_model("~/nowhere/model")


def test_the_originals_cache_key_names_the_rows_measured_not_a_later_eval_dataset(trained, digits, tmp_path):
    """The metric views are built with the request: an `eval_dataset` set on the trainer afterwards is not what is
    measured, so it must not key the measurement either (a trainer built on it would get the other rows' numbers)."""
    from hf_unlearn.measure_cache import request_fingerprint

    def trainer(eval_dataset):
        args = UnlearnConfig(output_dir=str(tmp_path), method="finetune", report_to="none", disable_tqdm=True)
        return UnlearningTrainer(trained("resnet"), args, train_dataset=digits["train"], eval_dataset=eval_dataset,
                                 forget_classes=[3])  # fmt: skip

    other = digits["test"].select(range(100))
    first = trainer(digits["test"])
    key = request_fingerprint(first)
    first.eval_dataset = other
    assert request_fingerprint(first) == key != request_fingerprint(trainer(other))
