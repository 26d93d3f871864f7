"""Base classes shared by every unlearning method."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..diffusion import is_diffusion


class UnlearningMethod:
    """One unlearning method. `UnlearningTrainer` builds it with itself and the method's config, then calls `run()`,
    which changes `trainer.model` in place.

    What a method can use from the trainer: `trainer.model`, `trainer.args` (the `UnlearnConfig`), `trainer.split`
    (forget/retain row indices), `trainer.forget_view` / `trainer.retain_view` (the datasets it may train on,
    already capped by `max_forget_samples` / `max_retain_samples`) and their labels `trainer.forget_labels` /
    `trainer.retain_labels` (arrays: no need to read the datasets' label columns), `trainer.label_column`, `trainer.num_labels`, `trainer.retained_classes`,
    `trainer.train_with(dataset)` (the Trainer's own training loop), `trainer.predict_logits(dataset)`, and for
    passes whose results are summed over processes `trainer.shard_batches(dataset)` / `trainer.shard_accuracy(...)`.
    Whatever the run chooses or measures itself (e.g. a hyperparameter search) goes in `self.report`, which is
    added to the returned metrics.
    """

    #: Whether `UnlearnConfig.forget_accuracy_target` may stop this method early.
    stops_at_forget_target: bool = True
    #: Whether the method trains for `UnlearnConfig.max_steps` / `num_train_epochs` (an empty budget is refused).
    uses_training_budget: bool = False
    #: Whether the method only forgets whole classes (`forget_classes`); the trainer then refuses `forget_indices`.
    class_level_only: bool = False
    #: Whether the method trains the weights by gradient, so that `UnlearnConfig.peft_config` (LoRA) applies to it.
    supports_peft: bool = True
    #: Whether the method works on sharded parameters (FSDP, DeepSpeed): False for methods that read or write whole
    #: weights or gradients themselves.
    supports_sharding: bool = True
    #: The method's own training budget: `UnlearnConfig` fields (`BUDGET_FIELDS`: learning_rate, num_train_epochs or
    #: max_steps, per_device_train_batch_size, lr_scheduler_type, max_grad_norm, optim, weight_decay, warmup_steps)
    #: used when the user leaves them unset (None). Fields not named here get TrainingArguments' defaults.
    training_defaults: dict = {}
    #: The kinds of model the method unlearns (`hf_unlearn.models.model_kind`): "classifier", "gan", "diffusion".
    model_kinds: tuple[str, ...] = ("classifier",)

    def __init__(self, trainer, config):
        self.trainer = trainer
        self.config = config
        #: What the run chose or measured on its own (e.g. a hyperparameter search), added to the returned metrics.
        self.report: dict = {}

    @classmethod
    def check_settings(cls, config, args, model) -> None:
        """Check the settings that depend on the model or the training arguments (e.g. that a named module exists);
        called when the trainer is built, before any work. Raise a `ValueError` naming the setting and the fix."""

    def run(self) -> None:
        raise NotImplementedError

    def compute_loss(self, model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not train through the Trainer's loop.")


class TrainerLoopMethod(UnlearningMethod):
    """A method that is one run of the Trainer's training loop (optimizer, scheduler, accelerator, progress bar,
    logging, callbacks): it chooses the data (`training_dataset`) and the loss (`compute_loss`)."""

    uses_training_budget = True

    def training_dataset(self):
        raise NotImplementedError

    def prepare_model(self) -> None:
        """Hook run before training (e.g. re-initialisation for `retrain`)."""

    def run(self) -> None:
        self.prepare_model()
        self.trainer.train_with(self.training_dataset())


def training_loss(
    model, batch: dict, reduction: str = "mean", forget: bool = False, **diffusion_options
) -> torch.Tensor:
    """The training loss of `model` (possibly wrapped by accelerate) on `batch` (model inputs plus `labels`): the
    cross-entropy of a classifier, or the denoising loss of a diffusion model (`hf_unlearn.diffusion.DiffusionModel`,
    whose forward pass computes it).

    `reduction`: "mean", "sum" or "none" (one loss per row). `forget`: the rows are being forgotten; a diffusion model
    then keeps their class labels (no classifier-free-guidance label dropout, which would unlearn the unconditional
    model instead). `diffusion_options` go to the diffusion model's forward pass (e.g. `antithetic=True`)."""
    if is_diffusion(model):
        if forget:
            diffusion_options.setdefault("class_dropout", 0.0)
        losses = model(**batch, **diffusion_options).losses
        return {"mean": losses.mean, "sum": losses.sum, "none": lambda: losses}[reduction]()
    inputs = {name: value for name, value in batch.items() if name != "labels"}
    logits = model(**inputs).logits
    return F.cross_entropy(logits.float(), batch["labels"], reduction=reduction)
