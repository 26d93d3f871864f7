"""Security and data safety (issue 18): nothing named by a config runs without `trust_remote_code=True`, no secret
or machine path reaches a saved or pushed file, outputs are atomic, bad input and non-finite values are refused."""

import json
import os
from pathlib import Path

import pytest
import torch

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.examples.digits import DIGIT_NAMES
from hf_unlearn.gan import GANPair, dcgan_pair
from hf_unlearn.kinds import load_model


@pytest.fixture
def hostile_gan(tmp_path):
    """A saved GAN folder whose config.json names `subprocess:getoutput` as its generator, with a command that writes
    a file: `(folder, file)`. The file exists afterwards only if something ran the command."""
    folder, witness = tmp_path / "hostile", tmp_path / "pwned"
    dcgan_pair(image_size=8, latent_dim=4, width=8, labels=DIGIT_NAMES).save_pretrained(folder)
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


CUSTOM_CLASSIFIER = """
import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput


class TinyConfig(PretrainedConfig):
    model_type = "tiny-custom"


class TinyForImageClassification(PreTrainedModel):
    config_class = TinyConfig
    main_input_name = "pixel_values"

    def __init__(self, config):
        super().__init__(config)
        self.classifier = torch.nn.Linear(64, config.num_labels)
        self.post_init()

    def forward(self, pixel_values, labels=None, **kwargs):
        return ImageClassifierOutput(logits=self.classifier(pixel_values.flatten(1)))
"""


