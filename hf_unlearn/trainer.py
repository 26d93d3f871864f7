"""`UnlearningTrainer`: a `transformers.Trainer` that removes classes or samples from a trained model and measures
the result. The request is resolved by `hf_unlearn.request`, the model's kind (`hf_unlearn.kinds`) measures it, the
method (`hf_unlearn.methods`) changes it, and `hf_unlearn.saving` writes and publishes it."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from accelerate.logging import get_logger
from transformers import Trainer, set_seed

from .activations import modes_kept
from .checks import measured_values, unlearning_check
from .config import UnlearnConfig
from .lora import lora_if_asked
from .measure_cache import OriginalMeasurement
from .measuring import MeasuringMixin
from .models import one_head_for
from .outputs import check_finite
from .passes import broadcast_weights
from .precision import autocast_undone_after, float32_method, without_autocast_wrapper
from .report import loggable_metrics
from .request import UnlearningRequest
from .saving import SavingMixin
from .training import ForgetTargetCallback, no_hub_pushes, objects_so_far_left_to_refcounting

logger = get_logger(__name__)


@dataclass
class UnlearningOutput:
    """What `UnlearningTrainer.unlearn()` returns."""

    model: torch.nn.Module
    metrics: dict
    original_metrics: dict | None = None
    method: str = ""
    method_config: object = None
    forget_classes: list[int] | None = None
    num_forget_samples: int = 0
    #: Whether the run's own check passed: the forget classes are gone (`UnlearnConfig.forget_success_threshold`) and
    #: the retained ones kept (`max_retain_drop`, when the original was measured). True, False, or None when nothing
    #: was checked (e.g. a sample-level request without a measured original).
    forgotten: bool | None = None


class UnlearningTrainer(SavingMixin, MeasuringMixin, Trainer):
    """Removes what a trained model (a classifier, a GAN or a diffusion model) learned about some classes or training
    samples, and measures the result.

    Args:
        model: a transformers classifier (`...ForImageClassification`, `...ForAudioClassification`), a GAN
            (`hf_unlearn.gan.GANPair`), a class-conditional diffusion model (a diffusers `DDPMPipeline` /
            `DiTPipeline`, or `hf_unlearn.diffusion.DiffusionModel.wrap(denoiser, scheduler, vae=...)`), or a Hub ID /
            local path of any of them, loaded with the matching class (and a classifier's processor).
        args: an [`UnlearnConfig`] (method, its hyperparameters, the training budget of gradient methods).
        train_dataset: the model's training set (`datasets.Dataset` with a `label` or `labels` column and model
            inputs, or raw `image` / `audio` columns plus `processing_class`). The forget and retain sets come from it.
        eval_dataset: held-out rows (same columns) for the metrics.
        processing_class: image processor or feature extractor for raw columns (loaded with a Hub ID).
        forget_classes: class ids or label names (`model.config.id2label`) to forget.
        forget_indices: training rows to forget (sample-level unlearning): integer row positions (a list, numpy array
            or tensor), or a boolean mask with one entry per row of `train_dataset`. Give exactly one of the two.
        judge: for a generator (GAN or diffusion model): an image classifier of the same data that measures the
            generated samples (which classes they show, and the features of the Frechet distance); it is moved to
            `args.device` in place and never changed otherwise.

    The caller's model object is left untouched unless `args.in_place`; `trainer.model` is the unlearned model and
    `trainer.save_model()` (or `save_unlearned`) writes it with its processor, card, plot and results, atomically.
    `unlearn()` logs its metrics through `Trainer.log`, so every `report_to` integration receives them.

    Example:

    ```python
    >>> from hf_unlearn import UnlearnConfig, UnlearningTrainer
    >>> args = UnlearnConfig(output_dir="out", method="neggrad_plus", num_train_epochs=2, learning_rate=1e-3)
    >>> result = UnlearningTrainer(model, args, train_dataset=train, eval_dataset=test, forget_classes=[3]).unlearn()
    >>> result.metrics["forget_accuracy"], result.metrics["retain_accuracy"]
    ```
    """

    def __init__(self, model, args: UnlearnConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, data_collator=None, forget_classes=None, forget_indices=None, callbacks=None,
                 judge=None, **kwargs):  # fmt: skip
        args = UnlearnConfig(output_dir="unlearn_output") if args is None else args
        request = UnlearningRequest.resolve(
            model, args, train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=processing_class,
            data_collator=data_collator, forget_classes=forget_classes, forget_indices=forget_indices, judge=judge,
        )  # fmt: skip
        super().__init__(model=request.model, args=args, data_collator=request.data_collator,
                         train_dataset=request.train_dataset, eval_dataset=request.eval_dataset,
                         processing_class=request.processing_class, callbacks=callbacks, **kwargs)  # fmt: skip
        request.method.validate_sharding(request.kind, self.is_fsdp_enabled or self.is_deepspeed_enabled)
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError("`compute_loss_func`: each method computes its own losses and would ignore it; leave it "
                             "None (a metric of your own goes in `compute_metrics`).")  # fmt: skip
        if args.eval_strategy != "no" and request.kind.generator and request.judge is None:
            raise ValueError(f"`eval_strategy={str(args.eval_strategy)!r}` measures a generator during training, "
                             "which needs a judge classifier of its data: pass `judge=`, or set eval_strategy='no'.")
        # Methods return a mean loss: let the Trainer scale it for gradient accumulation itself.
        self.model_accepts_loss_kwargs = False
        #: The resolved request, and its parts methods use (`hf_unlearn.contract.TrainerSurface`).
        self.request, self.kind = request, request.kind
        self.source_train_dataset, self.split, self.label_column = request.train_dataset, request.split, request.label_column
        self.num_labels, self.train_labels, self.judge = request.num_labels, request.train_labels, request.judge
        self.forget_view, self.retain_view = request.forget_view, request.retain_view
        self.forget_labels, self.retain_labels = request.forget_labels, request.retain_labels
        #: The rows every measurement scores (`UnlearningRequest.metric_views`).
        self.metric_views = request.metric_views
        self.method = request.method.method_class(self, args.method_config)
        self._started_at = time.time()  # what the Trainer writes into output_dir from now on is this run's
        #: The output of the last `unlearn()`, which `create_model_card` describes.
        self.unlearning_output: UnlearningOutput | None = None
        if args.forget_accuracy_target is not None:
            self.add_callback(ForgetTargetCallback(self))

    @property
    def retained_classes(self) -> list[int]:
        """Class ids the model keeps: every class but the forget classes and those unlearned in earlier requests."""
        return self.request.retained_classes

    # ----------------------------------------------------------------------------------------------- running
    def unlearn(self) -> UnlearningOutput:
        """Run the configured method and measure the unlearned model (and the original, if
        `args.eval_before_unlearn`). Returns an [`UnlearningOutput`].

        A class is recorded as unlearned (`model.config.unlearned_classes`, which later requests trust) only when the
        run's own forget check passes (`UnlearnConfig.forget_success_threshold`); otherwise the output, the log and
        the card say that the check failed. Non-finite weights after the method are an error: nothing is measured
        or saved."""
        args, split = self.args, self.split
        again = sorted(set(split.forget_classes or []) & set(getattr(self.model.config, "unlearned_classes", None) or []))
        if again:
            logger.warning(f"`forget_classes` {again} were unlearned by this model before; unlearning them again.")
        without_autocast_wrapper(self.model)  # an earlier `predict` may have wrapped it: measured in its own precision
        started = time.perf_counter()
        # The original: measured now, or reused, or measured after the method with the unlearned model (`measure_cache`).
        original = OriginalMeasurement(self)
        evaluation_seconds = time.perf_counter() - started
        self.accelerator.wait_for_everyone()
        set_seed(args.seed)  # the method's draws do not depend on what ran before (a DataLoader draws a seed to start)
        start, self.seconds_beside_method = time.perf_counter(), {}
        with original.released_on_error():
            with modes_kept(self.model), float32_method(self), no_hub_pushes(args), \
                    lora_if_asked(self.model, args.peft_config, args.peft_merge, self.method.report), one_head_for(self):
                self.method.run()
            self.accelerator.wait_for_everyone()
            # Whole weights computed on every process, or (DDP) BatchNorm statistics each process updated from its own
            # batches: all go on with process 0's. (FSDP / DeepSpeed hold shards, which their engines keep in step.)
            if not (self.method.supports_sharding and (self.is_fsdp_enabled or self.is_deepspeed_enabled)):
                broadcast_weights(self.model, self.accelerator)
            beside, self.seconds_beside_method = self.seconds_beside_method, None
            seconds = time.perf_counter() - start - sum(beside.values())  # the evaluations, checkpoints: not the method's
            self._raise_on_every_process(check_finite, self.model, f"After '{args.method}'")
        started = time.perf_counter()
        metrics, original_metrics = original.with_unlearned()
        metrics.update(self.method.report)
        # The method's own time, and the measuring passes before and after apart from it.
        evaluation_seconds += beside.get("evaluation", 0.0) + time.perf_counter() - started
        metrics.update(unlearn_seconds=seconds, evaluation_seconds=evaluation_seconds, **original.report)
        metrics.update({"checkpoint_seconds": beside["checkpoints"]} if "checkpoints" in beside else {})
        if split.is_class_level and all(metrics.get(key) is None for key in self.kind.forget_keys):
            metrics.update(self.kind.forget_check_metrics(self))
        check = unlearning_check(
            metrics, original_metrics, kind=self.kind, class_level=split.is_class_level,
            forget_success_threshold=args.forget_success_threshold, max_retain_drop=args.max_retain_drop,
        )  # fmt: skip
        metrics["forget_check"] = check
        logger.info(f"Unlearning with '{args.method}' took {seconds:.2f} s.")
        if split.is_class_level:
            # Saved with the model (config.json), so a later request on it keeps these classes out of its retain set;
            # a class asked for again that did not pass now is no longer recorded (the record is of this model).
            recorded = sorted(set(split.unlearned_before) | (set(split.forget_classes) if check["passed"] else set()))
            if recorded != list(getattr(self.model.config, "unlearned_classes", None) or []):
                self.model.config.unlearned_classes = recorded or None
        if check["passed"] is False:
            logger.warning(
                f"The unlearning check FAILED ({measured_values(check)}; forget accuracy must be at most "
                f"`forget_success_threshold` {args.forget_success_threshold}, the retain accuracy drop at most "
                f"`max_retain_drop` {args.max_retain_drop}). Nothing is recorded as unlearned; the card and results say "
                "the run failed. Give the method more budget or other settings (see the README's method table)."
            )
        elif check.get("original_at_threshold"):
            logger.warning(f"Not checked: the original was already at or below `forget_success_threshold` on the forget "
                           f"classes ({measured_values(check)}), so nothing shows that it forgot; nothing is recorded.")
        self.log(loggable_metrics(metrics, original_metrics))
        self.unlearning_output = UnlearningOutput(
            model=self.model, metrics=metrics, original_metrics=original_metrics, method=args.method,
            method_config=args.method_config, forget_classes=split.forget_classes,
            num_forget_samples=len(split.forget_indices), forgotten=check["passed"],
        )  # fmt: skip
        return self.unlearning_output

    def train_with(self, dataset):
        """Run the Trainer's training loop on `dataset` with a fresh optimizer and schedule (used by methods)."""
        split = self.accelerator.split_batches  # one batch is split over the processes instead of one each
        batch = self._train_batch_size * (1 if split else self.args.world_size)
        if self.args.dataloader_drop_last and len(dataset) < batch:
            raise ValueError(
                f"`dataloader_drop_last=True` drops every training batch: '{self.args.method}' trains on {len(dataset)} "
                f"rows, fewer than one batch ({batch} = `per_device_train_batch_size` x processes). Lower "
                "`per_device_train_batch_size` or leave `dataloader_drop_last` False."
            )
        self.train_dataset = dataset
        self.optimizer, self.lr_scheduler = None, None
        if not (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            # A DDP wrapper from an earlier run reduces the gradients of the parameters that were trainable then:
            # LoRA adapters or a tail trained now would train on each process's own gradients. Wrap afresh.
            self.model_wrapped = self.model
        try:
            with objects_so_far_left_to_refcounting(self.args.device), autocast_undone_after(self.model):
                return super().train()
        finally:
            self.train_dataset = self.source_train_dataset

    def train(self, *args, **kwargs):
        raise RuntimeError(
            "UnlearningTrainer runs its method with `trainer.unlearn()`, which trains (for gradient methods) and "
            "measures; `train()` alone would fit the training set with the method's objective, unpaired. Call "
            "`unlearn()`; a method trains through `train_with(dataset)`."
        )

    def hyperparameter_search(self, *args, **kwargs):
        raise RuntimeError(
            "`hyperparameter_search` trains with `Trainer.train()`, which does not run an unlearning method. Search "
            "by running `unlearn()` per setting, e.g. with `dataclasses.replace(args, learning_rate=...)`, and compare "
            "the results' metrics (`benchmarks/ablation.py` does this)."
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._scoring_model_loss:  # the Trainer's evaluation / prediction loop (`MeasuringMixin.prediction_step`)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = self.method.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.method.has_own_training_step():
            return self.method.training_step(model, inputs, num_items_in_batch)
        return super().training_step(model, inputs, num_items_in_batch)

    def prepare_inputs(self, inputs: dict) -> dict:
        """A collated batch on the device, as the Trainer's loop prepares it."""
        return self._prepare_inputs(inputs)
