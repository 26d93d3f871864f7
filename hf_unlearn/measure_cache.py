"""The original model's measurements, reused across requests on the same model and data in one process.

Comparing methods (or running several requests) on one trained model measures the same original on the same rows
each time: a measuring pass costs as much as a fast method itself. `original_metrics(trainer)` keys a measurement
by a fingerprint of the model's weights and buffers and by everything that decides the measured rows and metrics (the
data's fingerprints, the request's split, the judge, the label names, the processor's settings, the collator, the
seed and the measuring settings), and returns a copy of the earlier result when all of them match. Single-process
runs only. Any change to the model (training, an in-place edit) changes its fingerprint.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict

import numpy as np
import torch

#: How many measurements are kept (least recently used go first).
CACHE_SIZE = 8
_CACHE: OrderedDict[str, dict] = OrderedDict()
#: `UnlearnConfig` fields that change what is measured.
_MEASURING_FIELDS = ("seed", "max_metric_train_samples", "eval_generated_samples", "eval_inference_steps",
                     "eval_guidance_scale", "eval_sampler", "eval_sampler_eta")  # fmt: skip


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module | None) -> str:
    """A digest of every parameter and buffer (names, shapes, dtypes and values)."""
    digest = hashlib.sha1()
    if model is None:
        return "none"
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes() if tensor.dtype != torch.bfloat16
                      else tensor.detach().float().cpu().numpy().tobytes())  # fmt: skip
    return digest.hexdigest()


def request_fingerprint(trainer) -> str:
    """What decides the measured rows and metrics of `trainer`'s request, besides the model."""
    split, args = trainer.split, trainer.args
    parts = [
        trainer.kind.name,
        getattr(trainer.source_train_dataset, "_fingerprint", None),
        getattr(trainer.eval_dataset, "_fingerprint", None),
        split.forget_classes,
        hashlib.sha1(np.asarray(split.forget_indices).tobytes()).hexdigest(),
        split.unlearned_before,
        {name: getattr(args, name, None) for name in _MEASURING_FIELDS},
        model_fingerprint(trainer.judge),
        getattr(trainer.model.config, "id2label", None),
        # How rows become inputs: the processor's settings, and the collator (another collator object: no reuse).
        trainer.processing_class.to_dict() if hasattr(trainer.processing_class, "to_dict") else None,
        (getattr(trainer.data_collator, "label_column", None), type(trainer.data_collator).__name__,
         None if type(trainer.data_collator).__name__ == "UnlearningCollator" else id(trainer.data_collator)),
    ]
    return hashlib.sha1(repr(parts).encode()).hexdigest()


def original_metrics(trainer) -> tuple[dict, bool]:
    """`(metrics of trainer.model before unlearning, whether they were reused)`. Only on one process: with several,
    a hit on one and a miss on another would leave the others waiting in the measuring pass's gather, and sharded
    weights differ by process."""
    if trainer.accelerator.num_processes > 1:
        return trainer.evaluate_unlearning(), False
    key = model_fingerprint(trainer.model) + request_fingerprint(trainer)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return copy.deepcopy(_CACHE[key]), True
    metrics = trainer.evaluate_unlearning()
    _CACHE[key] = copy.deepcopy(metrics)
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return metrics, False