def test_a_custom_classifier_loads_from_its_folder_with_trust_remote_code_only(tmp_path):
    """A classifier whose modelling code ships with it (`auto_map`, as on the Hub): refused by default, loaded and
    recognised as a classifier with `trust_remote_code=True`."""
    import importlib.util

    from hf_unlearn.kinds import kind_of

    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "modeling_tiny.py").write_text(CUSTOM_CLASSIFIER)
    spec = importlib.util.spec_from_file_location("modeling_tiny", folder / "modeling_tiny.py")
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    code.TinyForImageClassification(code.TinyConfig(num_labels=10)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_tiny.TinyConfig",
                          "AutoModelForImageClassification": "modeling_tiny.TinyForImageClassification"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(str(folder))
    model, processor = load_model(str(folder), trust_remote_code=True)
    assert type(model).__name__ == "TinyForImageClassification" and processor is None
    assert kind_of(model).name == "classifier"


@pytest.mark.parametrize("option", ["--model_name_or_path", "--judge_model", "--reference_model"])
def test_the_cli_does_not_run_code_named_by_a_model_folder(hostile_gan, trained, digits, tmp_path, option, capsys):
    """Each model the CLI loads (the model, the judge, the reference), with real data so that every one is reached:
    the hostile folder is refused with a one-line error naming the class, and nothing runs."""
    from hf_unlearn.cli import main

    folder, witness = hostile_gan
    dcgan_pair(image_size=8, latent_dim=4, width=8, labels=DIGIT_NAMES).save_pretrained(tmp_path / "gan")
    trained("resnet").save_pretrained(tmp_path / "judge")
    files = {split: str(tmp_path / f"{split}.parquet") for split in ("train", "test")}
    for split, path in files.items():
        digits[split].to_parquet(path)
    models = {"--model_name_or_path": tmp_path / "gan", "--judge_model": tmp_path / "judge"}
    command = "evaluate" if option == "--reference_model" else "unlearn"
    models[option] = folder
    argv = [command, "--dataset_name", "parquet", "--data_files", json.dumps(files), "--output_dir",
            str(tmp_path / "out"), "--forget_classes", "3", "--method", "gan_cascade", "--disable_tqdm", "true"]
    for name, path in models.items():
        argv += [name, str(path)]  # fmt: skip
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert "'subprocess:getoutput'" in error and "trust_remote_code=True" in error
    assert not witness.exists()


def test_even_trusted_configs_build_only_module_classes(hostile_gan):
    """With `trust_remote_code=True` a config may name code of its own (tests/test_gan_cascade.py loads such modules),
    but only an `nn.Module` class is ever called: a function such as `subprocess.getoutput` is refused."""
    folder, witness = hostile_gan
    with pytest.raises(ValueError, match="'subprocess:getoutput' in the GAN's config is not an nn.Module class"):
        GANPair.from_pretrained(folder, trust_remote_code=True)
    assert not witness.exists()


def test_a_diffusers_folder_cannot_name_a_module_to_import(tmp_path):
    """A pipeline folder's model_index.json names a library and class; diffusers resolves only its own libraries (and
    modules already imported), and a non-scheduler class named by `eval_sampler` is refused."""
    from hf_unlearn.diffusion import DiffusionModel, small_ddpm

    folder, witness = tmp_path / "pipe", tmp_path / "pwned"
    (witness.parent / "evil_module_hf_unlearn.py").write_text(f"open({str(witness)!r}, 'w').write('ran')\n")
    small_ddpm(image_size=8, widths=(8, 16), num_train_timesteps=50, labels=DIGIT_NAMES).save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["evil_module_hf_unlearn", "UNet"]
    (folder / "model_index.json").write_text(json.dumps(index))
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(Exception, match="evil_module_hf_unlearn"):
            DiffusionModel.from_pretrained(folder)
    finally:
        sys.path.remove(str(tmp_path))
    assert not witness.exists()


def test_eval_sampler_names_only_scheduler_classes():
    from hf_unlearn.diffusion import small_ddpm

    model = small_ddpm(image_size=8, widths=(8, 16), num_train_timesteps=50, labels=DIGIT_NAMES)
    assert type(model.sampler("DDIMScheduler")).__name__ == "DDIMScheduler"
    with pytest.raises(ValueError, match="not a diffusers scheduler class"):
        model.sampler("UNet2DModel")


# ------------------------------------------------------------------------------------------ secrets and paths
def test_no_saved_file_holds_the_hub_token_or_this_machines_paths(trained, digits, tmp_path):
    """`hub_token` never reaches training_args.bin, the card or the results; a CLI job records file names, not the
    machine's absolute paths."""
    import torch

    from hf_unlearn.cli import main

    model_dir = tmp_path / "model"
    trained("resnet").save_pretrained(model_dir)
    files = {split: str(tmp_path / f"{split}.parquet") for split in ("train", "test")}
    for split, path in files.items():
        digits[split].to_parquet(path)
    secret = "hf_NotARealTokenButSecret"
    out = tmp_path / "out"
    assert main(["unlearn", "--model_name_or_path", str(model_dir), "--dataset_name", "parquet", "--data_files",
                 json.dumps(files), "--forget_classes", "three", "--method", "gppu", "--output_dir", str(out),
                 "--hub_token", secret, "--disable_tqdm", "true"]) == 0  # fmt: skip
    for path in out.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert secret.encode() not in content, path.name
            if path.suffix in (".json", ".md"):  # training_args.bin keeps output_dir, as every Trainer's does
                assert str(tmp_path).encode() not in content, path.name
    assert torch.load(out / "training_args.bin", weights_only=False).hub_token is None
    job = json.loads((out / "unlearning_results.json").read_text())["job"]
    assert job["model_name_or_path"] == "model" and job["data_files"] == {"train": "train.parquet", "test":
                                                                          "test.parquet"}  # fmt: skip
    assert job["dataset_name"] == "parquet"


def test_copies_of_the_config_keep_the_token_and_pickles_do_not(tmp_path):
    import copy
    import pickle

    args = UnlearnConfig(output_dir=str(tmp_path), hub_token="hf_secret")
    assert copy.deepcopy(args).hub_token == "hf_secret" and copy.copy(args).hub_token == "hf_secret"
    assert pickle.loads(pickle.dumps(args)).hub_token is None
    assert args.hub_token == "hf_secret"
    # printed, echoed in a notebook or shown in a traceback's locals: masked, as TrainingArguments masks it
    assert "hf_secret" not in repr(args) and "hf_secret" not in str(args) and "hf_secret" not in repr([args])


def test_public_reference_keeps_hub_ids_and_names_only():
    from hf_unlearn.outputs import public_reference

    assert public_reference("google/speech_commands") == "google/speech_commands"
    assert public_reference("/home/me/data/train.parquet") == "train.parquet"
    assert public_reference({"train": ["./a/b.parquet"]}) == {"train": ["b.parquet"]}
    assert public_reference(None) is None and public_reference(3) == 3


# ------------------------------------------------------------------------------------------ forget indices
@pytest.mark.parametrize("kind", ["numpy", "torch", "list"])
def test_forget_indices_as_a_boolean_mask_forget_the_true_rows(kind, digits, tmp_path):
    import numpy as np
    import torch

    from hf_unlearn.examples.digits import digits_classifier

    mask = np.zeros(len(digits["train"]), dtype=bool)
    mask[[5, 17, 40]] = True
    given = {"numpy": mask, "torch": torch.from_numpy(mask), "list": mask.tolist()}[kind]
    args = UnlearnConfig(output_dir=str(tmp_path), method="finetune", max_steps=1)
    trainer = UnlearningTrainer(digits_classifier("resnet"), args, train_dataset=digits["train"],
                                eval_dataset=digits["test"], forget_indices=given)  # fmt: skip
    assert trainer.split.forget_indices.tolist() == [5, 17, 40]


@pytest.mark.parametrize(
    "value, message",
    [
        ("12", r"sequence of row positions.*got str '12'"),
        (12, r"sequence of row positions.*got int 12"),
        ([1.5, 2.0], r"integer row positions.*float64"),
        ([True, False], r"boolean mask of 2 entries, but `train_dataset` has \d+ rows"),
        ([[1, 2]], "one-dimensional"),
        ([0, 1, 1, 0], r"holds only 0 and 1, one entry per row.*looks like a mask"),
    ],
)
def test_bad_forget_indices_are_refused_naming_the_argument(value, message):
    import numpy as np

    from hf_unlearn.data import resolve_forget_indices

    with pytest.raises(ValueError, match=message):
        resolve_forget_indices(value, 4 if "looks like a mask" in message else 100)
    assert resolve_forget_indices((3, 4), 100).tolist() == [3, 4]
    assert resolve_forget_indices(np.array([0, 1, 1]), 100).tolist() == [0, 1, 1]  # positions, not a mask


def test_a_bare_int_reaches_the_user_as_a_clear_error(digits, tmp_path):
    from hf_unlearn.examples.digits import digits_classifier

    args = UnlearnConfig(output_dir=str(tmp_path), method="finetune", max_steps=1)
    with pytest.raises(ValueError, match="`forget_indices` must be a sequence"):
        UnlearningTrainer(digits_classifier("resnet"), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                          forget_indices=7)  # fmt: skip


# ------------------------------------------------------------------------------------------ runs that did nothing
@pytest.mark.parametrize("budget", [{"max_steps": 0, "num_train_epochs": 0}, {"num_train_epochs": -1}])
def test_an_empty_training_budget_is_refused(budget, tmp_path):
    with pytest.raises(ValueError, match="both are empty.*save the original model as if unlearned"):
        UnlearnConfig(output_dir=str(tmp_path), method="neggrad_plus", **budget)
    UnlearnConfig(output_dir=str(tmp_path), method="svd_projection", **budget)  # gradient-free: no budget to spend


def test_a_run_that_did_not_forget_is_not_recorded_as_unlearned(trained, digits, make_args, tmp_path):
    """One finetune step leaves the class recognised: the output, the saved config, the card and the report say
    the forget check failed, and the class is not recorded as unlearned."""
    from hf_unlearn.report import format_report

    args = make_args("finetune", max_steps=1, learning_rate=1e-6)
    trainer = UnlearningTrainer(trained("resnet"), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                                forget_classes=[3])  # fmt: skip
    result = trainer.unlearn()
    assert result.forgotten is False and result.metrics["forget_check"]["passed"] is False
    assert result.metrics["forget_check"]["forget_train_accuracy"] > 0.5
    assert not getattr(result.model.config, "unlearned_classes", None)
    folder = trainer.save_unlearned(str(tmp_path / "saved"))
    assert "unlearned_classes" not in json.loads((folder / "config.json").read_text()) or not json.loads(
        (folder / "config.json").read_text())["unlearned_classes"]  # fmt: skip
    card = (folder / "README.md").read_text()
    assert "**The unlearning check failed**" in card and "an unlearning attempt that **failed its check**" in card
    assert "unlearned by hf-unlearn" not in card  # the opening sentence does not call it unlearned either
    assert "FAILED" in format_report(result.original_metrics, result.metrics, None, ["three"])


def test_a_class_asked_for_again_that_fails_is_no_longer_recorded(trained, digits, make_args):
    """The record is of this model: a class recorded by an earlier request and asked for again (here, on a model
    that still recognises it) that fails the check now is taken out of `unlearned_classes`; the others stay."""
    model = trained("resnet")
    model.config.unlearned_classes = [3, 5]
    args = make_args("finetune", max_steps=1, learning_rate=1e-6)
    result = UnlearningTrainer(model, args, train_dataset=digits["train"], eval_dataset=digits["test"],
                               forget_classes=[3]).unlearn()  # fmt: skip
    assert result.forgotten is False and result.model.config.unlearned_classes == [5]


def test_the_forget_check_runs_without_evaluation(trained, digits, make_args, monkeypatch):
    """It scores every forget training row, not the method's draw of `max_forget_samples` of them."""
    args = make_args("gppu", eval_before_unlearn=False, eval_after_unlearn=False, max_forget_samples=20)
    trainer = UnlearningTrainer(trained("resnet"), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                                forget_classes=[3])  # fmt: skip
    predict, checked = trainer.predict_logits, []

    def recording(dataset, *args, description=None, **kwargs):
        if description == "Forget check":
            checked.append(len(dataset))
        return predict(dataset, *args, description=description, **kwargs)

    monkeypatch.setattr(trainer, "predict_logits", recording)
    result = trainer.unlearn()
    assert checked == [digits["train"]["label"].count(3)] and len(trainer.forget_view) == 20
    assert result.forgotten is True and set(result.metrics["forget_check"]) == {
        "passed", "threshold", "forget_train_accuracy"}  # fmt: skip (no original measured: no retain check)
    assert result.model.config.unlearned_classes == [3]


# ------------------------------------------------------------------------------------------ atomic outputs
def unlearned_trainer(trained, digits, make_args, **overrides):
    args = make_args("gppu", **overrides)
    trainer = UnlearningTrainer(trained("resnet"), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                                forget_classes=[3])  # fmt: skip
    trainer.unlearn()
    return trainer


def test_atomic_writes_take_the_umask_without_changing_it(tmp_path, monkeypatch):
    """A file written whole gets the mode `open` would give it, and the umask is read, never set: setting it to read
    it back would give files other threads create meanwhile world-writable modes."""
    from hf_unlearn.outputs import write_atomic

    previous = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail(f"os.umask({mask:o}) called while writing"))
        write_atomic(tmp_path / "card.md", "text")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert (tmp_path / "card.md").read_text() == "text"
    assert (tmp_path / "card.md").stat().st_mode & 0o777 == 0o640


