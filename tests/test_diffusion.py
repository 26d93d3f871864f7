"""Diffusion models (DDPM and DiT through diffusers): wrapping, the denoising loss, sampling, remain_geometry's
diffusion variants and the baselines through `unlearn()`, the judge's metrics, and saving / reloading. The runs here
are a few steps on tiny models, judged by a `ConstantJudge`: they check the mechanics and the plumbing of the metrics,
not that a class is forgotten (`benchmarks/diffusion.py` measures that)."""

import math
import sys

import diffusers
import numpy as np
import pytest
import torch
from conftest import QUIET
from tiny_models import ConstantJudge

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.contract import training_loss
from hf_unlearn.diffusion import DiffusionModel, diffusers_module, small_ddpm, small_dit, train_diffusion
from hf_unlearn.examples.digits import DIGIT_NAMES
from hf_unlearn.kinds import load_model


@pytest.fixture(scope="module")
def tiny_digits():
    from hf_unlearn.examples.digits import load_digits_dataset

    return load_digits_dataset(image_size=8)


def tiny_ddpm():
    return small_ddpm(image_size=8, widths=(8, 16), num_train_timesteps=50, labels=DIGIT_NAMES)


def tiny_dit():
    return small_dit(image_size=8, vae_widths=(8, 8), heads=2, head_dim=8, layers=1, num_train_timesteps=50,
                     labels=DIGIT_NAMES)


def diffusion_args(tmp_path, method="remain_geometry", name="out", **overrides):
    values = {"max_steps": 2, "per_device_train_batch_size": 8, "learning_rate": 1e-4, "eval_generated_samples": 8,
              "eval_inference_steps": 2, "report_to": [], **QUIET}  # fmt: skip
    values.update(overrides)
    return UnlearnConfig(output_dir=str(tmp_path / name), method=method, **values)


def unlearn(model, tmp_path, data, method="remain_geometry", judge=None, **overrides):
    """A few steps of `method` forgetting "three"; the default judge calls every image "zero" (no real measurement)."""
    args = diffusion_args(tmp_path, method, **overrides)
    trainer = UnlearningTrainer(model, args, train_dataset=data["train"], eval_dataset=data["test"],
                                judge=judge or ConstantJudge(0), forget_classes=["three"])  # fmt: skip
    return trainer, trainer.unlearn()


class LabelRecorder:
    """Records the timesteps and class labels of every denoiser call of `model`, and whether gradients were on."""

    def __init__(self, model):
        self.calls = []
        original = model.predict

        def predict(x_t, timesteps, labels):
            self.calls.append((timesteps.clone(), labels.clone(), torch.is_grad_enabled()))
            return original(x_t, timesteps, labels)

        model.predict = predict


def prepared_trainer(tmp_path, data, model, forget_classes=("three",), **method_kwargs):
    """A trainer whose remain_geometry method is prepared (settings, mask) and whose optimizer exists, for single
    forget steps; and a forget batch of 8 rows of class 3."""
    args = diffusion_args(tmp_path, max_steps=1, eval_after_unlearn=False, eval_before_unlearn=False,
                          method_kwargs=method_kwargs)  # fmt: skip
    trainer = UnlearningTrainer(model, args, train_dataset=data["train"], eval_dataset=data["test"],
                                forget_classes=list(forget_classes))  # fmt: skip
    trainer.method.prepare()
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    batch = trainer._prepare_inputs(trainer.data_collator([data["train"][i] for i in range(8)]))
    batch["labels"] = torch.full_like(batch["labels"], 3)
    trainer.model.train()
    return trainer, batch


