"""`retrain`: the exact reference. Re-initialise the model from its config and train on the retain set only.

Every other method is judged by its gap to this model. Give it the training budget of the original model
(`num_train_epochs`, `learning_rate`, ...): a retrained model that is under-trained is not a reference.
`forget_accuracy_target` never stops it early.

Example:

```python
>>> args = UnlearnConfig(output_dir="out", method="retrain", num_train_epochs=30, learning_rate=3e-3)
>>> reference = UnlearningTrainer(model, args, train_dataset=train, eval_dataset=test, forget_classes=[3]).unlearn()
```
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models import reinitialized_copy
from ..registry import register_method
from .finetune import Finetune


@dataclass
class RetrainConfig:
    """`retrain` has no hyperparameters of its own: it trains with the `UnlearnConfig` training fields, from a fresh
    initialisation seeded by `seed`."""


class Retrain(Finetune):
    # A diffusion model's retrain would re-initialise its whole pipeline (a DiT's frozen VAE too) and train it from
    # scratch: not offered; compare generators with the original instead.
    model_kinds = ("classifier",)
    stops_at_forget_target = False
    supports_peft = False  # a fresh model trained from scratch: adapters on random weights make no reference
    training_defaults = {}  # the reference is only exact with the original model's own recipe: give it

    def prepare_model(self) -> None:
        # Load fresh weights into the trainer's model object so every reference the Trainer holds stays valid.
        fresh = reinitialized_copy(self.trainer.model, self.trainer.args.seed)
        self.trainer.model.load_state_dict(fresh.state_dict())


register_method(
    "retrain",
    RetrainConfig,
    Retrain,
    description="Re-initialise and train on the retain set only: the exact reference every method is compared to.",
)
