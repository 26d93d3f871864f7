"""Model cards and push_to_hub against a loopback test Hub (tests/hub_server.py): one commit with the model, its card
and plot; the model loads back by its ID; the card parses with distinct forget and retain results; a push without a
token, to a refused repository or into the original model's repository fails clearly and leaves the local files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import TOKEN, USER, LoopbackHub

WORKER = Path(__file__).with_name("hub_worker.py")


@pytest.fixture
def hub():
    with LoopbackHub() as server:
        yield server


def push(hub, model, output_dir, hub_model_id, token=TOKEN, home=None, endpoint=None, mode="method"):
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint or hub.endpoint, HF_HOME=str(home or Path(output_dir).parent / "hf_home"),
               HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1", HUB_WORKER_MODE=mode)  # fmt: skip
    if token:
        env["HF_TOKEN"] = token
    command = [sys.executable, str(WORKER), str(model), str(output_dir), hub_model_id]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture
def original(trained, tmp_path):
    path = tmp_path / "original"
    trained("resnet").save_pretrained(path)
    return path


def test_push_is_one_commit_that_loads_back_with_a_parsable_card(hub, original, tmp_path):
    from huggingface_hub import ModelCard

    result = push(hub, original, tmp_path / "out", f"{USER}/digits-unlearned")
    assert result == {"pushed": f"{USER}/digits-unlearned", "same_logits": True}
    assert len(hub.state.commits) == 1
    files = hub.state.commits[0].files
    assert {
        "README.md",
        "per_class_accuracy.png",
        "unlearning_results.json",
        "config.json",
        "model.safetensors",
    } <= set(files)
    assert files["per_class_accuracy.png"].startswith(b"\x89PNG")
    card = ModelCard(files["README.md"].decode())
    assert "![Per-class accuracy before and after unlearning](per_class_accuracy.png)" in card.text
    splits = {result.dataset_split: result for result in card.data.eval_results if result.metric_type == "accuracy"}
    assert splits["eval-forget"].dataset_name != splits["eval-retain"].dataset_name
    assert (
        splits["eval-forget"].metric_name == "forget accuracy (eval)"
        and splits["eval-retain"].metric_name == "retain accuracy (eval)"
    )
    recorded = json.loads(files["unlearning_results.json"])
    assert splits["eval-retain"].metric_value == pytest.approx(recorded["metrics"]["retain_accuracy"], abs=1e-4)
    assert card.data.model_name == f"{USER}/digits-unlearned" and "hf-unlearn" in card.data.tags


def test_a_push_without_a_token_fails_clearly_and_keeps_the_local_files(hub, original, tmp_path):
    result = push(hub, original, tmp_path / "out", f"{USER}/digits-unlearned", token=None)
    assert result["error"] == "ValueError"
    assert "needs a Hugging Face token" in result["message"] and str(tmp_path / "out") in result["message"]
    assert {"model.safetensors", "README.md", "per_class_accuracy.png"} <= {
        p.name for p in (tmp_path / "out").iterdir()
    }
    assert not hub.state.commits


def test_a_refused_repository_fails_clearly_and_keeps_the_local_files(hub, original, tmp_path):
    result = push(hub, original, tmp_path / "out", "forbidden-org/digits-unlearned")
    assert result["error"] == "RuntimeError"
    assert "Pushing to 'forbidden-org/digits-unlearned' failed while creating the repository (HTTP 403" in result[
        "message"]  # fmt: skip
    assert "Nothing reached the Hub" in result["message"] and f"saved locally in {tmp_path / 'out'}" in result["message"]
    assert (tmp_path / "out" / "model.safetensors").is_file() and not hub.state.commits


def test_the_original_models_repository_is_never_the_target(hub, original, tmp_path):
    hub.state.commit(f"{USER}/original", "upload", {path.name: path.read_bytes() for path in original.iterdir()})
    result = push(hub, f"{USER}/original", tmp_path / "out", f"{USER}/original")
    assert result["error"] == "ValueError" and "would write into the original model's repository" in result["message"]
    assert len(hub.state.commits) == 1  # only the upload above


def test_an_unlearned_gan_is_pushed_with_its_card_and_loads_back(hub, tmp_path):
    from huggingface_hub import ModelCard

    from hf_unlearn.examples.digits import DIGIT_NAMES
    from hf_unlearn.gan import dcgan_pair

    dcgan_pair(latent_dim=8, width=4, labels=DIGIT_NAMES).save_pretrained(tmp_path / "gan")
    result = push(hub, tmp_path / "gan", tmp_path / "out", f"{USER}/digits-gan-unlearned")
    assert result == {"pushed": f"{USER}/digits-gan-unlearned", "same_samples": True}
    files = hub.state.commits[0].files
    assert {"README.md", "unlearning_results.json", "config.json", "model.safetensors"} <= set(files)
    assert json.loads(files["config.json"])["model_type"] == "hf_unlearn_gan"
    card = ModelCard(files["README.md"].decode())
    assert card.data.pipeline_tag == "unconditional-image-generation"
    # a sample-level request of a generator has nothing that checks it (no held-out rows to compare with): said so
    assert "**8 training rows** put through unlearning (**not checked**" in card.text


def test_the_push_to_hub_flag_pushes_once_and_no_file_holds_the_token(hub, original, tmp_path):
    """`UnlearnConfig(push_to_hub=True, hub_token=...)` then `trainer.save_model()`: one repository creation and one
    commit (no recursion, no empty repository made at start-up), and neither the pushed nor the local files hold the
    token (training_args.bin is a pickle of the arguments)."""
    import torch

    result = push(hub, original, tmp_path / "out", f"{USER}/flagged", mode="flag")
    assert result == {"pushed": f"{USER}/flagged", "same_logits": True}
    assert len(hub.state.commits) == 1 and hub.state.requests.count("POST /api/repos/create") == 1
    pushed = hub.state.commits[0].files
    assert {"README.md", "unlearning_results.json", "model.safetensors", "training_args.bin"} <= set(pushed)
    local = {path.name: path.read_bytes() for path in (tmp_path / "out").iterdir() if path.is_file()}
    for name, content in {**pushed, **local}.items():
        assert TOKEN.encode() not in content, name
    args = torch.load(tmp_path / "out" / "training_args.bin", weights_only=False)
    assert args.hub_token is None and args.push_to_hub


def test_a_closed_port_fails_clearly_after_writing_everything_locally(hub, original, tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = push(hub, original, tmp_path / "out", f"{USER}/digits-unlearned", endpoint=closed)
    assert result["error"] == "RuntimeError"
    message = result["message"]
    assert "failed while creating the repository" in message and "Nothing reached the Hub" in message
    assert f"hf upload {USER}/digits-unlearned {tmp_path / 'out'}" in message
    assert {"model.safetensors", "README.md", "unlearning_results.json", "per_class_accuracy.png"} <= {
        path.name for path in (tmp_path / "out").iterdir()
    }


@pytest.mark.parametrize("failure", [500, "drop"])
def test_a_failed_commit_leaves_no_empty_repository(hub, original, tmp_path, failure):
    """A server error or a dropped connection during the commit: the repository this push created is deleted again,
    the error says so, and the card is in the local folder as the message says."""
    hub.state.fail_commits = failure
    result = push(hub, original, tmp_path / "out", f"{USER}/digits-unlearned")
    assert result["error"] == "RuntimeError"
    message = result["message"]
    assert "failed while uploading" in message and "was deleted again" in message, message
    assert f"{USER}/digits-unlearned" not in hub.state.repos and not hub.state.commits
    assert (tmp_path / "out" / "README.md").is_file() and "its card (README.md)" in message


def test_a_commit_whose_answer_is_lost_is_not_deleted(hub, original, tmp_path):
    """The server applied the commit but the connection dropped before its answer: the repository holds the model,
    so it is kept, and the error says the upload seems to have landed."""
    hub.state.fail_commits = "drop-after"
    result = push(hub, original, tmp_path / "out", f"{USER}/digits-unlearned")
    assert result["error"] == "RuntimeError" and "seems to have reached" in result["message"], result
    # (huggingface_hub retries a dropped request: each retry lands again here.)
    assert f"{USER}/digits-unlearned" in hub.state.repos and hub.state.commits
    assert "model.safetensors" in hub.state.repos[f"{USER}/digits-unlearned"].files


def test_the_cli_pushes_once(hub, original, digits, tmp_path):
    """`hf-unlearn unlearn --push_to_hub true`: the job's folder (model, card, results) in one commit."""
    files = {split: str(tmp_path / f"{split}.parquet") for split in ("train", "test")}
    for split, path in files.items():
        digits[split].to_parquet(path)
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_TOKEN=TOKEN, OMP_NUM_THREADS="1",
               HF_HUB_DISABLE_TELEMETRY="1")  # fmt: skip
    command = [sys.executable, "-m", "hf_unlearn", "unlearn", "--model_name_or_path", str(original), "--dataset_name",
               "parquet", "--data_files", json.dumps(files), "--forget_classes", "three", "--method", "gppu",
               "--output_dir", str(tmp_path / "out"), "--push_to_hub", "true", "--hub_model_id", f"{USER}/cli-pushed",
               "--disable_tqdm", "true"]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert len(hub.state.commits) == 1 and hub.state.commits[0].repo_id == f"{USER}/cli-pushed"
    pushed = hub.state.commits[0].files
    assert {"README.md", "unlearning_results.json", "model.safetensors", "per_class_accuracy.png"} <= set(pushed)
    assert json.loads(pushed["unlearning_results.json"])["job"]["data_files"] == {
        "train": "train.parquet", "test": "test.parquet"}  # fmt: skip