# ------------------------------------------------------------------------------------------------- unlearn
@pytest.mark.parametrize("method, method_kwargs", [
    ("remain_geometry", {}), ("remain_geometry", {"forget_loss": "ascent"}), ("finetune", {}), ("gradient_ascent", {}),
])  # fmt: skip
def test_tiny_ddpm_runs_each_method_saves_and_reloads(tmp_path, tiny_digits, method, method_kwargs):
    """Mechanics: the run moves the denoiser's weights (not the caller's copy), records the sampling and the metric
    names, marks the class in the config, and saves a folder that reloads (also as a diffusers UNet)."""
    model = tiny_ddpm()
    before = {name: p.detach().clone() for name, p in model.denoiser.named_parameters()}
    # The constant judge never sees a "three", in the original's samples either: measured before, that shows nothing
    # and the class would not be recorded; unmeasured, the check rests on the unlearned model's samples alone.
    trainer, output = unlearn(model, tmp_path, tiny_digits, method, method_kwargs=method_kwargs,
                              eval_before_unlearn=False)  # fmt: skip
    unlearned = trainer.model
    changed = [name for name, p in unlearned.denoiser.named_parameters() if not torch.equal(p, before[name])]
    assert changed, "no denoiser weight changed"
    assert all(torch.equal(p, before[name]) for name, p in model.denoiser.named_parameters())  # the caller's copy
    metrics = output.metrics
    assert metrics["sampling"] == {"samples": 8, "seed": 42, "sampler": "DDIMScheduler", "steps": 2, "eta": 0.0,
                                   "guidance_scale": 2.0, "guidance_scale_paper_w": 1.0}  # fmt: skip
    assert {"forget_share", "retain_judge_accuracy", "frechet_distance"} <= set(metrics)
    recorded = unlearned.config.unlearned_classes  # (the constant judge decides it; the plumbing is what counts here)

    trainer.save_model()
    reloaded = DiffusionModel.from_pretrained(trainer.args.output_dir)
    assert reloaded.config.unlearned_classes == recorded and reloaded.config.null_class == 10
    assert reloaded.config.id2label[3] == "three"
    expected = unlearned.sample([3, 5], num_inference_steps=3, seed=0)
    assert torch.allclose(reloaded.sample([3, 5], num_inference_steps=3, seed=0), expected, atol=1e-5)
    # The folder is a diffusers pipeline as well.
    unet = diffusers.UNet2DModel.from_pretrained(trainer.args.output_dir, subfolder="unet")
    assert all(torch.equal(a, b) for a, b in zip(unet.parameters(), unlearned.denoiser.parameters(), strict=True))


@pytest.mark.parametrize("method", ["remain_geometry", "finetune", "gradient_ascent"])
def test_tiny_dit_from_a_pipeline_runs_each_method_and_reloads(tmp_path, tiny_digits, method):
    """Mechanics: a DiTPipeline is taken as the model, its VAE stays frozen, and the result reloads as a
    DiffusionModel, a DiTPipeline and a model argument of its own."""
    model = tiny_dit()
    pipeline = diffusers.DiTPipeline(transformer=model.denoiser, vae=model.vae, scheduler=model.noise_scheduler,
                                     id2label=dict(enumerate(model.config.id2label.values())))  # fmt: skip
    vae_before = {name: p.detach().clone() for name, p in model.vae.named_parameters()}
    trainer, output = unlearn(pipeline, tmp_path, tiny_digits, method, eval_before_unlearn=False)  # as above
    unlearned = trainer.model
    assert isinstance(unlearned, DiffusionModel) and unlearned.config.denoiser == "transformer"
    assert unlearned.config.id2label[3] == "three" and unlearned.config.null_class == 10
    assert all(torch.equal(p, vae_before[name]) for name, p in unlearned.vae.named_parameters())  # the VAE is frozen
    assert output.metrics["frechet_distance"] >= 0

    trainer.save_model()
    reloaded = DiffusionModel.from_pretrained(trainer.args.output_dir)
    expected = unlearned.sample([3, 5], num_inference_steps=3, seed=0)
    assert torch.allclose(reloaded.sample([3, 5], num_inference_steps=3, seed=0), expected, atol=1e-5)
    again = diffusers.DiTPipeline.from_pretrained(trainer.args.output_dir)
    assert all(torch.equal(a, b) for a, b in zip(again.transformer.parameters(), unlearned.denoiser.parameters(),
                                                  strict=True))  # fmt: skip
    # A saved folder is a model argument of its own (local path or Hub ID), through load_model.
    model, processor = load_model(trainer.args.output_dir)
    assert isinstance(model, DiffusionModel) and processor is None
    again_trainer = UnlearningTrainer(trainer.args.output_dir, diffusion_args(tmp_path, "finetune", name="again"),
                                      train_dataset=tiny_digits["train"], eval_dataset=tiny_digits["test"],
                                      judge=ConstantJudge(0), forget_classes=["five"])  # fmt: skip
    assert again_trainer.split.unlearned_before == [3]


