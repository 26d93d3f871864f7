"""`UnlearnConfig(preset="paper")`: each method's paper settings resolve to the documented values, values the user
sets win, the preset is refused where it does not apply, and the run records it (results and card). Also the
evaluation conventions: the guidance-scale conversion and the Deep Unlearning MIA on a case with a known answer."""

import numpy as np
import pytest
import torch

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.diffusion import guidance_scale_from_paper, guidance_scale_to_paper
from hf_unlearn.metric_registry import register_metric, unregister_metric
from hf_unlearn.metrics import DEEP_UNLEARNING_MIA, deep_unlearning_mia


def paper(tmp_path, method, dataset=None, **fields):
    return UnlearnConfig(output_dir=str(tmp_path), method=method, preset="paper", preset_dataset=dataset,
                         report_to="none", **fields)  # fmt: skip


@pytest.mark.parametrize(
    ("dataset", "samples", "alpha_r", "alpha_f"),
    [(None, 900, 100.0, 3.0), ("cifar10", 900, 100.0, 3.0), ("cifar100", 990, 1000.0, 30.0),
     ("imagenet", 999, 100.0, 10.0)],
)  # fmt: skip
def test_svd_projection_paper_settings(tmp_path, dataset, samples, alpha_r, alpha_f):
    config = paper(tmp_path, "svd_projection", dataset).method_config
    assert (config.num_samples, config.alpha_r, config.alpha_f) == (samples, alpha_r, alpha_f)
    assert config.alpha_search is False and config.head_refit_steps == 0 and config.conv_crop == "official"


def test_remain_geometry_paper_settings_for_classifiers_and_diffusion(tmp_path):
    args = paper(tmp_path, "remain_geometry")
    assert (args.optim, args.optim_args, args.learning_rate, args.weight_decay) == ("sgd", "momentum=0.9", 0.01, 5e-4)
    assert (args.lr_scheduler_type, args.max_steps, args.per_device_train_batch_size, args.max_grad_norm) == (
        "cosine", 1500, 128, 0.0)  # fmt: skip
    config = args.method_config
    assert (config.forget_every, config.alpha, config.forget_max_grad_norm, config.weight_exponent) == (5, 25.0, 7.0, 0.5)
    assert config.mask_samples is None and config.guard_samples == 0
    assert args.preset_applied["dataset"] == "cifar10" and "T = 1500" in args.preset_applied["source"]

    ddpm = paper(tmp_path, "remain_geometry", "ddpm-cifar10")
    assert (ddpm.learning_rate, ddpm.weight_decay, ddpm.max_steps, ddpm.max_grad_norm) == (1e-4, 0.0, 150, 1.0)
    config = ddpm.method_config
    assert (config.forget_loss, config.alpha, config.forget_every, config.fisher_clip_norm) == ("ascent", 10.0, 1, 1.0)
    assert (config.pixel_reduction, config.fisher_guidance_scale, config.mask_samples) == ("sum", 2.0, None)
    dit = paper(tmp_path, "remain_geometry", "dit-imagenet")
    assert (dit.method_config.alpha, dit.method_config.alpha_schedule, dit.max_grad_norm) == (1e-3, "constant", 0.0)


def test_gppu_paper_settings(tmp_path):
    args = paper(tmp_path, "gppu")
    assert (args.learning_rate, args.weight_decay, args.num_train_epochs) == (1e-5, 1e-2, 3)
    config = args.method_config
    assert (config.forget_objective, config.direction, config.head_steps) == ("projection", "contrast", 0)
    assert (config.lambda_proj, config.lambda_retain, config.num_neighbors) == (1.0, 0.5, 8)
    assert config.max_finetune_rows is None  # the paper's epochs cover every row; the library caps its own


