"""Half-precision models (float16 / bfloat16 weights): measured in their own precision, unlearned in float32.

transformers 5 loads a checkpoint in the dtype it was saved in (`from_pretrained(dtype="auto")`), so a Hub ID may
give a float16 or bfloat16 model. Two things then break that have nothing to do with unlearning:

- Many models do not cast their inputs to their weights' dtype (ResNet, ConvNeXt, Wav2Vec2: a float32 batch into a
  half-precision convolution raises). `inputs_follow_weights` gives such a model a forward pre-hook that casts every
  floating-point input to the dtype of its weights, as transformers' pipelines do with their inputs. The hook stays
  on the model (the returned one takes float32 batches too), and on a half-precision judge or reference model.
- Optimizer steps on float16 weights diverge (AdamW's epsilon and most updates underflow; on a small ViT gppu's
  fine-tuning, remain_geometry and neggrad_plus all ended with non-finite weights), and bfloat16 weights round away
  updates below 1/256 of their magnitude. `float32_method` runs the method on float32 weights (the master weights of
  mixed-precision training) and gives every tensor its own dtype back after, so the model is measured, saved and
  pushed in the precision it came in. `bf16=True` / `fp16=True` (autocast) still speed up the method's passes where
  the device supports them.

```python
>>> model = AutoModelForImageClassification.from_pretrained("some/float16-checkpoint")   # float16 weights
>>> result = UnlearningTrainer(model, args, train_dataset=train, eval_dataset=test, forget_classes=[3]).unlearn()
>>> next(result.model.parameters()).dtype                                                 # still float16
torch.float16
```
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)  # also outside an accelerate run

HALF = (torch.float16, torch.bfloat16)


def weights_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """The dtype of `module`'s first floating-point parameter (what transformers' `model.dtype` reports)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def _cast_floating(value, dtype: torch.dtype):
    if torch.is_tensor(value) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_floating(item, dtype) for item in value)
    if isinstance(value, dict):
        return {key: _cast_floating(item, dtype) for key, item in value.items()}
    return value


