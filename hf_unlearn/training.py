"""What the trainer adds around the Trainer's training loop: the forget-accuracy stop, no Hub pushes while a method
runs, and a cheaper start of each `Trainer.train()` on a CPU."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import torch
from accelerate.logging import get_logger
from transformers import TrainerCallback

from .metrics import accuracy

logger = get_logger(__name__)


class ForgetTargetCallback(TrainerCallback):
    """Stops a gradient method once the forget training accuracy reaches `UnlearnConfig.forget_accuracy_target`,
    checked every `forget_check_steps` optimizer steps on `trainer.forget_view`."""

    def __init__(self, trainer):
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


@contextlib.contextmanager
def no_hub_pushes(args) -> Iterator[None]:
    """The Trainer pushes after checkpoints and saves when `push_to_hub` is set; a method runs its loop several times,
    and the unlearned model is pushed once, by `push_to_hub` / `save_model`, with its card."""
    asked = args.push_to_hub
    args.push_to_hub = False
    try:
        yield
    finally:
        args.push_to_hub = asked


@contextlib.contextmanager
def objects_so_far_left_to_refcounting(device: torch.device) -> Iterator[None]:
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
