"""`random_label`: fine-tune on the forget set with random wrong labels, together with the retain set.

From Golatkar et al. / Graves et al., "Amnesiac Machine Learning" (AAAI 2021), the "RL" baseline of SalUn and
SFR-on. Each forget sample gets one random label other than its own, drawn once (seeded by `seed`); for class
forgetting the new label is drawn from the retained classes, so the forget class is never reinforced.

Example:

```python
>>> args = UnlearnConfig(output_dir="out", method="random_label", num_train_epochs=2, learning_rate=1e-3)
```
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contract import TrainerLoopMethod, training_loss
from ..data import ConcatRows, RelabeledDataset
from ..registry import register_method


@dataclass
class RandomLabelConfig:
    """`random_label` has no hyperparameters of its own: it trains with the `UnlearnConfig` training fields."""


class RandomLabel(TrainerLoopMethod):
    training_defaults = {"optim": "adamw_torch", "learning_rate": 5e-4, "num_train_epochs": 1,
                         "per_device_train_batch_size": 32, "lr_scheduler_type": "linear", "warmup_steps": 0}  # fmt: skip
    def training_dataset(self):
        trainer = self.trainer
        forget = trainer.forget_view
        true_labels = trainer.forget_labels
        candidates = trainer.retained_classes  # not a forget class, nor one unlearned in an earlier request
        rng = np.random.default_rng(trainer.args.seed)
        new_labels = np.array([rng.choice([c for c in candidates if c != label]) for label in true_labels])
        relabeled = RelabeledDataset(forget, np.arange(len(forget)), new_labels, trainer.label_column)
        return ConcatRows(relabeled, trainer.retain_view)

    def compute_loss(self, model, inputs, num_items_in_batch=None):
        return training_loss(model, inputs)


register_method(
    "random_label",
    RandomLabelConfig,
    RandomLabel,
    description="Train on the forget set with random wrong labels plus the retain set.",
    paper="https://arxiv.org/abs/2010.10981",
    citation='Graves, Nagisetty, Ganesh: "Amnesiac Machine Learning", AAAI 2021 (arXiv 2010.10981).',
)