def test_a_save_replaces_the_whole_folder(trained, digits, make_args, tmp_path):
    """Files of an earlier save (here an old LoRA adapter) do not survive beside the new model; the Trainer's logs
    move across; nothing is left beside the folder."""
    trainer = unlearned_trainer(trained, digits, make_args)
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "adapter_config.json").write_text("{}")
    (out / "runs").mkdir()
    (out / "runs" / "events").write_text("log")
    trainer.save_unlearned(str(out))
    names = {path.name for path in out.iterdir()}
    assert "adapter_config.json" not in names and {"model.safetensors", "README.md", "runs"} <= names
    assert (out / "runs" / "events").read_text() == "log"
    assert not list(tmp_path.glob(".out.*"))


def test_a_save_killed_midway_leaves_the_old_folder_whole(trained, digits, make_args, tmp_path, monkeypatch):
    import hf_unlearn.saving

    trainer = unlearned_trainer(trained, digits, make_args)
    out = tmp_path / "out"
    trainer.save_unlearned(str(out))
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hf_unlearn.saving, "write_card_files", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_unlearned(str(out))
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    monkeypatch.undo()
    trainer.save_unlearned(str(out))  # a rerun proceeds (the leftover partial folder is replaced)
    assert not list(tmp_path.glob(".out.*"))