# --------------------------------------------------------------------------------------- remain_geometry
def test_remain_geometry_diffusion_defaults_per_model_and_loss(tmp_path, tiny_digits):
    """The DEFAULTS table: DDPM "rl" with the paper's DDPM settings, DiT plain ascent (alpha per loss); given values win."""
    keys = ("forget_every", "alpha", "weight_exponent", "forget_max_grad_norm", "forget_loss")
    quiet = {"eval_after_unlearn": False, "eval_before_unlearn": False}
    _, ddpm = unlearn(tiny_ddpm(), tmp_path, tiny_digits, **quiet)
    assert {k: ddpm.metrics[k] for k in keys} == {
        "forget_every": 1, "alpha": 10.0, "weight_exponent": 0.5, "forget_max_grad_norm": 1.0, "forget_loss": "rl"}  # fmt: skip
    assert ddpm.metrics["forget_steps"] == 2
    _, dit = unlearn(tiny_dit(), tmp_path, tiny_digits, **quiet)
    assert {k: dit.metrics[k] for k in keys} == {
        "forget_every": 1, "alpha": 1.0, "weight_exponent": 0.0, "forget_max_grad_norm": 1.0, "forget_loss": "ascent"}  # fmt: skip
    _, dit_rl = unlearn(tiny_dit(), tmp_path, tiny_digits, method_kwargs={"forget_loss": "rl"}, **quiet)
    assert dit_rl.metrics["alpha"] == 10.0
    _, given = unlearn(tiny_dit(), tmp_path, tiny_digits, method_kwargs={"alpha": 0.5, "forget_every": 2}, **quiet)
    assert (given.metrics["alpha"], given.metrics["forget_every"], given.metrics["forget_loss"]) == (0.5, 2, "ascent")


def test_forget_steps_keep_labels_and_pair_timesteps_retain_steps_drop_labels(tmp_path, tiny_digits):
    model = tiny_ddpm()
    model.config.label_dropout = 1.0  # every label a retain step sees becomes the null class
    trainer, batch = prepared_trainer(tmp_path, tiny_digits, model, forget_loss="ascent")
    recorder = LabelRecorder(trainer.model)
    trainer.method.forget_step(trainer.model, batch, alpha=1.0)
    timesteps, labels, _ = recorder.calls[-1]
    assert labels.tolist() == [3] * 8  # no label dropout in the forget step
    assert (timesteps[:4] + timesteps[4:]).tolist() == [49] * 4  # antithetic: t and T-1-t
    training_loss(trainer.model, batch)  # a retain-style loss in training mode
    assert recorder.calls[-1][1].tolist() == [10] * 8


@pytest.mark.parametrize("forget_loss", ["ascent", "rl"])
def test_dit_forget_steps_reach_the_label_embedding_undropped(tmp_path, tiny_digits, forget_loss):
    """diffusers' DiT drops labels inside its blocks in training mode; the model switches that off and drops them
    itself, so a forget step's labels reach every block's embedding as they are."""
    trainer, batch = prepared_trainer(tmp_path, tiny_digits, tiny_dit(), forget_loss=forget_loss)
    seen = []
    embeddings = [m for m in trainer.model.denoiser.modules() if type(m).__name__ == "LabelEmbedding"]
    handles = [m.register_forward_hook(lambda module, args, output: seen.append(args[0].clone())) for m in embeddings]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(20):  # 160 rows: a 10 % drop would show
            trainer.method.forget_step(trainer.model, batch, alpha=1.0)
    for handle in handles:
        handle.remove()
    assert seen and not any((labels == 10).any() for labels in seen)  # nothing dropped to the null class
    if forget_loss == "ascent":
        assert all(labels.tolist() == [3] * 8 for labels in seen)
    else:  # the forget class, and the detached targets under retained classes
        assert any(labels.tolist() == [3] * 8 for labels in seen)
        assert any(not (labels == 3).any() for labels in seen)
    assert trainer.model.config.label_dropout == 0.1 and trainer.model.config.null_class == 10


