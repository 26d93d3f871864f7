"""Class-conditional diffusion models (`hf_unlearn.diffusion.DiffusionModel`: a diffusers UNet or DiT with its
scheduler): trained by their denoising loss, measured by a judge classifier on samples generated for each class."""

from __future__ import annotations

from typing import Any

import torch

from ..diffusion import DiffusionConfig, DiffusionModel, is_pipeline_folder, measure_diffusion
from ..generative import image_tensors
from .base import ModelKind, register_kind


class Diffusion(ModelKind):
    name = "diffusion"
    generator = True
    per_class = ("class_shares", "share of samples generated for retained classes", "samples per judged class")
    forget_keys = ("forget_share",)
    retain_key = "retain_judge_accuracy"
    library_name = "diffusers"
    supports_forget_indices = False
    # Saved whole as a diffusers pipeline folder, which FSDP / DeepSpeed would shard.
    supports_sharding = False

    def matches(self, model) -> bool:
        return isinstance(model, DiffusionModel)

    def load(self, model_id: str, config: Any, trust_remote_code: bool = False):
        # `trust_remote_code` goes on to diffusers, which refuses a pipeline's own code without it
        if getattr(config, "model_type", None) == DiffusionConfig.model_type:  # saved by hf-unlearn
            return DiffusionModel.from_pretrained(model_id, trust_remote_code=trust_remote_code), None
        # No config.json: a diffusers pipeline has model_index.json instead (asked only now, so loading another kind
        # costs no extra Hub request).
        if config is None and is_pipeline_folder(model_id):
            return DiffusionModel.from_pretrained(model_id, trust_remote_code=trust_remote_code), None
        return None

    def card_template(self, model) -> str:
        return self.name

    def training_loss(self, model, batch, reduction="mean", forget=False, **options) -> torch.Tensor:
        # Forget rows keep their class labels: no classifier-free-guidance label dropout, which would unlearn the
        # unconditional model instead.
        if forget:
            options.setdefault("class_dropout", 0.0)
        losses = model(**batch, **options).losses
        return {"mean": losses.mean, "sum": losses.sum, "none": lambda: losses}[reduction]()

    def measure(self, trainer, model) -> dict:
        args = trainer.args
        return measure_diffusion(
            model.to(args.device), trainer.judge, forget_classes=trainer.split.forget_classes,
            retained_classes=trainer.retained_classes,
            real_retain_rows=image_tensors(trainer.metric_views["retain_train"], label_column=trainer.label_column),
            num_samples=args.eval_generated_samples, seed=args.seed, num_inference_steps=args.eval_inference_steps,
            guidance_scale=args.eval_guidance_scale, sampler=args.eval_sampler, eta=args.eval_sampler_eta,
            id2label=getattr(model.config, "id2label", None),
        )  # fmt: skip


register_kind(Diffusion())
