"""`remain_geometry` (SFR-on): the Fisher diagonals and the saliency mask; masked parameters do not move in a forget
step; class and sample-level forgetting on digits; with LoRA the mask covers the adapters and the head."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.examples.digits import SAMPLE_BUDGETS, training_arguments, unlearn_budgets
from hf_unlearn.methods.remain_geometry import fisher_diagonal, relabelled


def build(model, digits, tmp_path, forget_classes=(3,), forget_indices=None, **budget):
    method_kwargs = budget.pop("method_kwargs", None)
    values = training_arguments(str(tmp_path), disable_tqdm=True, **budget)
    args = UnlearnConfig(**values, method="remain_geometry", method_kwargs=method_kwargs)
    request = (
        {"forget_indices": forget_indices} if forget_indices is not None else {"forget_classes": list(forget_classes)}
    )
    return UnlearningTrainer(model, args, train_dataset=digits["train"], eval_dataset=digits["test"], **request)


def test_fisher_diagonal_is_the_mean_squared_batch_gradient(trained, digits, tmp_path):
    trainer = build(trained("resnet"), digits, tmp_path, per_device_train_batch_size=16)
    rows = trainer.forget_view.select(range(40))  # batches of 16, 16 and 8 rows
    parameters = dict(trainer.model.named_parameters())
    fisher = fisher_diagonal(trainer, rows, parameters, "test")
    model = trainer.model.eval()
    expected = {name: torch.zeros_like(p) for name, p in parameters.items()}
    for start in (0, 16, 32):
        batch = rows[start : start + 16]
        pixels = torch.tensor(np.asarray(batch["pixel_values"]), dtype=torch.float32)
        loss = F.cross_entropy(model(pixel_values=pixels).logits, torch.tensor(batch["label"]))
        for name, gradient in zip(parameters, torch.autograd.grad(loss, list(parameters.values())), strict=True):
            expected[name] += gradient.pow(2) / 3
    for name in parameters:
        torch.testing.assert_close(fisher[name], expected[name], rtol=1e-4, atol=1e-12)


def test_the_per_batch_clipped_fisher_clips_each_batch_gradient_before_squaring(trained, digits, tmp_path):
    """`fisher_clip_norm` (the official DDPM code's Fisher): each batch's whole gradient g is scaled to
    g * min(1, c / ||g||) before squaring, by hand here; with c far below the gradients' norms every batch is clipped,
    so the result differs from the unclipped Fisher."""
    trainer = build(trained("resnet"), digits, tmp_path, per_device_train_batch_size=16)
    rows = trainer.forget_view.select(range(40))
    parameters = dict(trainer.model.named_parameters())
    clip = 0.05
    fisher = fisher_diagonal(trainer, rows, parameters, "test", clip_norm=clip)
    model = trainer.model.eval()
    expected = {name: torch.zeros_like(p) for name, p in parameters.items()}
    norms = []
    for start in (0, 16, 32):
        batch = rows[start : start + 16]
        pixels = torch.tensor(np.asarray(batch["pixel_values"]), dtype=torch.float32)
        loss = F.cross_entropy(model(pixel_values=pixels).logits, torch.tensor(batch["label"]))
        gradients = torch.autograd.grad(loss, list(parameters.values()))
        norm = float(torch.sqrt(sum(gradient.pow(2).sum() for gradient in gradients)))
        norms.append(norm)
        for name, gradient in zip(parameters, gradients, strict=True):
            expected[name] += (gradient * min(1.0, clip / norm)).pow(2) / 3
    assert min(norms) > clip  # every batch was clipped
    for name in parameters:
        torch.testing.assert_close(fisher[name], expected[name], rtol=1e-4, atol=1e-12)
    unclipped = fisher_diagonal(trainer, rows, parameters, "test")
    assert sum(float(value.sum()) for value in unclipped.values()) > 2 * sum(float(v.sum()) for v in fisher.values())


def test_the_rl_relabelling_maps_each_class_to_the_next_retained_one():
    labels = torch.arange(10)
    retained = torch.tensor([c for c in range(10) if c != 3])
    nxt = relabelled(labels, retained, 10, "next")
    assert nxt.tolist() == [1, 2, 4, 4, 5, 6, 7, 8, 9, 0]  # (c + 1) mod 10; class 2 skips the forgotten 3
    assert relabelled(torch.tensor([3, 3]), retained, 10, "next").tolist() == [4, 4]  # the paper's c -> c + 1
    assert relabelled(torch.tensor([9]), torch.tensor([1, 2]), 10, "next").tolist() == [1]  # wraps around
    random = relabelled(torch.full((200,), 3), retained, 10, "random")
    assert set(random.tolist()) <= set(retained.tolist()) and len(set(random.tolist())) > 5


def test_the_mask_keeps_masked_parameters_unchanged_by_a_forget_step(trained, digits, tmp_path):
    """Plain SGD (no momentum or weight decay, so nothing but the forget gradient moves a parameter): after one
    forget step, exactly the parameters the Fisher ratio leaves out are unchanged, and the others moved."""
    trainer = build(trained("vit"), digits, tmp_path, optim="sgd", weight_decay=0.0, learning_rate=0.05)
    method = trainer.method
    method.prepare()  # settings and the saliency mask
    trainer.create_optimizer()
    model = trainer.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.forget_view[i] for i in range(32)]))
    model.train()
    method.forget_step(model, batch, alpha=1.0)
    masked = unmasked = 0
    for name, parameter in model.named_parameters():
        mask = method.masks[id(parameter)].bool()
        moved = parameter.detach() != before[name]
        assert not moved[~mask].any(), name  # masked out: untouched
        masked += int((~mask).sum())
        unmasked += int(moved[mask].sum())
    assert masked > 0 and unmasked > 0
    assert 0.0 < method.report["salient_fraction"] < 1.0


def test_class_forgetting_drops_the_forget_accuracy_and_keeps_the_retain_accuracy(trained, digits, tmp_path):
    result = build(trained("resnet"), digits, tmp_path, **unlearn_budgets()["remain_geometry"]).unlearn()
    metrics, original = result.metrics, result.original_metrics
    assert original["forget_accuracy"] > 0.9 and metrics["forget_accuracy"] <= 0.05
    assert metrics["retain_accuracy"] >= original["retain_accuracy"] - 0.03
    assert (metrics["forget_every"], metrics["alpha"]) == (2, 1.0)  # the class defaults
    assert metrics["iterations"] <= 30


@pytest.mark.parametrize("forget_updates_batchnorm", [False, True])
def test_forget_steps_leave_the_batchnorm_statistics_alone(forget_updates_batchnorm, trained, digits, tmp_path):
    """A forget step's batch (only forgotten classes) is normalised with its own statistics but, by default, leaves
    the running statistics every class is normalised with at inference alone; the retain steps update them."""
    model = trained("resnet")
    norm = next(module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d))
    seen = []
    norm.register_forward_pre_hook(lambda module, args: seen.append(module.track_running_stats)
                                   if module.training and torch.is_grad_enabled() else None)  # fmt: skip
    build(model, digits, tmp_path, max_steps=4, learning_rate=1e-4,
          method_kwargs={"guard_samples": 0, "forget_updates_batchnorm": forget_updates_batchnorm}).unlearn()
    # forget_every = 2 for classes: a forget step at iterations 0 and 2, each followed by that iteration's retain step
    assert seen[-6:] == ([True] * 6 if forget_updates_batchnorm else [False, True, True, False, True, True])
    assert norm.track_running_stats


def test_the_guard_pauses_forgetting_and_stops_once_the_retain_rows_recovered(trained, digits, tmp_path):
    """Class request: the guard scores sampled training rows every `check_steps`; forget steps pause once the forget
    rows are at 0 and training stops once the retain rows are back within tolerance, well before the budget."""
    budget = {"max_steps": 120, "learning_rate": 3e-3, "optim": "adamw_torch", "weight_decay": 0.0,
              "max_grad_norm": 0.0, "method_kwargs": {"mask_samples": 128, "check_steps": 3}}  # fmt: skip
    result = build(trained("resnet"), digits, tmp_path, **budget).unlearn()
    metrics = result.metrics
    assert metrics["iterations"] < 120 and metrics["iterations"] % 3 == 0
    assert metrics["guard_forget_accuracy"] == 0.0
    assert metrics["guard_retain_accuracy"] >= metrics["guard_retain_before"] - 0.01
    assert metrics["forget_steps"] <= (metrics["iterations"] + 1) // 2
    assert metrics["forget_accuracy"] <= 0.05 and result.forgotten


def test_the_guard_scores_the_retain_rows_only_where_they_decide(trained, digits, tmp_path):
    """While the forget rows are above their target no check can stop training, so the retain rows are not scored
    there: the same run as scoring them at every check (`guard_full_checks`), the same weights, fewer passes."""
    budget = {"max_steps": 120, "learning_rate": 3e-3, "optim": "adamw_torch", "weight_decay": 0.0,
              "max_grad_norm": 0.0, "eval_before_unlearn": False, "eval_after_unlearn": False}  # fmt: skip
    runs = {}
    for full in (False, True):
        kwargs = {"mask_samples": 128, "check_steps": 3, "guard_full_checks": full}
        result = build(trained("resnet"), digits, tmp_path / str(full), method_kwargs=kwargs, **budget).unlearn()
        runs[full] = result
    partial, full = runs[False].metrics, runs[True].metrics
    for key in ("iterations", "forget_steps", "guard_checks", "guard_forget_accuracy", "guard_retain_accuracy"):
        assert partial[key] == full[key], key
    for name, value in runs[True].model.state_dict().items():
        assert torch.equal(runs[False].model.state_dict()[name], value), name
    assert full["guard_retain_checks"] == full["guard_checks"]
    assert 1 <= partial["guard_retain_checks"] < partial["guard_checks"]


def test_the_plausible_guard_pauses_forgetting_only_once_the_class_is_implausible(trained, digits, tmp_path):
    """`guard_forget_check="plausible"`: the guard counts forget rows whose class keeps chance probability, and reports
    that share under its own name; the run still stops once it is 0 and the retain rows recovered."""
    budget = {"max_steps": 120, "learning_rate": 3e-3, "optim": "adamw_torch", "weight_decay": 0.0,
              "max_grad_norm": 0.0,
              "method_kwargs": {"mask_samples": 128, "check_steps": 3, "guard_forget_check": "plausible"}}  # fmt: skip
    result = build(trained("resnet"), digits, tmp_path, **budget).unlearn()
    metrics = result.metrics
    assert "guard_forget_accuracy" not in metrics
    assert metrics["guard_forget_plausible"] == 0.0 and metrics["iterations"] < 120
    assert metrics["forget_accuracy"] <= 0.05 and result.forgotten


def test_held_out_forget_rows_take_no_forget_step_and_the_guard_scores_them(trained, digits, tmp_path, monkeypatch):
    """`guard_held_out`: a quarter of the forget rows (balanced over the forget classes) never reach a forget step,
    and the guard scores them with the others, so forgetting pauses only once the class is gone on rows it never
    pushed."""
    from hf_unlearn.methods import remain_geometry

    guards = []

    class RecordingGuard(remain_geometry.RetainGuard):
        def __init__(self, method, batches, *args, **kwargs):
            guards.append(batches)
            super().__init__(method, batches, *args, **kwargs)

    monkeypatch.setattr(remain_geometry, "RetainGuard", RecordingGuard)
    fisher_rows, fisher_diagonal = {}, remain_geometry.fisher_diagonal

    def recording_fisher(trainer, dataset, parameters, description, *args, **kwargs):
        fisher_rows[description] = dataset
        return fisher_diagonal(trainer, dataset, parameters, description, *args, **kwargs)

    monkeypatch.setattr(remain_geometry, "fisher_diagonal", recording_fisher)
    budget = {"max_steps": 30, "learning_rate": 3e-3, "optim": "adamw_torch", "weight_decay": 0.0,
              "max_grad_norm": 0.0, "eval_before_unlearn": False, "eval_after_unlearn": False,
              "method_kwargs": {"mask_samples": 64, "check_steps": 3, "guard_held_out": 0.25}}  # fmt: skip
    trainer = build(trained("resnet"), digits, tmp_path, forget_classes=(3, 5), **budget)
    method, stepped = trainer.method, []
    forget_step = method.forget_step

    def recording(model, batch, alpha):
        stepped.extend(map(tuple, batch["pixel_values"].reshape(len(batch["pixel_values"]), -1).tolist()))
        return forget_step(model, batch, alpha)

    method.forget_step = recording
    result = trainer.unlearn()
    rows = lambda view: {tuple(np.asarray(row, dtype=np.float32).reshape(-1).tolist()) for row in view["pixel_values"]}  # noqa: E731
    held_out = rows(trainer.forget_view.select(method.held_out))
    forget_rows = len(trainer.forget_view)
    assert len(method.held_out) == result.metrics["guard_held_out_rows"] == round(0.25 * forget_rows)
    assert set(trainer.forget_labels[method.held_out]) == {3, 5}
    assert stepped and not held_out & set(stepped)
    assert not held_out & rows(fisher_rows["Fisher (forget)"])  # nor do they choose the parameters the steps move
    assert len(set(stepped)) > 0.5 * (forget_rows - len(held_out))  # the other forget rows do take steps
    scored = {tuple(row.reshape(-1).tolist()) for batch in guards[0]["forget"] for row in batch[1]["pixel_values"]}
    assert held_out <= scored


def test_held_out_rows_without_a_guard_are_ignored_with_a_warning(trained, digits, tmp_path, caplog):
    budget = {"max_steps": 2, "eval_before_unlearn": False, "eval_after_unlearn": False,
              "method_kwargs": {"mask_samples": 16, "guard_samples": 0, "guard_held_out": 0.25}}  # fmt: skip
    trainer = build(trained("resnet"), digits, tmp_path, **budget)
    with caplog.at_level("WARNING"):
        trainer.unlearn()
    assert "`guard_held_out` needs the guard" in caplog.text
    assert len(trainer.method.held_out) == 0 and "guard_held_out_rows" not in trainer.unlearning_output.metrics


def test_the_guard_never_cancels_the_budgets_own_stop(trained, digits, tmp_path):
    """A guard that does not stop (nothing forgets at this rate) checking at every step must leave the Trainer's
    `max_steps` stop alone: the run ends at the budget, not at the end of the epoch."""
    budget = {"max_steps": 6, "learning_rate": 1e-8, "optim": "adamw_torch",
              "method_kwargs": {"mask_samples": 64, "check_steps": 1}}  # fmt: skip
    result = build(trained("resnet"), digits, tmp_path, eval_before_unlearn=False, **budget).unlearn()
    assert result.metrics["iterations"] == 6 and result.metrics["guard_checks"] == 6
    assert result.metrics["guard_forget_accuracy"] > 0.5  # it did not forget, so the guard never asked to stop


def test_sample_level_forgetting_uses_the_paper_defaults(trained, digits, tmp_path):
    rows = np.sort(np.random.default_rng(0).choice(len(digits["train"]), len(digits["train"]) // 10, replace=False))
    budget = {**SAMPLE_BUDGETS["remain_geometry"], "max_steps": 40}
    model = trained("resnet")
    trainer = build(model, digits, tmp_path, forget_indices=rows, **budget)
    result = trainer.unlearn()
    assert (result.metrics["forget_every"], result.metrics["alpha"]) == (5, 25.0)
    assert result.metrics["forget_steps"] == 8 and result.metrics["iterations"] == 40
    # The forgotten rows lose confidence; the model stays a good classifier.
    assert result.metrics["test_accuracy"] >= result.original_metrics["test_accuracy"] - 0.03

    def forget_confidence(model):
        logits, labels = trainer.predict_logits(trainer.forget_view, model)
        return float(torch.softmax(torch.tensor(logits), -1)[torch.arange(len(labels)), labels].mean())

    assert forget_confidence(result.model) < forget_confidence(model)


def test_with_lora_the_mask_covers_exactly_the_adapters_and_the_head(trained, digits, tmp_path):
    trainer = build(
        trained("vit"), digits, tmp_path, max_steps=4, learning_rate=1e-2, optim="adamw_torch", weight_decay=0.0,
        peft_config={"r": 4, "target_modules": ["q_proj", "v_proj"]}, method_kwargs={"mask_samples": 64},
    )  # fmt: skip
    masked_names = []
    original_saliency_mask = trainer.method.saliency_mask

    def record_mask():
        masks = original_saliency_mask()
        by_id = {id(parameter): name for name, parameter in trainer.model.named_parameters()}
        masked_names.extend(by_id[key] for key in masks)
        return masks

    trainer.method.saliency_mask = record_mask
    result = trainer.unlearn()
    assert masked_names and all("lora_" in name or "modules_to_save" in name for name in masked_names), masked_names
    assert sum("lora_" in name for name in masked_names) == 8  # A and B of q and v in 2 layers
    assert result.metrics["peft"]["adapted_layers"] == 4 and result.metrics["peft"]["merged"] is True


def test_gradient_accumulation_is_refused(trained, digits, tmp_path):
    with pytest.raises(ValueError, match="needs `gradient_accumulation_steps=1`, got 2"):
        build(trained("resnet"), digits, tmp_path, gradient_accumulation_steps=2, max_steps=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"gamma": 0}, "gamma"), ({"forget_every": 0}, "forget_every"), ({"alpha": -1}, "alpha"),
     ({"weight_exponent": -0.5}, "weight_exponent"), ({"guard_held_out": 1.0}, "guard_held_out")],
)  # fmt: skip
def test_bad_method_kwargs_are_named(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        UnlearnConfig(output_dir=str(tmp_path), method="remain_geometry", method_kwargs=kwargs)


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are its input (`x`): the accuracy and plausibility counts are known by hand."""

    def forward(self, x):
        return SimpleNamespace(logits=x)


def test_the_plausible_count_bounds_the_accuracy_and_reaches_zero_only_with_a_margin():
    """Four rows of class 0 out of 4 classes (chance 0.25): one predicted (counted by both), one second with 0.4
    (plausible, not accurate), one at 0.2 and one at 0.01 (neither)."""
    from accelerate import Accelerator

    from hf_unlearn.passes import shard_accuracy

    probabilities = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.4, 0.5, 0.05, 0.05], [0.2, 0.6, 0.1, 0.1],
                                  [0.01, 0.97, 0.01, 0.01]])  # fmt: skip
    batches = [(torch.arange(4), {"x": probabilities.log(), "labels": torch.zeros(4, dtype=torch.long)})]
    accelerator = Accelerator(cpu=True)
    assert shard_accuracy(FixedLogits(), batches, accelerator) == 0.25
    assert shard_accuracy(FixedLogits(), batches, accelerator, plausible_at=0.25) == 0.5
    assert shard_accuracy(FixedLogits(), batches, accelerator, plausible_at=0.1) == 0.75