def test_rl_forget_loss_maps_the_class_onto_retained_classes(tmp_path, tiny_digits):
    trainer, batch = prepared_trainer(tmp_path, tiny_digits, tiny_ddpm(), ("three", "five"), forget_loss="rl")
    recorder = LabelRecorder(trainer.model)
    loss = trainer.method.forget_step(trainer.model, batch, alpha=1.0)
    assert loss > 0  # a distance to pull down, not a loss to ascend
    (_, labels, with_grad), (_, targets, target_grad) = recorder.calls
    assert with_grad and labels.tolist() == [3] * 8  # the prediction under the forget class is trained ...
    assert not target_grad  # ... towards a detached prediction under retained classes
    assert not torch.isin(targets, torch.tensor([3, 5, 10])).any()
    assert trainer.method.settings["forget_loss"] == "rl"


def test_the_rl_loss_with_the_papers_next_class_targets_c_plus_one(tmp_path, tiny_digits):
    trainer, batch = prepared_trainer(tmp_path, tiny_digits, tiny_ddpm(), forget_loss="rl", rl_target="next")
    recorder = LabelRecorder(trainer.model)
    trainer.method.forget_step(trainer.model, batch, alpha=1.0)
    (_, labels, _), (_, targets, _) = recorder.calls
    assert labels.tolist() == [3] * 8 and targets.tolist() == [4] * 8  # class 3 -> (3 + 1) mod 10


def test_a_pixel_sum_loss_scales_every_loss_by_the_sample_size(tmp_path, tiny_digits):
    """`pixel_reduction="sum"` (the official code's loss): the forget step's loss is the mean-reduced one times the
    number of values per sample, same timesteps and noise (seeded)."""
    losses = {}
    for reduction in ("mean", "sum"):
        trainer, batch = prepared_trainer(tmp_path / reduction, tiny_digits, tiny_ddpm(), forget_loss="ascent",
                                          pixel_reduction=reduction)  # fmt: skip
        torch.manual_seed(0)
        losses[reduction] = float(trainer.method.forget_step(trainer.model, batch, alpha=1.0))
        size = float(np.prod(trainer.model.sample_shape()))
        assert trainer.method.loss_scale == (size if reduction == "sum" else 1.0)
    assert losses["sum"] == pytest.approx(losses["mean"] * size, rel=1e-4)


def test_the_guided_loss_is_the_error_of_the_guided_prediction(tiny_digits):
    """`guidance_scale` s in the loss (the official SFR-on DDPM Fisher): the error of eps_null + s (eps_c - eps_null),
    recomputed by hand from the same noise and timesteps; s = 1 is the plain conditional loss."""
    model = tiny_ddpm().eval()
    pixels = torch.tensor(np.asarray(tiny_digits["train"][:6]["pixel_values"]), dtype=torch.float32)
    labels = torch.tensor(tiny_digits["train"][:6]["label"])
    torch.manual_seed(0)
    guided = model(pixel_values=pixels, labels=labels, guidance_scale=3.0).losses
    torch.manual_seed(0)
    x_t, timesteps, target = model.noised(model.to_model_space(pixels), False)
    conditional = model.predict(x_t, timesteps, labels)
    unconditional = model.predict(x_t, timesteps, torch.full_like(labels, model.config.null_class))
    expected = (unconditional + 3.0 * (conditional - unconditional) - target).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(guided, expected, rtol=1e-4, atol=1e-6)
    torch.manual_seed(0)
    plain = model(pixel_values=pixels, labels=labels).losses
    torch.manual_seed(0)
    torch.testing.assert_close(model(pixel_values=pixels, labels=labels, guidance_scale=1.0).losses, plain)


