"""The contract between an unlearning method and `UnlearningTrainer`: the hooks a method may override
(`UnlearningMethod`) and the trainer surface it may use (`TrainerSurface`), nothing else.

A method is one module under `hf_unlearn/methods/`: a config dataclass, an `UnlearningMethod` subclass and one
`register_method` call (`hf_unlearn.registry`), which checks both.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch

from .kinds import kind_of

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import TrainerCallback, TrainerState

    from .activations import BlockInputReplay
    from .config import UnlearnConfig
    from .data import ForgetRetainSplit


class TrainerSurface(Protocol):
    """What a method may use of the trainer (`UnlearningTrainer` provides all of it; tests may pass a stand-in)."""

    #: The model being unlearned (changed in place by the method), the config, the Trainer's state and accelerator.
    model: torch.nn.Module
    args: UnlearnConfig
    state: TrainerState
    accelerator: Accelerator
    optimizer: torch.optim.Optimizer | None
    data_collator: Any
    #: The request: forget / retain row indices, the views a method trains on (capped by `max_forget_samples` /
    #: `max_retain_samples`) and their labels (arrays: no need to read the label columns again).
    split: ForgetRetainSplit
    forget_view: Any
    retain_view: Any
    forget_labels: np.ndarray
    retain_labels: np.ndarray
    label_column: str
    num_labels: int
    retained_classes: list[int]
    #: The classifier that judges a generator's samples (None for classifiers).
    judge: torch.nn.Module | None

    def train_with(self, dataset) -> Any:
        """The Trainer's own training loop on `dataset` with a fresh optimizer and schedule."""

    def prepare_inputs(self, inputs: dict) -> dict:
        """A collated batch moved to the device (as the Trainer's loop does)."""

    def predict_logits(self, dataset, model=None, description: str = "Scoring", head=None, original=None) -> tuple:
        """Logits and labels of every row of `dataset`, gathered over processes (`passes.predict_logits`)."""

    def shard_batches(self, dataset, description: str = "Forward pass",
                      batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, dict]]:  # fmt: skip
        """This process's share of `dataset` in batches, each row once (`hf_unlearn.passes.shard_batches`)."""

    def shard_accuracy(self, batches, model=None, plausible_at: float | None = None) -> float | None:
        """Accuracy on batches from `shard_batches`, summed over processes (`plausible_at`: rows whose label keeps
        that probability count too)."""

    def gather_shards(self, local: torch.Tensor, total: int) -> torch.Tensor:
        """Per-row results of this process's share joined over processes, in dataset order."""

    def log(self, logs: dict[str, float]) -> None:
        """Record values (e.g. a method's own checks) for every `report_to` integration, as the Trainer's loss."""

    def compute_loss_context_manager(self) -> Any: ...

    def add_callback(self, callback: TrainerCallback | type) -> None: ...

    def remove_callback(self, callback: TrainerCallback | type) -> None: ...

    def is_local_process_zero(self) -> bool: ...


@dataclass(frozen=True)
class PaperPreset:
    """One paper's settings for a method (`UnlearnConfig(preset="paper", preset_dataset=...)`): what the paper or its
    official code used on `dataset`, for models of `kind`. Values a user sets always win."""

    #: The dataset the paper used these settings on ("cifar10", "imagenet", ...): `UnlearnConfig.preset_dataset`.
    dataset: str
    #: The model kind they are for (`hf_unlearn.kinds`): "classifier", "diffusion", ...
    kind: str
    #: `UnlearnConfig` fields (the training budget and the optimizer's arguments).
    training: dict = field(default_factory=dict)
    #: The method's own settings (`method_kwargs`).
    method: dict = field(default_factory=dict)
    #: Where the values come from (paper section, table or official script).
    source: str = ""
    #: For diffusion models, the denoiser the settings are for ("unet": a DDPM, "transformer": a DiT); None: any.
    denoiser: str | None = None


