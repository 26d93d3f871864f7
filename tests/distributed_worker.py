"""Run by test_distributed.py under `torchrun --nproc_per_node 2` (fresh processes: forking a process that already
ran torch deadlocks its thread pool). `python distributed_worker.py MODE MODEL_DIR RESULT_PATH`; process 0 writes
what MODE computes to RESULT_PATH."""

import json
import os
import sys
from dataclasses import dataclass

import torch
from transformers import AutoModelForImageClassification, TrainerCallback

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.contract import UnlearningMethod
from hf_unlearn.examples.digits import load_digits_dataset
from hf_unlearn.registry import register_method

SVD_KWARGS = {"num_samples": 200, "alpha_r_grid": [10.0, 100.0], "alpha_f_grid": [1.0, 10.0]}


def make_trainer(model_dir: str, output_dir: str, method: str, method_kwargs=None) -> UnlearningTrainer:
    digits = load_digits_dataset()
    args = UnlearnConfig(
        output_dir=output_dir,
        method=method,
        method_kwargs=method_kwargs,
        per_device_eval_batch_size=64,
        per_device_train_batch_size=32,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        report_to="none",
    )
    return UnlearningTrainer(
        AutoModelForImageClassification.from_pretrained(model_dir),
        args,
        train_dataset=digits["train"],
        eval_dataset=digits["test"],
        forget_classes=[3],
    )


def metrics(trainer: UnlearningTrainer, result_path: str) -> None:
    _, labels = trainer.predict_logits(trainer.eval_dataset)
    measured = trainer.evaluate_unlearning()
    evaluated = trainer.evaluate()  # the Trainer's API, on every process
    predicted = trainer.predict(trainer.eval_dataset)
    if trainer.accelerator.is_main_process:
        with open(result_path, "w") as handle:
            json.dump(
                {"num_processes": trainer.accelerator.num_processes, "labels": labels.tolist(), "metrics": measured,
                 "evaluated": evaluated, "predicted_labels": predicted.label_ids.tolist(),
                 "predicted_classes": predicted.predictions.argmax(-1).tolist()},
                handle,
            )


def svd_statistics_and_projection(trainer: UnlearningTrainer, result_path: str) -> None:
    """The retain Gram statistics and the unlearned weights (with the alpha search) of `svd_projection`."""
    from hf_unlearn.activations import collect_input_grams, find_target_modules

    statistics = collect_input_grams(trainer, trainer.retain_view, find_target_modules(trainer.model))
    # 6 rows: layers with few inputs keep them (`keep_rows`), gathered over the processes
    few = collect_input_grams(trainer, trainer.forget_view.select(range(6)), find_target_modules(trainer.model),
                              keep_rows=0.5)  # fmt: skip
    trainer.args.eval_before_unlearn = trainer.args.eval_after_unlearn = False
    result = trainer.unlearn()
    if trainer.accelerator.is_main_process:
        torch.save(
            {
                "num_processes": trainer.accelerator.num_processes,
                "grams": dict(statistics.grams),
                "rows": statistics.rows,
                "few_grams": dict(few.grams),
                "few_rows": few.rows,
                "few_kept": sorted(name for name in few.rows if few.kept_rows(name) is not None),
                "weights": result.model.state_dict(),
                "alpha_grid": result.metrics["alpha_grid"],
            },
            result_path,
        )


# The head edit (projection and refit) is what must agree over processes; the tail fine-tuning that follows by default
# draws its batches per process, as any training does.
GPPU_HEAD_ONLY = {"forget_objective": "projection"}


def gppu_features_and_head(trainer: UnlearningTrainer, result_path: str) -> None:
    """The head features of the forget rows (gathered over processes), the forget directions and the unlearned head
    of `gppu`."""
    from hf_unlearn.activations import collect_head_features
    from hf_unlearn.models import classification_head

    _, head = classification_head(trainer.model)
    features = collect_head_features(trainer, trainer.forget_view, head)
    trainer.args.eval_before_unlearn = trainer.args.eval_after_unlearn = False
    result = trainer.unlearn()
    if trainer.accelerator.is_main_process:
        torch.save(
            {
                "num_processes": trainer.accelerator.num_processes,
                "features": features.features.cpu(),
                "labels": features.labels.cpu(),
                "directions": trainer.method.directions.cpu(),
                "head": classification_head(result.model)[1].weight.detach().cpu(),
                "sampled_accuracy": result.metrics["sampled_accuracy"],
            },
            result_path,
        )