def test_the_variational_bound_is_zero_for_the_true_posterior():
    """`vlb_terms`: with the true noise as the prediction and v = -1 (the posterior's own log-variance) the KL term is
    0 for t > 0; any other v costs a positive KL (larger where beta_t and the posterior variance differ most, at small
    t); the decoder term at t = 0 is a positive NLL. `normal_kl` agrees
    with torch.distributions."""
    from hf_unlearn.diffusion import normal_kl, vlb_terms

    diffusers_scheduler = diffusers.DDPMScheduler(num_train_timesteps=50)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 2, 4, 4, generator=generator) * 2 - 1
    noise = torch.randn(4, 2, 4, 4, generator=generator)
    timesteps = torch.tensor([0, 5, 20, 49])
    alphas = diffusers_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    x_t = alphas.sqrt() * x0 + (1 - alphas).sqrt() * noise
    exact = vlb_terms(diffusers_scheduler, x0, x_t, timesteps, noise, torch.full_like(x0, -1.0))
    torch.testing.assert_close(exact[1:], torch.zeros(3), atol=1e-5, rtol=0)
    assert exact[0] > 0  # the discretized decoder's negative log-likelihood
    off = vlb_terms(diffusers_scheduler, x0, x_t, timesteps, noise, torch.full_like(x0, 0.5))
    assert (off[1:] > 0).all() and off[1] > 1e-2
    p = torch.distributions.Normal(torch.tensor(0.3), torch.tensor(0.5))
    q = torch.distributions.Normal(torch.tensor(-0.2), torch.tensor(1.5))
    ours = normal_kl(torch.tensor(0.3), 2 * torch.tensor(0.5).log(), torch.tensor(-0.2), 2 * torch.tensor(1.5).log())
    torch.testing.assert_close(ours, torch.distributions.kl_divergence(p, q))


def test_the_variational_bound_against_the_ddpm_papers_formulas():
    """A wrong noise prediction and a mid-range variance, at t > 0: the bound equals the KL written from Ho et al.'s
    formulas independently (the posterior mean from x0 and x_t, eq. 7; the model mean from the noise, eq. 11;
    the posterior variance beta~_t; the model's variance exp(v' log beta_t + (1 - v') log beta~_t), v' = (v + 1) / 2),
    in bits per dimension."""
    from hf_unlearn.diffusion import vlb_terms

    scheduler = diffusers.DDPMScheduler(num_train_timesteps=50)
    generator = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 2, 4, 4, generator=generator) * 2 - 1
    noise, eps = torch.randn(2, 3, 2, 4, 4, generator=generator)
    v = torch.rand(3, 2, 4, 4, generator=generator) * 2 - 1
    timesteps = torch.tensor([3, 17, 40])
    betas = scheduler.betas.double()
    abar = torch.cumprod(1 - betas, 0)
    expected = []
    for row, t in enumerate(timesteps.tolist()):
        a_t, a_prev, b_t = abar[t], abar[t - 1], betas[t]
        x_t = a_t.sqrt() * x0[row].double() + (1 - a_t).sqrt() * noise[row].double()
        posterior_mean = (a_prev.sqrt() * b_t / (1 - a_t)) * x0[row].double() + (
            (1 - b_t).sqrt() * (1 - a_prev) / (1 - a_t)) * x_t  # fmt: skip
        posterior_variance = b_t * (1 - a_prev) / (1 - a_t)
        model_mean = (x_t - b_t / (1 - a_t).sqrt() * eps[row].double()) / (1 - b_t).sqrt()
        weight = (v[row].double() + 1) / 2
        model_variance = torch.exp(weight * b_t.log() + (1 - weight) * posterior_variance.log())
        kl = torch.distributions.kl_divergence(torch.distributions.Normal(posterior_mean, posterior_variance.sqrt()),
                                               torch.distributions.Normal(model_mean, model_variance.sqrt()))
        expected.append(kl.mean() / math.log(2.0))
    x_t = abar[timesteps].sqrt().view(-1, 1, 1, 1) * x0 + (1 - abar[timesteps]).sqrt().view(-1, 1, 1, 1) * noise
    ours = vlb_terms(scheduler, x0, x_t.float(), timesteps, eps, v)
    torch.testing.assert_close(ours.double(), torch.stack(expected), rtol=1e-3, atol=1e-6)


