"""Measuring with `UnlearningTrainer`: the passes methods and metrics use (every row once, gathered over processes),
the unlearning metrics of a model, and the Trainer's own `evaluate` / `predict`, which measure the model rather than a
method's unlearning objective. `UnlearningTrainer` takes these methods from `MeasuringMixin`, in place of the
Trainer's own."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

from .metrics import gap_to_reference
from .passes import gather_shards, predict_logits, shard_accuracy, shard_batches
from .precision import inputs_follow_weights
from .report import scalar_metrics


class MeasuringMixin:
    """`predict_logits`, `shard_batches`, `gather_shards`, `shard_accuracy`, `evaluate_unlearning`, `evaluate` and
    the Trainer's scoring loops of `UnlearningTrainer` (mixed in before `transformers.Trainer`)."""

    #: While `unlearn` runs the method: the seconds of the evaluations (`eval_strategy`) and checkpoint writes
    #: (`save_strategy`) the Trainer's loop made meanwhile, which are not the method's (`unlearn_seconds`).
    seconds_beside_method: dict | None = None

    @contextlib.contextmanager
    def beside_method(self, what: str) -> Iterator[None]:
        """Count the block's seconds as `what` in `seconds_beside_method` (while a method runs)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.seconds_beside_method is not None:
                seconds = time.perf_counter() - started
                self.seconds_beside_method[what] = self.seconds_beside_method.get(what, 0.0) + seconds

    #: Inside the Trainer's evaluation or prediction loop: `compute_loss` is the model's own loss, not the method's.
    _scoring_model_loss = False

    def predict_logits(self, dataset, model=None, description: str = "Scoring", head: torch.nn.Module | None = None,
                       original=None) -> tuple:  # fmt: skip
        """Logits and labels of `model` (default: `self.model`) on every row of `dataset`, gathered over processes;
        with `head` (a module of `model`), also the rows' inputs to it (pooled over tokens), as a third array; with
        `original`, the original's too (`passes.predict_logits`)."""
        show = self.is_local_process_zero() and not self.args.disable_tqdm
        # A DataLoader draws its seed from the global generator: a pass measured during training (an evaluation, the
        # forget-target check) leaves the training's random draws (dropout, shuffles, noise) as they would have been.
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
            return predict_logits(self.model if model is None else model, self.get_test_dataloader(dataset)
                                  if len(dataset) else None, self.accelerator, self._prepare_inputs, self.num_labels,
                                  head, description, show, original)  # fmt: skip

    def shard_batches(self, dataset, description: str = "Forward pass", batch_size: int | None = None):
        """This process's contiguous share of `dataset` in batches on the device, each row exactly once:
        `(sample_ids, batch)` (`hf_unlearn.passes.shard_batches`; default batch `per_device_eval_batch_size`)."""
        show = self.is_local_process_zero() and not self.args.disable_tqdm
        return shard_batches(dataset, self.accelerator, self.data_collator, self._prepare_inputs,
                             batch_size or self.args.per_device_eval_batch_size, description, show)  # fmt: skip

    def gather_shards(self, local: torch.Tensor, total: int) -> torch.Tensor:
        """Per-row results of this process's share joined over processes, in dataset order, on every process."""
        return gather_shards(local, total, self.accelerator)

    def shard_accuracy(self, batches, model=None, plausible_at: float | None = None) -> float | None:
        """Accuracy of `model` (default: `self.model`) on batches from `shard_batches`, summed over processes
        (`plausible_at`: see `hf_unlearn.passes.shard_accuracy`)."""
        return shard_accuracy(self.model if model is None else model, batches, self.accelerator, plausible_at)

    def evaluate_unlearning(self, reference_model=None, model=None) -> dict:
        """Unlearning metrics of `model` (default: the trainer's current model), measured by its kind (see
        `hf_unlearn.metrics` and `hf_unlearn.metric_registry`).

        With `reference_model` (a model retrained without the forget set, e.g. from method `retrain`), also the
        reference's values (`reference_<metric>`), the gaps (`gap_<metric>`) and `mean_gap`; measured on the unlearned
        model after `unlearn()`, they are also recorded in that run's metrics, so its model card shows them.
        """
        if self.eval_dataset is None:
            raise ValueError("`evaluate_unlearning` needs the trainer's `eval_dataset`.")
        if self.kind.generator and self.judge is None:
            raise ValueError(
                "Measuring a generator needs a judge classifier of its data: pass `judge=` to UnlearningTrainer, or "
                "set `eval_before_unlearn=False, eval_after_unlearn=False`."
            )
        model = self.model if model is None else inputs_follow_weights(model.to(self.args.device))
        metrics = self.kind.measure(self, model)
        if reference_model is not None:
            reference_model = inputs_follow_weights(reference_model.to(self.args.device))
            gaps = gap_to_reference(metrics, self.kind.measure(self, reference_model))
            metrics.update(gaps)
            if model is self.model and self.unlearning_output is not None:
                self.unlearning_output.metrics.update(gaps)
        return metrics

    # ---------------------------------------------------------------------------- the Trainer's own scoring
    def evaluate(self, eval_dataset=None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:  # fmt: skip
        """The unlearning metrics of the current model (`evaluate_unlearning`: forget / retain accuracy, the attacks,
        the feature probe, ...), as the Trainer's `evaluate` returns metrics: the numbers named
        `{metric_key_prefix}_{metric}`, logged and handed to the callbacks' `on_evaluate`. This is what
        `eval_strategy="steps"` (or "epoch", `eval_on_start`) runs during a gradient method's training, so the
        forgetting can be followed as it goes; each evaluation is one measuring pass, as long as the one after
        `unlearn()`. Per-class values stay in `evaluate_unlearning()`. With `compute_metrics`, the Trainer's
        evaluation loop also runs on the eval rows (the model's own loss and logits, not the method's objective) and
        its metrics join.

        The rows are the request's (`eval_dataset` and sampled training rows, split by forget and retain): another
        `eval_dataset` here is refused; `predict(dataset)` scores any rows.

        Example:

        ```python
        >>> args = UnlearnConfig(output_dir="out", method="neggrad_plus", eval_strategy="steps", eval_steps=20)
        >>> trainer = UnlearningTrainer(model, args, train_dataset=train, eval_dataset=test, forget_classes=[3])
        >>> trainer.unlearn()  # logs eval_forget_accuracy, eval_retain_accuracy, ... every 20 steps
        >>> trainer.evaluate()["eval_forget_accuracy"]
        ```
        """
        if eval_dataset is not None:
            raise ValueError(
                "`UnlearningTrainer.evaluate` measures on the request's rows (the `eval_dataset` given to "
                "UnlearningTrainer, split into forget and retain rows), so it takes no `eval_dataset`; got "
                f"{type(eval_dataset).__name__}. Build a trainer with that eval_dataset, or score other rows with "
                "`trainer.predict(dataset)`."
            )
        with self.beside_method("evaluation"):
            metrics = scalar_metrics(self.evaluate_unlearning(), f"{metric_key_prefix}_")
            if self.compute_metrics is not None:
                output = self.evaluation_loop(self.get_eval_dataloader(), description="Evaluation",
                                              ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)  # fmt: skip
                metrics.update(output.metrics)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The Trainer's evaluation and prediction loops (`predict`, `compute_metrics`) score the model's own loss
        and logits: a method's objective needs its own batches (forget and retain rows paired)."""
        self._scoring_model_loss = True
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        finally:
            self._scoring_model_loss = False

    def get_test_dataloader(self, test_dataset):
        """The Trainer's test loader over every row: `dataloader_drop_last` is for training batches, and a measuring
        pass that dropped the last rows would report metrics of fewer rows than it names."""
        with _every_row(self.args):
            return super().get_test_dataloader(test_dataset)

    def get_eval_dataloader(self, eval_dataset=None):
        """The Trainer's eval loader over every row (see `get_test_dataloader`)."""
        with _every_row(self.args):
            return super().get_eval_dataloader(eval_dataset)


@contextlib.contextmanager
def _every_row(args) -> Iterator[None]:
    """`args.dataloader_drop_last` off for the block (the loaders built in it keep the value they were built with)."""
    dropped, args.dataloader_drop_last = args.dataloader_drop_last, False
    try:
        yield
    finally:
        args.dataloader_drop_last = dropped
