"""The original model's measurements: reused across requests on the same model and data in one process, and, after a
method that changes only a model's tail, taken from the unlearned model's own measuring passes.

Reuse. Comparing methods (or running several requests) on one trained model measures the same original on the same
rows each time: a measuring pass costs as much as a fast method itself. `OriginalMeasurement` keys a measurement by a
fingerprint of the model's weights and buffers and by everything that decides the measured rows and metrics (the
data's fingerprints, the request's split, the judge, the label names, the processor's settings, the collator, the
seed and the measuring settings), and takes a copy of the earlier result when all of them match. Any change to the
model (training, an in-place edit) changes its fingerprint.

Measured with the unlearned model. A method that names before it runs the modules it may change
(`UnlearningMethod.changed_modules`: gppu's last block(s) and head) leaves every block before them as it was, so the
two models compute the same input to the block those modules start in (`models.block_before`). Everything from that
block on is copied (the tail alone, with the buffers a forward pass may rewrite) and the original is measured after
the method, in the unlearned model's passes (`passes.predict_logits`): each batch runs the unlearned model, which
records that block's input, then the original's tail alone from the recorded input, with the copied values put back
for that pass (`torch.func.functional_call`). The original then costs its tail instead of a whole pass, and its
metrics are the numbers a whole pass gives: the first batch also runs the whole original and must match, or (as when
the replay raises) every batch runs it whole. After the method every parameter and buffer before that block is
checked against its digest from before: a method that changed one is an error, never a silently wrong original. The
measured block is in the results (`original_measured_from_block`); with no block to share the original is measured
before the method, whole.

Reuse is for one process (several would have to agree on a hit). Measuring with the unlearned model works over
several processes too (each replays its own rows), but not on sharded weights (FSDP, DeepSpeed), which are measured
whole before the method.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections import OrderedDict

import numpy as np
import torch
from accelerate.logging import get_logger
from torch.func import functional_call

from .activations import REPLAY_FAILURES, BlockInputReplay, close_to
from .metric_registry import metrics_for
from .models import block_before
from .passes import one_row_inputs

logger = get_logger(__name__)

#: How many measurements are kept (least recently used go first).
CACHE_SIZE = 8
_CACHE: OrderedDict[str, dict] = OrderedDict()
#: `UnlearnConfig` fields that change what is measured.
_MEASURING_FIELDS = ("seed", "max_metric_train_samples", "eval_generated_samples", "eval_inference_steps",
                     "eval_guidance_scale", "eval_sampler", "eval_sampler_eta",
                     "per_device_eval_batch_size")  # padded audio batches change logits without an attention mask


def _named_tensors(module: torch.nn.Module, prefix: str = "", every_name: bool = False) -> list[tuple[str, torch.Tensor]]:
    """Parameters and buffers by name (`every_name`: a tensor shared by several modules under each of its names)."""
    return [*module.named_parameters(prefix, remove_duplicate=not every_name),
            *module.named_buffers(prefix, remove_duplicate=not every_name)]  # fmt: skip


@torch.no_grad()
def tensor_digests(model: torch.nn.Module) -> dict[str, str]:
    """A digest of each parameter and buffer of `model`, by name (its shape, dtype and values)."""
    digests = {}
    for name, tensor in _named_tensors(model):
        digest = hashlib.sha1(f"{tuple(tensor.shape)}:{tensor.dtype}".encode())
        values = tensor.detach().float() if tensor.dtype == torch.bfloat16 else tensor.detach()
        digest.update(values.contiguous().cpu().numpy().tobytes())
        digests[name] = digest.hexdigest()
    return digests


def model_fingerprint(model: torch.nn.Module | None) -> str:
    """A digest of every parameter and buffer (names, shapes, dtypes and values)."""
    return "none" if model is None else _combined(tensor_digests(model))


def _combined(digests: dict[str, str]) -> str:
    return hashlib.sha1(repr(list(digests.items())).encode()).hexdigest()


def request_fingerprint(trainer) -> str:
    """What decides the measured rows and metrics of `trainer`'s request, besides the model."""
    split, args = trainer.split, trainer.args
    parts = [
        trainer.kind.name,
        getattr(trainer.source_train_dataset, "_fingerprint", None),
        # the rows measured: the views built with the request (an `eval_dataset` set on the trainer later is not)
        {name: getattr(view, "_fingerprint", None) for name, view in trainer.metric_views.items()},
        split.forget_classes,
        hashlib.sha1(np.asarray(split.forget_indices).tobytes()).hexdigest(),
        split.unlearned_before,
        {name: getattr(args, name, None) for name in _MEASURING_FIELDS},
        model_fingerprint(trainer.judge),
        getattr(trainer.model.config, "id2label", None),
        # How rows become inputs: the processor's settings, and the collator (another collator object: no reuse).
        _settings(trainer.processing_class),
        (getattr(trainer.data_collator, "label_column", None), type(trainer.data_collator).__name__,
         _settings(getattr(trainer.data_collator, "processing_class", None)),
         None if type(trainer.data_collator).__name__ == "UnlearningCollator" else id(trainer.data_collator)),
        # What computes the numbers: the model's class and configuration, and the metrics registered now (a metric
        # registered, or replaced by another function under its key, since the original was measured).
        type(trainer.model).__qualname__,
        trainer.model.config.to_json_string() if hasattr(getattr(trainer.model, "config", None), "to_json_string")
        else None,
        repr(metrics_for(trainer.kind.name)),
        # A diffusion model's noise scheduler (not a module, so not in the weights' digest) builds its sampler.
        dict(getattr(getattr(trainer.model, "noise_scheduler", None), "config", None) or {}),
    ]
    return hashlib.sha1(repr(parts).encode()).hexdigest()