def test_a_dit_that_learns_its_variances_trains_on_mse_plus_vlb(tmp_path, tiny_digits):
    """The dit-imagenet preset's `diffusion_loss="mse+vlb"`: on a DiT with learned variances the loss is the MSE plus
    a positive bound term; on a DiT without them the run keeps the
    MSE and says so."""
    model = small_dit(image_size=8, vae_widths=(8, 8), heads=2, head_dim=8, layers=1, num_train_timesteps=50,
                      labels=DIGIT_NAMES, learn_variance=True)  # fmt: skip
    assert model.learns_variance and not tiny_dit().learns_variance
    pixels = torch.tensor(np.asarray(tiny_digits["train"][:4]["pixel_values"]), dtype=torch.float32)
    labels = torch.tensor(tiny_digits["train"][:4]["label"])
    model.eval()
    torch.manual_seed(0)
    with_bound = model(pixel_values=pixels, labels=labels, vlb=True).losses
    torch.manual_seed(0)
    plain = model(pixel_values=pixels, labels=labels).losses
    assert (with_bound > plain).all() and torch.isfinite(with_bound).all()
    with pytest.raises(ValueError, match="learns its variances"):
        tiny_dit()(pixel_values=pixels, labels=labels, vlb=True)
    args = diffusion_args(tmp_path, preset="paper", preset_dataset="dit-imagenet", max_steps=2,
                          eval_after_unlearn=False, eval_before_unlearn=False)  # fmt: skip
    with pytest.raises(ValueError, match="do not combine"):
        UnlearningTrainer(model, diffusion_args(tmp_path, method_kwargs={"diffusion_loss": "mse+vlb",
                                                                         "fisher_guidance_scale": 2.0}),
                          train_dataset=tiny_digits["train"], eval_dataset=tiny_digits["test"],
                          forget_classes=["three"])  # fmt: skip
    ddpm_preset = diffusion_args(tmp_path, preset="paper", preset_dataset="ddpm-cifar10")
    with pytest.raises(ValueError, match="for a unet denoiser, and this model's is a transformer.*'dit-imagenet'"):
        UnlearningTrainer(model, ddpm_preset, train_dataset=tiny_digits["train"], eval_dataset=tiny_digits["test"],
                          forget_classes=["three"])  # fmt: skip
    for dit, used in ((model, "mse+vlb"), (tiny_dit(), "mse")):
        trainer = UnlearningTrainer(dit, args, train_dataset=tiny_digits["train"], eval_dataset=tiny_digits["test"],
                                    forget_classes=["three"])  # fmt: skip
        trainer.method.prepare()
        assert trainer.method.report["diffusion_loss"] == used


def test_rl_is_refused_for_classifiers(tmp_path, tiny_digits):
    from hf_unlearn.examples.digits import digits_classifier

    model = digits_classifier("vit", image_size=8)
    args = diffusion_args(tmp_path, method_kwargs={"forget_loss": "rl"}, eval_after_unlearn=False,
                          eval_before_unlearn=False)  # fmt: skip
    trainer = UnlearningTrainer(model, args, train_dataset=tiny_digits["train"], eval_dataset=tiny_digits["test"],
                                forget_classes=[3])  # fmt: skip
    with pytest.raises(ValueError, match="diffusion variant"):
        trainer.unlearn()


# ---------------------------------------------------------------------------------------------- sampling
def test_sampling_is_seeded_guided_and_takes_any_scheduler():
    model = tiny_ddpm()
    first = model.sample([1, 2, 3], num_inference_steps=3, seed=0)
    assert first.shape == (3, 1, 8, 8)
    assert torch.equal(model.sample([1, 2, 3], num_inference_steps=3, seed=0), first)
    assert not torch.equal(model.sample([1, 2, 3], num_inference_steps=3, seed=0, guidance_scale=1.0), first)
    for sampler in ("DDPMScheduler", "PNDMScheduler"):  # stochastic (takes the generator) and deterministic (does not)
        assert model.sample([1], num_inference_steps=10, seed=0, sampler=sampler).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="not a diffusers scheduler"):
        model.sample([1], sampler="NoSuchScheduler")
    model.config.null_class = None
    with pytest.raises(ValueError, match="guidance_scale=1"):
        model.sample([1], guidance_scale=2.0)