def gppu_original_after(trainer: UnlearningTrainer, result_path: str) -> None:
    """gppu with the default evaluation: the original measured after it, through its tail, on every process."""
    result = trainer.unlearn()
    if trainer.accelerator.is_main_process:
        with open(result_path, "w") as handle:
            json.dump({"num_processes": trainer.accelerator.num_processes, "original": result.original_metrics,
                       "block": result.metrics["original_measured_from_block"]}, handle)  # fmt: skip


def fisher_diagonals(trainer: UnlearningTrainer, result_path: str) -> None:
    """remain_geometry's Fisher diagonals over 128 forget and 128 retain rows in batches of 32 (each process's share
    is 64 rows, a whole number of batches, so both runs see the same batches)."""
    from hf_unlearn.methods.remain_geometry import fisher_diagonal

    parameters = dict(trainer.model.named_parameters())
    fisher = {
        split: fisher_diagonal(trainer, view.select(range(128)), parameters, split)
        for split, view in (("forget", trainer.forget_view), ("retain", trainer.retain_view))
    }
    if trainer.accelerator.is_main_process:
        torch.save({"num_processes": trainer.accelerator.num_processes, "fisher": fisher}, result_path)


@dataclass
class RankEditConfig:
    """No settings."""


class RankEdit(UnlearningMethod):
    """A whole-weight edit that differs between processes (the head's bias moved by the process index), as a
    computation that is not bit-identical across devices would: the trainer must make every process go on with
    process 0's weights."""

    supports_sharding = False

    @torch.no_grad()
    def run(self) -> None:
        self.trainer.model.classifier.bias += float(self.trainer.accelerator.process_index)


class ShardedRankEdit(RankEdit):
    """The same difference after a method that trains in the Trainer's loop under DDP (`supports_sharding`), as
    BatchNorm running statistics, which each process updates from its own batches, end up."""

    supports_sharding = True


def rank_edit_weights(model_dir: str, output_dir: str, result_path: str, sharded: bool = False) -> UnlearningTrainer:
    """Every process writes its head bias after `test_rank_edit` to RESULT_PATH.<rank>. The method is registered
    here, in the worker's process only: the test session imports this module and must not see it."""
    register_method("test_rank_edit", RankEditConfig, ShardedRankEdit if sharded else RankEdit,
                    description="Test only: a per-process weight edit.")  # fmt: skip
    trainer = make_trainer(model_dir, output_dir, "test_rank_edit")
    trainer.args.eval_before_unlearn = trainer.args.eval_after_unlearn = False
    trainer.unlearn()
    torch.save({"num_processes": trainer.accelerator.num_processes,
                "bias": trainer.model.classifier.bias.detach().cpu()},
               f"{result_path}.{trainer.accelerator.process_index}")  # fmt: skip
    return trainer


def gan_cascade_in_step(model_dir: str, output_dir: str, result_path: str) -> UnlearningTrainer:
    """Class unlearning of a small saved GAN with an untrained judge; every process writes its run (stopping
    iteration, checked values, weights) to RESULT_PATH.<rank>."""
    from hf_unlearn.gan import GANPair

    torch.manual_seed(0)  # the same judge everywhere
    judge = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    digits = load_digits_dataset(image_size=8)
    args = UnlearnConfig(output_dir=output_dir, method="gan_cascade", disable_tqdm=True, report_to="none",
                         eval_before_unlearn=False, eval_after_unlearn=False,
                         method_kwargs={"max_iterations": 6, "check_every": 2, "check_samples": 64})  # fmt: skip
    trainer = UnlearningTrainer(GANPair.from_pretrained(model_dir), args, train_dataset=digits["train"],
                                eval_dataset=digits["test"], judge=judge, forget_classes=[3])  # fmt: skip
    trainer.unlearn()
    report, rank = trainer.method.report, trainer.accelerator.process_index
    torch.save({"num_processes": trainer.accelerator.num_processes, "iterations": report["iterations"],
                "last_check": report["last_check"], "weights": trainer.model.state_dict(),
                "agreed": trainer.method.agreed({"rank": float(rank)}),
                "next_draw": torch.rand(4)},  # where this process's stream of draws went
               f"{result_path}.{trainer.accelerator.process_index}")  # fmt: skip
    return trainer