def test_a_folder_that_is_not_a_saved_model_is_not_replaced(trained, digits, make_args, tmp_path, monkeypatch):
    trainer = unlearned_trainer(trained, digits, make_args)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match=r"holds files that are not part of a saved model \(thesis.tex\)"):
        trainer.save_unlearned(str(notes))
    (notes / "config.json").write_text("{}")  # a config.json among other files does not make it a model folder
    with pytest.raises(ValueError, match=r"not part of a saved model \(thesis.tex\)"):
        trainer.save_unlearned(str(notes))
    monkeypatch.chdir(notes)
    with pytest.raises(ValueError, match="holds the current working directory"):
        trainer.save_unlearned(str(tmp_path), overwrite=True)
    assert (notes / "thesis.tex").read_text() == "years of work"


# ------------------------------------------------------------------------------------------ non-finite values
def test_nan_inputs_are_refused_naming_the_column(digits, tmp_path):
    import numpy as np

    from hf_unlearn.examples.digits import digits_classifier

    def poison(row, index):
        if index == 3:
            row["pixel_values"] = (np.asarray(row["pixel_values"]) * np.nan).tolist()
        return row

    train = digits["train"].map(poison, with_indices=True)
    args = UnlearnConfig(output_dir=str(tmp_path), method="finetune", max_steps=2, eval_before_unlearn=False,
                         eval_after_unlearn=False, per_device_train_batch_size=2048, disable_tqdm=True)  # fmt: skip
    trainer = UnlearningTrainer(digits_classifier("resnet"), args, train_dataset=train, eval_dataset=digits["test"],
                                forget_classes=[3])  # fmt: skip
    with pytest.raises(ValueError, match="1 of .* rows in a batch have NaN or infinite values in 'pixel_values'"):
        trainer.unlearn()


