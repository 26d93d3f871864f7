"""`UnlearnConfig`: the `TrainingArguments` every unlearning method shares, plus the method choice and its config."""

from __future__ import annotations

import copy
import json
import os
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import yaml
from transformers import TrainingArguments

from .jobs import JOB_KEYS
from .methods import get_method
from .validation import check_pattern, coerce, coerce_fields


@dataclass(repr=False)  # TrainingArguments' own repr, which masks `hub_token` (a dataclass repr would print it)
class UnlearnConfig(TrainingArguments):
    """Arguments for [`UnlearningTrainer`]: the usual `TrainingArguments` (optimizer, batch sizes, epochs, seed,
    output directory, Hub options) plus what every unlearning method shares.

    Gradient-based methods train with the inherited fields (`learning_rate`, `num_train_epochs` or `max_steps`,
    `per_device_train_batch_size`, ...). Each method's own hyperparameters go in `method_kwargs`, which is
    resolved to that method's config dataclass and validated (`config.method_config`).

    Example:

    ```python
    >>> from hf_unlearn import UnlearnConfig
    >>> args = UnlearnConfig(output_dir="out", method="neggrad_plus", method_kwargs={"retain_weight": 0.9})
    >>> args.method_config
    NegGradPlusConfig(retain_weight=0.9)
    >>> args = UnlearnConfig.from_yaml("recipes/digits/vit_neggrad_plus.yaml")  # doctest: +SKIP
    ```
    """

    method: str = field(
        default="neggrad_plus",
        metadata={"help": "Unlearning method, by its registered name (`hf-unlearn methods` lists them)."},
    )
    method_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Hyperparameters of the chosen method, as a dict (or a JSON string on the command line). "
            "Resolved to the method's config dataclass; unknown keys are an error."
        },
    )
    resolved_budget: dict[str, Any] | str | None = field(
        default=None,
        repr=False,
        metadata={
            "help": "Set by the config itself, not by users: the training-budget fields it filled in (from the "
            "method's or a preset's defaults, or TrainingArguments'), and a preset's other fields. A copy for another method "
            "(`dataclasses.replace(args, method=...)`) fills those again for its method instead of keeping them (a "
            "value given to the copy that equals the one filled in counts as unset). Left out of `to_dict()`: a "
            "logged config rebuilt from it keeps every value that ran."
        },
    )
    preset: str | None = field(
        default=None,
        metadata={
            "help": "'paper': the method's settings from its paper (and official code) for `preset_dataset`, listed "
            "in the method's module and the README; values you set still win. None: the library's defaults, "
            "chosen to work on data nobody tuned them on."
        },
    )
    preset_dataset: str | None = field(
        default=None,
        metadata={
            "help": "With `preset='paper'`: the paper's dataset whose settings to use (e.g. 'cifar10', 'cifar100', "
            "'imagenet', 'ddpm-cifar10'); None: the first the method lists."
        },
    )
    eval_generated_samples: int = field(
        default=1000,
        metadata={
            "help": "Generators: samples (seeded by `seed`) that the judge scores in the metrics (a diffusion model: "
            "as many for the forget classes and for the retained classes)."
        },
    )
    eval_sampler: str = field(
        default="DDIMScheduler",
        metadata={"help": "Diffusion models: the diffusers scheduler class that samples for the metrics."},
    )
    eval_inference_steps: int = field(
        default=25, metadata={"help": "Diffusion models: denoising steps per sample in the metrics."}
    )
    eval_guidance_scale: float | None = field(
        default=None,
        metadata={
            "help": "Diffusion models: classifier-free guidance s of the metrics' samples, in the convention "
            "eps = eps_uncond + s (eps_cond - eps_uncond) (1: no guidance; None: 2 for a model trained with a null "
            "class, else 1). Papers that write (1 + w) eps_cond - w eps_uncond (SFR-on's `cond_scale` w, Ho & "
            "Salimans) mean s = w + 1: `hf_unlearn.diffusion.guidance_scale_from_paper(w)`."
        },
    )
    eval_sampler_eta: float = field(
        default=0.0,
        metadata={
            "help": "Diffusion models: eta of the sampler where it takes one (DDIM: 0 deterministic, 1 the ancestral "
            "variance; SFR-on samples with eta 1 and 1000 steps)."
        },
    )
    max_forget_samples: int | None = field(
        default=None,
        metadata={"help": "Use at most this many forget samples (random, seeded by `seed`). None: all of them."},
    )
    max_retain_samples: int | None = field(
        default=None,
        metadata={
            "help": "Use at most this many retain samples, balanced over the retained classes. None: all of them. "
            "Gradient methods then see this subset only; the exact `retrain` reference needs None."
        },
    )
    forget_accuracy_target: float | None = field(
        default=None,
        metadata={
            "help": "Stop gradient-based methods early once the accuracy on the forget training samples is at or "
            "below this fraction (checked every `forget_check_steps`). None: train for the full budget."
        },
    )
    forget_check_steps: int = field(
        default=10, metadata={"help": "How often (optimizer steps) `forget_accuracy_target` is checked."}
    )
    forget_success_threshold: float = field(
        default=0.05,
        metadata={
            "help": "The run's forget check: forget classes count as unlearned (recorded in the saved config's "
            "`unlearned_classes`, stated in the card) only when the unlearned model's accuracy on their training and "
            "held-out rows (generators: the judge's share of them among samples) is at most this fraction. A run "
            "that fails the check says so in its output, log and card."
        },
    )
    max_retain_drop: float = field(
        default=0.10,
        metadata={
            "help": "The run's retain check: a run whose held-out retain accuracy (diffusion: the judge's accuracy on "
            "retained classes) fell by more than this fraction from the original's failed, whatever it forgot: it is "
            "never recorded as unlearned, and its output, log and card say so. Needs `eval_before_unlearn`."
        },
    )
    eval_before_unlearn: bool = field(
        default=True,
        metadata={"help": "Measure the original model too, so the output holds before/after metrics."},
    )
    eval_after_unlearn: bool = field(
        default=True, metadata={"help": "Measure the unlearned model (needs `eval_dataset`)."}
    )
    max_metric_train_samples: int | None = field(
        default=2000,
        metadata={
            "help": "Score at most this many retain training rows (balanced over the retained classes, seeded) for "
            "`retain_train_accuracy` and the membership attacks, so measuring costs a bounded pass whatever the "
            "training set's size. None: all of them (the full pass)."
        },
    )
    peft_config: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Train LoRA adapters (peft) instead of the whole model, for gradient methods: LoraConfig fields "
            'as a dict (or a JSON string), e.g. {"r": 8}. Without target_modules: every Linear/Conv layer but the '
            "head, which is trained in full. Needs `pip install 'hf-unlearn[peft]'`."
        },
    )
    peft_merge: bool = field(
        default=True,
        metadata={
            "help": "Merge the adapters into the model when unlearning ends (a plain model); False keeps them, and "
            "`save_model` writes a peft adapter (adapter_config.json + adapter_model.safetensors)."
        },
    )
    cache_features: bool = field(
        default=False,
        metadata={
            "help": "Compute model inputs from raw `image` / `audio` columns once, with `datasets.map` (cached next to "
            "a file-backed dataset, so a large set is not held in memory), instead of in every batch. Worth it when "
            "rows are seen many times (e.g. `retrain`)."
        },
    )
    in_place: bool = field(
        default=False,
        metadata={"help": "Unlearn the caller's model object itself instead of a copy."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow custom modelling code from the Hub when `model` is given as a Hub ID."},
    )
    # The training budget. None: the chosen method's own default (`training_defaults` of its class, listed by
    # `hf-unlearn methods`), else TrainingArguments' default. A value you set always wins.
    learning_rate: float | None = field(
        default=None, metadata={"help": "AdamW learning rate. None: the method's default (`hf-unlearn methods`)."}
    )
    num_train_epochs: float | None = field(
        default=None,
        metadata={"help": "Training epochs. None: the method's default budget (set this or `max_steps`, not both)."},
    )
    max_steps: int | None = field(
        default=None,
        metadata={"help": "Optimizer steps (overrides `num_train_epochs` when > 0). None: the method's default budget."},
    )
    per_device_train_batch_size: int | None = field(
        default=None, metadata={"help": "Training batch size per device. None: the method's default."}
    )
    per_device_eval_batch_size: int | None = field(
        default=None, metadata={"help": "Batch size of the measuring passes per device. None: 64."}
    )
    lr_scheduler_type: str | None = field(
        default=None, metadata={"help": "Learning-rate schedule (see TrainingArguments). None: the method's default."}
    )
    max_grad_norm: float | None = field(
        default=None, metadata={"help": "Gradient clipping (0: none). None: the method's default."}
    )
    optim: str | None = field(default=None, metadata={"help": "Optimizer (see TrainingArguments). None: the method's default."})
    weight_decay: float | None = field(default=None, metadata={"help": "Weight decay. None: the method's default."})
    warmup_steps: float | None = field(
        default=None, metadata={"help": "Warm-up steps (below 1: a fraction of the run). None: the method's default."}
    )
    # Defaults that differ from TrainingArguments: unlearning datasets carry raw or extra columns the collator
    # needs, and a short unlearning run should not leave checkpoints behind unless asked.
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Kept False: the unlearning collator picks the columns it needs (see TrainingArguments)."},
    )
    save_strategy: str = field(
        default="no", metadata={"help": "Checkpoint strategy during unlearning (see TrainingArguments)."}
    )

    def __post_init__(self):
        coerce_fields(self, "")  # YAML / JSON values as the command line would read them, or a clear error
        _refuse_training_only_fields(self)
        # Launched with several processes (torchrun / accelerate) on a machine without CUDA, TrainingArguments would
        # quietly give every process a world of its own; gloo on the CPU is what the user means.
        if not self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
            self.use_cpu = True
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinned memory is for copies to a GPU; on a CPU it only warns
        # A copy (`dataclasses.replace`) carries the values this config filled in: unset again where unchanged, so that
        # the copy's method (or preset) fills its own and only what the user set stays.
        if isinstance(self.resolved_budget, dict):
            for name, value in self.resolved_budget.items():
                if name in self.__dataclass_fields__ and getattr(self, name) == value:
                    setattr(self, name, None if name in BUDGET_FIELDS else self.__dataclass_fields__[name].default)
        preset = self._resolve_preset()
        self.preset_applied = _preset_record(preset)
        self.method_training_defaults = self._apply_training_defaults(preset)
        super().__post_init__()
        if self.lr_scheduler_type in ("reduce_lr_on_plateau", "greedy") and self.metric_for_best_model is not None:
            # their schedulers default to mode="min" whatever `greater_is_better` says (which only picks checkpoints):
            # on `retain_accuracy` they would cut the learning rate while it rises
            kwargs = dict(self.lr_scheduler_kwargs or {})
            kwargs.setdefault("mode", "max" if self.greater_is_better else "min")
            self.lr_scheduler_kwargs = kwargs
        for name in ("max_forget_samples", "max_retain_samples", "max_metric_train_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be a positive integer or None, got {value!r}.")
        if self.forget_accuracy_target is not None and not 0.0 <= self.forget_accuracy_target <= 1.0:
            raise ValueError(
                f"`forget_accuracy_target` is a fraction in [0, 1], got {self.forget_accuracy_target!r} "
                "(write 0.01 for 1 %)."
            )
        for name in ("eval_generated_samples", "eval_inference_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)!r}.")
        if self.forget_check_steps < 1:
            raise ValueError(f"`forget_check_steps` must be >= 1, got {self.forget_check_steps!r}.")
        if not 0.0 <= self.max_retain_drop <= 1.0:
            raise ValueError(f"`max_retain_drop` is a fraction in [0, 1], got {self.max_retain_drop!r}.")
        if not 0.0 <= self.forget_success_threshold <= 1.0:
            raise ValueError(
                f"`forget_success_threshold` is a fraction in [0, 1], got {self.forget_success_threshold!r}."
            )
        self.method_config = self._resolve_method_config(preset)
        method_class = get_method(self.method).method_class
        if method_class.uses_training_budget and self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError(
                f"Method '{self.method}' trains for `max_steps` or `num_train_epochs`, and both are empty "
                f"(max_steps={self.max_steps}, num_train_epochs={self.num_train_epochs}): the run would change nothing "
                "and save the original model as if unlearned. Give a budget, e.g. `max_steps=200`."
            )
        if isinstance(self.peft_config, str):
            try:
                self.peft_config = json.loads(self.peft_config) if self.peft_config.strip() else None
            except json.JSONDecodeError as error:
                raise ValueError(f"`peft_config` must be a JSON object, got {self.peft_config!r} ({error}).") from None
        if self.peft_config is not None:
            rank = self.peft_config.get("r") if isinstance(self.peft_config, dict) else None
            if not isinstance(rank, int) or rank < 1:
                raise ValueError(
                    f"`peft_config` must be a dict of LoraConfig fields with an integer rank `r` >= 1, got "
                    f"{self.peft_config!r}; e.g. {{'r': 8}}."
                )
            target_modules = self.peft_config.get("target_modules")
            if isinstance(target_modules, str):
                check_pattern(target_modules, "peft_config['target_modules']")
            if not method_class.supports_peft:
                raise ValueError(
                    f"Method '{self.method}' does not train the model's weights by gradient, so `peft_config` does "
                    "not apply to it; leave it None or use a gradient method (e.g. 'neggrad_plus', 'remain_geometry')."
                )

    def _resolve_preset(self):
        """The `PaperPreset` that `preset` / `preset_dataset` name for this method, or None."""
        if self.preset is None:
            if self.preset_dataset is not None:
                raise ValueError(
                    f"`preset_dataset={self.preset_dataset!r}` needs `preset='paper'` (the dataset picks among the "
                    "paper's settings)."
                )
            return None
        if self.preset != "paper":
            raise ValueError(f"`preset` must be 'paper' or None, got {self.preset!r}.")
        presets = get_method(self.method).method_class.paper_presets
        if not presets:
            raise ValueError(
                f"Method '{self.method}' has no paper settings to reproduce (`preset='paper'`); its defaults are "
                "hf-unlearn's. Leave `preset` None."
            )
        if self.preset_dataset is None:
            return presets[0]
        for preset in presets:
            if preset.dataset == self.preset_dataset:
                return preset
        raise ValueError(
            f"Method '{self.method}' has paper settings for {[preset.dataset for preset in presets]}, not "
            f"`preset_dataset={self.preset_dataset!r}`."
        )

    def _apply_training_defaults(self, preset=None) -> dict[str, Any]:
        """Fill the budget fields left None with the preset's values, then the method's `training_defaults` (then
        TrainingArguments' defaults); returns what the preset and the method's defaults set. `max_steps` and
        `num_train_epochs` are one budget: setting either keeps the defaults' values of both out, and a preset's
        budget replaces the method's. A preset's other `UnlearnConfig` fields (e.g. `optim_args`) apply where the
        field still has its default value."""
        method_defaults, filled = dict(get_method(self.method).method_class.training_defaults), {}
        if preset is not None:
            if {"max_steps", "num_train_epochs"} & set(preset.training):
                method_defaults.pop("max_steps", None)
                method_defaults.pop("num_train_epochs", None)
            method_defaults.update({name: value for name, value in preset.training.items() if name in BUDGET_FIELDS})
            # a preset's `optim_args` belong to its optimizer: not given to another one the user chose
            other_optimizer = self.optim is not None and str(self.optim) != str(preset.training.get("optim", self.optim))
            for name, value in preset.training.items():
                if name == "optim_args" and other_optimizer:
                    continue
                if name not in BUDGET_FIELDS and getattr(self, name) == type(self).__dataclass_fields__[name].default:
                    setattr(self, name, value)
                    filled[name] = value  # a copy for another preset or method sets it again (or not)
        if self.max_steps is not None or self.num_train_epochs is not None:
            method_defaults.pop("max_steps", None)
            method_defaults.pop("num_train_epochs", None)
        applied = {}
        for name in BUDGET_FIELDS:
            if getattr(self, name) is not None:
                continue
            if name in method_defaults:
                applied[name] = method_defaults[name]
            value = applied.get(name, _LIBRARY_DEFAULTS.get(name, TrainingArguments.__dataclass_fields__[name].default))
            setattr(self, name, value)
            filled[name] = value
        self.resolved_budget = filled
        return applied

    def _resolve_method_config(self, preset=None):
        spec = get_method(self.method)
        kwargs = self.method_kwargs
        if isinstance(kwargs, spec.config_class):
            if preset is not None:
                raise ValueError(
                    "With `preset='paper'` give `method_kwargs` as a dict of the settings you change: a "
                    f"{spec.config_class.__name__} object sets every field, leaving nothing for the preset."
                )
            coerce_fields(kwargs, "method_kwargs")
            self.method_kwargs = asdict(kwargs)
            return kwargs
        if isinstance(kwargs, str):
            try:
                kwargs = json.loads(kwargs) if kwargs.strip() else {}
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"`method_kwargs` must be a JSON object when given as a string, got {kwargs!r} ({error})."
                ) from None
        kwargs = dict(kwargs or {})
        valid = [f.name for f in fields(spec.config_class)]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            renamed = getattr(spec.config_class, "RENAMED", {})  # old name -> new name, for settings renamed
            moved = "".join(f" `{old}` is now `{renamed[old]}`." for old in unknown if old in renamed)
            raise ValueError(
                f"`method_kwargs` has {unknown} which method '{self.method}' does not take.{moved} "
                f"Valid keys: {', '.join(valid) or '(none)'}."
            )
        hints = typing.get_type_hints(spec.config_class)
        kwargs = {name: coerce(value, hints[name], f"method_kwargs['{name}']") for name, value in kwargs.items()}
        # `method_kwargs` keeps what the user set; the preset's values join only in the resolved config, so a copy
        # of these arguments with another preset (`dataclasses.replace`) resolves that preset's values.
        self.method_kwargs = kwargs
        return spec.config_class(**{**(preset.method if preset is not None else {}), **kwargs})

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        values.pop("resolved_budget", None)  # the values that ran are in the fields themselves
        return values

    # The Hub token must never reach a file: `Trainer` pickles these arguments into training_args.bin, which
    # `push_to_hub` uploads. Pickles carry no secret (`hub_token` is None in them); copies in memory keep it.
    def __getstate__(self):
        state = dict(self.__dict__)
        for name in _secret_fields(state):
            state[name] = None
        return state

    def __deepcopy__(self, memo):
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    def __copy__(self):
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    @classmethod
    def from_yaml(cls, path: str, **overrides) -> UnlearnConfig:
        """Read a config from a YAML file (keys are field names); keyword `overrides` win over the file. A job file
        for `hf-unlearn unlearn` works too: its job keys (model, dataset, forget classes: `JobArguments`) are not
        part of the config and are left out."""
        with open(path) as handle:
            values = yaml.safe_load(handle) or {}
        if not isinstance(values, dict):
            raise ValueError(f"`{path}` must hold a mapping of UnlearnConfig fields, got {type(values).__name__}.")
        values = {key: value for key, value in values.items() if key not in JOB_KEYS}
        values.update(overrides)
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"`{path}` has keys that are not UnlearnConfig fields: {unknown}.")
        # Read as the command line reads them, field by field in __post_init__ (`learning_rate: 1e-3`, which YAML
        # reads as a string, is a float; `eval_before_unlearn: 'no'` is False), with errors that name the field.
        return cls(**values)


