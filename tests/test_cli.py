"""The `hf-unlearn` command: help, dispatch, YAML plus command-line overrides, and errors that name the problem.
(A whole job runs in tests/test_audio.py.)"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_unlearn.cli import main, parse_job
from hf_unlearn.examples.digits import DIGIT_NAMES

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

JOB = {
    "model_name_or_path": "org/model",
    "dataset_name": "org/data",
    "forget_classes": ["yes"],
    "output_dir": "out",
    "method": "gppu",
    "method_kwargs": {"num_neighbors": 5},
    "learning_rate": 1e-5,
}


def write(tmp_path, values):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_help_of_the_command_and_of_every_subcommand():
    top = subprocess.run([sys.executable, "-m", "hf_unlearn", "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and all(command in top.stdout for command in ("unlearn", "evaluate", "methods"))
    expected = {
        "unlearn": (
            "--config",
            "--model_name_or_path",
            "--forget_classes",
            "--method",
            "--learning_rate",
            "--peft_config",
        ),
        "evaluate": ("--config", "--model_name_or_path", "--reference_model", "--results_file"),
        "methods": ("--help",),
    }
    for command, options in expected.items():
        sub = subprocess.run([sys.executable, "-m", "hf_unlearn", command, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0, (command, sub.stderr[-500:])
        for option in options:
            assert option in sub.stdout, (command, option)
        if command != "methods":  # the job's options first (--config leading), the Trainer's last, under headings
            text = sub.stdout
            job, unlearning, training = (text.index(heading) for heading in ("\njob:", "\nunlearning:", "\ntraining:"))
            assert text.index("--config CONFIG", job) < text.index("--model_name_or_path", job) < unlearning
            assert text.index("--method ", unlearning) < training < text.index("--learning_rate", training)


def test_the_top_level_help_does_not_load_torch():
    code = "import sys; from hf_unlearn.cli import main; main(['--help']); assert 'torch' not in sys.modules"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0 and "commands:" in completed.stdout, completed.stderr[-1000:]


def test_methods_lists_every_method_with_its_paper(capsys):
    from hf_unlearn import available_methods

    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    for name in available_methods():
        assert f"\n{name} " in f"\n{listed}", name
    assert "https://arxiv.org/abs/2409.19732" in listed and "reconstruction" in listed
    assert "defaults: optim=adamw_torch, learning_rate=0.0003, max_steps=300" in listed  # remain_geometry's budget


def parquet_files(digits, folder) -> dict:
    """The digits splits written as parquet files in `folder` (what a job's `data_files` names)."""
    files = {split: str(folder / f"{split}.parquet") for split in ("train", "test")}
    for split, path in files.items():
        digits[split].to_parquet(path)
    return files


def test_evaluate_measures_a_saved_unlearned_model_against_a_reference(trained, digits, tmp_path, capsys):
    """`unlearn` then `evaluate` on its output: the forget classes default to the ones the model records, and a
    reference model adds the gaps."""
    model_dir, files = tmp_path / "model", parquet_files(digits, tmp_path)
    trained("resnet").save_pretrained(model_dir)
    common = ["--data_files", json.dumps(files), "--disable_tqdm", "true", "--dataset_name", "parquet"]
    job = ["--config", str(RECIPES / "digits" / "vit_gppu.yaml"), "--model_name_or_path", str(model_dir), *common]
    assert main(["unlearn", *job, "--output_dir", str(tmp_path / "unlearned")]) == 0
    results = tmp_path / "metrics.json"
    evaluate = ["evaluate", *job, "--model_name_or_path", str(tmp_path / "unlearned"), "--forget_classes"]
    with pytest.raises(SystemExit):  # --forget_classes needs a value: argparse's own error
        main(evaluate)
    capsys.readouterr()
    main([*evaluate[:-1], "--reference_model", str(model_dir), "--results_file", str(results),
          "--output_dir", str(tmp_path / "evaluate")])  # fmt: skip
    report = capsys.readouterr().out
    assert "retrain |" in report.splitlines()[0]  # the reference's column is printed, per class too
    assert re.search(r"forget accuracy \(eval\): unlearned +[\d.]+ %  retrain 100\.0 %", report), report
    metrics = json.loads(results.read_text())["metrics"]
    assert metrics["forget_accuracy"] <= 0.05 and metrics["retain_accuracy"] >= 0.95
    assert metrics["reference_forget_accuracy"] == 1.0  # the original model as the "reference"
    assert metrics["gap_forget_accuracy"] >= 0.95 and metrics["mean_gap"] > 0


def test_the_gan_recipe_runs_a_gan_job_with_its_judge(trained, digits, tmp_path, capsys):
    """`recipes/digits/gan_cascade.yaml` with a small saved GAN and a saved judge: the unlearned GAN is saved with its
    card, and the report shows the share of each class among the samples."""
    from hf_unlearn.gan import GANPair, dcgan_pair

    dcgan_pair(latent_dim=8, width=4, labels=DIGIT_NAMES).save_pretrained(tmp_path / "gan")
    trained("resnet").save_pretrained(tmp_path / "judge")
    files = parquet_files(digits, tmp_path)
    status = main(["unlearn", "--config", str(RECIPES / "digits" / "gan_cascade.yaml"), "--model_name_or_path",
                   str(tmp_path / "gan"), "--judge_model", str(tmp_path / "judge"), "--data_files", json.dumps(files),
                   "--output_dir", str(tmp_path / "out"), "--method_kwargs", '{"max_iterations": 2}',
                   "--eval_generated_samples", "64", "--disable_tqdm", "true"])  # fmt: skip
    report = capsys.readouterr().out
    assert "three |" in report and "<- forgotten" in report and "Frechet distance to real retained rows (judge features): original" in report
    assert "retain_judge_accuracy" not in report  # an unconditional GAN has no per-class target
    results = json.loads((tmp_path / "out" / "unlearning_results.json").read_text())
    # An untrained GAN's samples are hardly ever a "three" to the judge, before as after: nothing shows forgetting,
    # so the run says so (exit status 1, "NOT CHECKED") and records nothing.
    assert results["metrics"]["forget_check"]["original_at_threshold"] and status == 1
    assert "unlearning check: NOT CHECKED" in report
    reloaded = GANPair.from_pretrained(tmp_path / "out")
    assert not getattr(reloaded.config, "unlearned_classes", None)
    assert results["kind"] == "gan" and results["metrics"]["iterations"] == 2


def test_the_ddpm_recipe_runs_a_diffusion_job_with_its_judge(trained, digits, tmp_path, capsys):
    """`recipes/digits/ddpm_remain_geometry.yaml` with a small saved DDPM and a saved judge: the unlearned model is
    saved as a diffusers pipeline with its card, and the report shows FA and the retained classes' judge accuracy."""
    from hf_unlearn.diffusion import DiffusionModel, small_ddpm

    small_ddpm(widths=(8, 16), num_train_timesteps=50, labels=DIGIT_NAMES).save_pretrained(tmp_path / "ddpm")
    trained("resnet").save_pretrained(tmp_path / "judge")
    files = parquet_files(digits, tmp_path)
    status = main(["unlearn", "--config", str(RECIPES / "digits" / "ddpm_remain_geometry.yaml"), "--model_name_or_path",
                   str(tmp_path / "ddpm"), "--judge_model", str(tmp_path / "judge"), "--data_files", json.dumps(files),
                   "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--eval_generated_samples", "8",
                   "--eval_inference_steps", "2", "--disable_tqdm", "true"])  # fmt: skip
    report = capsys.readouterr().out
    assert "<- forgotten" in report and "judge: samples showing a forget class (conditional: of those generated for it): original" in report
    assert "judge: samples showing the retained class they were generated for: original" in report
    results = json.loads((tmp_path / "out" / "unlearning_results.json").read_text())
    # An untrained DDPM's samples of "three" are not threes to the judge, before as after: not checked, not recorded.
    assert results["metrics"]["forget_check"]["original_at_threshold"] and status == 1
    reloaded = DiffusionModel.from_pretrained(tmp_path / "out")
    assert not reloaded.config.unlearned_classes
    assert results["kind"] == "diffusion" and results["metrics"]["iterations"] == 2
    # The card shows the settings the run resolved from the DDPM defaults, not None.
    assert results["method_config"]["forget_loss"] == "rl" and results["method_config"]["alpha"] == 10.0
    assert (tmp_path / "out" / "model_index.json").is_file()


def test_evaluate_needs_classes_when_the_model_records_none(trained, digits, tmp_path, capsys):
    trained("resnet").save_pretrained(tmp_path / "model")
    files = parquet_files(digits, tmp_path)
    assert main(["evaluate", "--model_name_or_path", str(tmp_path / "model"), "--dataset_name", "parquet",
                 "--data_files", json.dumps(files), "--output_dir", str(tmp_path / "out")]) == 1  # fmt: skip
    assert "error: `forget_classes` is required: " in capsys.readouterr().err


def test_unknown_command_lists_the_commands(capsys):
    assert main(["forget"]) == 2
    assert "unknown command 'forget'. Available: unlearn" in capsys.readouterr().err
    assert main([]) == 2


def test_command_line_overrides_the_yaml(tmp_path):
    job, args = parse_job(["--config", write(tmp_path, JOB), "--learning_rate", "3e-4", "--forget_classes", "no", "up"])
    assert job.model_name_or_path == "org/model" and job.forget_classes == ["no", "up"]
    assert args.learning_rate == 3e-4 and args.method == "gppu"
    assert args.method_config.num_neighbors == 5  # method_kwargs from the YAML, resolved to the method's config
    assert job.align_labels is True
    job, _ = parse_job(["--config", write(tmp_path, JOB), "--no_align_labels"])
    assert job.align_labels is False


def test_dict_options_update_the_yamls_key_by_key(tmp_path):
    """`--method_kwargs` / `--peft_config` over a YAML that has them change the keys given and keep the others (a
    recipe's settings no longer vanish); `--method` of another method drops the YAML's method_kwargs."""
    values = {**JOB, "method_kwargs": {"num_neighbors": 5, "forget_objective": "projection"}}
    for form in (["--method_kwargs", '{"num_neighbors": 3}'], ['--method_kwargs={"num_neighbors": 3}']):
        _, args = parse_job(["--config", write(tmp_path, values), *form])
        assert args.method_config.num_neighbors == 3 and args.method_config.forget_objective == "projection"
    lora = {**JOB, "method": "neggrad_plus", "method_kwargs": None,
            "peft_config": {"r": 4, "target_modules": ["query", "value"]}}  # fmt: skip
    _, args = parse_job(["--config", write(tmp_path, lora), "--peft_config", '{"r": 8}'])
    assert args.peft_config == {"r": 8, "target_modules": ["query", "value"]}
    _, args = parse_job(["--config", write(tmp_path, values), "--method", "neggrad_plus"])
    assert args.method == "neggrad_plus" and not args.method_kwargs


def test_unknown_yaml_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"neither JobArguments nor UnlearnConfig fields: \['learning_rat'\]"):
        parse_job(["--config", write(tmp_path, {**JOB, "learning_rat": 1e-3})])


