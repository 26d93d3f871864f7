"""`remain_geometry`: SFR-on, saliency forgetting on the remain-preserving manifold, for classifiers (class and
sample-level unlearning).

Source: Huang et al., "Unified Gradient-Based Machine Unlearning with Remain Geometry Enhancement", NeurIPS 2024,
arXiv 2409.19732 (official code: github K1nght/Unified-Unlearning-w-Remain-Geometry, `Classification/unlearn/sfron.py`;
implemented here from `../shared/design/METHODS.md` section 3, no code copied).

1. Saliency mask: the diagonal empirical Fisher of the forget set F_f (mean over batches of the squared gradient of
   the batch cross-entropy) and of the retain set F_r (both on up to `mask_samples` rows, summed over processes);
   a parameter takes forget steps when (F_f + 1e-15) / (F_r + 1e-15) >= `gamma` (paper: 1).
2. One optimizer, one schedule: the Trainer's (`UnlearnConfig`: the paper uses SGD with momentum 0.9, weight decay
   5e-4, lr 0.01 and a cosine schedule over T = `max_steps` iterations: `optim="sgd"`, `optim_args="momentum=0.9"`).
3. Each Trainer step is one iteration t. Every `forget_every` (K) iterations, first a forget step: per-sample
   cross-entropies l_i of a forget batch, weights w_i = l_i^-lambda / sum_j l_j^-lambda (detached;
   `weight_exponent` lambda = 0.5), loss = -alpha_t sum_i w_i l_i with alpha_t = `alpha` (1 + cos(pi t / T)) / 2;
   gradients multiplied by the mask and clipped to `forget_max_grad_norm`; optimizer step. Then, every iteration, the
   retain step: plain cross-entropy on a retain batch, unmasked, finished by the Trainer (its `max_grad_norm` clips
   it: the paper does not, so the recipes set `max_grad_norm=0`).
4. Paper defaults are for random 10 % forgetting on CIFAR-10 (T = 1500, K = 5, alpha = 25, max norm 7, lambda = 0.5,
   batch 128): they are this method's defaults for `forget_indices`. Whole classes need gentler, more frequent forget
   steps, and an early stop: with `forget_classes` the defaults are K = 2 and alpha = 1, and the digits budget stops
   at forget accuracy 0 (`forget_accuracy_target`). Measured on digits (`benchmarks/results/remain_geometry.md`):
   AdamW (lr 3e-3 for classes, 1e-3 for samples) where the paper's SGD (lr 0.01, momentum 0.9) destabilises the small
   models trained from scratch. `alpha` / `forget_every` set explicitly always win.
5. With `UnlearnConfig.peft_config` (LoRA, like every gradient method) only the adapters and the head's copy train,
   and the mask is computed on (and applied to) exactly those parameters.

Example:

```python
>>> args = UnlearnConfig(output_dir="out", method="remain_geometry", max_steps=1500, learning_rate=0.01, optim="sgd",
...                      optim_args="momentum=0.9", weight_decay=5e-4, lr_scheduler_type="cosine", max_grad_norm=0,
...                      per_device_train_batch_size=128)    # the paper's random-forgetting setting (CIFAR-10)
>>> UnlearningTrainer(model, args, train_dataset=train, eval_dataset=test, forget_indices=rows).unlearn()
```
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate.logging import get_logger

from ..data import PairedDataset, subsample
from ..registry import register_method
from .base import UnlearningMethod, classification_loss

logger = get_logger(__name__)

# Per-request defaults: the paper's for samples, ours (measured on digits) for whole classes.
SAMPLE_DEFAULTS = {"forget_every": 5, "alpha": 25.0}
CLASS_DEFAULTS = {"forget_every": 2, "alpha": 1.0}


@dataclass
class RemainGeometryConfig:
    gamma: float = field(
        default=1.0,
        metadata={
            "help": "Saliency threshold on the Fisher ratio F_f / F_r (paper: 1): forget steps change the parameters "
            "that matter at least as much to the forget set as to the retain set."
        },
    )
    forget_every: int | None = field(
        default=None,
        metadata={"help": "K: a forget step every K iterations. None: 5 for samples (paper), 1 for classes."},
    )
    alpha: float | None = field(
        default=None,
        metadata={
            "help": "Forget-loss weight at t = 0, decayed by a cosine to 0 at T. None: 25 for samples (paper), 1 "
            "for classes."
        },
    )
    weight_exponent: float = field(
        default=0.5,
        metadata={"help": "lambda: forget samples weighted by loss^-lambda, so the not yet forgotten count more."},
    )
    forget_max_grad_norm: float = field(default=7.0, metadata={"help": "Clip of the forget step (paper: 7)."})
    mask_samples: int = field(
        default=1000, metadata={"help": "Rows of the forget and of the retain set for the Fisher estimates."}
    )

    def __post_init__(self):
        for name in ("forget_every", "mask_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value!r}.")
        for name in ("gamma", "forget_max_grad_norm"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)!r}.")
        if self.alpha is not None and self.alpha < 0:
            raise ValueError(f"`alpha` must be >= 0, got {self.alpha!r}.")
        if self.weight_exponent < 0:
            raise ValueError(f"`weight_exponent` must be >= 0 (0: plain mean), got {self.weight_exponent!r}.")


def fisher_diagonal(trainer, dataset, parameters: dict, description: str) -> dict:
    """Mean over batches (of `per_device_train_batch_size` rows) of the squared gradient of the batch cross-entropy,
    for each of `parameters` (name -> parameter), summed over processes; the model runs in eval mode."""
    model = trainer.model
    sums = {name: torch.zeros_like(parameter) for name, parameter in parameters.items()}
    batches = torch.zeros((), dtype=torch.float64, device=trainer.args.device)
    was_training = model.training
    model.eval()
    try:
        for _, batch in trainer.shard_batches(dataset, description, trainer.args.per_device_train_batch_size):
            model.zero_grad(set_to_none=True)
            classification_loss(model, batch).backward()
            for name, parameter in parameters.items():
                if parameter.grad is not None:
                    sums[name] += parameter.grad.detach().pow(2)
            batches += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for value in [*sums.values(), batches]:
            torch.distributed.all_reduce(value)
    return {name: total / batches.clamp_min(1).to(total.dtype) for name, total in sums.items()}


class RemainGeometry(UnlearningMethod):
    supports_sharding = False  # its masks are whole-parameter tensors and it steps the optimizer itself

    def run(self) -> None:
        trainer, config = self.trainer, self.config
        if trainer.args.gradient_accumulation_steps != 1:
            raise ValueError(
                "Method 'remain_geometry' takes its masked forget step inside each optimizer step, so it needs "
                f"`gradient_accumulation_steps=1`, got {trainer.args.gradient_accumulation_steps}: raise "
                "`per_device_train_batch_size` instead."
            )
        defaults = CLASS_DEFAULTS if trainer.split.is_class_level else SAMPLE_DEFAULTS
        self.forget_every = config.forget_every or defaults["forget_every"]
        self.alpha = defaults["alpha"] if config.alpha is None else config.alpha
        self.masks = self.saliency_mask()
        trainer.train_with(PairedDataset(trainer.retain_view, trainer.forget_view, seed=trainer.args.seed))
        self.report.update(
            forget_every=self.forget_every,
            alpha=self.alpha,
            iterations=trainer.state.global_step,
            forget_steps=math.ceil(trainer.state.global_step / self.forget_every),
        )

    def saliency_mask(self) -> dict:
        """m = 1[(F_f + 1e-15) / (F_r + 1e-15) >= gamma] for every trainable parameter (keyed by `id`)."""
        trainer, config = self.trainer, self.config
        parameters = {name: p for name, p in trainer.model.named_parameters() if p.requires_grad}
        seed = trainer.args.seed
        forget = trainer.forget_view.select(subsample(np.arange(len(trainer.forget_view)), config.mask_samples, seed))
        retain_rows = subsample(np.arange(len(trainer.retain_labels)), config.mask_samples, seed, trainer.retain_labels)
        forget_fisher = fisher_diagonal(trainer, forget, parameters, "Fisher (forget)")
        retain_fisher = fisher_diagonal(trainer, trainer.retain_view.select(retain_rows), parameters, "Fisher (retain)")
        masks = {
            id(parameter): ((forget_fisher[name] + 1e-15) / (retain_fisher[name] + 1e-15) >= config.gamma).to(
                parameter.dtype
            )
            for name, parameter in parameters.items()
        }
        salient = sum(int(mask.sum()) for mask in masks.values())
        self.report["salient_fraction"] = salient / max(1, sum(p.numel() for p in parameters.values()))
        return masks

    def forget_step(self, model, batch: dict, alpha: float) -> torch.Tensor:
        """One masked, clipped step of the weighted forget loss -alpha sum_i w_i l_i with the trainer's optimizer."""
        trainer = self.trainer
        with trainer.compute_loss_context_manager():
            losses = classification_loss(model, batch, reduction="none")
        weights = losses.detach().clamp_min(1e-12).pow(-self.config.weight_exponent)
        loss = -alpha * (weights / weights.sum() * losses).sum()
        trainer.accelerator.backward(loss)
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        for parameter in trainable:
            if parameter.grad is not None:
                parameter.grad.mul_(self.masks[id(parameter)])
        trainer.accelerator.clip_grad_norm_(trainable, self.config.forget_max_grad_norm)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        return loss.detach()

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Iteration t: the forget step when t % K == 0, then the retain step's loss and gradients (the Trainer clips,
        steps the shared optimizer and the schedule)."""
        trainer = self.trainer
        model.train()
        inputs = trainer._prepare_inputs(inputs)
        t, total = trainer.state.global_step, max(1, trainer.state.max_steps)
        if t % self.forget_every == 0:
            alpha_t = self.alpha * (1.0 + math.cos(math.pi * t / total)) / 2.0
            self.forget_step(model, inputs["forget"], alpha_t)
        with trainer.compute_loss_context_manager():
            retain_loss = classification_loss(model, inputs["retain"])
        trainer.accelerator.backward(retain_loss)
        return retain_loss.detach()


register_method(
    "remain_geometry",
    RemainGeometryConfig,
    RemainGeometry,
    description="SFR-on: Fisher-saliency-masked, adaptively weighted forget steps between retain steps, one optimizer "
    "(classes or samples; optional LoRA).",
    paper="https://arxiv.org/abs/2409.19732",
    citation='Huang et al.: "Unified Gradient-Based Machine Unlearning with Remain Geometry Enhancement", NeurIPS 2024 (arXiv 2409.19732).',
)