def half_precision_run(trainer: UnlearningTrainer, result_path: str) -> None:
    """A float16 model's run (weights cast to float32 for the method, back after, then process 0's broadcast)."""
    result = trainer.unlearn()
    torch.save({"num_processes": trainer.accelerator.num_processes, "weights": trainer.model.state_dict(),
                "metrics": {key: result.metrics[key] for key in ("forget_accuracy", "retain_accuracy")}},
               f"{result_path}.{trainer.accelerator.process_index}")  # fmt: skip


def two_runs_wrappers(trainer: UnlearningTrainer, result_path: str) -> None:
    """Two `finetune` runs on one trainer, the second with LoRA adapters; process 0 writes whether each run trained
    through its own DDP wrapper holding the adapters' parameters."""
    from peft.tuners.lora import LoraLayer

    wrappers, adapters = [], []
    trainer.args.max_steps, trainer.args.eval_before_unlearn, trainer.args.eval_after_unlearn = 1, False, False
    for peft_config in (None, {"r": 2}):
        trainer.args.peft_config = peft_config

        def record(*args, **kwargs):
            wrapper = trainer.model_wrapped
            wrappers.append(wrapper)
            adapters.append(sum(isinstance(module, LoraLayer) for module in wrapper.module.modules()))

        trainer.add_callback(type("Record", (TrainerCallback,), {"on_step_end": record}))
        trainer.unlearn()
        trainer.pop_callback(trainer.callback_handler.callbacks[-1])
    if trainer.accelerator.is_main_process:
        with open(result_path, "w") as handle:
            json.dump({"types": [type(wrapper).__name__ for wrapper in wrappers], "adapters": adapters,
                       "same_wrapper": wrappers[0] is wrappers[1]}, handle)  # fmt: skip


def failing_save(trainer: UnlearningTrainer, result_path: str) -> None:
    """Process 0's write of the model fails (a full disk); every process writes the error its `save_unlearned`
    raised to RESULT_PATH.<rank> (a process left waiting for the others would hang instead)."""
    rank = trainer.accelerator.process_index
    if rank == 0:
        def full_disk(*args, **kwargs):
            raise OSError(28, "No space left on device")

        trainer._save = full_disk
    try:
        trainer.save_unlearned(os.path.join(os.path.dirname(result_path), "saved"))
        raised = None
    except Exception as error:  # what each process saw
        raised = f"{type(error).__name__}: {error}"
    with open(f"{result_path}.{rank}", "w") as handle:
        handle.write(str(raised))


if __name__ == "__main__":
    torch.set_num_threads(1)  # two processes on a 2-core machine (not on import: the tests import this module)
    mode, model_dir, result_path = sys.argv[1:4]
    output_dir = os.path.dirname(result_path)
    if mode == "metrics":
        trainer = make_trainer(model_dir, output_dir, "finetune")
        metrics(trainer, result_path)
    elif mode == "fisher":
        trainer = make_trainer(model_dir, output_dir, "remain_geometry")
        fisher_diagonals(trainer, result_path)
    elif mode in ("rank_edit", "rank_edit_sharded"):
        trainer = rank_edit_weights(model_dir, output_dir, result_path, sharded=mode == "rank_edit_sharded")
    elif mode == "gan":
        trainer = gan_cascade_in_step(model_dir, output_dir, result_path)
    elif mode == "gppu_original":
        trainer = make_trainer(model_dir, output_dir, "gppu", GPPU_HEAD_ONLY)
        gppu_original_after(trainer, result_path)
    elif mode == "half":
        trainer = make_trainer(model_dir, output_dir, "gppu", GPPU_HEAD_ONLY)
        half_precision_run(trainer, result_path)
    elif mode == "two_runs":
        trainer = make_trainer(model_dir, output_dir, "finetune")
        two_runs_wrappers(trainer, result_path)
    elif mode == "failing_save":
        trainer = make_trainer(model_dir, output_dir, "gppu", GPPU_HEAD_ONLY)
        failing_save(trainer, result_path)
    elif mode == "gppu":
        trainer = make_trainer(model_dir, output_dir, "gppu", GPPU_HEAD_ONLY)
        gppu_features_and_head(trainer, result_path)
    else:
        trainer = make_trainer(model_dir, output_dir, "svd_projection", SVD_KWARGS)
        svd_statistics_and_projection(trainer, result_path)
    trainer.accelerator.end_training()
