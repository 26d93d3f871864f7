"""`neggrad_plus` (NegGrad+): descend on the retain set and ascend on the forget set in the same step.

From Kurmanji et al., "Towards Unbounded Machine Unlearning" (NeurIPS 2023, SCRUB paper), where it is the
strongest simple baseline. Each step takes one retain batch and one forget batch (the forget set is cycled over one
pass of the retain set) and minimises

    retain_weight * CE(retain batch) - (1 - retain_weight) * CE(forget batch)

Example:

```python
>>> args = UnlearnConfig(output_dir="out", method="neggrad_plus", method_kwargs={"retain_weight": 0.9})
```
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..contract import TrainerLoopMethod, training_loss
from ..data import PairedDataset
from ..registry import register_method


@dataclass
class NegGradPlusConfig:
    retain_weight: float = field(
        default=0.9,
        metadata={
            "help": "Weight of the retain cross-entropy; the forget cross-entropy is ascended with weight "
            "1 - retain_weight. Higher keeps retain accuracy, lower forgets faster. The SCRUB paper tunes it per "
            "task; 0.9 forgets a digits class within 2 epochs while keeping retain accuracy."
        },
    )

    def __post_init__(self):
        if not 0.0 <= self.retain_weight < 1.0:
            raise ValueError(
                f"`retain_weight` must be in [0, 1), got {self.retain_weight!r}: 1 would never ascend on the forget "
                "set (use method 'finetune' for that)."
            )


class NegGradPlus(TrainerLoopMethod):
    training_defaults = {"optim": "adamw_torch", "learning_rate": 5e-4, "num_train_epochs": 1,
                         "per_device_train_batch_size": 32, "lr_scheduler_type": "linear", "warmup_steps": 0}  # fmt: skip
    def training_dataset(self):
        return PairedDataset(self.trainer.retain_view, self.trainer.forget_view, seed=self.trainer.args.seed)

    def compute_loss(self, model, inputs, num_items_in_batch=None):
        weight = self.config.retain_weight
        retain_loss = training_loss(model, inputs["retain"])
        forget_loss = training_loss(model, inputs["forget"])
        return weight * retain_loss - (1.0 - weight) * forget_loss


register_method(
    "neggrad_plus",
    NegGradPlusConfig,
    NegGradPlus,
    description="Descent on the retain set plus ascent on the forget set in each step (NegGrad+).",
    paper="https://arxiv.org/abs/2302.09880",
    citation='Kurmanji, Triantafillou, Hayes, Triantafillou: "Towards Unbounded Machine Unlearning", NeurIPS 2023 (arXiv 2302.09880).',
)
