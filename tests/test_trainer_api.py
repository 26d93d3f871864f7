"""The `transformers.Trainer` API a user reaches for on `UnlearningTrainer`: `evaluate()`, `eval_strategy`, `predict()`,
`compute_metrics`, `train()`, and TrainingArguments fields that would change a run silently (`dataloader_drop_last`,
`load_best_model_at_end`, `label_smoothing_factor`)."""

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from hf_unlearn import UnlearnConfig, UnlearningTrainer


class EvaluationLog(TrainerCallback):
    def __init__(self):
        self.evaluations = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluations.append((state.global_step, dict(metrics)))


def accuracy_metric(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def test_evaluate_gives_the_unlearning_metrics_and_predict_scores_the_model(trained, make_args, digits):
    model = trained("vit")
    trainer = UnlearningTrainer(model, make_args("neggrad_plus"), train_dataset=digits["train"],
                                eval_dataset=digits["test"], forget_classes=[3], compute_metrics=accuracy_metric)
    log = EvaluationLog()
    trainer.add_callback(log)
    evaluated = trainer.evaluate()
    measured = trainer.evaluate_unlearning()
    for key in ("forget_accuracy", "retain_accuracy", "test_accuracy", "mia_entropy", "feature_probe"):
        assert evaluated[f"eval_{key}"] == pytest.approx(measured[key])
    assert len(log.evaluations) == 1  # the callbacks hear of it, as after the Trainer's own evaluate
    # `compute_metrics` ran in the Trainer's loop on the model's own loss and logits: the same accuracy
    assert evaluated["eval_accuracy"] == pytest.approx(measured["test_accuracy"])
    assert np.isfinite(evaluated["eval_loss"]) and evaluated["eval_loss"] > 0

    prediction = trainer.predict(digits["test"])  # the method's objective (paired batches) would raise here
    labels = np.asarray(digits["test"]["label"])
    assert prediction.predictions.shape == (len(labels), 10)
    assert (prediction.predictions.argmax(-1) == labels).mean() == pytest.approx(measured["test_accuracy"])
    assert prediction.metrics["test_loss"] == pytest.approx(evaluated["eval_loss"])

    with pytest.raises(ValueError, match="takes no `eval_dataset`"):
        trainer.evaluate(digits["test"])
    with pytest.raises(RuntimeError, match=r"trainer\.unlearn\(\)"):
        trainer.train()


def with_dropout(model, p=0.1):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
    return model


def test_eval_strategy_steps_logs_the_unlearning_metrics_without_changing_the_run(trained, make_args, digits):
    results, logs = [], []
    for extra in ({}, {"eval_strategy": "steps", "eval_steps": 10}):
        log = EvaluationLog()
        # With dropout, a measuring pass that drew from the global generator would change the training's draws
        trainer = UnlearningTrainer(with_dropout(trained("vit")), make_args("neggrad_plus", **extra),
                                    train_dataset=digits["train"], eval_dataset=digits["test"], forget_classes=[3],
                                    callbacks=[log])  # fmt: skip
        results.append(trainer.unlearn().metrics)
        logs.append(log.evaluations)
    assert logs[0] == []
    steps = [step for step, _ in logs[1]]
    assert len(steps) >= 3 and all(step % 10 == 0 for step in steps[:-1])  # and at the last step, as the Trainer does
    assert all({"eval_forget_accuracy", "eval_retain_accuracy"} <= set(metrics) for _, metrics in logs[1])
    # The forgetting as it went: the forget accuracy falls over the run (the original's is high)
    assert logs[1][-1][1]["eval_forget_accuracy"] < logs[1][0][1]["eval_forget_accuracy"]
    for key in ("forget_accuracy", "retain_accuracy", "mia_entropy"):
        assert results[1][key] == results[0][key]  # measuring in between changed nothing the method did


def test_evaluations_and_checkpoints_during_the_method_are_not_its_time(trained, make_args, digits, monkeypatch):
    """`eval_strategy` / `save_strategy` work inside the training loop counts as evaluation (and checkpoint)
    seconds, not as `unlearn_seconds`: a retrain evaluated every epoch would otherwise look slower than it is. The
    clock is the test's own: only an evaluation moves it (by 100 s)."""
    import time

    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    trainer = UnlearningTrainer(trained("resnet"), make_args("finetune", max_steps=2, eval_strategy="steps",
                                                             eval_steps=1, save_strategy="steps", save_steps=1,
                                                             eval_before_unlearn=False, eval_after_unlearn=False),
                                train_dataset=digits["train"], eval_dataset=digits["test"],
                                forget_classes=[3])  # fmt: skip
    measure = trainer.evaluate_unlearning

    def slow(*args, **kwargs):
        clock[0] += 100.0
        return measure(*args, **kwargs)

    save_state = trainer._save_rng_state

    def slow_rng_state(*args, **kwargs):  # a part of the checkpoint beside the model's weights
        clock[0] += 10.0
        return save_state(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate_unlearning", slow)
    monkeypatch.setattr(trainer, "_save_rng_state", slow_rng_state)
    metrics = trainer.unlearn().metrics
    assert metrics["evaluation_seconds"] == 200.0 and metrics["unlearn_seconds"] == 0.0  # two evaluations, both apart
    assert metrics["checkpoint_seconds"] == 20.0  # and the two whole checkpoints


def test_dataloader_drop_last_never_drops_measured_rows(trained, make_args, digits):
    # 360 eval rows in batches of 100: dropping the last batch would measure 300 of them
    metrics = [
        UnlearningTrainer(trained("vit"), make_args("gppu", per_device_eval_batch_size=100, **extra),
                          train_dataset=digits["train"], eval_dataset=digits["test"],
                          forget_classes=[3]).evaluate_unlearning()  # fmt: skip
        for extra in ({}, {"dataloader_drop_last": True})
    ]
    assert metrics[1] == metrics[0]


def test_drop_last_with_no_whole_training_batch_is_refused(trained, make_args, digits):
    args = make_args("gradient_ascent", dataloader_drop_last=True, per_device_train_batch_size=256)
    trainer = UnlearningTrainer(trained("vit"), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                                forget_classes=[3])  # fmt: skip
    with pytest.raises(ValueError, match="drops every training batch.*146 rows"):
        trainer.unlearn()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("load_best_model_at_end", True, "least unlearned"),
        ("save_strategy", "best", "least unlearned"),
        ("lr_scheduler_type", "reduce_lr_on_plateau", "metric_for_best_model='retain_accuracy'"),
        ("resume_from_checkpoint", "out/checkpoint-10", "not resumed"),
        ("fp16_full_eval", True, "cast the model in place"),
        ("label_smoothing_factor", 0.1, "silently ignored"),
        ("remove_unused_columns", True, "arrive empty"),
    ],
)
def test_training_fields_that_would_change_the_run_silently_are_refused(tmp_path, field, value, message):
    extra = {"eval_strategy": "steps"} if field != "save_strategy" else {}
    with pytest.raises(ValueError, match=f"`{field}.*{message}"):
        UnlearnConfig(output_dir=str(tmp_path), method="neggrad_plus", **{field: value}, **extra)