class UnlearningMethod:
    """One unlearning method. `UnlearningTrainer` builds it with itself and the method's config, then calls `run()`,
    which changes `trainer.model` in place. A method uses only the `TrainerSurface`; whatever the run chooses or
    measures itself (e.g. a hyperparameter search) goes in `self.report`, which is added to the returned metrics.

    Hooks a subclass may override: `check_settings` (before any work), `run` (required), `changed_modules` (what `run`
    may change, when known before), and for methods that train through the Trainer's loop `compute_loss` and, when one
    Trainer step is several updates, `training_step`.
    """

    #: Whether `UnlearnConfig.forget_accuracy_target` may stop this method early.
    stops_at_forget_target: bool = True
    #: Whether the method trains for `UnlearnConfig.max_steps` / `num_train_epochs` (an empty budget is refused).
    uses_training_budget: ClassVar[bool] = False
    #: Whether the method only forgets whole classes (`forget_classes`); the trainer then refuses `forget_indices`.
    class_level_only: ClassVar[bool] = False
    #: Whether the method trains the weights by gradient, so that `UnlearnConfig.peft_config` (LoRA) applies to it.
    supports_peft: ClassVar[bool] = True
    #: Whether the method edits the classification head itself (a projection, a refit), not only by gradient through
    #: the logits: a model whose logits sum or average several heads on one input then runs with one
    #: (`models.one_head`).
    edits_head: ClassVar[bool] = False
    #: Whether the method works on sharded parameters (FSDP, DeepSpeed): False for methods that read or write whole
    #: weights or gradients themselves.
    supports_sharding: ClassVar[bool] = True
    #: The method's own training budget: `UnlearnConfig` fields (`BUDGET_FIELDS`: learning_rate, num_train_epochs or
    #: max_steps, per_device_train_batch_size, lr_scheduler_type, max_grad_norm, optim, weight_decay, warmup_steps)
    #: used when the user leaves them unset (None). Fields not named here get TrainingArguments' defaults.
    training_defaults: ClassVar[dict] = {}
    #: The model kinds the method unlearns (`hf_unlearn.kinds`): "classifier", "gan", "diffusion".
    model_kinds: ClassVar[tuple[str, ...]] = ("classifier",)
    #: The paper's settings per dataset (`UnlearnConfig(preset="paper")`); the first is used when no
    #: `preset_dataset` is given. Empty: the method has no paper settings to reproduce (the baselines).
    paper_presets: ClassVar[tuple[PaperPreset, ...]] = ()

    def __init__(self, trainer: TrainerSurface, config: Any):
        self.trainer = trainer
        self.config = config
        #: What the run chose or measured on its own (e.g. a hyperparameter search), added to the returned metrics.
        self.report: dict = {}
        preset = getattr(trainer.args, "preset_applied", None)
        if preset:  # which paper settings ran, in the results and the card
            self.report["preset"] = preset

    @classmethod
    def check_settings(cls, config: Any, args: UnlearnConfig, model: torch.nn.Module) -> None:
        """Check the settings that depend on the model or the training arguments (e.g. that a named module exists);
        called when the request is resolved, before any work. Raise a `ValueError` naming the setting and the fix."""

    def run(self) -> None:
        """Unlearn: change `self.trainer.model` in place."""
        raise NotImplementedError(f"{type(self).__name__} must define `run()`.")

    def changed_modules(self) -> list[str] | None:
        """Names of the modules whose parameters and buffers `run()` may change, where the method knows them before
        it runs; None (the default): any. Called before `run()`. With names, the trainer keeps the original values of
        everything from the block they start in on and measures the original model after the method, in the unlearned
        model's passes, through that tail alone (`hf_unlearn.measure_cache`); a run that then changed anything before
        that block is an error."""
        return None

    def take_block_inputs(self) -> BlockInputReplay | None:
        """After `run()`: the input of a block that the method recorded with the original model for rows it read, the
        blocks before it left unchanged (within what `changed_modules` names), or None (the default). Handed over
        once: the method keeps no reference, and the measuring passes replay it for those rows, then free it."""
        return None

    def compute_loss(self, model: torch.nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        """The loss of one batch of the Trainer's loop (a mean over the batch)."""
        raise NotImplementedError(f"{type(self).__name__} does not train through the Trainer's loop.")

    def training_step(self, model: torch.nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        """One Trainer step when it is more than one backward pass (e.g. remain_geometry's masked forget step then
        the retain step); returns the detached loss. Methods that do not override it get the Trainer's own."""
        raise NotImplementedError

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage of the run (wall seconds, the device synchronised at both ends), added up under
        `report["stage_seconds"][name]`: what a stage costs shows in the results and in `benchmarks/scale.py`."""
        synchronize = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
        synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize()
            seconds = self.report.setdefault("stage_seconds", {})
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start

    @classmethod
    def has_own_training_step(cls) -> bool:
        return cls.training_step is not UnlearningMethod.training_step


class TrainerLoopMethod(UnlearningMethod):
    """A method that is one run of the Trainer's training loop (optimizer, scheduler, accelerator, progress bar,
    logging, callbacks): it chooses the data (`training_dataset`) and the loss (`compute_loss`)."""

    uses_training_budget = True

    def training_dataset(self):
        raise NotImplementedError(f"{type(self).__name__} must define `training_dataset()`.")

    def prepare_model(self) -> None:
        """Hook run before training (e.g. re-initialisation for `retrain`)."""

    def run(self) -> None:
        self.prepare_model()
        self.trainer.train_with(self.training_dataset())


def training_loss(model, batch: dict, reduction: str = "mean", forget: bool = False, **options) -> torch.Tensor:
    """The training loss of `model` (possibly wrapped by accelerate) on `batch` (model inputs plus `labels`), as its
    kind defines it (`hf_unlearn.kinds`): a classifier's cross-entropy, a diffusion model's denoising loss.

    `reduction`: "mean", "sum" or "none" (one loss per row). `forget`: the rows are being forgotten (a diffusion model
    then keeps their class labels). `options` go to the kind's loss (e.g. a diffusion model's `antithetic=True`)."""
    return kind_of(model).training_loss(model, batch, reduction=reduction, forget=forget, **options)
