"""The `hf-unlearn` command: help, dispatch, YAML plus command-line overrides, and errors that name the problem.
(A whole job runs in tests/test_audio.py.)"""

import subprocess
import sys

import pytest
import yaml

from hf_unlearn.cli import main, parse_job

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


def test_help_of_the_command_and_of_unlearn():
    top = subprocess.run([sys.executable, "-m", "hf_unlearn", "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and "unlearn" in top.stdout
    sub = subprocess.run([sys.executable, "-m", "hf_unlearn", "unlearn", "--help"], capture_output=True, text=True)
    assert sub.returncode == 0
    for option in ("--config", "--model_name_or_path", "--forget_classes", "--method", "--learning_rate"):
        assert option in sub.stdout


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