def _settings(processor) -> dict | None:
    """A processor's settings (`to_dict()`), or None."""
    return processor.to_dict() if hasattr(processor, "to_dict") else None


class OriginalTail:
    """The original model inside the unlearned `model`, for `passes.predict_logits`: `tensors`, the original values of
    the parameters and buffers a method changed, put back for the original's pass on each batch, which starts at
    `block` from the input the model's pass on that batch recorded (`block` None: the original runs whole).

    `known`: the input of that block the method itself recorded with the original model for rows it read (gppu's
    replay); the blocks before it being unchanged, the model's pass replays it for those rows too."""

    def __init__(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor], block: str | None,
                 known: BlockInputReplay | None = None):  # fmt: skip
        self.tensors, self.block = tensors, block
        self.replay = BlockInputReplay(model, block) if block is not None else None
        self.known = known if self.replay is not None and known is not None and known.block is self.replay.block else None
        self.checked = False

    @contextlib.contextmanager
    def recording(self):
        """Around the model's pass on a batch: record the shared block's input (the rows the method recorded
        replayed)."""
        with contextlib.ExitStack() as stack:
            if self.known is not None:
                stack.enter_context(self.known.replaying())  # its hook on the block first: the recording sees its rows
            if self.replay is not None:
                stack.enter_context(self.replay.recording())
            yield

    def __call__(self, model: torch.nn.Module, batch: dict):
        """The original's output on `batch` (model inputs), right after the model's pass on it: replayed from the
        shared block once the first batch showed the replay reproduces the whole original, else the whole original."""
        output = self._replayed(model, batch) if self.replay is not None else None
        if output is not None and self.checked:
            return output
        whole = functional_call(model, self.tensors, args=(), kwargs=batch)
        if self.replay is not None and (output is None or not close_to(output.logits, whole.logits, 1e-4)):
            logger.info(f"Replaying '{self.block}' does not reproduce the original's logits: it is measured whole.")
            self.replay = self.known = self.block = None
        self.checked = True
        return whole

    def _replayed(self, model: torch.nn.Module, batch: dict):
        """The original's tail on `batch` from the recorded block input; None when the replay raises (a model whose
        forward pass cannot run without the dropped blocks)."""
        try:
            with self.replay.replaying():
                return functional_call(model, self.tensors, args=(), kwargs=batch)
        except REPLAY_FAILURES as error:
            logger.info(f"Replaying '{self.block}' failed ({type(error).__name__}: {error}).")
            return None
        finally:
            self.replay.clear()  # one batch at a time: memory of one batch's block input