def test_trainer_loops_that_do_not_run_a_method_are_refused(trained, make_args, digits):
    with pytest.raises(ValueError, match="compute_loss_func"):
        UnlearningTrainer(trained("vit"), make_args("neggrad_plus"), train_dataset=digits["train"],
                          eval_dataset=digits["test"], forget_classes=[3], compute_loss_func=lambda *a, **k: 0)
    trainer = UnlearningTrainer(trained("vit"), make_args("neggrad_plus"), train_dataset=digits["train"],
                                eval_dataset=digits["test"], forget_classes=[3])  # fmt: skip
    with pytest.raises(RuntimeError, match="does not run an unlearning method"):
        trainer.hyperparameter_search()


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_model_comes_back_in_the_mode_it_came_in(trained, make_args, digits, mode):
    """The Trainer's loop leaves a model in training mode: a model given in eval mode (as `from_pretrained` gives it)
    must come back in eval mode, dropout off, so two calls give the same logits; one given in training mode stays."""
    model = with_dropout(trained("vit"))
    model.train(mode == "train")
    result = UnlearningTrainer(model, make_args("neggrad_plus", max_steps=3), train_dataset=digits["train"],
                               eval_dataset=digits["test"], forget_classes=[3]).unlearn()  # fmt: skip
    assert all(module.training == (mode == "train") for module in result.model.modules())
    if mode == "eval":
        pixels = torch.tensor(np.asarray(digits["test"][:8]["pixel_values"]), dtype=torch.float32)
        with torch.no_grad():
            torch.testing.assert_close(result.model(pixel_values=pixels).logits,
                                       result.model(pixel_values=pixels).logits, rtol=0, atol=0)  # fmt: skip


@pytest.mark.parametrize("metric, mode", [("retain_accuracy", "max"), ("forget_accuracy", "max")])
def test_plateau_schedules_follow_the_direction_of_their_metric(tmp_path, metric, mode):
    """ReduceLROnPlateau and greedy default to mode='min'; `greater_is_better` only picks checkpoints. The schedule
    gets the metric's direction (unless the user named a mode), or it would cut the rate while retain accuracy rises."""
    for scheduler in ("reduce_lr_on_plateau", "greedy"):
        args = UnlearnConfig(output_dir=str(tmp_path), method="neggrad_plus", lr_scheduler_type=scheduler,
                             eval_strategy="steps", metric_for_best_model=metric, greater_is_better=True)  # fmt: skip
        assert args.lr_scheduler_kwargs["mode"] == mode
    lower = UnlearnConfig(output_dir=str(tmp_path), method="neggrad_plus", lr_scheduler_type="reduce_lr_on_plateau",
                          eval_strategy="steps", metric_for_best_model=metric, greater_is_better=False)  # fmt: skip
    assert lower.lr_scheduler_kwargs["mode"] == "min"
    own = UnlearnConfig(output_dir=str(tmp_path), method="neggrad_plus", lr_scheduler_type="reduce_lr_on_plateau",
                        eval_strategy="steps", metric_for_best_model=metric, lr_scheduler_kwargs={"mode": "min"})  # fmt: skip
    assert own.lr_scheduler_kwargs["mode"] == "min"
