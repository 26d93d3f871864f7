"""Security and data safety (issue 18): nothing named by a config runs without `trust_remote_code=True`, no secret
or machine path reaches a saved or pushed file, outputs are atomic, bad input and non-finite values are refused."""

import json

import pytest

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.gan import GANPair, dcgan_pair
from hf_unlearn.models import load_model


@pytest.fixture
def hostile_gan(tmp_path):
    """A saved GAN folder whose config.json names `subprocess:getoutput` as its generator, with a command that writes
    a file: `(folder, file)`. The file exists afterwards only if something ran the command."""
    folder, witness = tmp_path / "hostile", tmp_path / "pwned"
    dcgan_pair(image_size=8, latent_dim=4, width=8).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(generator_class="subprocess:getoutput", generator_kwargs={"cmd": f"id > {witness}"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder, witness


def test_a_model_folder_cannot_run_code_without_trust_remote_code(hostile_gan, digits, tmp_path):
    folder, witness = hostile_gan
    for load in (
        lambda: GANPair.from_pretrained(folder),
        lambda: load_model(str(folder)),
        lambda: UnlearningTrainer(str(folder), UnlearnConfig(output_dir=str(tmp_path / "o"), method="gan_cascade"),
                                  train_dataset=digits["train"], eval_dataset=digits["test"], forget_classes=[3]),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=r"'subprocess:getoutput'.*refused.*trust_remote_code=True"):
            load()
        assert not witness.exists()


@pytest.mark.parametrize("option", ["--model_name_or_path", "--judge_model", "--reference_model"])
def test_the_cli_does_not_run_code_named_by_a_model_folder(hostile_gan, tmp_path, option, capsys):
    from hf_unlearn.cli import main

    folder, witness = hostile_gan
    saved = tmp_path / "gan"
    dcgan_pair(image_size=8, latent_dim=4, width=8).save_pretrained(saved)
    models = {"--model_name_or_path": str(saved), "--judge_model": str(saved), "--reference_model": str(saved)}
    models[option] = str(folder)
    command = "evaluate" if option == "--reference_model" else "unlearn"
    argv = [command, "--dataset_name", "nowhere", "--output_dir", str(tmp_path / "out"), "--forget_classes", "3"]
    for name in ("--model_name_or_path", "--judge_model") + (("--reference_model",) if command == "evaluate" else ()):
        argv += [name, models[name]]
    main(argv)
    assert not witness.exists()
    assert "subprocess:getoutput" in capsys.readouterr().err or option != "--model_name_or_path"