class OriginalMeasurement:
    """The original model's metrics for one `unlearn()` call (`args.eval_before_unlearn`): taken from an earlier
    measurement, measured now (before the method), or measured with the unlearned model after a method that names the
    modules it changes (see the module's docstring). `report`: how, added to the run's results.

    ```python
    >>> original = OriginalMeasurement(trainer)       # before the method
    >>> trainer.method.run()
    >>> metrics, original_metrics = original.with_unlearned()
    ```
    """

    def __init__(self, trainer):
        self.trainer, args = trainer, trainer.args
        self.metrics, self.key, self.kept, self.digests, self.named, self.block = None, None, None, None, set(), None
        self.rewritable: set[str] = set()
        self.report = {"original_measurement_reused": False, "original_measured_from_block": None}
        if not args.eval_before_unlearn:
            return
        digests = None
        if trainer.accelerator.num_processes == 1:  # reuse: one process only (see the module's docstring)
            digests = tensor_digests(trainer.model)
            self.key = _combined(digests) + request_fingerprint(trainer)
            if self.key in _CACHE:
                _CACHE.move_to_end(self.key)
                self.metrics, self.report["original_measurement_reused"] = copy.deepcopy(_CACHE[self.key]), True
                return
        sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled  # no whole tensors to put back
        later = args.eval_after_unlearn and trainer.kind.measures_with_original and not sharded
        modules = trainer.method.changed_modules() if later and trainer.eval_dataset is not None else None
        self.block, tail = self._shared_block(list(modules)) if modules else (None, [])
        if self.block is None:  # nothing to share: measured now, whole
            self.metrics = trainer.evaluate_unlearning()
            self._store()
            return
        self._keep(tail, digests if digests is not None else tensor_digests(trainer.model))

    def _shared_block(self, modules: list[str]) -> tuple[str | None, list[str]]:
        """`models.block_before` for the modules owning a tensor of the modules named (a tensor they share with a
        module that runs earlier counts as that module's)."""
        trainer, model = self.trainer, self.trainer.model
        named = {id(tensor) for module in modules for _, tensor in _named_tensors(model.get_submodule(module))}
        owners = [name for name, module in model.named_modules()
                  if any(id(tensor) in named for tensor in [*module.parameters(False), *module.buffers(False)])]  # fmt: skip
        view = next(view for view in trainer.metric_views.values() if len(view))
        return block_before(model, one_row_inputs(trainer, view), owners)

    @torch.no_grad()
    def _keep(self, tail: list[str], digests: dict[str, str]) -> None:
        """Copy every tensor of the modules from the shared block on (`tail`) and every buffer a forward pass may
        rewrite (non-persistent ones: position ids, rotary tables), one copy per tensor under each of its names;
        keep the digests of the rest, which the method must leave as they are."""
        model, tail = self.trainer.model, set(tail)
        copies, self.kept, self.rewritable = {}, {}, set()
        for module_name, module in model.named_modules():
            prefix = f"{module_name}." if module_name else ""
            own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            for name, tensor in own:
                rewritable = name in module._non_persistent_buffers_set
                if module_name in tail or rewritable:
                    self.kept[prefix + name] = copies.setdefault(id(tensor), tensor.detach().clone())
                    if rewritable and module_name not in tail:
                        self.rewritable.add(prefix + name)
        self.digests = {name: digests[name] for name, tensor in _named_tensors(model) if id(tensor) not in copies}
        self.named = set(digests) - set(self.digests)

    @contextlib.contextmanager
    def released_on_error(self):
        """Around the method: on an error, the copies kept and the method's recorded block inputs are freed at once,
        not with the trainer."""
        try:
            yield
        except BaseException:
            self.kept = None
            self.trainer.method.take_block_inputs()
            raise

    def _store(self) -> None:
        if self.key is not None:
            _CACHE[self.key] = copy.deepcopy(self.metrics)
            while len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)

    def with_unlearned(self) -> tuple[dict, dict | None]:
        """After the method: `(the unlearned model's metrics, the original's)` (`{}` without `eval_after_unlearn`;
        None without `eval_before_unlearn`)."""
        trainer = self.trainer
        known = trainer.method.take_block_inputs()  # replayed below where the blocks before it are checked unchanged
        if self.kept is None:
            return (trainer.evaluate_unlearning() if trainer.args.eval_after_unlearn else {}), self.metrics
        model = trainer.model
        now = dict(_named_tensors(model, every_name=True))
        digests = tensor_digests(model)
        changed = [name for name, digest in self.digests.items() if digests.get(name) != digest]
        changed += [name for name in digests if name not in self.digests and name not in self.named]  # new tensors
        changed += [name for name in self.kept if name not in now]
        failed = torch.tensor([float(bool(changed))], device=trainer.args.device)
        if trainer.accelerator.num_processes > 1 and trainer.accelerator.reduce(failed, reduction="sum").item():
            changed = changed or ["(on another process)"]  # every process stops, not only those that saw it
        if changed:
            self.kept = None
            raise RuntimeError(
                f"Method '{trainer.args.method}' changed {changed[:3]} (of {len(changed)} tensors), which run before "
                f"'{self.block}', the block the modules it named start in (`changed_modules()`): the original model "
                "cannot be measured. Fix the method's `changed_modules()` (None: any module), or set "
                "`eval_before_unlearn=False`."
            )
        tensors = {name: kept for name, kept in self.kept.items() if not torch.equal(kept, now[name])}
        # A buffer before the block rewritten by a forward pass: the block's input changed too, so the original runs
        # whole (with the buffer put back).
        block = None if self.rewritable & set(tensors) else self.block
        original = OriginalTail(model, tensors, block, known)
        metrics, self.metrics = trainer.kind.measure_with_original(trainer, model, original)
        self.report["original_measured_from_block"] = original.block
        self.kept = None
        self._store()
        return metrics, self.metrics
