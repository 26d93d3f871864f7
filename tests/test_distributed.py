"""Work split over 2 processes (gloo on CPU, torchrun) gives what 1 process gives on the same samples: the gathered
metrics, svd_projection's Gram statistics (summed with all_reduce) and projected weights, and gppu's head features
(gathered in row order), forget directions and unlearned head, and remain_geometry's Fisher diagonals (summed with
all_reduce)."""

import json
import os
import subprocess
import sys

import distributed_worker as worker
import pytest
import torch


def run_two_processes(mode, model_dir, result_path, port, timeout=600):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
        worker.__file__, mode, str(model_dir), str(result_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_metrics_over_two_processes_equal_one(trained, digits, tmp_path):
    trained("vit").save_pretrained(tmp_path / "model")
    single_trainer = worker.make_trainer(str(tmp_path / "model"), str(tmp_path), "finetune")
    single = single_trainer.evaluate_unlearning()

    run_two_processes("metrics", tmp_path / "model", tmp_path / "two.json", 29513)
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
    # The Trainer's evaluate() and predict() over 2 processes: the same metrics, every eval row once, in order
    assert result["evaluated"]["eval_forget_accuracy"] == pytest.approx(single["forget_accuracy"], abs=1e-6)
    assert result["evaluated"]["eval_mia_entropy"] == pytest.approx(single["mia_entropy"], abs=1e-6)
    assert result["predicted_labels"] == digits["test"]["label"]
    single_classes = single_trainer.predict(digits["test"]).predictions.argmax(-1).tolist()
    assert result["predicted_classes"] == single_classes


@pytest.mark.parametrize("mode, port", [("rank_edit", 29518), ("rank_edit_sharded", 29521)])
def test_every_process_goes_on_with_process_0s_weights_after_the_method(mode, port, trained, tmp_path):
    """A gradient-free method computes whole weights on every process, and under DDP each process updates its own
    BatchNorm statistics; where the results differ (here on purpose: the process index is added to the head's
    bias), every process ends with process 0's, so what they measure and save is one model."""
    model = trained("vit")
    model.save_pretrained(tmp_path / "model")
    run_two_processes(mode, tmp_path / "model", tmp_path / "bias", port)
    ranks = [torch.load(tmp_path / f"bias.{rank}") for rank in range(2)]
    assert [result["num_processes"] for result in ranks] == [2, 2]
    torch.testing.assert_close(ranks[0]["bias"], model.classifier.bias.detach())  # process 0's edit adds 0
    torch.testing.assert_close(ranks[1]["bias"], ranks[0]["bias"], rtol=0, atol=0)


def test_svd_statistics_and_projection_over_two_processes_equal_one(trained, tmp_path):
    """ResNet: conv layers with the paper's random crops (drawn per sample, so the split does not matter), the
    linear head, the alpha search scored on held-out rows split between processes."""
    trained("resnet").save_pretrained(tmp_path / "model")
    single_trainer = worker.make_trainer(str(tmp_path / "model"), str(tmp_path), "svd_projection", worker.SVD_KWARGS)
    worker.svd_statistics_and_projection(single_trainer, str(tmp_path / "one.pt"))
    single = torch.load(tmp_path / "one.pt")

    run_two_processes("svd", tmp_path / "model", tmp_path / "two.pt", 29514)
    two = torch.load(tmp_path / "two.pt")
    assert (single["num_processes"], two["num_processes"]) == (1, 2)
    assert two["rows"] == single["rows"]
    for name, gram in single["grams"].items():
        torch.testing.assert_close(two["grams"][name], gram, rtol=1e-5, atol=1e-4 * gram.abs().max().item())
    # Layers that keep their few rows (`keep_rows`) gather them from both processes: the same rows, the same Gram.
    assert two["few_kept"] == single["few_kept"] and "classifier.1" in single["few_kept"]
    assert two["few_rows"] == single["few_rows"]
    for name, gram in single["few_grams"].items():
        torch.testing.assert_close(two["few_grams"][name], gram, rtol=1e-5, atol=1e-4 * gram.abs().max().item())
    assert len(two["alpha_grid"]) == len(single["alpha_grid"]) == 4
    for point_two, point_one in zip(two["alpha_grid"], single["alpha_grid"], strict=True):
        assert point_two == pytest.approx(point_one)
    original = trained("resnet").state_dict()
    for name, weight in single["weights"].items():
        torch.testing.assert_close(two["weights"][name], weight, rtol=1e-4, atol=1e-5)
    assert not torch.equal(single["weights"]["classifier.1.weight"], original["classifier.1.weight"])


def test_gppu_features_directions_and_head_over_two_processes_equal_one(trained, digits, tmp_path):
    trained("vit").save_pretrained(tmp_path / "model")
    single_trainer = worker.make_trainer(str(tmp_path / "model"), str(tmp_path), "gppu", worker.GPPU_HEAD_ONLY)
    worker.gppu_features_and_head(single_trainer, str(tmp_path / "one.pt"))
    single = torch.load(tmp_path / "one.pt")

    run_two_processes("gppu", tmp_path / "model", tmp_path / "two.pt", 29515)
    two = torch.load(tmp_path / "two.pt")
    assert (single["num_processes"], two["num_processes"]) == (1, 2)
    # Every forget row once, in dataset order (the forget set, 145 rows, does not split evenly over batches).
    assert two["labels"].tolist() == single["labels"].tolist() == [3] * len(single["labels"])
    torch.testing.assert_close(two["features"], single["features"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(two["directions"], single["directions"], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(two["head"], single["head"], rtol=1e-3, atol=1e-4)
    assert two["sampled_accuracy"].keys() == single["sampled_accuracy"].keys()
    for stage, accuracy in single["sampled_accuracy"].items():
        assert two["sampled_accuracy"][stage] == pytest.approx(accuracy), stage


def test_the_original_measured_after_gppu_over_two_processes_equals_one_whole_pass(trained, digits, tmp_path):
    trained("vit").save_pretrained(tmp_path / "model")
    single = worker.make_trainer(str(tmp_path / "model"), str(tmp_path), "gppu", worker.GPPU_HEAD_ONLY)
    original = single.evaluate_unlearning()  # the original, whole, in one process

    run_two_processes("gppu_original", tmp_path / "model", tmp_path / "two.json", 29519)
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["num_processes"] == 2 and two["block"] == "vit.layers.1"
    for name in ("forget_accuracy", "retain_accuracy", "forget_train_accuracy", "retain_train_accuracy",
                 "mia_entropy", "mia_efficacy", "feature_probe"):  # fmt: skip
        assert two["original"][name] == pytest.approx(original[name], abs=1e-6), name


def test_fisher_diagonals_over_two_processes_equal_one(trained, tmp_path):
    trained("resnet").save_pretrained(tmp_path / "model")
    worker.fisher_diagonals(
        worker.make_trainer(str(tmp_path / "model"), str(tmp_path), "remain_geometry"), str(tmp_path / "one.pt")
    )
    single = torch.load(tmp_path / "one.pt")
    run_two_processes("fisher", tmp_path / "model", tmp_path / "two.pt", 29516)
    two = torch.load(tmp_path / "two.pt")
    assert (single["num_processes"], two["num_processes"]) == (1, 2)
    for split in ("forget", "retain"):
        for name, value in single["fisher"][split].items():
            torch.testing.assert_close(
                two["fisher"][split][name], value, rtol=1e-4, atol=1e-10 + 1e-4 * value.abs().max().item()
            )
        assert any(value.abs().max() > 0 for value in single["fisher"][split].values())


def test_gan_cascade_processes_stay_in_step(tmp_path):
    """Two processes draw different rows, noise and check samples: the networks stay identical (their gradients are
    all-reduced by the accelerator's wrappers) and every check is agreed, so both stop at the same iteration."""
    from hf_unlearn.examples.digits import DIGIT_NAMES
    from hf_unlearn.gan import dcgan_pair

    dcgan_pair(image_size=8, latent_dim=8, width=4, labels=DIGIT_NAMES).save_pretrained(tmp_path / "gan")
    run_two_processes("gan", tmp_path / "gan", tmp_path / "run.pt", 29517)
    first, second = (torch.load(tmp_path / f"run.pt.{rank}") for rank in (0, 1))
    assert first["num_processes"] == second["num_processes"] == 2
    assert first["iterations"] == second["iterations"] and first["last_check"] == second["last_check"]
    assert first["agreed"] == second["agreed"] == {"rank": 0.5}  # a checked value is the mean over processes
    assert not torch.equal(first["next_draw"], second["next_draw"])  # each drew from its own stream
    for name, weight in first["weights"].items():
        assert torch.equal(weight, second["weights"][name]), name


def test_a_half_precision_model_over_two_processes_ends_as_one_in_its_dtype(trained, tmp_path):
    """A float16 model unlearned over 2 processes: both end with process 0's float16 weights (broadcast after they
    went back to float16), and the metrics of one process's run."""
    trained("vit").to(torch.float16).save_pretrained(tmp_path / "model")
    single = worker.make_trainer(str(tmp_path / "model"), str(tmp_path), "gppu", worker.GPPU_HEAD_ONLY)
    expected = single.unlearn().metrics
    run_two_processes("half", tmp_path / "model", tmp_path / "run.pt", 29520)
    first, second = (torch.load(tmp_path / f"run.pt.{rank}") for rank in (0, 1))
    assert first["num_processes"] == second["num_processes"] == 2
    for name, weight in first["weights"].items():
        assert weight.dtype == (torch.float16 if weight.is_floating_point() else weight.dtype), name
        assert torch.equal(weight, second["weights"][name]), name
    for name, value in first["metrics"].items():
        assert value == pytest.approx(expected[name], abs=1e-6), name


def test_a_save_that_fails_on_process_0_stops_every_process(trained, tmp_path):
    """The write of the model fails on process 0 only: both processes raise (process 1 saying another failed)
    instead of process 1 waiting for it at the next collective, and nothing is left in place of the output."""
    trained("vit").save_pretrained(tmp_path / "model")
    run_two_processes("failing_save", tmp_path / "model", tmp_path / "raised", 29523, timeout=240)
    raised = [(tmp_path / f"raised.{rank}").read_text() for rank in range(2)]
    assert raised[0].startswith("OSError") and "No space left" in raised[0]
    assert raised[1].startswith("RuntimeError: Another process failed")
    assert not (tmp_path / "saved").exists()


def test_a_second_run_on_one_trainer_trains_through_a_wrapper_of_its_own_parameters(trained, tmp_path):
    """DDP reduces the gradients of the parameters trainable when it wrapped the model: a second `unlearn()` with
    LoRA adapters must not train through the first run's wrapper, which knows none of them."""
    trained("vit").save_pretrained(tmp_path / "model")
    run_two_processes("two_runs", tmp_path / "model", tmp_path / "two.json", 29522)
    result = json.loads((tmp_path / "two.json").read_text())
    assert result["types"] == ["DistributedDataParallel"] * 2
    assert not result["same_wrapper"] and result["adapters"][0] == 0 and result["adapters"][1] > 0
