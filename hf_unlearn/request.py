"""`UnlearningRequest`: what an unlearning run is asked to do, resolved and checked before any work.

`UnlearningRequest.resolve` turns the trainer's arguments (a model or a Hub ID, the config, the datasets, the forget
classes or rows, a judge) into a frozen request: the model and its kind, the label column, the forget / retain split
and the views methods train on. Every input check lives here (and the method's own in `MethodSpec.validate`), so a
bad request fails with a clear error before a model is copied or a feature cached, and is testable without a Trainer:

```python
>>> request = UnlearningRequest.resolve(model, UnlearnConfig(output_dir="out"), train_dataset=train,
...                                     eval_dataset=test, forget_classes=["three"])
>>> request.kind.name, request.split.forget_classes, len(request.forget_view)
('classifier', [3], 143)
```
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate.logging import get_logger
from accelerate.utils import is_compiled_module

from .config import UnlearnConfig
from .data import (
    ForgetRetainSplit,
    UnlearningCollator,
    check_dataset,
    check_label_transform,
    check_labels,
    dataset_labels,
    find_label_column,
    label_ids,
    name_mismatches,
    numpy_model_inputs,
    resolve_forget_classes,
    shared_label_names,
    split_forget_retain,
    subsample,
    with_model_inputs,
    without_audio_decoding,
)
from .diffusion import as_diffusion_model
from .kinds import ModelKind, kind_of, load_model
from .methods import MethodSpec, get_method
from .precision import inputs_follow_weights

logger = get_logger(__name__)


@dataclass(frozen=True)
class UnlearningRequest:
    """A resolved, checked unlearning request (`resolve` builds it)."""

    #: The model to unlearn: the caller's object (`in_place`) or a copy of it.
    model: torch.nn.Module
    kind: ModelKind
    method: MethodSpec
    processing_class: Any
    data_collator: Any
    #: The training set (model inputs cached when `cache_features`), and the held-out rows (or None).
    train_dataset: Any
    eval_dataset: Any
    label_column: str
    #: Every training row's label, read once.
    train_labels: np.ndarray
    split: ForgetRetainSplit
    num_labels: int
    #: What methods train on: the forget and retain rows (capped by `max_forget_samples` / `max_retain_samples`),
    #: with their labels.
    forget_view: Any
    retain_view: Any
    forget_labels: np.ndarray
    retain_labels: np.ndarray
    #: The rows every measurement scores: the forget training rows, a class-stratified sample of the retain training
    #: rows (`max_metric_train_samples`), the eval rows of the forget and retained classes (and of classes unlearned
    #: before). Empty without `eval_dataset`.
    metric_views: dict
    #: The classifier that judges a generator's samples (None for classifiers).
    judge: torch.nn.Module | None = None

    @property
    def retained_classes(self) -> list[int]:
        """Class ids the model keeps: every class but the forget classes and those unlearned in earlier requests."""
        left_out = set(self.split.forget_classes or []) | set(self.split.unlearned_before)
        return [c for c in range(self.num_labels) if c not in left_out]

    @classmethod
    def resolve(cls, model, args: UnlearnConfig, *, train_dataset=None, eval_dataset=None, processing_class=None,
                data_collator=None, forget_classes=None, forget_indices=None, judge=None) -> UnlearningRequest:  # fmt: skip
        """Load (a Hub ID or path), check and resolve everything a run needs; see `UnlearningTrainer` for the
        arguments. Raises a `TypeError` / `ValueError` naming the argument and the fix on any bad input."""
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
        model = _uncompiled(model)
        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            raise TypeError(
                f"`model` is wrapped in {type(model).__name__}: pass the model it wraps, `model.module`. The Trainer "
                "wraps it itself for several GPUs or processes (`accelerate launch`)."
            )
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"`model` must be a transformers model, a diffusers pipeline or a Hub ID / local path string, got "
                f"{type(model).__name__}."
            )
        kind = kind_of(model)
        kind.check_model(model, judge)
        _check_kind_supports(kind, args, forget_classes, forget_indices)
        train_dataset, eval_dataset, label_column, eval_labels = _checked_datasets(
            train_dataset, eval_dataset, model, args
        )
        num_labels = int(model.config.num_labels)
        if forget_classes is not None:
            forget_classes = resolve_forget_classes(forget_classes, label_ids(model.config), num_labels,
                                                    shared_label_names(model.config))  # fmt: skip
        train_labels = dataset_labels(train_dataset, label_column)
        check_labels(train_labels, train_dataset, label_column, model.config, "train_dataset")
        _check_same_numbering(train_dataset, eval_dataset, label_column)
        unlearned_before = list(getattr(model.config, "unlearned_classes", None) or [])
        split = split_forget_retain(train_labels, eval_labels, forget_classes, forget_indices, unlearned_before)
        _log_split(split, eval_dataset)
        spec.validate(kind=kind, args=args, model=model, class_level=split.is_class_level)

        # Checked: now the work (a copy of the model, cached model inputs).
        if not args.in_place:
            model = copy.deepcopy(model)
        inputs_follow_weights(model)  # a half-precision model takes float32 batches (`hf_unlearn.precision`)
        if data_collator is None:
            data_collator = UnlearningCollator(label_column, processing_class)
        if args.cache_features and isinstance(data_collator, UnlearningCollator):
            train_dataset = with_model_inputs(train_dataset, data_collator, "Model inputs (train_dataset)")
            if eval_dataset is not None:
                eval_dataset = with_model_inputs(eval_dataset, data_collator, "Model inputs (eval_dataset)")
        train_dataset, eval_dataset = numpy_model_inputs(train_dataset), numpy_model_inputs(eval_dataset)
        forget_rows = subsample(split.forget_indices, args.max_forget_samples, args.seed)
        retain_rows = subsample(split.retain_indices, args.max_retain_samples, args.seed, train_labels)
        return cls(
            model=model, kind=kind, method=spec, processing_class=processing_class, data_collator=data_collator,
            train_dataset=train_dataset, eval_dataset=eval_dataset, label_column=label_column,
            train_labels=train_labels, split=split, num_labels=num_labels,
            forget_view=train_dataset.select(forget_rows), retain_view=train_dataset.select(retain_rows),
            forget_labels=train_labels[forget_rows], retain_labels=train_labels[retain_rows],
            metric_views=_metric_views(train_dataset, eval_dataset, split, train_labels, args),
            judge=inputs_follow_weights(None if judge is None else judge.to(args.device)),
        )  # fmt: skip


def _uncompiled(model):
    """The module a `torch.compile`d model wraps: the methods read and edit layers through hooks and replace modules,
    which a compiled graph does not see (svd_projection's statistics of a compiled ResNet came out non-finite). Its
    weights are the compiled model's, so an in-place run changes both."""
    if is_compiled_module(model):
        original = model._orig_mod
        logger.info(
            f"`model` is compiled ({type(model).__name__}): unlearning its original module "
            f"({type(original).__name__}); compile the result again with `torch.compile` if you serve it compiled."
        )
        return original
    return model


def _check_kind_supports(kind: ModelKind, args: UnlearnConfig, forget_classes, forget_indices) -> None:
    """What the model's kind cannot do, refused with the fix."""
    if args.peft_config and not kind.supports_peft:
        raise ValueError(
            f"`peft_config` (LoRA) is supported for classifiers; this model is a {kind.name} model: leave it None."
        )
    if args.forget_accuracy_target is not None and not kind.supports_forget_accuracy_target:
        raise ValueError(
            f"`forget_accuracy_target` stops on a classifier's accuracy; this model is a {kind.name} model: leave it "
            "None (the budget is `max_steps`, or the method's own stopping rule)."
        )
    if (forget_classes is None) == (forget_indices is None):
        raise ValueError(
            "Give exactly one of `forget_classes` (class ids or label names) and `forget_indices` (training rows); "
            f"got forget_classes={forget_classes!r} and forget_indices="
            f"{'None' if forget_indices is None else f'<a {type(forget_indices).__name__}>'}."
        )
    if forget_indices is not None and not kind.supports_forget_indices:
        raise ValueError(
            f"A {kind.name} model forgets classes here (`forget_classes`: the classes it must no longer generate); "
            "`forget_indices` is not supported for it."
        )


def _checked_datasets(train_dataset, eval_dataset, model, args: UnlearnConfig):
    """`(train_dataset, eval_dataset, label_column, eval_labels)`, checked, audio read undecoded (decoded by
    soundfile: no torchcodec needed)."""
    if train_dataset is None:
        raise ValueError("`train_dataset` is required: the forget and retain sets are taken from it.")
    check_dataset(train_dataset, "train_dataset")
    train_dataset = without_audio_decoding(train_dataset)
    label_column = find_label_column(train_dataset, "train_dataset")
    check_label_transform(train_dataset, label_column, "train_dataset")
    eval_labels = None
    if eval_dataset is not None:
        check_dataset(eval_dataset, "eval_dataset")
        eval_dataset = without_audio_decoding(eval_dataset)
        eval_label_column = find_label_column(eval_dataset, "eval_dataset")
        if eval_label_column != label_column:  # one collator scores both with the train set's column
            raise ValueError(
                f"`eval_dataset`'s labels are in '{eval_label_column}' and `train_dataset`'s in '{label_column}': both "
                f"must use one column. Rename one, e.g. `eval_dataset.rename_column('{eval_label_column}', "
                f"'{label_column}')`."
            )
        check_label_transform(eval_dataset, label_column, "eval_dataset")
        eval_labels = dataset_labels(eval_dataset, eval_label_column, "eval_dataset")
        check_labels(eval_labels, eval_dataset, eval_label_column, model.config, "eval_dataset")
    elif args.eval_before_unlearn or args.eval_after_unlearn:
        raise ValueError(
            "`eval_dataset` is required to measure unlearning (held-out rows for accuracy and the membership "
            "attacks). Pass it, or set `eval_before_unlearn=False, eval_after_unlearn=False`."
        )
    return train_dataset, eval_dataset, label_column, eval_labels


def _metric_views(train_dataset, eval_dataset, split: ForgetRetainSplit, train_labels, args: UnlearnConfig) -> dict:
    if eval_dataset is None:
        return {}
    retain_rows = subsample(split.retain_indices, args.max_metric_train_samples, args.seed, train_labels)
    views = {
        "forget_train": train_dataset.select(split.forget_indices),
        "retain_train": train_dataset.select(retain_rows),
        "eval_forget": eval_dataset.select(split.eval_forget_indices),
        "eval_retain": eval_dataset.select(split.eval_retain_indices),
    }
    if len(split.eval_unlearned_before_indices):
        views["eval_unlearned_before"] = eval_dataset.select(split.eval_unlearned_before_indices)
    return views


def _log_split(split: ForgetRetainSplit, eval_dataset) -> None:
    if split.unlearned_before:
        logger.info(
            f"The model unlearned classes {split.unlearned_before} before (`config.unlearned_classes`): their rows are "
            "left out of the retain set so that they are not learned again."
        )
    if split.is_class_level and eval_dataset is not None and not len(split.eval_forget_indices):
        logger.warning(
            f"`eval_dataset` has no rows of `forget_classes` {split.forget_classes}: forget accuracy on held-out rows "
            "cannot be measured (the card says so); the forget check uses the training rows."
        )

def _check_same_numbering(train_dataset, eval_dataset, label_column: str) -> None:
    """Refuse a train and an eval set whose `ClassLabel` names differ: e.g. `class_encode_column` run on each split
    numbers the classes each holds, so the same id would mean another class."""
    if eval_dataset is None:
        return
    names = [getattr(data.features.get(label_column), "names", None) for data in (train_dataset, eval_dataset)]
    if not all(names):
        return
    differing, examples = name_mismatches(*names, "train", "eval", ignore_case=False)
    if differing:
        raise ValueError(
            f"`train_dataset` and `eval_dataset` number their labels differently ({examples}): the same id would "
            "mean another class. Map both to the model's classes: `hf_unlearn.data.align_labels(dataset, "
            "model.config)`, or encode the labels before splitting."
        )
