"""`gradient_ascent`: maximise the training loss on the forget set (a classifier's cross-entropy, a diffusion model's
denoising loss on the forget classes, with their labels kept).

Baseline from Thudi et al., "Unrolling SGD" (EuroS&P 2022) and Graves et al., "Amnesiac Machine Learning"
(AAAI 2021). The loss is unbounded: without a stopping rule it destroys the model. For a classifier, set
`UnlearnConfig.forget_accuracy_target` (e.g. 0.0 for class forgetting) so it stops once the forget set is
forgotten; a diffusion model has no accuracy to stop on, so its budget (`max_steps`) is the only bound. Either way
keep the learning rate small.

Example:

```python
>>> args = UnlearnConfig(output_dir="out", method="gradient_ascent", learning_rate=1e-4, num_train_epochs=5,
...                      forget_accuracy_target=0.0, forget_check_steps=1)
```
"""

from __future__ import annotations

from dataclasses import dataclass

from ..contract import TrainerLoopMethod, training_loss
from ..registry import register_method


@dataclass
class GradientAscentConfig:
    """`gradient_ascent` has no hyperparameters of its own: it trains with the `UnlearnConfig` training fields."""


class GradientAscent(TrainerLoopMethod):
    # Unbounded ascent: a small rate and one pass over the forget rows; `forget_accuracy_target` stops it earlier.
    training_defaults = {"optim": "adamw_torch", "learning_rate": 1e-4, "num_train_epochs": 1,
                         "per_device_train_batch_size": 32, "lr_scheduler_type": "constant", "warmup_steps": 0}  # fmt: skip
    model_kinds = ("classifier", "diffusion")

    def training_dataset(self):
        return self.trainer.forget_view

    def compute_loss(self, model, inputs, num_items_in_batch=None):
        return -training_loss(model, inputs, forget=True)


register_method(
    "gradient_ascent",
    GradientAscentConfig,
    GradientAscent,
    description="Gradient ascent on the forget set (stop a classifier's run with `forget_accuracy_target`).",
    paper="https://arxiv.org/abs/2109.13398",
    citation='Thudi, Deza, Chandrasekaran, Papernot: "Unrolling SGD: Understanding Factors Influencing Machine Unlearning", EuroS&P 2022 (arXiv 2109.13398).',
)
