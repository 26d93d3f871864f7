"""Metrics gathered over 2 processes (gloo on CPU) equal those of 1 process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_unlearn import UnlearningTrainer


def test_metrics_over_two_processes_equal_one(trained, digits, make_args, tmp_path):
    model = trained("vit")
    model.save_pretrained(tmp_path / "model")
    single = UnlearningTrainer(
        model, make_args("finetune"), train_dataset=digits["train"], eval_dataset=digits["test"], forget_classes=[3]
    ).evaluate_unlearning()

    worker = Path(__file__).with_name("distributed_worker.py")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29513",
        str(worker),
        str(tmp_path / "model"),
        str(tmp_path / "two.json"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]

    result = json.loads((tmp_path / "two.json").read_text())
    assert result["num_processes"] == 2
    # Every eval row scored exactly once (no padding duplicates), in order.
    assert result["labels"] == digits["test"]["label"]
    for name in (
        "forget_accuracy",
        "retain_accuracy",
        "forget_train_accuracy",
        "retain_train_accuracy",
        "mia_entropy",
        "mia_efficacy",
    ):
        assert result["metrics"][name] == pytest.approx(single[name], abs=1e-6), name
    assert result["metrics"]["per_class_accuracy"] == pytest.approx(single["per_class_accuracy"])