def _inputs_to_weights_dtype(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    dtype = weights_dtype(module)
    if dtype is None:
        return args, kwargs
    return _cast_floating(args, dtype), _cast_floating(kwargs, dtype)


def inputs_follow_weights(model: torch.nn.Module | None) -> torch.nn.Module | None:
    """Give a half-precision `model` (once) a forward pre-hook that casts its floating-point inputs to its weights'
    dtype at each call (so also to float32 while `float32_method` runs). A float32 model is left as it is."""
    if model is None or weights_dtype(model) not in HALF or getattr(model, "_hf_unlearn_inputs_follow_weights", False):
        return model
    model.register_forward_pre_hook(_inputs_to_weights_dtype, with_kwargs=True)
    model._hf_unlearn_inputs_follow_weights = True
    return model


def _tensors(model: torch.nn.Module) -> Iterator[tuple[torch.nn.Module, str, str, torch.Tensor]]:
    """`(module, path, name, tensor)` for every floating-point parameter and buffer, under each module owning it."""
    for path, module in model.named_modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is not None and tensor.is_floating_point():
                    yield module, f"{path}.{name}" if path else name, name, tensor


@torch.no_grad()
def _cast(model: torch.nn.Module, dtype_of) -> None:
    """Give each floating-point tensor the dtype `dtype_of(module, path, name, tensor)` names."""
    converted = {}  # a buffer several modules share stays one tensor
    for module, path, name, tensor in list(_tensors(model)):
        dtype = dtype_of(module, path, name, tensor)
        if tensor.dtype == dtype:
            continue
        if name in module._parameters:  # in place: a parameter tied into several modules is one object
            tensor.grad = None  # the method's last gradients, in the other precision
            tensor.data = tensor.data.to(dtype)
        else:
            module._buffers[name] = converted.setdefault(id(tensor), tensor.to(dtype))


@contextlib.contextmanager
def float32_method(trainer) -> Iterator[bool]:
    """Around the method's run: a model with half-precision weights or buffers runs it with those in float32, and
    every tensor gets its dtype back afterwards (also on an error); yields whether anything was cast. A tensor is found
    by its module object (a module a method wraps, like LoRA's `base_layer`, is still found), else by its path (a
    module the method replaced, like peft's copy of the head); a tensor the method added (LoRA adapters kept unmerged)
    takes the model's weights' dtype. What the method recorded for the measuring passes in float32 (gppu's block
    inputs) is dropped: they run in the model's precision. A value the method left beyond the range of the dtype it
    goes back to (above 65504 for float16) is an error that says so, not an infinite weight. Sharded weights (FSDP,
    DeepSpeed) are left to their engine's own mixed precision."""
    model = trainer.model
    tensors = list(_tensors(model))
    sharded = getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)
    if sharded or not any(tensor.dtype in HALF for *_, tensor in tensors):
        yield False
        return
    by_object = {(module, name): tensor.dtype for module, _, name, tensor in tensors}
    by_path = {path: tensor.dtype for _, path, _, tensor in tensors}
    added = weights_dtype(model)

    def restored(module, path, name, tensor):
        return by_object.get((module, name), by_path.get(path, added))

    logger.info(
        f"The model has half-precision tensors ({sorted({str(t.dtype) for *_, t in tensors if t.dtype in HALF})}): "
        "the method runs on float32 copies of them (optimizer steps on half-precision weights underflow), and each "
        "gets its dtype back when it ends. `bf16=True` or `fp16=True` speed the method's passes up with autocast where "
        "the device allows."
    )
    _cast(model, lambda module, path, name, tensor: torch.float32 if tensor.dtype in HALF else tensor.dtype)
    finished = False
    try:
        yield True
        finished = True
    finally:
        overflow = _beyond_range(model, restored) if finished else []
        _cast(model, restored)
        trainer.method.take_block_inputs()
    if overflow:
        raise RuntimeError(
            f"The method left {len(overflow)} tensors with finite values beyond the range of the half precision they "
            f"go back to (e.g. {overflow[:3]}), which would make them infinite: the model is not measured or saved. "
            "Unlearn it in float32 (`model.float()`) or bfloat16, or with a smaller `learning_rate`."
        )


def _beyond_range(model: torch.nn.Module, restored) -> list[str]:
    """Paths of the float32 tensors whose finite values the dtype they go back to cannot hold."""
    found = []
    for module, path, name, tensor in _tensors(model):
        dtype = restored(module, path, name, tensor)
        if dtype in HALF and tensor.dtype == torch.float32:
            finite = tensor.detach()[torch.isfinite(tensor.detach())]
            if finite.numel() and float(finite.abs().max()) > torch.finfo(dtype).max:
                found.append(path)
    return found


def without_autocast_wrapper(model: torch.nn.Module) -> None:
    """Remove the autocast wrapper accelerate's `prepare_model` puts on `model.forward` (with bf16 / fp16), if an
    earlier evaluation left one (`trainer.predict` before `unlearn()`): an unlearning run measures the original and
    the unlearned model in the model's own precision, and returns it computing so."""
    if "_original_forward" in model.__dict__:
        model.__dict__.pop("_original_forward")
        model.__dict__.pop("forward", None)


@contextlib.contextmanager
def autocast_undone_after(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, accelerate may wrap `model.forward` in autocast (`bf16=True` / `fp16=True`: its
    `prepare_model` sets `model.forward` and keeps the plain one as `model._original_forward`). After it the wrapper is
    removed: otherwise the unlearned model would be measured under autocast while its original was measured in its
    own precision, and would be returned still computing in half precision."""
    missing = object()
    before = {name: model.__dict__.get(name, missing) for name in ("forward", "_original_forward")}
    try:
        yield
    finally:
        # exactly as it came: also when an earlier evaluation (`trainer.predict`) had wrapped it already, which the
        # block's loop then wraps again
        for name, value in before.items():
            if value is missing:
                model.__dict__.pop(name, None)
            else:
                model.__dict__[name] = value

