"""`finetune`: keep training on the retain set only, relying on catastrophic forgetting of the forget set (classifiers
and diffusion models: their usual training loss).

Baseline from Warnecke et al., "Machine Unlearning of Features and Labels" (NDSS 2023) and most unlearning
benchmarks since (e.g. SalUn, SFR-on). It uses the `UnlearnConfig` training budget (`learning_rate`,
`num_train_epochs` / `max_steps`).

Example:

```python
>>> args = UnlearnConfig(output_dir="out", method="finetune", num_train_epochs=2, learning_rate=1e-3)
>>> UnlearningTrainer(model, args, train_dataset=train, eval_dataset=test, forget_classes=[3]).unlearn()
```
"""

from __future__ import annotations

from dataclasses import dataclass

from ..contract import TrainerLoopMethod, training_loss
from ..registry import register_method


@dataclass
class FinetuneConfig:
    """`finetune` has no hyperparameters of its own: it trains with the `UnlearnConfig` training fields."""


class Finetune(TrainerLoopMethod):
    # Fine-tuning forgets only by overwriting: a rate high enough to move the weights within two passes.
    training_defaults = {"optim": "adamw_torch", "learning_rate": 1e-3, "num_train_epochs": 2,
                         "per_device_train_batch_size": 32, "lr_scheduler_type": "cosine", "warmup_steps": 0}  # fmt: skip
    model_kinds = ("classifier", "diffusion")

    def training_dataset(self):
        return self.trainer.retain_view

    def compute_loss(self, model, inputs, num_items_in_batch=None):
        return training_loss(model, inputs)


register_method(
    "finetune",
    FinetuneConfig,
    Finetune,
    description="Train on the retain set only (catastrophic forgetting baseline).",
    paper="https://arxiv.org/abs/2108.11577",
    citation='Warnecke, Pirch, Wressnegger, Rieck: "Machine Unlearning of Features and Labels", NDSS 2023 (arXiv 2108.11577).',
)