def test_a_diverging_run_is_an_error_and_nothing_is_saved(trained, digits, make_args, tmp_path):
    args = make_args("gradient_ascent", max_steps=30, learning_rate=1e3, max_grad_norm=0, eval_before_unlearn=False)
    trainer = UnlearningTrainer(trained("resnet"), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                                forget_classes=[3])  # fmt: skip
    with pytest.raises(RuntimeError, match="NaN or infinite values.*lower `learning_rate`"):
        trainer.unlearn()
    with pytest.raises(RuntimeError, match="Saving: .* NaN or infinite"):
        trainer.save_unlearned(str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_a_diverging_run_writes_no_checkpoint_with_non_finite_weights(trained, digits, make_args, tmp_path):
    """With checkpoints every step, the Trainer's own saves check the weights too: the run stops at the first
    non-finite checkpoint instead of writing it (and a later save would carry this run's checkpoints across)."""
    args = make_args("gradient_ascent", max_steps=30, learning_rate=1e3, max_grad_norm=0, eval_before_unlearn=False,
                     save_strategy="steps", save_steps=1, output_dir=str(tmp_path / "run"))  # fmt: skip
    trainer = UnlearningTrainer(trained("resnet"), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                                forget_classes=[3])  # fmt: skip
    with pytest.raises(RuntimeError, match="Checkpoint: .* NaN or infinite"):
        trainer.unlearn()
    from safetensors.torch import load_file

    for checkpoint in (tmp_path / "run").glob("checkpoint-*"):
        weights = load_file(checkpoint / "model.safetensors")
        assert all(bool(torch.isfinite(tensor).all()) for tensor in weights.values() if tensor.is_floating_point())


@pytest.mark.parametrize(
    "values, message",
    [
        ({"learning_rate": float("nan")}, "`learning_rate` must be a finite number"),
        ({"method": "remain_geometry", "method_kwargs": {"alpha": float("inf")}}, r"method_kwargs\['alpha'\].*finite"),
    ],
)
def test_non_finite_hyperparameters_are_refused(values, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        UnlearnConfig(output_dir=str(tmp_path), **values)


# ------------------------------------------------------------------------------------------ typed configs
def test_from_yaml_reads_values_as_the_command_line_does(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("method: neggrad_plus\nlearning_rate: 1e-3\neval_before_unlearn: 'no'\nmax_steps: '5'\n"
                    "method_kwargs: {retain_weight: '0.5'}\n")  # fmt: skip
    args = UnlearnConfig.from_yaml(str(path), output_dir=str(tmp_path))
    assert args.learning_rate == 1e-3 and isinstance(args.learning_rate, float)
    assert args.eval_before_unlearn is False and args.max_steps == 5
    assert args.method_config.retain_weight == 0.5
    path.write_text("learning_rate: abc\n")
    with pytest.raises(ValueError, match="`learning_rate` must be a number"):
        UnlearnConfig.from_yaml(str(path), output_dir=str(tmp_path))


def test_numpy_numbers_are_numbers(tmp_path):
    import numpy as np

    args = UnlearnConfig(output_dir=str(tmp_path), learning_rate=np.float32(1e-3), max_steps=np.int64(4))
    assert args.max_steps == 4 and abs(args.learning_rate - 1e-3) < 1e-9


@pytest.mark.parametrize(
    "method, kwargs, message",
    [
        ("svd_projection", {"alpha_r_grid": 10}, r"method_kwargs\['alpha_r_grid'\]` must be a list, got 10"),
        ("svd_projection", {"num_samples": 2.5}, r"method_kwargs\['num_samples'\]` must be a whole number"),
        ("neggrad_plus", {"retain_weight": "half"}, r"method_kwargs\['retain_weight'\]` must be a number"),
        ("gppu", {"finetune": "maybe"}, r"method_kwargs\['finetune'\]` must be true or false"),
    ],
)
def test_method_kwargs_types_are_checked_naming_the_key(method, kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        UnlearnConfig(output_dir=str(tmp_path), method=method, method_kwargs=kwargs)


# ------------------------------------------------------------------------------------------ cards
HOSTILE_NAMES = ["<script>alert(1)</script>", "cat\n## Injected heading", "a|b", "![x](https://evil.example/x.png)",
                 "$\\alpha$ price", "plain_name"]  # fmt: skip


def test_label_names_are_escaped_in_the_card_and_drawn_as_text(trained, digits, make_args, tmp_path):
    """Label names come from data: rendered as literal text (no HTML, no heading, no table cell split, no remote
    image), and a `$` does not send the plot into matplotlib's math mode (which failed after the model was saved)."""
    from hf_unlearn.data import label_maps

    model = trained("resnet")
    names = HOSTILE_NAMES + [f"digit {i}" for i in range(len(HOSTILE_NAMES), 10)]
    model.config.update(label_maps(names))
    args = make_args("gppu")
    trainer = UnlearningTrainer(model, args, train_dataset=digits["train"], eval_dataset=digits["test"],
                                forget_classes=[0, 1, 2, 3, 4])  # fmt: skip
    trainer.unlearn()
    folder = trainer.save_unlearned(str(tmp_path / "out"))
    text = (folder / "README.md").read_text()
    metadata, card = text.split("\n---\n", 1)  # the YAML front matter (quoted strings), then the Markdown
    assert "Injected heading" in metadata and "\n## Injected" not in metadata
    assert (folder / "per_class_accuracy.png").read_bytes().startswith(b"\x89PNG")
    assert "<script>" not in card and "\\<script\\>" in card
    assert "\n## Injected heading" not in card and "cat \\#\\# Injected heading" in card
    assert "![x](https://evil" not in card and "\\!\\[x\\](https://evil.example/x.png)" in card
    assert "a\\|b" in card and "plain\\_name" in card
    for line in card.splitlines():
        if line.startswith("| ") and "(forgotten)" in line:
            assert line.count("|") - line.count("\\|") == 4, line  # 3 cells: the name's pipe is escaped


def test_regenerating_cards_never_writes_outside_the_card_folder(trained, digits, make_args, tmp_path):
    from hf_unlearn.hub import regenerate

    trainer = unlearned_trainer(trained, digits, make_args)
    cards = tmp_path / "cards"
    folder = trainer.save_unlearned(str(cards / "one"))
    results = json.loads((folder / "unlearning_results.json").read_text())
    for hostile in ("../../escaped.png", str(tmp_path / "absolute.png")):
        (folder / "unlearning_results.json").write_text(json.dumps({**results, "plot": hostile}))
        assert regenerate(cards) == [folder / "README.md"]
    assert not (tmp_path / "escaped.png").exists() and not (tmp_path / "absolute.png").exists()
    assert not (tmp_path.parent / "escaped.png").exists()
    assert "](per_class_accuracy.png)" in (folder / "README.md").read_text()


def test_an_eval_split_without_the_forget_class_is_said_in_the_card(trained, digits, make_args, tmp_path, caplog):
    without_threes = digits["test"].filter(lambda row: row["label"] != 3)
    args = make_args("gppu")
    with caplog.at_level("WARNING"):
        trainer = UnlearningTrainer(trained("resnet"), args, train_dataset=digits["train"], eval_dataset=without_threes,
                                    forget_classes=[3])  # fmt: skip
    assert "has no rows of `forget_classes` [3]" in caplog.text
    result = trainer.unlearn()
    assert result.metrics["forget_accuracy"] is None and result.forgotten is True
    card = (trainer.save_unlearned(str(tmp_path / "out")) / "README.md").read_text()
    assert "Forget accuracy on held-out rows was not measured" in card


# ------------------------------------------------------------------------------------------ labels and audio
@pytest.mark.parametrize("labels, dtype", [(["three", "four"], "str"), ([3.0, 4.5], "float64")])
def test_labels_that_are_not_integer_ids_are_refused(labels, dtype, digits, tmp_path):
    from hf_unlearn.examples.digits import digits_classifier

    train = digits["train"].select(range(2)).remove_columns("label").add_column("label", labels)
    args = UnlearnConfig(output_dir=str(tmp_path), method="finetune", max_steps=1)
    with pytest.raises(ValueError, match=rf"`train_dataset`'s label column 'label' must hold integer class ids, got "
                                         rf"{dtype}.*class_encode_column"):  # fmt: skip
        UnlearningTrainer(digits_classifier("resnet"), args, train_dataset=train, eval_dataset=digits["test"],
                          forget_classes=[3])  # fmt: skip


@pytest.mark.parametrize("length", [0, 1, 2])
def test_too_short_audio_names_the_row(length):
    import numpy as np
    from transformers import ASTFeatureExtractor

    from hf_unlearn.data import UnlearningCollator

    collator = UnlearningCollator(processing_class=ASTFeatureExtractor(num_mel_bins=32, max_length=40))
    rows = [{"audio": {"array": np.zeros(16000), "sampling_rate": 16000, "path": "fine.wav"}, "label": 0},
            {"audio": {"array": np.zeros(length), "sampling_rate": 16000, "path": "clip_17.wav"}, "label": 1}]  # fmt: skip
    with pytest.raises(ValueError, match=rf"'clip_17.wav' in 'audio' has {length} samples; .* at least 400"):
        collator(rows)
    assert collator(rows[:1])["input_values"].shape[0] == 1


# ------------------------------------------------------------------------------------------ checked before any work
@pytest.mark.parametrize(
    "method, overrides, message",
    [
        ("svd_projection", {"method_kwargs": {"target_modules": "(["}}, "not a valid regular expression"),
        ("gppu", {"method_kwargs": {"trainable_modules": "*bad"}}, "not a valid regular expression"),
        ("neggrad_plus", {"peft_config": {"r": 4, "target_modules": "(["}}, r"peft_config\['target_modules'\]"),
        ("remain_geometry", {"gradient_accumulation_steps": 2}, "needs `gradient_accumulation_steps=1`"),
        ("gppu", {"method_kwargs": {"head_module": "nowhere"}}, "`head_module='nowhere'` is not a module"),
        ("gppu", {"method_kwargs": {"head_module": "classifier"}},
         r"is a Sequential; it must name the nn.Linear that gives the 10 class logits. Linear layers with 10 "
         r"outputs: \['classifier.1'\]"),
    ],
)
def test_method_settings_are_checked_before_any_work(method, overrides, message, digits, tmp_path, monkeypatch):
    from hf_unlearn.examples.digits import digits_classifier

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before the settings were checked")

    monkeypatch.setattr(UnlearningTrainer, "evaluate_unlearning", no_evaluation)
    with pytest.raises(ValueError, match=message):
        args = UnlearnConfig(output_dir=str(tmp_path), method=method, max_steps=1, **overrides)
        UnlearningTrainer(digits_classifier("resnet"), args, train_dataset=digits["train"],
                          eval_dataset=digits["test"], forget_classes=[3])  # fmt: skip


def test_svd_projection_with_a_single_forget_row(trained, digits, make_args):
    args = make_args("svd_projection", max_forget_samples=1, eval_before_unlearn=False)
    result = UnlearningTrainer(trained("resnet"), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                               forget_classes=[3]).unlearn()  # fmt: skip
    assert result.metrics["statistics_rows"]["forget"] == 1 and result.metrics["alpha_grid"]
    # Every point was scored on the forget row (a pass past the forget target stops there, and says so).
    assert all(point["forget_accuracy"] is not None or point["stopped"] == "forget"
               for point in result.metrics["alpha_grid"])  # fmt: skip


# ------------------------------------------------------------------------------------------ the command line
def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    from hf_unlearn.cli import main

    argv = ["unlearn", "--model_name_or_path", str(tmp_path / "missing"), "--dataset_name", "x", "--output_dir",
            str(tmp_path / "out"), "--forget_classes", "3", "--method", "svdd"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Unknown unlearning method 'svdd'. Available:" in err[0] and "Traceback" not in err[0]
    with pytest.raises(ValueError, match="Unknown unlearning method"):
        main([*argv, "--debug"])


def test_a_job_killed_while_saving_leaves_no_output_and_a_rerun_proceeds(trained, digits, tmp_path):
    """SIGKILL as soon as the job starts writing (its temporary folder appears): `output_dir` holds nothing, not a
    half-written model, and the same command then runs to the end."""
    import os
    import signal
    import subprocess
    import sys
    import time

    model_dir = tmp_path / "model"
    trained("resnet").save_pretrained(model_dir)
    files = {split: str(tmp_path / f"{split}.parquet") for split in ("train", "test")}
    for split, path in files.items():
        digits[split].to_parquet(path)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "hf_unlearn", "unlearn", "--model_name_or_path", str(model_dir), "--dataset_name",
               "parquet", "--data_files", json.dumps(files), "--forget_classes", "three", "--method", "gppu",
               "--output_dir", str(out), "--disable_tqdm", "true"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / ".out.hf-unlearn-partial"
    deadline = time.monotonic() + 300
    while job.poll() is None and not partial.exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    assert job.poll() is None, "the job ended before it was seen saving"
    job.send_signal(signal.SIGKILL)
    job.wait()
    # The Trainer makes output_dir when it starts: it may exist, but holds nothing.
    assert not out.exists() or not list(out.iterdir()), list(out.iterdir())
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert {"model.safetensors", "README.md", "unlearning_results.json"} <= {path.name for path in out.iterdir()}
    assert not partial.exists()


def test_a_kill_between_the_two_renames_is_settled_by_the_next_save(trained, digits, make_args, tmp_path):
    """Killed after the old folder was moved aside and before the new one arrived: the next save puts the old one
    back first, then replaces it, and no copy of the old weights is left beside it."""
    from hf_unlearn.outputs import staging_path

    trainer = unlearned_trainer(trained, digits, make_args)
    out = tmp_path / "out"
    trainer.save_unlearned(str(out))
    old = tmp_path / ".out.hf-unlearn-old"
    out.rename(old)  # the state a kill between the renames leaves
    staging_path(out).mkdir()
    trainer.save_unlearned(str(out))
    assert (out / "model.safetensors").is_file() and not old.exists() and not staging_path(out).exists()


def test_an_empty_folder_in_place_of_the_old_one_is_not_taken_for_a_save(tmp_path):
    """Killed between the renames, then rerun with the same `output_dir`: the Trainer creates an empty `output_dir`
    at start-up, before anything is saved. The old folder moved aside is still the only complete copy: it is put back,
    not deleted (a crash of the new save would otherwise leave nothing)."""
    from hf_unlearn.outputs import prepare_staging

    out, old = tmp_path / "out", tmp_path / ".out.hf-unlearn-old"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"weights before")
    out.mkdir()  # as `Trainer.__init__` makes it
    prepare_staging(out)
    assert (out / "model.safetensors").read_bytes() == b"weights before" and not old.exists()


def test_a_mount_point_is_refused_before_anything_is_touched(trained, digits, make_args, tmp_path, monkeypatch):
    """A mount point cannot be renamed, and the staged folder beside it cannot be renamed into it: it is refused up
    front, naming a folder inside it, and what it holds stays."""
    trainer = unlearned_trainer(trained, digits, make_args)
    mount = tmp_path / "volume"
    trainer.save_unlearned(str(mount))
    before = {path.name: path.read_bytes() for path in mount.iterdir()}
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == mount or real(path))
    with pytest.raises(ValueError, match=r"is a mount point.*volume/model-unlearned"):
        trainer.save_unlearned(str(mount))
    assert {path.name: path.read_bytes() for path in mount.iterdir()} == before
    assert not list(tmp_path.glob(".volume.*"))


def test_the_original_models_folder_is_not_replaced_without_overwrite(trained, digits, make_args, tmp_path):
    """Loaded from a folder and saved with that folder as `output_dir` (a Trainer's default habit): the model before
    unlearning is not replaced unless asked (the CLI refuses this too)."""
    original = tmp_path / "digits-resnet"
    trained("resnet").save_pretrained(original)
    before = (original / "model.safetensors").read_bytes()
    trainer = UnlearningTrainer(str(original), make_args("gppu", output_dir=str(original)),
                                train_dataset=digits["train"], eval_dataset=digits["test"], forget_classes=[3])  # fmt: skip
    trainer.unlearn()
    with pytest.raises(ValueError, match="is the folder the original model was loaded from"):
        trainer.save_model()
    assert (original / "model.safetensors").read_bytes() == before
    trainer.save_unlearned(overwrite=True)
    assert (original / "model.safetensors").read_bytes() != before


def test_regenerating_skips_folders_that_link_elsewhere(trained, digits, make_args, tmp_path):
    from hf_unlearn.hub import regenerate

    trainer = unlearned_trainer(trained, digits, make_args)
    elsewhere = trainer.save_unlearned(str(tmp_path / "elsewhere"))
    (elsewhere / "README.md").unlink()
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "linked").symlink_to(elsewhere, target_is_directory=True)
    assert regenerate(cards) == []
    assert not (elsewhere / "README.md").exists()


def test_saved_diffusion_components_record_no_local_path(tmp_path):
    from hf_unlearn.diffusion import DiffusionModel, small_ddpm

    small_ddpm(image_size=8, widths=(8, 16), num_train_timesteps=50, labels=DIGIT_NAMES).save_pretrained(tmp_path / "first")
    DiffusionModel.from_pretrained(tmp_path / "first").save_pretrained(tmp_path / "second")
    for path in (tmp_path / "second").rglob("*.json"):
        assert str(tmp_path) not in path.read_text(), path


def test_a_collapsed_model_is_never_recorded_as_unlearned(trained, digits, make_args):
    """gradient_ascent at a large rate wipes the class and the rest with it: the check fails on the retain drop, so
    the class is not recorded and the result says so, even though the forget accuracy is 0."""
    args = make_args("gradient_ascent", max_steps=20, learning_rate=3e-2)
    result = UnlearningTrainer(trained("resnet"), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                               forget_classes=[3]).unlearn()  # fmt: skip
    check = result.metrics["forget_check"]
    assert check["retain_drop"] > 0.10 and check["max_retain_drop"] == 0.10, check
    assert result.forgotten is False and not getattr(result.model.config, "unlearned_classes", None)


def test_a_sample_level_collapse_fails_the_check_too(trained, digits, make_args):
    args = make_args("gradient_ascent", max_steps=20, learning_rate=3e-2)
    result = UnlearningTrainer(trained("resnet"), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                               forget_indices=list(range(100))).unlearn()  # fmt: skip
    assert result.metrics["forget_check"]["passed"] is False and result.metrics["forget_check"]["retain_drop"] > 0.1
