"""Run by test_distributed.py under `torchrun --nproc_per_node 2` (fresh processes: forking a process that already
ran torch deadlocks its thread pool). Writes the gathered metrics of process 0 to argv[2]."""

import json
import os
import sys

import torch

torch.set_num_threads(1)

from transformers import AutoModelForImageClassification  # noqa: E402

from hf_unlearn import UnlearnConfig, UnlearningTrainer  # noqa: E402
from hf_unlearn.digits import load_digits_dataset  # noqa: E402


def main(model_dir: str, result_path: str) -> None:
    digits = load_digits_dataset()
    args = UnlearnConfig(
        output_dir=os.path.dirname(result_path),
        method="finetune",
        per_device_eval_batch_size=64,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = UnlearningTrainer(
        AutoModelForImageClassification.from_pretrained(model_dir),
        args,
        train_dataset=digits["train"],
        eval_dataset=digits["test"],
        forget_classes=[3],
    )
    _, labels = trainer.predict_logits(digits["test"])
    metrics = trainer.evaluate_unlearning()
    if trainer.accelerator.is_main_process:
        with open(result_path, "w") as handle:
            json.dump(
                {"num_processes": trainer.accelerator.num_processes, "labels": labels.tolist(), "metrics": metrics},
                handle,
            )
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