def test_judge_metrics_follow_the_judge_and_record_the_sampling(tiny_digits):
    """FA and retained accuracy are the judge's calls on samples generated for the forget / retained classes."""
    from hf_unlearn.diffusion import measure_diffusion
    from hf_unlearn.generative import image_tensors

    model = train_diffusion(tiny_ddpm(), tiny_digits["train"], steps=1, progress=False)
    rows = image_tensors(tiny_digits["train"])
    common = {"forget_classes": [3], "retained_classes": [0, 1, 2], "real_retain_rows": rows, "num_samples": 6,
              "seed": 0, "num_inference_steps": 2, "guidance_scale": None, "sampler": "DDIMScheduler"}  # fmt: skip
    always_three = measure_diffusion(model, ConstantJudge(3), **common)
    assert always_three["forget_share"] == 1.0 and always_three["retain_judge_accuracy"] == 0.0
    never_three = measure_diffusion(model, ConstantJudge(0), **common)
    assert never_three["forget_share"] == 0.0 and never_three["retain_judge_accuracy"] == pytest.approx(1 / 3)
    assert never_three["sampling"]["guidance_scale"] == 2.0


# ------------------------------------------------------------------------------------------- bad input
def test_bare_denoisers_and_unconditional_unets_are_refused_with_the_fix(tmp_path, tiny_digits):
    model = tiny_ddpm()
    args = diffusion_args(tmp_path)
    with pytest.raises(TypeError, match="DiffusionModel.wrap"):
        UnlearningTrainer(model.denoiser, args, train_dataset=tiny_digits["train"], eval_dataset=tiny_digits["test"],
                          forget_classes=[3])  # fmt: skip
    plain = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                  down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                                  norm_num_groups=4, layers_per_block=1)  # fmt: skip
    with pytest.raises(ValueError, match="num_class_embeds"):
        DiffusionModel.wrap(plain, model.noise_scheduler)
    with pytest.raises(ValueError, match="vae"):
        DiffusionModel.wrap(tiny_dit().denoiser, model.noise_scheduler)


def test_plain_diffusers_pipeline_folders_load_with_their_labels(tmp_path):
    ddpm = tiny_ddpm()
    diffusers.DDPMPipeline(unet=ddpm.denoiser, scheduler=ddpm.noise_scheduler).save_pretrained(tmp_path / "ddpm")
    plain = DiffusionModel.from_pretrained(tmp_path / "ddpm")
    # Without label names nothing says that the eleventh embedding is a null class: no guidance unless told.
    assert plain.config.num_labels == 11 and plain.config.null_class is None
    named = DiffusionModel.from_pipeline(diffusers.DDPMPipeline.from_pretrained(tmp_path / "ddpm"), labels=10)
    assert named.config.null_class == 10 and named.config.label_dropout == 0.1
    # where each came from, which the push checks so as never to write into the original's repository
    assert plain.config._name_or_path == named.config._name_or_path == str(tmp_path / "ddpm")
    dit = tiny_dit()
    names = {0: "zero, nought", **{i: f"digit {i}" for i in range(1, 10)}}
    pipeline = diffusers.DiTPipeline(transformer=dit.denoiser, vae=dit.vae, scheduler=dit.noise_scheduler,
                                     id2label=names)  # fmt: skip
    from_object = DiffusionModel.from_pipeline(pipeline)
    assert from_object.config.id2label[0] in ("zero, nought", "nought, zero")  # DiTPipeline splits and sorts synonyms
    assert from_object.config.id2label[7] == "digit 7" and from_object.config.null_class == 10
    pipeline.save_pretrained(tmp_path / "dit")  # diffusers does not write id2label: only the ids come back
    loaded = DiffusionModel.from_pretrained(tmp_path / "dit")
    assert loaded.config.null_class == 10 and loaded.config.id2label[7] == "LABEL_7"


def test_wrap_checks_the_null_class_and_the_scheduler():
    model = tiny_ddpm()
    with pytest.raises(ValueError, match="null_class"):
        DiffusionModel.wrap(model.denoiser, model.noise_scheduler, labels=10, null_class=3)  # a named class
    with pytest.raises(ValueError, match="alphas_cumprod"):
        DiffusionModel.wrap(model.denoiser, diffusers.FlowMatchEulerDiscreteScheduler(), labels=10)


