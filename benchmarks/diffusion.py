"""Diffusion benchmark: a small class-conditional DDPM (pixel space) and a small DiT (in the latent space of a VAE
trained here), both trained on digits upsampled to 16 px by this script, then class "three" forgotten by
`remain_geometry` (SFR-on: its defaults, and its other forget loss / the paper's alpha) and by the `finetune` and
`gradient_ascent` baselines, each with the same budget of Trainer steps (a remain_geometry step is a forget update
plus a retain update).

    python benchmarks/diffusion.py --output benchmarks/results/diffusion.md

Measured for each model with a ResNet judge trained on the same data: FA, the share of samples generated for "three"
that the judge calls "three"; the judge's accuracy on samples generated for the other classes; the Frechet distance
in the judge's features between those samples and the real retained training rows. Every model is sampled with the
same sampler, steps, guidance and seeds (in the report).

Targets (the diffusion issue): before, FA >= 70 %; after <= 150 steps, FA <= 5 %, retained judge accuracy within 10
points of the original's, Frechet distance within 25 % of the original's.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import write_results

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.diffusion import DiffusionModel, small_ddpm, small_dit, train_diffusion, train_vae
from hf_unlearn.examples.digits import DIGIT_NAMES, digits_classifier, load_digits_dataset, train_classifier

FORGET_CLASS = "three"
JUDGE_EPOCHS = 15
TRAINING = {"ddpm": {"steps": 1500, "learning_rate": 1e-3}, "dit": {"steps": 5000, "learning_rate": 2e-3}}
VAE_STEPS = 600
# (method, method_kwargs) per model: remain_geometry with its defaults, then its other forget loss (and for the DiT
# the paper's alpha), then the baselines.
RUNS = {
    "ddpm": [("remain_geometry", {}), ("remain_geometry", {"forget_loss": "ascent"}), ("finetune", {}),
             ("gradient_ascent", {})],
    "dit": [("remain_geometry", {}), ("remain_geometry", {"alpha": 1e-3}), ("remain_geometry", {"forget_loss": "rl"}),
            ("finetune", {}), ("gradient_ascent", {})],
}  # fmt: skip
# The paper's diffusion setting (METHODS.md section 3): Adam (AdamW with weight decay 0) at 1e-4, unlearning steps
# clipped to norm 1, a constant rate; every method gets the same budget.
UNLEARNING = {"learning_rate": 1e-4, "weight_decay": 0.0, "lr_scheduler_type": "constant", "max_grad_norm": 1.0,
              "per_device_train_batch_size": 64}  # fmt: skip


def trained_model(kind, data, seed, cache):
    """The original model of `kind`, trained here (or loaded from `cache`, a folder kept between runs)."""
    folder = Path(cache) / kind if cache else None
    if folder is not None and (folder / "model_index.json").is_file():
        model = DiffusionModel.from_pretrained(str(folder))
        model.training_seconds = float((folder / "training_seconds.txt").read_text())
        return model
    start = time.perf_counter()
    if kind == "ddpm":
        model = small_ddpm(seed=seed, labels=DIGIT_NAMES)
    else:
        model = small_dit(seed=seed, labels=DIGIT_NAMES)
        train_vae(model.vae, data["train"], steps=VAE_STEPS, seed=seed)
    train_diffusion(model, data["train"], seed=seed, **TRAINING[kind])
    model.training_seconds = time.perf_counter() - start
    if folder is not None:
        model.save_pretrained(str(folder))
        (folder / "training_seconds.txt").write_text(str(model.training_seconds))
    return model


def unlearn(model, method, method_kwargs, judge, data, options, output_dir, eval_before):
    args = UnlearnConfig(
        output_dir=output_dir, method=method, method_kwargs=method_kwargs, max_steps=options.steps, seed=options.seed, report_to=[],
        disable_tqdm=True, eval_generated_samples=options.samples, eval_inference_steps=options.sampling_steps,
        eval_before_unlearn=eval_before, **UNLEARNING,
    )  # fmt: skip
    trainer = UnlearningTrainer(copy.deepcopy(model), args, train_dataset=data["train"], eval_dataset=data["test"],
                                judge=judge, forget_classes=[FORGET_CLASS])  # fmt: skip
    output = trainer.unlearn()
    output.metrics["trainer_steps"] = trainer.state.global_step
    return output


def label(method, metrics):
    """The method and, for remain_geometry, the forget loss and alpha it ran with (defaults resolved)."""
    if "forget_loss" not in metrics:
        return method
    return f"{method} ({metrics['forget_loss']}, alpha {metrics['alpha']:g})"


def checks(original, after):
    return {
        "fa_at_most_5pct": after["forget_share"] <= 0.05,
        "retained_accuracy_within_10_points": abs(after["retain_judge_accuracy"] - original["retain_judge_accuracy"])
        <= 0.10,
        "frechet_within_25pct": abs(after["frechet_distance"] / original["frechet_distance"] - 1) <= 0.25,
    }


def table(kind, rows, original, training_seconds):
    lines = [f"### {kind.upper()}", "",
             "| model | FA (forget class) | judge accuracy, retained classes | Frechet distance | seconds | targets missed |",
             "|---|---|---|---|---|---|",
             f"| original (trained in {training_seconds:.0f} s) | {original['forget_share']:.1%} | "
             f"{original['retain_judge_accuracy']:.1%} | {original['frechet_distance']:.2f} | - | "
             f"FA >= 70 %: {original['forget_share'] >= 0.7} |"]  # fmt: skip
    for method, metrics, met in rows:
        change = metrics["frechet_distance"] / original["frechet_distance"] - 1
        lines.append(
            f"| {method} ({metrics['trainer_steps']} steps) | {metrics['forget_share']:.1%} | "
            f"{metrics['retain_judge_accuracy']:.1%} | {metrics['frechet_distance']:.2f} ({change:+.1%}) | "
            f"{metrics['unlearn_seconds']:.1f} | {', '.join(name for name, ok in met.items() if not ok) or 'none'} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="benchmarks/results/diffusion.md")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150, help="Unlearning budget (optimizer steps) of each method.")
    parser.add_argument("--samples", type=int, default=500, help="Samples per side (forget / retained classes).")
    parser.add_argument("--sampling_steps", type=int, default=25, help="DDIM steps per sample.")
    parser.add_argument("--models", default="ddpm,dit")
    parser.add_argument("--cache", default=None, help="Keep the trained originals here and reuse them.")
    options = parser.parse_args(argv)
    torch.manual_seed(options.seed)
    data = load_digits_dataset(image_size=16, seed=options.seed)
    results, sections = {}, []
    with tempfile.TemporaryDirectory() as scratch:
        judge = train_classifier(digits_classifier("resnet", seed=options.seed), data["train"], f"{scratch}/judge",
                                 seed=options.seed, epochs=JUDGE_EPOCHS)  # fmt: skip
        for kind in options.models.split(","):
            model = trained_model(kind, data, options.seed, options.cache)
            rows, original = [], None
            for number, (method, method_kwargs) in enumerate(RUNS[kind]):
                folder = f"{scratch}/{kind}-{number}"
                output = unlearn(model, method, method_kwargs, judge, data, options, folder, original is None)
                original = original or output.original_metrics
                met = checks(original, output.metrics)
                rows.append((label(method, output.metrics), output.metrics, met))
                print(
                    kind,
                    method,
                    {
                        k: output.metrics.get(k)
                        for k in ("forget_share", "retain_judge_accuracy", "frechet_distance", "unlearn_seconds")
                    },
                    flush=True,
                )
            results[kind] = {"original": original, "training_seconds": model.training_seconds,
                             "runs": [{"method": name, "metrics": m, "checks": c} for name, m, c in rows]}  # fmt: skip
            sections.append(table(kind, rows, original, model.training_seconds))
    sampling = original["sampling"]
    text = "\n".join([
        "# Class forgetting for diffusion models on digits (16 px)", "",
        f"`python benchmarks/diffusion.py --output {options.output}` on {platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, Python {sys.version.split()[0]}.",
        f"DDPM: `small_ddpm()` (UNet2DModel 32/64, {TRAINING['ddpm']['steps']} steps); DiT: `small_dit()` "
        f"(AutoencoderKL trained {VAE_STEPS} steps, DiTTransformer2DModel 4 x 128, {TRAINING['dit']['steps']} steps); "
        f"AdamW at {TRAINING['ddpm']['learning_rate']:g} / {TRAINING['dit']['learning_rate']:g} (warm-up, cosine "
        "decay; `train_diffusion`), batch 64, 10 % label dropout. Judge: the digits ResNet, "
        f"{JUDGE_EPOCHS} epochs. Unlearning '{FORGET_CLASS}': {options.steps} Trainer steps per method (remain_geometry: "
        "each a forget and a retain update), "
        f"{UNLEARNING}. Sampling for every number: {sampling['samples']} samples per side, {sampling['sampler']}, "
        f"{sampling['steps']} steps, guidance {sampling['guidance_scale']}, seed {sampling['seed']}.", "",
        *[section + "\n" for section in sections],
    ])  # fmt: skip
    write_results(options.output, text, results)


if __name__ == "__main__":
    main()