def test_missing_job_fields_are_named(tmp_path):
    values = {key: value for key, value in JOB.items() if key != "dataset_name"}
    with pytest.raises(ValueError, match="`dataset_name` is required"):
        parse_job(["--config", write(tmp_path, values)])


def test_data_files_as_json_on_the_command_line(tmp_path):
    job, _ = parse_job(["--config", write(tmp_path, JOB), "--data_files", '{"train": "a.parquet"}'])
    assert job.data_files == {"train": "a.parquet"}
    with pytest.raises(ValueError, match="`data_files` must be a JSON object"):
        parse_job(["--config", write(tmp_path, JOB), "--data_files", "{train"])


def test_a_recipe_run_before_its_model_is_prepared_says_how_to_prepare_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outputs/digits-vit/... does not exist here
    assert main(["unlearn", "--config", str(RECIPES / "digits" / "vit_gppu.yaml")]) == 1
    error = capsys.readouterr().err
    assert "'outputs/digits-vit/model' is a local path that does not exist" in error
    assert "python -m hf_unlearn.examples.digits --output_dir outputs/digits-vit" in error


def test_card_fields_come_from_the_job_and_a_card_shows_only_what_ran(trained, digits, tmp_path):
    """`--license`, `--base_model`, `--card_dataset` fill the card's metadata; a gradient-free method's card shows no
    training budget, and gppu's lists the stages that ran."""
    from huggingface_hub import ModelCard

    model_dir, files = tmp_path / "model", parquet_files(digits, tmp_path)
    trained("resnet").save_pretrained(model_dir)
    common = ["--model_name_or_path", str(model_dir), "--dataset_name", "parquet", "--data_files", json.dumps(files),
              "--forget_classes", "three", "--disable_tqdm", "true"]  # fmt: skip
    assert main(["unlearn", *common, "--method", "svd_projection", "--output_dir", str(tmp_path / "svd"), "--license",
                 "apache-2.0", "--base_model", "my-org/digits-resnet", "--card_dataset", "my-org/digits"]) == 0
    card = ModelCard((tmp_path / "svd" / "README.md").read_text())
    assert card.data.license == "apache-2.0" and card.data.base_model == "my-org/digits-resnet"
    assert card.data.datasets == ["my-org/digits"] and "Dataset: my-org/digits" in card.text
    assert "No training budget: `svd_projection` did not train the network" in card.text
    assert "Training budget (`UnlearnConfig`)" not in card.text
    assert main(["unlearn", *common, "--method", "gppu", "--output_dir", str(tmp_path / "gppu")]) == 0
    card = (tmp_path / "gppu" / "README.md").read_text()
    assert "Stages that ran: head projection, head refit, tail fine-tuning (" in card and "Training budget" in card
    assert main(["unlearn", *common, "--method", "gppu", "--output_dir", str(tmp_path / "gppu-head"),
                 "--method_kwargs", '{"forget_objective": "projection"}']) == 0  # fmt: skip
    head_only = (tmp_path / "gppu-head" / "README.md").read_text()
    assert "Stages that ran: head projection, head refit" in head_only and "Training budget" not in head_only
    from hf_unlearn.hub import escape_markdown

    # A builder's data is named by its files' folder, not "parquet" (escaped as every name from data is).
    assert "Dataset: " + escape_markdown(Path(files["train"]).parent.name) in card