def test_values_the_user_sets_win_over_the_preset(tmp_path):
    args = paper(tmp_path, "remain_geometry", learning_rate=0.05, max_steps=40, optim_args="momentum=0.5",
                 method_kwargs={"alpha": 3.0})  # fmt: skip
    assert (args.learning_rate, args.max_steps, args.optim_args) == (0.05, 40, "momentum=0.5")
    assert args.method_config.alpha == 3.0 and args.method_config.forget_every == 5  # the rest is the paper's
    # Another optimizer than the paper's SGD does not get SGD's momentum (RMSprop would run with momentum 0.9)
    rmsprop = paper(tmp_path, "remain_geometry", optim="rmsprop")
    assert rmsprop.optim == "rmsprop" and rmsprop.optim_args is None
    assert paper(tmp_path, "remain_geometry", optim="sgd").optim_args == "momentum=0.9"
    # The library's defaults are untouched without a preset.
    plain = UnlearnConfig(output_dir=str(tmp_path), method="remain_geometry", report_to="none")
    assert (plain.optim, plain.learning_rate, plain.preset_applied) == ("adamw_torch", 3e-4, None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"method": "neggrad_plus", "preset": "paper"}, "no paper settings"),
     ({"method": "svd_projection", "preset": "paper", "preset_dataset": "mnist"}, "'cifar100'"),
     ({"method": "svd_projection", "preset_dataset": "cifar10"}, "needs `preset='paper'`"),
     ({"method": "svd_projection", "preset": "papers"}, "'paper' or None")],
)  # fmt: skip
def test_presets_that_do_not_apply_are_refused(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        UnlearnConfig(output_dir=str(tmp_path), report_to="none", **fields)


def test_a_diffusion_preset_on_a_classifier_is_refused(trained, digits, tmp_path):
    args = paper(tmp_path, "remain_geometry", "ddpm-cifar10", disable_tqdm=True)
    with pytest.raises(ValueError, match="for diffusion models, and this is a classifier model.*'cifar10'"):
        UnlearningTrainer(trained("resnet"), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                          forget_classes=[3])  # fmt: skip


def test_the_preset_that_ran_is_in_the_results_and_the_card(trained, digits, tmp_path):
    """The paper's svd_projection on digits (fixed alphas, official crop) with the Deep Unlearning MIA registered:
    both reach the results, and the card says which settings ran."""
    register_metric(DEEP_UNLEARNING_MIA)
    try:
        args = paper(tmp_path, "svd_projection", "cifar10", disable_tqdm=True, method_kwargs={"num_samples": 300})
        trainer = UnlearningTrainer(trained("resnet"), args, train_dataset=digits["train"],
                                    eval_dataset=digits["test"], forget_classes=[3])  # fmt: skip
        result = trainer.unlearn()
    finally:
        unregister_metric(DEEP_UNLEARNING_MIA.key)
    metrics = result.metrics
    assert metrics["preset"]["dataset"] == "cifar10" and metrics["preset"]["method_kwargs"]["alpha_f"] == 3.0
    assert (metrics["alpha_r"], metrics["alpha_f"]) == (100.0, 3.0) and "alpha_grid" not in metrics
    assert 0.0 <= metrics["mia_deep_unlearning"] <= 1.0
    trainer.create_model_card()
    card = (tmp_path / "README.md").read_text()
    assert 'preset="paper"' in card and "Kodge et al. 2024, CIFAR-10" in card


def test_the_guidance_conversion_gives_the_same_prediction():
    """eps_uncond + s (eps_cond - eps_uncond) with s = guidance_scale_from_paper(w) equals (1 + w) eps_cond -
    w eps_uncond; the library's default s = 2 is the paper's cond_scale w = 1."""
    generator = torch.Generator().manual_seed(0)
    conditional, unconditional = torch.randn(2, 4, 8, 8, generator=generator)
    for w in (0.0, 1.0, 3.5):
        s = guidance_scale_from_paper(w)
        ours = unconditional + s * (conditional - unconditional)
        torch.testing.assert_close(ours, (1 + w) * conditional - w * unconditional)
        assert guidance_scale_to_paper(s) == w
    assert guidance_scale_from_paper(1.0) == 2.0


def _logits_with_confidence(confidence: np.ndarray, labels: np.ndarray, num_classes: int = 4) -> np.ndarray:
    """Logits whose softmax gives each row's label `confidence` and spreads the rest evenly."""
    probabilities = np.tile(((1 - confidence) / (num_classes - 1))[:, None], (1, num_classes))
    probabilities[np.arange(len(labels)), labels] = confidence
    return np.log(probabilities)


def test_the_deep_unlearning_mia_on_a_known_case():
    """Retain training rows confident (members), forget training rows not (the attack's non-members): forget eval
    rows that look like the forget training rows are all called non-member (1.0); rows as confident as the retain
    rows, none (0.0)."""
    rng = np.random.default_rng(0)
    retain_labels, forget_labels, test_labels = rng.integers(1, 4, 300), np.zeros(60, int), np.zeros(40, int)
    parts = {
        "retain_train": (_logits_with_confidence(rng.uniform(0.9, 0.99, 300), retain_labels), retain_labels),
        "forget_train": (_logits_with_confidence(rng.uniform(0.01, 0.1, 60), forget_labels), forget_labels),
    }
    forgotten = {**parts, "eval_forget": (_logits_with_confidence(rng.uniform(0.01, 0.1, 40), test_labels), test_labels)}
    remembered = {**parts, "eval_forget": (_logits_with_confidence(rng.uniform(0.9, 0.99, 40), test_labels), test_labels)}
    assert deep_unlearning_mia(forgotten, class_level=True) == 1.0
    assert deep_unlearning_mia(remembered, class_level=True) == 0.0
    assert deep_unlearning_mia(forgotten, class_level=False) is None


def test_a_copy_with_another_preset_resolves_that_presets_values(tmp_path):
    """`method_kwargs` keeps only what the user set, so `dataclasses.replace` with another `preset_dataset` gives
    that preset's settings (and a user's own value still wins)."""
    import dataclasses

    args = paper(tmp_path, "svd_projection", "cifar10", method_kwargs={"num_samples": 64})
    assert args.method_kwargs == {"num_samples": 64}
    other = dataclasses.replace(args, preset_dataset="cifar100")
    assert (other.method_config.alpha_r, other.method_config.alpha_f, other.method_config.num_samples) == (
        1000.0, 30.0, 64)  # fmt: skip
    assert other.preset_applied["dataset"] == "cifar100"


def test_a_copy_without_the_preset_drops_the_presets_fields(tmp_path):
    """remain_geometry's preset sets `optim_args` (SGD momentum) besides its budget: a copy for another method, or
    without the preset, does not keep it as if the user had set it; one the user set stays."""
    import dataclasses

    args = paper(tmp_path, "remain_geometry")
    assert (args.optim, args.optim_args) == ("sgd", "momentum=0.9")
    for copy in (dataclasses.replace(args, preset=None), dataclasses.replace(args, preset=None, method="finetune")):
        fresh = UnlearnConfig(output_dir=str(tmp_path), method=copy.method, report_to="none")
        assert (copy.optim, copy.optim_args, copy.learning_rate) == (fresh.optim, fresh.optim_args, fresh.learning_rate)
    own = paper(tmp_path, "remain_geometry", optim_args="momentum=0.5")
    assert dataclasses.replace(own, preset=None).optim_args == "momentum=0.5"


def test_diffusion_options_on_a_classifier_are_refused_before_any_work(trained, digits, tmp_path):
    for kwargs in ({"pixel_reduction": "sum"}, {"fisher_guidance_scale": 2.0}, {"diffusion_loss": "mse+vlb"}):
        args = UnlearnConfig(output_dir=str(tmp_path), method="remain_geometry", report_to="none", disable_tqdm=True,
                             method_kwargs=kwargs)  # fmt: skip
        with pytest.raises(ValueError, match=f"`{next(iter(kwargs))}=.*is for diffusion models"):
            UnlearningTrainer(trained("resnet"), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                              forget_classes=[3])  # fmt: skip

