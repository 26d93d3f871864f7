"""GANs (`hf_unlearn.gan.GANPair`): measured by a judge classifier on generated samples and by the discriminator's
scores on real rows."""

from __future__ import annotations

from typing import Any

import torch

from ..gan import GANConfig, GANPair, measure_generator
from ..generative import image_tensors
from .base import ModelKind, register_kind


class GAN(ModelKind):
    name = "gan"
    generator = True
    # a conditional GAN's forget classes are generated apart (`forget_share`): the shares are of the other samples
    per_class = ("class_shares", "share of generated samples (conditional: of those generated for retained classes)",
                 "samples per class")
    forget_keys = ("forget_share",)
    retain_key = "retain_judge_accuracy"  # a conditional GAN's (unconditional: none, and the check says so)

    def matches(self, model) -> bool:
        return isinstance(model, GANPair)

    def load(self, model_id: str, config: Any, trust_remote_code: bool = False):
        if getattr(config, "model_type", None) != GANConfig.model_type:
            return None
        return GANPair.from_pretrained(model_id, trust_remote_code=trust_remote_code), None

    def card_template(self, model) -> str:
        return self.name

    def measure(self, trainer, model) -> dict:
        views, column = trainer.metric_views, trainer.label_column
        rows = {name: image_tensors(views[name], label_column=column)
                for name in ("forget_train", "eval_forget", "eval_retain", "retain_train")}  # fmt: skip
        held_out = tuple(torch.cat(parts) for parts in zip(rows["eval_forget"], rows["eval_retain"], strict=True))
        return measure_generator(
            model.to(trainer.args.device), trainer.judge, forget_classes=trainer.split.forget_classes,
            retained_classes=trainer.retained_classes, forget_rows=rows["forget_train"], held_out_rows=held_out,
            real_retain_rows=rows["retain_train"], num_samples=trainer.args.eval_generated_samples,
            seed=trainer.args.seed, id2label=getattr(model.config, "id2label", None),
        )  # fmt: skip


register_kind(GAN())