@pytest.mark.parametrize("files, name", [
    ({"train": "https://user:SECRET@host.example/digits/train.parquet?token=SECRET"}, "digits"),
    ({"train": ["s3://KEY:SECRET@bucket/spoken/part-0.parquet"]}, "spoken"),
    ({"train": "/home/alice/data/words/train.parquet"}, "words"),
])
def test_the_cards_dataset_name_holds_no_credentials_of_a_url(files, name):
    """A builder over remote files names the card's dataset by the files' folder: from a URL's path, never its
    user, password or query (the card and results are pushed)."""
    from hf_unlearn.cli import card_dataset_name
    from hf_unlearn.jobs import JobArguments

    job = JobArguments(model_name_or_path="m", dataset_name="parquet", data_files=files)
    assert card_dataset_name(job) == name


@pytest.mark.parametrize("check, status", [
    ({"passed": True}, 0), ({"passed": False}, 1), ({"passed": None}, 0),
    ({"passed": None, "original_at_threshold": True}, 1),  # nothing showed that it forgot: not a success
])  # fmt: skip
def test_the_exit_status_follows_the_runs_verdict(check, status, monkeypatch):
    from types import SimpleNamespace

    import hf_unlearn.cli

    monkeypatch.setattr(hf_unlearn.cli, "unlearn_command", lambda argv: SimpleNamespace(metrics={"forget_check": check}))
    assert main(["unlearn"]) == status


def test_a_judge_whose_processor_resizes_or_normalises_is_warned_about():
    """The CLI loads a judge with its processor, which hf-unlearn does not apply (the judge gets the generator's
    tensors): a processor that would resize or normalise means the judge's numbers may mean nothing, and is said."""
    from transformers import ViTImageProcessor

    from hf_unlearn.cli import judge_processor_warning

    warning = judge_processor_warning("me/judge", ViTImageProcessor())
    assert "'me/judge' comes with a ViTImageProcessor" in warning and "that resizes and normalises its images" in warning
    plain = ViTImageProcessor(do_resize=False, do_normalize=False)
    assert judge_processor_warning("me/judge", plain) is None and judge_processor_warning("me/judge", None) is None
