"""`UnlearningTrainer`: a `transformers.Trainer` that removes classes or samples from a trained classifier."""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback

from .activations import capturing, pooled_rows
from .checks import FORGET_KEYS, measured_values, unlearning_check
from .config import UnlearnConfig
from .data import (
    UnlearningCollator,
    check_dataset,
    check_labels,
    dataset_labels,
    find_label_column,
    resolve_forget_classes,
    split_forget_retain,
    subsample,
    with_model_inputs,
    without_audio_decoding,
)
from .diffusion import as_diffusion_model, measure_diffusion
from .gan import image_tensors, measure_generator
from .hub import push_folder
from .lora import add_lora, has_lora, merge_lora, save_adapter
from .metrics import accuracy, gap_to_reference, unlearning_metrics
from .models import check_unlearnable, classification_head, load_model, model_kind
from .outputs import (
    check_finite,
    check_replaceable,
    prepare_staging,
    resolved_output,
    staging_path,
    swap_in,
)
from .registry import available_methods, get_method

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


class UnlearningTrainer(Trainer):
    """Removes what a trained model (a classifier, a GAN or a diffusion model) learned about some classes or training
    samples, and measures the result.

    Args:
        model: a transformers classifier (`...ForImageClassification`, `...ForAudioClassification`), a GAN
            (`hf_unlearn.gan.GANPair`), a class-conditional diffusion model (a diffusers `DDPMPipeline` /
            `DiTPipeline`, or `hf_unlearn.diffusion.DiffusionModel.wrap(denoiser, scheduler, vae=...)`), or a Hub ID /
            local path of any of them, loaded with the matching class (and a classifier's processor).
        args: an [`UnlearnConfig`] (method, its hyperparameters, the training budget of gradient methods).
        train_dataset: the model's training set (`datasets.Dataset` with a `label` or `labels` column and model
            inputs, or raw `image` / `audio` columns plus `processing_class`). The forget and retain sets come from
            it.
        eval_dataset: held-out rows (same columns) for the metrics.
        processing_class: image processor or feature extractor for raw columns (loaded with a Hub ID).
        forget_classes: class ids or label names (`model.config.label2id`) to forget.
        forget_indices: training rows to forget (sample-level unlearning): integer row positions (a list, numpy array
            or tensor), or a boolean mask with one entry per row of `train_dataset`. Give exactly one of the two.
        judge: for a generator (GAN or diffusion model): an image classifier of the same data that measures the
            generated samples (which classes they show, and the features of the Frechet distance).

    The caller's model object is left untouched unless `args.in_place`; `trainer.model` is the unlearned model and
    `trainer.save_model()` (or `save_unlearned`) writes it with its processor, card, plot and results, atomically.

    Example:

    ```python
    >>> from hf_unlearn import UnlearnConfig, UnlearningTrainer
    >>> args = UnlearnConfig(output_dir="out", method="neggrad_plus", num_train_epochs=2, learning_rate=1e-3)
    >>> result = UnlearningTrainer(model, args, train_dataset=train, eval_dataset=test, forget_classes=[3]).unlearn()
    >>> result.metrics["forget_accuracy"], result.metrics["retain_accuracy"]
    ```
    """

    def __init__(
        self,
        model,
        args: UnlearnConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        data_collator=None,
        forget_classes=None,
        forget_indices=None,
        callbacks=None,
        judge=None,
        **kwargs,
    ):
        if args is None:
            args = UnlearnConfig(output_dir="unlearn_output")
        if not isinstance(args, UnlearnConfig):
            raise TypeError(
                f"`args` must be an UnlearnConfig, got {type(args).__name__}. Build one with "
                "`UnlearnConfig(output_dir=..., method=...)` (it accepts every TrainingArguments field)."
            )
        spec = get_method(args.method)
        if isinstance(model, str):
            model, loaded_processor = load_model(model, trust_remote_code=args.trust_remote_code)
            processing_class = processing_class if processing_class is not None else loaded_processor
        model = as_diffusion_model(model)  # a diffusers pipeline is unlearned as a DiffusionModel
        check_unlearnable(model, judge)
        kind = model_kind(model)
        if kind not in spec.method_class.model_kinds:
            fitting = [name for name in available_methods() if kind in get_method(name).method_class.model_kinds]
            raise ValueError(
                f"Method '{args.method}' does not unlearn {kind} models (it works on: "
                f"{', '.join(spec.method_class.model_kinds)}). Methods for this model: {', '.join(fitting)}."
            )
        # Method settings that depend on the model (a named module, the accumulation), checked before any work.
        spec.method_class.check_settings(args.method_config, args, model)
        if kind != "classifier" and args.peft_config:
            raise ValueError(
                f"`peft_config` (LoRA) is supported for classifiers; this model is a {kind} model: leave it None."
            )
        if kind != "classifier" and args.forget_accuracy_target is not None:
            raise ValueError(
                "`forget_accuracy_target` stops on a classifier's accuracy; this model is a generator: leave it None "
                "(the budget is `max_steps`, or the method's own stopping rule)."
            )
        if (forget_classes is None) == (forget_indices is None):
            raise ValueError(
                "Give exactly one of `forget_classes` (class ids or label names) and `forget_indices` (training rows); "
                f"got forget_classes={forget_classes!r} and forget_indices="
                f"{'None' if forget_indices is None else f'<a {type(forget_indices).__name__}>'}."
            )
        if kind == "diffusion" and forget_classes is None:
            raise ValueError(
                "Diffusion models forget classes here (`forget_classes`: the classes they must no longer generate); "
                "`forget_indices` is not supported for them."
            )
        if train_dataset is None:
            raise ValueError("`train_dataset` is required: the forget and retain sets are taken from it.")
        check_dataset(train_dataset, "train_dataset")
        # Audio columns are read as bytes and decoded with soundfile: no torchcodec needed.
        train_dataset = without_audio_decoding(train_dataset)
        self.label_column = find_label_column(train_dataset, "train_dataset")
        eval_labels = None
        if eval_dataset is not None:
            check_dataset(eval_dataset, "eval_dataset")
            eval_dataset = without_audio_decoding(eval_dataset)
            eval_label_column = find_label_column(eval_dataset, "eval_dataset")
            eval_labels = dataset_labels(eval_dataset, eval_label_column, "eval_dataset")
            check_labels(eval_labels, eval_dataset, eval_label_column, model.config, "eval_dataset")
        elif args.eval_before_unlearn or args.eval_after_unlearn:
            raise ValueError(
                "`eval_dataset` is required to measure unlearning (held-out rows for accuracy and the membership "
                "attacks). Pass it, or set `eval_before_unlearn=False, eval_after_unlearn=False`."
            )

        self.num_labels = int(model.config.num_labels)
        if forget_classes is not None:
            forget_classes = resolve_forget_classes(forget_classes, model.config.label2id, self.num_labels)
        unlearned_before = list(getattr(model.config, "unlearned_classes", None) or [])
        self.train_labels = dataset_labels(train_dataset, self.label_column)
        check_labels(self.train_labels, train_dataset, self.label_column, model.config, "train_dataset")
        self.split = split_forget_retain(
            self.train_labels, eval_labels, forget_classes, forget_indices, unlearned_before
        )
        if self.split.unlearned_before:
            logger.info(
                f"The model unlearned classes {self.split.unlearned_before} before (`config.unlearned_classes`): "
                "their rows are left out of the retain set so that they are not learned again."
            )
        if self.split.is_class_level and eval_dataset is not None and not len(self.split.eval_forget_indices):
            logger.warning(
                f"`eval_dataset` has no rows of `forget_classes` {self.split.forget_classes}: forget accuracy on "
                "held-out rows cannot be measured (the card says so); the forget check uses the training rows."
            )
        if spec.method_class.class_level_only and not self.split.is_class_level:
            raise ValueError(
                f"Method '{args.method}' forgets whole classes, so it needs `forget_classes`, not `forget_indices`. "
                "For samples use a sample-level method, e.g. method='neggrad_plus'."
            )

        if not args.in_place:
            model = copy.deepcopy(model)
        if data_collator is None:
            data_collator = UnlearningCollator(self.label_column, processing_class)
        if args.cache_features and isinstance(data_collator, UnlearningCollator):
            train_dataset = with_model_inputs(train_dataset, data_collator, "Model inputs (train_dataset)")
            if eval_dataset is not None:
                eval_dataset = with_model_inputs(eval_dataset, data_collator, "Model inputs (eval_dataset)")
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            **kwargs,
        )
        # Methods return a mean loss: let the Trainer scale it for gradient accumulation itself.
        self.model_accepts_loss_kwargs = False
        sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled
        if sharded and kind == "diffusion":
            raise ValueError(
                "A diffusion model saves its components whole (a diffusers pipeline folder), which FSDP / DeepSpeed "
                "shard: run it with data parallelism (recipes/accelerate_configs/multi_gpu.yaml) or on one process."
            )
        if sharded and not spec.method_class.supports_sharding:
            raise ValueError(
                f"Method '{args.method}' reads or writes whole weights itself, which FSDP / DeepSpeed shard. Run it "
                "with data parallelism (recipes/accelerate_configs/multi_gpu.yaml) or on one process."
            )
        self.source_train_dataset = train_dataset
        seed = args.seed
        forget_rows = subsample(self.split.forget_indices, args.max_forget_samples, seed)
        retain_rows = subsample(self.split.retain_indices, args.max_retain_samples, seed, self.train_labels)
        self.forget_view, self.retain_view = train_dataset.select(forget_rows), train_dataset.select(retain_rows)
        # The views' labels, from the labels read once: methods need not read the datasets' label columns again.
        self.forget_labels, self.retain_labels = self.train_labels[forget_rows], self.train_labels[retain_rows]
        #: The classifier that judges a generator's samples (None for classifiers).
        self.judge = None if judge is None else judge.to(self.args.device)
        self.method = spec.method_class(self, args.method_config)
        self._started_at = time.time()  # what the Trainer writes into output_dir from now on is this run's
        #: The output of the last `unlearn()`, which `create_model_card` describes.
        self.unlearning_output: UnlearningOutput | None = None
        if args.forget_accuracy_target is not None:
            self.add_callback(ForgetTargetCallback(self))

    # ----------------------------------------------------------------------------------------------- running
    def unlearn(self) -> UnlearningOutput:
        """Run the configured method and measure the unlearned model (and the original, if
        `args.eval_before_unlearn`). Returns an [`UnlearningOutput`].

        A class is recorded as unlearned (`model.config.unlearned_classes`, which later requests trust) only when the
        run's own forget check passes (`UnlearnConfig.forget_success_threshold`); otherwise the output, the log and
        the card say that the check failed. Non-finite weights after the method are an error: nothing is measured
        or saved."""
        args = self.args
        again = sorted(
            set(self.split.forget_classes or []) & set(getattr(self.model.config, "unlearned_classes", None) or [])
        )
        if again:
            logger.warning(f"`forget_classes` {again} were unlearned by this model before; unlearning them again.")
        started = time.perf_counter()
        original_metrics = self.evaluate_unlearning() if args.eval_before_unlearn else None
        evaluation_seconds = time.perf_counter() - started
        self.accelerator.wait_for_everyone()
        start = time.perf_counter()
        with self._no_hub_pushes_while_running(), self._lora_if_asked():
            self.method.run()
        self.accelerator.wait_for_everyone()
        seconds = time.perf_counter() - start
        self._raise_on_every_process(check_finite, self.model, f"After '{args.method}'")
        started = time.perf_counter()
        metrics = self.evaluate_unlearning() if args.eval_after_unlearn else {}
        metrics.update(self.method.report)
        metrics["unlearn_seconds"] = seconds
        # The measuring passes before and after, apart from the method's own time.
        metrics["evaluation_seconds"] = evaluation_seconds + time.perf_counter() - started
        kind = model_kind(self.model)
        if self.split.is_class_level and kind == "classifier" and all(
            metrics.get(key) is None for key in FORGET_KEYS[kind]
        ):
            # Evaluation off: the forget training rows alone (a short pass), so the record is never a guess.
            metrics["forget_train_accuracy"] = accuracy(
                *self.predict_logits(self.forget_view, description="Forget check")
            )
        check = unlearning_check(
            metrics, original_metrics, kind=kind, class_level=self.split.is_class_level,
            forget_success_threshold=args.forget_success_threshold, max_retain_drop=args.max_retain_drop,
        )  # fmt: skip
        metrics["forget_check"] = check
        forgotten = check["passed"]
        measured = measured_values(check)
        logger.info(f"Unlearning with '{args.method}' took {seconds:.2f} s.")
        if forgotten and self.split.is_class_level:
            # Saved with the model (config.json), so a later request on it keeps these classes out of its retain set.
            self.model.config.unlearned_classes = sorted(
                set(self.split.unlearned_before) | set(self.split.forget_classes)
            )
        elif forgotten is False:
            logger.warning(
                f"The unlearning check FAILED ({measured}; forget accuracy must be at most `forget_success_threshold` "
                f"{args.forget_success_threshold}, the retain accuracy drop at most `max_retain_drop` "
                f"{args.max_retain_drop}). Nothing is recorded as unlearned; the card and results say the run failed. "
                "Give the method more budget or other settings (see the README's method table)."
            )
        self.unlearning_output = UnlearningOutput(
            model=self.model,
            metrics=metrics,
            original_metrics=original_metrics,
            method=args.method,
            method_config=args.method_config,
            forget_classes=self.split.forget_classes,
            num_forget_samples=len(self.split.forget_indices),
            forgotten=forgotten,
        )
        return self.unlearning_output

    @contextlib.contextmanager
    def _no_hub_pushes_while_running(self):
        """The Trainer pushes after checkpoints and saves when `push_to_hub` is set; a method runs its loop several
        times, and the unlearned model is pushed once, by `push_to_hub` / `save_model`, with its card."""
        asked = self.args.push_to_hub
        self.args.push_to_hub = False
        try:
            yield
        finally:
            self.args.push_to_hub = asked

    # --------------------------------------------------------------------------------------------- the Hub
    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        dataset_split: str | None = None,
        extra: dict | None = None,
        output_dir: str | None = None,
    ) -> list[str]:
        """Write the unlearning card of the last `unlearn()` into `output_dir` (default `args.output_dir`): `README.md`
        (what was forgotten, the method, every measured metric in the text and in `model-index`, the forget check,
        limitations, citation), the per-class plot `per_class_accuracy.png` (with matplotlib) and
        `unlearning_results.json`, each file written whole. `dataset` / `dataset_args` / `dataset_split` name the
        training data (default: the dataset's own info), `finetuned_from` the base model. Returns the file names (none
        on processes other than the main one). `save_unlearned` writes them together with the model."""
        from .hub import card_context, write_card_files

        if self.unlearning_output is None:
            raise ValueError("`create_model_card` describes an unlearning run: call `trainer.unlearn()` first.")
        if not self.is_world_process_zero():
            return []
        name = model_name or self.args.hub_model_id or Path(self.args.output_dir).name
        card = {"language": language, "license": license, "tags": [tags] if isinstance(tags, str) else tags}
        context = card_context(
            self, self.unlearning_output, model_id=name, base_model=finetuned_from, dataset=_first(dataset),
            dataset_config=_first(dataset_args), dataset_split=dataset_split,
            extra={**(extra or {}), "card": {key: value for key, value in card.items() if value}},
        )  # fmt: skip
        return write_card_files(output_dir or self.args.output_dir, context)

    def save_unlearned(self, output_dir: str | None = None, overwrite: bool = False, **card_arguments) -> Path:
        """Save everything of the run at once: the model (or its peft adapter), its processor, and after `unlearn()`
        the card, plot and `unlearning_results.json` (`card_arguments` go to `create_model_card`).

        Atomic: everything is written into a temporary folder beside `output_dir` (default `args.output_dir`), which
        then replaces `output_dir` whole, so a killed run leaves the old folder or the new one, never a mix, and no
        file of an earlier save (an old adapter, an old card) survives. A folder that holds something other than a
        saved model is refused unless `overwrite`. Non-finite weights are never saved. Returns the folder."""
        target = resolved_output(output_dir or self.args.output_dir)
        check_replaceable(target, overwrite)
        self._raise_on_every_process(check_finite, self.model, "Saving")
        staging = staging_path(target)
        self._raise_on_every_process(prepare_staging, target, main_only=True)
        if has_lora(self.model):
            self._raise_on_every_process(self._save_adapter, str(staging), main_only=True)
        else:
            super().save_model(str(staging), _internal_call=True)

        def finish():
            if self.unlearning_output is not None:
                self.create_model_card(output_dir=str(staging), **card_arguments)
            # This run's own logs and checkpoints move across; those of earlier runs go (and with `overwrite`, all).
            swap_in(staging, target, None if overwrite else self._started_at)

        self._raise_on_every_process(finish, main_only=True)
        return target

    def _save_adapter(self, output_dir: str) -> None:
        save_adapter(self.model, output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _raise_on_every_process(self, work, *args, main_only: bool = False):
        """Run `work(*args)` (on the main process only with `main_only`) and make every process raise when any
        process failed, instead of leaving the others waiting at the next barrier."""
        error = None
        if not main_only or self.is_world_process_zero():
            try:
                work(*args)
            except Exception as raised:  # re-raised below, on this process and (as a RuntimeError) on the others
                error = raised
        if self.accelerator.num_processes > 1:
            failed = torch.tensor([float(error is not None)], device=self.args.device)
            if self.accelerator.reduce(failed, reduction="sum").item() and error is None:
                raise RuntimeError("Another process failed (its error is in its log); this one stops too.")
        if error is not None:
            raise error

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """As `Trainer.save_model`, written atomically with the card and results (`save_unlearned`); with
        `args.push_to_hub`, one push of all of it (`push_to_hub`). A model that kept its LoRA adapters
        (`peft_merge=False`) is saved as a peft adapter with its processor."""
        if _internal_call:  # the Trainer's own checkpoints
            if not has_lora(self.model):
                return super().save_model(output_dir, _internal_call)
            if self.is_world_process_zero():
                self._save_adapter(output_dir or self.args.output_dir)
            return None
        if self.args.push_to_hub:
            return self.push_to_hub(output_dir=output_dir)
        self.save_unlearned(output_dir)
        return None

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """No repository is created up front (the Trainer would create an empty one at start-up): `push_to_hub`
        creates it in the same step as its one commit."""

    def push_to_hub(self, commit_message: str | None = "Unlearned with hf-unlearn", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, output_dir: str | None = None,
                    overwrite: bool = False, **card_arguments):  # fmt: skip
        """Save the unlearned model, its processor, the card, the plot and `unlearning_results.json` to `output_dir`
        (`save_unlearned`: everything is local before the Hub is contacted), then create the repository
        `args.hub_model_id` (default: the output folder's name under your account; `hub_private_repo`, `hub_token`
        and `hub_revision` as in `TrainingArguments`) and upload the folder in one commit. `card_arguments` go to
        `create_model_card`, `overwrite` to `save_unlearned`. The original model's repository is never the target.

        A failure (no token, a refused repository, no connection, a server error) raises an error that says what is
        saved locally, what reached the Hub (a repository this call created is deleted again when its commit fails
        and it holds no file) and the command that retries the upload. With `blocking=False` the upload runs in the
        background: its failure is raised by the returned future, without that clean-up."""
        import huggingface_hub

        original = getattr(self.model.config, "_name_or_path", None) or ""
        target = self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        if target == original or ("/" not in target and original.endswith("/" + target)):
            raise ValueError(
                f"`hub_model_id` '{target}' would write into the original model's repository '{original}': push the "
                "unlearned model to a new one, e.g. `UnlearnConfig(hub_model_id='your-name/model-unlearned')`."
            )
        token = token if token is not None else (self.args.hub_token or huggingface_hub.get_token())
        card_arguments.setdefault("model_name", target)
        folder = self.save_unlearned(output_dir, overwrite, **card_arguments).absolute()
        if not token:
            raise ValueError(
                f"Pushing '{target}' needs a Hugging Face token with write access: run `hf auth login`, set HF_TOKEN, "
                f"or pass `token=` / `hub_token`. The unlearned model and its card are saved in {folder}."
            )
        if not self.is_world_process_zero():
            return None

        def name_in_card(repo_id: str) -> None:  # a bare name resolved to the account: the quick start names the full ID
            if self.unlearning_output is not None:
                self.create_model_card(output_dir=str(folder), **{**card_arguments, "model_name": repo_id})

        self.hub_model_id, commit = push_folder(
            folder, target, token=token, private=self.args.hub_private_repo, revision=revision or self.args.hub_revision,
            commit_message=commit_message, blocking=blocking, on_resolved=name_in_card,
        )  # fmt: skip
        return commit

    @contextlib.contextmanager
    def _lora_if_asked(self):
        """With `args.peft_config`: LoRA adapters (and a trainable copy of the head) for the duration of the method,
        then merged into plain layers, or kept (`peft_merge=False`) for `save_model` to write as a peft adapter."""
        settings = self.args.peft_config
        if not settings:
            yield
            return
        model = self.model
        flags = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
        adapted = add_lora(model, settings, classification_head(model)[0])
        self.method.report["peft"] = {"adapted_layers": len(adapted), "merged": self.args.peft_merge, **settings}
        try:
            yield
        finally:
            if self.args.peft_merge:
                merge_lora(model)
                for name, parameter in model.named_parameters():
                    parameter.requires_grad_(flags.get(name, True))

    def train_with(self, dataset):
        """Run the Trainer's training loop on `dataset` with a fresh optimizer and schedule (used by methods)."""
        self.train_dataset = dataset
        self.optimizer, self.lr_scheduler = None, None
        try:
            with _objects_so_far_left_to_refcounting(self.args.device):
                return self.train()
        finally:
            self.train_dataset = self.source_train_dataset

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.method.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        # A method that takes several optimizer steps per Trainer step (e.g. remain_geometry's masked forget step)
        # defines `training_step(model, inputs, num_items_in_batch)`; the others use the Trainer's own.
        step = getattr(self.method, "training_step", None)
        if step is None:
            return super().training_step(model, inputs, num_items_in_batch)
        return step(model, inputs, num_items_in_batch)

    @property
    def retained_classes(self) -> list[int]:
        """Class ids the model keeps: every class but the forget classes and those unlearned in earlier requests."""
        left_out = set(self.split.forget_classes or []) | set(self.split.unlearned_before)
        return [c for c in range(self.num_labels) if c not in left_out]

    # ------------------------------------------------------------------------------------------- measuring
    @torch.no_grad()
    def predict_logits(
        self, dataset, model=None, description: str = "Scoring", head: torch.nn.Module | None = None
    ) -> tuple[np.ndarray, ...]:
        """Logits and labels of `model` (default: `self.model`) on every row of `dataset`, gathered over processes;
        with `head` (a module of `model`), also the rows' inputs to it (pooled over tokens), as a third array."""
        model = self.model if model is None else model
        if len(dataset) == 0:
            empty = (np.zeros((0, self.num_labels), dtype=np.float32), np.zeros(0, dtype=np.int64))
            return empty if head is None else (*empty, np.zeros((0, head.in_features), dtype=np.float32))
        was_training = model.training
        model.eval()
        parts = ([], [], [])
        loader = self.get_test_dataloader(dataset)
        show = self.is_local_process_zero() and not self.args.disable_tqdm and len(loader) > 20
        for batch in tqdm(loader, desc=description, disable=not show, leave=False):
            batch = self._prepare_inputs(batch)
            labels = batch.pop("labels")
            with capturing(head) if head is not None else contextlib.nullcontext() as captured:
                logits = model(**batch).logits.float()
            # `.clone()`: a head's input can be a view of the whole hidden state (ViT's CLS token), which would stay alive
            outputs = (logits, labels) if head is None else (logits, labels, pooled_rows(captured.value).float().clone())
            for part, values in zip(parts[: len(outputs)], self.accelerator.gather_for_metrics(outputs), strict=True):
                part.append(values.cpu().numpy())
        model.train(was_training)
        return tuple(np.concatenate(part) for part in parts if part)

    def shard_batches(self, dataset, description: str = "Forward pass", batch_size: int | None = None):
        """This process's contiguous share of `dataset` (a `datasets.Dataset`) in batches on the device, each row
        exactly once (no padding duplicates, unlike a prepared dataloader), for statistics that are summed over
        processes afterwards.

        The share is read in contiguous in-memory chunks of 16 batches: reading a selection row by row decodes every
        row separately, ten times slower than slicing (measured on digits), and chunks keep memory flat.

        Yields `(sample_ids, batch)`: the rows' positions in `dataset` and the collated inputs (with `labels`), in
        batches of `batch_size` rows (default: `per_device_eval_batch_size`).
        """
        start, stop = self.shard_bounds(len(dataset))[self.accelerator.process_index]
        batch_size = batch_size or self.args.per_device_eval_batch_size
        chunk_size = 16 * batch_size
        batches = math.ceil((stop - start) / batch_size)
        show = self.is_local_process_zero() and not self.args.disable_tqdm and batches > 20
        progress = tqdm(total=batches, desc=description, disable=not show, leave=False)
        for chunk_start in range(start, stop, chunk_size):
            with _quiet_datasets():
                chunk_rows = range(chunk_start, min(stop, chunk_start + chunk_size))
                chunk = dataset.select(chunk_rows).flatten_indices(keep_in_memory=True)
            for offset in range(0, len(chunk), batch_size):
                columns = chunk[offset : offset + batch_size]
                rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
                first = chunk_start + offset
                yield torch.arange(first, first + len(rows)), self._prepare_inputs(self.data_collator(rows))
                progress.update()
        progress.close()

    def shard_bounds(self, total: int) -> list[tuple[int, int]]:
        """`(start, stop)` of each process's contiguous share of `total` rows (the layout of `shard_batches`)."""
        share = math.ceil(total / self.accelerator.num_processes)
        return [
            (min(total, rank * share), min(total, (rank + 1) * share)) for rank in range(self.accelerator.num_processes)
        ]

    def gather_shards(self, local: torch.Tensor, total: int) -> torch.Tensor:
        """Per-row results of this process's share from `shard_batches` (`(rows, ...)`, possibly 0 rows), joined
        over processes into all `total` rows in dataset order, on every process."""
        if self.accelerator.num_processes == 1:
            return local
        bounds = self.shard_bounds(total)
        share = max(stop - start for start, stop in bounds)  # gather needs one shape on every process
        padded = local.new_zeros((share, *local.shape[1:]))
        padded[: len(local)] = local
        everything = self.accelerator.gather(padded)
        return torch.cat(
            [everything[rank * share : rank * share + stop - start] for rank, (start, stop) in enumerate(bounds)]
        )

    @torch.no_grad()
    def shard_accuracy(self, batches, model=None) -> float | None:
        """Accuracy of `model` (default: `self.model`) on batches from `shard_batches` (kept, e.g. to score many
        candidate weights on the same rows without decoding them again), summed over processes."""
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        counts = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        for _, batch in batches:
            inputs = {name: value for name, value in batch.items() if name != "labels"}
            predictions = model(**inputs).logits.argmax(-1)
            counts += torch.stack([(predictions == batch["labels"]).sum(), torch.tensor(len(predictions))]).to(counts)
        model.train(was_training)
        correct, total = self.accelerator.reduce(counts, reduction="sum").tolist()
        return correct / total if total else None

    def _metric_views(self) -> dict:
        if not hasattr(self, "_cached_metric_views"):
            train, split, args = self.source_train_dataset, self.split, self.args
            retain_rows = subsample(split.retain_indices, args.max_metric_train_samples, args.seed, self.train_labels)
            self._cached_metric_views = {
                "forget_train": train.select(split.forget_indices),
                "retain_train": train.select(retain_rows),
                "eval_forget": self.eval_dataset.select(split.eval_forget_indices),
                "eval_retain": self.eval_dataset.select(split.eval_retain_indices),
            }
            if len(split.eval_unlearned_before_indices):
                views = self._cached_metric_views
                views["eval_unlearned_before"] = self.eval_dataset.select(split.eval_unlearned_before_indices)
        return self._cached_metric_views

    def evaluate_unlearning(self, reference_model=None, model=None) -> dict:
        """Unlearning metrics of `model` (default: the trainer's current model); see `hf_unlearn.metrics`.

        With `reference_model` (a model retrained without the forget set, e.g. from method `retrain`), also the
        reference's values (`reference_<metric>`), the gaps (`gap_<metric>`) and `mean_gap`; measured on the unlearned
        model after `unlearn()`, they are also recorded in that run's metrics, so its model card shows them.
        """
        if self.eval_dataset is None:
            raise ValueError("`evaluate_unlearning` needs the trainer's `eval_dataset`.")
        metrics = self._measure(model)
        if reference_model is not None:
            reference_model = reference_model.to(self.args.device)
            gaps = gap_to_reference(metrics, self._measure(reference_model))
            metrics.update(gaps)
            if model is None and self.unlearning_output is not None:
                self.unlearning_output.metrics.update(gaps)
        return metrics

    def _measure(self, model) -> dict:
        kind = model_kind(self.model)
        if kind != "classifier":
            return self._measure_generator(self.model if model is None else model, kind)
        head = None
        if self.split.is_class_level:  # the feature probe reads the head's inputs in the same pass
            try:
                head = classification_head(self.model if model is None else model)[1]
            except (ValueError, AttributeError):
                logger.info("No classification head found: the feature probe is not measured.")
        parts = {
            name: self.predict_logits(view, model, f"Scoring {name}", head=head)
            for name, view in self._metric_views().items()
        }
        return unlearning_metrics(
            **{name: part[:2] for name, part in parts.items()},
            class_level=self.split.is_class_level,
            id2label=getattr(self.model.config, "id2label", None),
            seed=self.args.seed,
            features=None if head is None else {name: part[2] for name, part in parts.items()},
        )

    def _measure_generator(self, generator, kind: str) -> dict:
        if self.judge is None:
            raise ValueError(
                "Measuring a generator needs a judge classifier of its data: pass `judge=` to UnlearningTrainer, or "
                "set `eval_before_unlearn=False, eval_after_unlearn=False`."
            )
        views = self._metric_views()
        common = {
            "forget_classes": self.split.forget_classes,
            "retained_classes": self.retained_classes,
            "real_retain_rows": image_tensors(views["retain_train"], label_column=self.label_column),
            "num_samples": self.args.eval_generated_samples,
            "seed": self.args.seed,
            "id2label": getattr(generator.config, "id2label", None),
        }
        if kind == "diffusion":
            args = self.args
            return measure_diffusion(
                generator.to(args.device), self.judge, num_inference_steps=args.eval_inference_steps,
                guidance_scale=args.eval_guidance_scale, sampler=args.eval_sampler, **common,
            )  # fmt: skip
        rows = {name: image_tensors(views[name], label_column=self.label_column)
                for name in ("forget_train", "eval_forget", "eval_retain")}  # fmt: skip
        held_out = tuple(torch.cat(parts) for parts in zip(rows["eval_forget"], rows["eval_retain"], strict=True))
        return measure_generator(
            generator.to(self.args.device), self.judge, forget_rows=rows["forget_train"], held_out_rows=held_out,
            **common,
        )  # fmt: skip


class ForgetTargetCallback(TrainerCallback):
    """Stops a gradient method once the forget training accuracy reaches `UnlearnConfig.forget_accuracy_target`,
    checked every `forget_check_steps` optimizer steps on `trainer.forget_view`."""

    def __init__(self, trainer: UnlearningTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        if not trainer.method.stops_at_forget_target or state.global_step % args.forget_check_steps:
            return control
        forget_accuracy = accuracy(*trainer.predict_logits(trainer.forget_view, description="Checking forget set"))
        if forget_accuracy is not None and forget_accuracy <= args.forget_accuracy_target:
            logger.info(
                f"Forget accuracy {forget_accuracy:.4f} <= target {args.forget_accuracy_target} at step "
                f"{state.global_step}: stopping."
            )
            control.should_training_stop = True
        return control


def _first(value):
    return value[0] if isinstance(value, list | tuple) else value


@contextlib.contextmanager
def _objects_so_far_left_to_refcounting(device):
    """On a CPU, hide the objects that exist now from the cycle collector for the block (`gc.freeze`).

    `Trainer.train()` starts with `accelerator.free_memory()`, a full `gc.collect()`: it walks every object the imports
    of torch and transformers created (about 500k), 0.3 s on these machines, once per run. On a GPU that collection
    releases device memory of earlier runs; on a CPU it frees nothing that reference counting does not, so only the
    objects created inside the block are scanned. `gc.unfreeze()` puts everything back when the block ends.
    """
    if device.type != "cpu":
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def _quiet_datasets():
    """No `datasets` progress bar inside the block (for quick internal copies); the user's setting is restored."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