def test_the_pushed_cards_quick_start_runs_from_the_pushed_files(hub, original, tmp_path):
    """The card's quick start, taken from the README.md that reached the Hub and run as written in an empty folder,
    loads the model from the (loopback) Hub and classifies a row."""
    import re

    push(hub, original, tmp_path / "out", f"{USER}/quick-start")
    card = hub.state.commits[0].files["README.md"].decode()
    section = card[card.index("## Quick start") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    assert f'"{USER}/quick-start"' in code
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "fresh_home"), HF_HUB_DISABLE_TELEMETRY="1")
    (tmp_path / "user").mkdir()
    completed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "user", env=env, capture_output=True,
                               text=True, timeout=300)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert completed.stdout.strip().splitlines()[-1] in names


def test_the_retry_command_keeps_the_push_private_and_on_its_revision(tmp_path):
    """`hf upload` alone creates a public repository and uploads to main: the command a failed push suggests keeps
    `hub_private_repo` and `hub_revision`, and quotes a folder path with spaces."""
    from hf_unlearn.hub import _push_failure

    folder = tmp_path / "my model"
    message = _push_failure(None, f"{USER}/m", False, "uploading", ConnectionError("gone"), folder, private=True,
                            revision="v1")  # fmt: skip
    assert f"hf upload {USER}/m '{folder}' --exclude '_*' --exclude 'checkpoint-*/*' --exclude 'runs/*' --private " \
           "--revision v1`" in message
    public = _push_failure(None, f"{USER}/m", False, "uploading", ConnectionError("gone"), tmp_path)
    assert "--private" not in public and "--revision" not in public