#: The training-budget fields a method's `training_defaults` may set (None in an `UnlearnConfig` until resolved).
BUDGET_FIELDS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "lr_scheduler_type", "max_grad_norm", "optim", "weight_decay", "warmup_steps",
)  # fmt: skip
# Where no method sets a field, this library's default where it differs from TrainingArguments'.
_LIBRARY_DEFAULTS = {"per_device_eval_batch_size": 64}


def _preset_record(preset) -> dict | None:
    """What the results and the card record of the preset that ran."""
    if preset is None:
        return None
    return {"preset": "paper", "dataset": preset.dataset, "kind": preset.kind, "denoiser": preset.denoiser,
            "source": preset.source, "training": dict(preset.training), "method_kwargs": dict(preset.method)}  # fmt: skip


def _refuse_training_only_fields(args: UnlearnConfig) -> None:
    """TrainingArguments fields that fit training a model but would make an unlearning run silently other than asked:
    refused with the reason, rather than ignored or obeyed."""
    if args.load_best_model_at_end:
        raise ValueError(
            "`load_best_model_at_end=True` would end the run on the checkpoint with the best evaluation metric - for "
            "unlearning, usually the least unlearned one - instead of the model the method finished with and the "
            "run's checks judged. Leave it False: the method's own stopping rule (and `forget_accuracy_target`) "
            "decides when to stop, and `eval_strategy` still logs the unlearning metrics during training."
        )
    if str(args.save_strategy) == "best":
        raise ValueError(
            "`save_strategy='best'` keeps the checkpoints with the best evaluation metric - for unlearning, usually the "
            "least unlearned ones. Use 'no' (the default) or 'steps'; the unlearned model is saved by `save_model()`."
        )
    if args.lr_scheduler_type in ("reduce_lr_on_plateau", "greedy") and args.metric_for_best_model is None:
        raise ValueError(
            f"`lr_scheduler_type={args.lr_scheduler_type!r}` steps on an evaluation metric, and an unlearning "
            "evaluation has no `eval_loss` to default to: name one `evaluate()` reports, e.g. "
            "`metric_for_best_model='retain_accuracy', greater_is_better=True` (with `eval_strategy`)."
        )
    if args.resume_from_checkpoint is not None:
        raise ValueError(
            f"`resume_from_checkpoint={args.resume_from_checkpoint!r}`: an unlearning run starts from the model it is "
            "given and is not resumed from a Trainer checkpoint. Load the checkpoint's model and unlearn from it."
        )
    for name in ("fp16_full_eval", "bf16_full_eval"):
        if getattr(args, name):
            raise ValueError(
                f"`{name}=True` would cast the model in place for the Trainer's evaluation loop, while the unlearning "
                "metrics measure it in its own dtype. Leave it False; to run in half precision, load the model in "
                "that dtype (it is unlearned and returned in it)."
            )
    if args.remove_unused_columns:
        raise ValueError(
            "`remove_unused_columns=True` would make the Trainer drop every column the model's forward does not name "
            "before the unlearning collator sees it: the paired forget / retain rows of the gradient methods (their "
            "training batches arrive empty) and raw image / audio columns. Leave it False (the default): the collator "
            "picks the columns it needs."
        )
    if args.label_smoothing_factor:
        raise ValueError(
            f"`label_smoothing_factor={args.label_smoothing_factor!r}`: the methods compute their own losses (a "
            "forget objective and a retain cross-entropy), and none applies label smoothing, so the setting would be "
            "silently ignored. Leave it 0."
        )


def _secret_fields(state: dict) -> list[str]:
    return [name for name, value in state.items() if name.endswith("_token") and isinstance(value, str)]