@pytest.mark.parametrize("overrides, target, error", [
    ({"method": "svd_projection"}, {"forget_classes": [3]}, "Methods for this model: .*remain_geometry"),
    ({"method": "retrain"}, {"forget_classes": [3]}, "Methods for this model: (?!.*retrain)"),
    ({}, {"forget_indices": [0, 1]}, "forget_classes"),
    ({"forget_accuracy_target": 0.0}, {"forget_classes": [3]}, "forget_accuracy_target"),
    ({"peft_config": {"r": 4}}, {"forget_classes": [3]}, "peft_config"),
])  # fmt: skip
def test_requests_a_diffusion_model_cannot_serve_are_refused(tmp_path, tiny_digits, overrides, target, error):
    args = diffusion_args(tmp_path, **overrides)
    with pytest.raises(ValueError, match=error):
        UnlearningTrainer(tiny_ddpm(), args, train_dataset=tiny_digits["train"], eval_dataset=tiny_digits["test"],
                          **target)  # fmt: skip


def test_measuring_without_a_judge_names_the_fix(tmp_path, tiny_digits):
    trainer = UnlearningTrainer(tiny_ddpm(), diffusion_args(tmp_path), train_dataset=tiny_digits["train"],
                                eval_dataset=tiny_digits["test"], forget_classes=[3])  # fmt: skip
    with pytest.raises(ValueError, match="judge="):
        trainer.unlearn()


def test_missing_diffusers_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"hf-unlearn\[diffusion\]"):
        diffusers_module()


# ---------------------------------------------------------------------------------------------- the card
def test_diffusion_card_renders_the_sampling_and_judge_metrics(tmp_path, tiny_digits):
    trainer, output = unlearn(tiny_ddpm(), tmp_path, tiny_digits, "finetune", judge=ConstantJudge(3))
    files = trainer.create_model_card(dataset="sklearn/digits")
    assert "README.md" in files
    text = (tmp_path / "out" / "README.md").read_text()
    assert "library_name: diffusers" in text and "DiffusionModel.from_pretrained" in text
    assert "DDIMScheduler, 2 steps, eta 0.0, guidance scale 2.0 in eps_uncond + s (eps_cond - eps_uncond), a paper's w = 1.0" in text
    assert output.metrics["forget_share"] == 1.0  # every sample judged a "three", before and after
    assert "| judge: samples showing a forget class (conditional: of those generated for it) | 100.0 % | 100.0 % |" in text


def test_the_originals_cached_measurement_is_keyed_by_the_noise_scheduler(tmp_path, tiny_digits):
    """The noise scheduler is no module (its betas are in no weight digest) but builds the measuring sampler: another
    scheduler config gives another key for the original's cached measurement."""
    from hf_unlearn.measure_cache import request_fingerprint

    trainer = UnlearningTrainer(tiny_ddpm(), diffusion_args(tmp_path), train_dataset=tiny_digits["train"],
                                eval_dataset=tiny_digits["test"], judge=ConstantJudge(0), forget_classes=["three"])  # fmt: skip
    key = request_fingerprint(trainer)
    assert request_fingerprint(trainer) == key
    trainer.model.noise_scheduler = diffusers.DDPMScheduler.from_config(trainer.model.noise_scheduler.config,
                                                                        beta_schedule="squaredcos_cap_v2")  # fmt: skip
    assert request_fingerprint(trainer) != key


@pytest.mark.parametrize("trusted", [False, True])
def test_trust_remote_code_reaches_diffusers(tmp_path, trusted, monkeypatch):
    """`--trust_remote_code true` (or `UnlearnConfig(trust_remote_code=True)`) is what diffusers asks for to load a
    pipeline's own code: it must reach `DiffusionPipeline.from_pretrained`, and stay False otherwise."""
    from hf_unlearn.kinds import load_model

    folder = tmp_path / "ddpm"
    tiny_ddpm().save_pretrained(folder)
    seen = []
    real = diffusers.DiffusionPipeline.from_pretrained
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained",
                        lambda *args, **kwargs: seen.append(kwargs.get("trust_remote_code")) or real(*args, **kwargs))
    load_model(str(folder), trust_remote_code=trusted)
    assert seen == [trusted]
