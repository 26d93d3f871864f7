"""UnlearnConfig from Python, YAML, JSON strings and HfArgumentParser; method_kwargs resolution and validation."""

import json

import pytest
from transformers import HfArgumentParser

from hf_unlearn import UnlearnConfig, available_methods
from hf_unlearn.methods.finetune import FinetuneConfig
from hf_unlearn.methods.neggrad_plus import NegGradPlusConfig


def test_method_kwargs_resolve_to_the_method_config(tmp_path):
    args = UnlearnConfig(output_dir=str(tmp_path), method="neggrad_plus", method_kwargs={"retain_weight": 0.8})
    assert args.method_config == NegGradPlusConfig(retain_weight=0.8)
    args = UnlearnConfig(output_dir=str(tmp_path), method="finetune")
    assert args.method_config == FinetuneConfig()
    args = UnlearnConfig(output_dir=str(tmp_path), method="neggrad_plus", method_kwargs=NegGradPlusConfig(0.7))
    assert args.method_config.retain_weight == 0.7 and args.method_kwargs == {"retain_weight": 0.7}


def test_method_kwargs_as_json_string(tmp_path):
    args = UnlearnConfig(output_dir=str(tmp_path), method="neggrad_plus", method_kwargs='{"retain_weight": 0.6}')
    assert args.method_config.retain_weight == 0.6


def test_unknown_method_kwarg_names_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"\['alpha'\].*Valid keys: retain_weight"):
        UnlearnConfig(output_dir=str(tmp_path), method="neggrad_plus", method_kwargs={"alpha": 1})


def test_invalid_method_kwarg_value_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="`retain_weight` must be in"):
        UnlearnConfig(output_dir=str(tmp_path), method="neggrad_plus", method_kwargs={"retain_weight": 1.5})


def test_malformed_json_method_kwargs(tmp_path):
    with pytest.raises(ValueError, match="must be a JSON object"):
        UnlearnConfig(output_dir=str(tmp_path), method="neggrad_plus", method_kwargs="{retain_weight: 1")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("forget_accuracy_target", 5.0, "fraction in"),
        ("max_forget_samples", 0, "`max_forget_samples` must be a positive"),
        ("forget_check_steps", 0, "`forget_check_steps` must be"),
    ],
)
def test_invalid_shared_options(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        UnlearnConfig(output_dir=str(tmp_path), **{field: value})


def test_from_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "output_dir: out\nmethod: neggrad_plus\nmethod_kwargs:\n  retain_weight: 0.75\n"
        "learning_rate: 0.001\nnum_train_epochs: 2\nmax_retain_samples: 100\n"
    )
    args = UnlearnConfig.from_yaml(str(path), seed=7)
    assert args.method_config.retain_weight == 0.75
    assert args.learning_rate == 0.001 and args.num_train_epochs == 2 and args.max_retain_samples == 100
    assert args.seed == 7


def test_yaml_with_unknown_key_fails(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("output_dir: out\nmethd: finetune\n")
    with pytest.raises(ValueError, match="methd"):
        UnlearnConfig.from_yaml(str(path))


def test_hf_argument_parser_command_line(tmp_path):
    (args,) = HfArgumentParser(UnlearnConfig).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--method",
            "neggrad_plus",
            "--method_kwargs",
            json.dumps({"retain_weight": 0.95}),
            "--forget_accuracy_target",
            "0.01",
            "--in_place",
            "true",
        ]
    )
    assert isinstance(args, UnlearnConfig)
    assert args.method_config.retain_weight == 0.95
    assert args.forget_accuracy_target == 0.01 and args.in_place


def test_to_dict_round_trip(tmp_path):
    args = UnlearnConfig(output_dir=str(tmp_path), method="neggrad_plus", method_kwargs={"retain_weight": 0.8})
    values = args.to_dict()
    assert values["method"] == "neggrad_plus" and values["method_kwargs"] == {"retain_weight": 0.8}


def test_defaults_suit_unlearning(tmp_path):
    args = UnlearnConfig(output_dir=str(tmp_path))
    assert args.method in available_methods()
    assert args.remove_unused_columns is False
    assert args.save_strategy == "no"


def test_every_recipe_parses():
    """Every run recipe is a job: it parses through the `hf-unlearn unlearn` parser into JobArguments and an
    UnlearnConfig, and `UnlearnConfig.from_yaml` reads the same file (leaving the job keys out)."""
    from pathlib import Path

    from hf_unlearn.cli import parse_job

    root = Path(__file__).resolve().parents[1] / "recipes"
    recipes = sorted(path for path in root.rglob("*.yaml") if path.parent.name != "accelerate_configs")
    assert len(recipes) >= 6, recipes
    for recipe in recipes:
        job, args = parse_job(["--config", str(recipe)])
        assert job.forget_classes and job.dataset_name and job.model_name_or_path, recipe
        assert args.method in available_methods(), recipe
        assert UnlearnConfig.from_yaml(str(recipe)).method_config == args.method_config, recipe


def test_each_method_trains_with_its_own_defaults(tmp_path):
    """A method's `training_defaults` fill what the user left unset; TrainingArguments' defaults fill the rest."""
    from hf_unlearn.methods.remain_geometry import RemainGeometry

    args = UnlearnConfig(output_dir=str(tmp_path), method="remain_geometry")
    for name, value in RemainGeometry.training_defaults.items():
        assert getattr(args, name) == value or str(getattr(args, name)).endswith(str(value)), name
    assert args.method_training_defaults == RemainGeometry.training_defaults
    assert args.num_train_epochs == 3.0  # not set by the method: TrainingArguments' default
    assert args.per_device_eval_batch_size == 64  # the library's measuring batch


def test_what_the_user_sets_wins_over_the_method_defaults(tmp_path):
    args = UnlearnConfig(output_dir=str(tmp_path), method="remain_geometry", learning_rate=0.01, optim="sgd")
    assert args.learning_rate == 0.01 and args.optim == "sgd"
    assert "learning_rate" not in args.method_training_defaults and args.max_steps == 300


def test_epochs_and_steps_are_one_budget(tmp_path):
    """Setting epochs keeps the method's `max_steps` out (it would silently override the epochs)."""
    args = UnlearnConfig(output_dir=str(tmp_path), method="remain_geometry", num_train_epochs=2)
    assert args.num_train_epochs == 2 and args.max_steps == -1
    args = UnlearnConfig(output_dir=str(tmp_path), method="finetune", max_steps=7)
    assert args.max_steps == 7 and "num_train_epochs" not in args.method_training_defaults


def test_a_copy_for_another_method_takes_that_methods_defaults_and_keeps_what_the_user_set(tmp_path):
    import dataclasses

    from hf_unlearn.config import BUDGET_FIELDS

    def budget(args):
        return {name: getattr(args, name) for name in BUDGET_FIELDS}

    gppu = UnlearnConfig(output_dir=str(tmp_path), method="gppu")
    fresh = UnlearnConfig(output_dir=str(tmp_path), method="remain_geometry")
    copy = dataclasses.replace(gppu, method="remain_geometry")
    assert budget(copy) == budget(fresh) and budget(copy) != budget(gppu)
    assert copy.method_training_defaults == fresh.method_training_defaults
    # What the user set stays, in the copy's arguments or the original's.
    assert dataclasses.replace(gppu, method="remain_geometry", learning_rate=0.5).learning_rate == 0.5
    own = UnlearnConfig(output_dir=str(tmp_path), method="gppu", learning_rate=0.3, max_steps=4)
    again = dataclasses.replace(own, method="remain_geometry")
    assert (again.learning_rate, again.max_steps, again.optim) == (0.3, 4, fresh.optim)
    # A logged config rebuilt from `to_dict` keeps every value that ran, whatever the defaults are then.
    assert "resolved_budget" not in gppu.to_dict()


def test_every_method_has_defaults_the_config_accepts(tmp_path):
    from hf_unlearn import get_method
    from hf_unlearn.config import BUDGET_FIELDS

    for method in available_methods():
        defaults = get_method(method).method_class.training_defaults
        assert set(defaults) <= set(BUDGET_FIELDS), method
        args = UnlearnConfig(output_dir=str(tmp_path), method=method)
        assert args.method_training_defaults == defaults


def test_the_readme_states_each_methods_defaults():
    """The README's table of defaults is what `UnlearnConfig` applies."""
    import re
    from pathlib import Path

    from hf_unlearn import get_method

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("### Each method's defaults", 1)[1].split("\n\n")[2]
    stated = dict(re.findall(r"^\| `(\w+)` \| (optim=.*?) \|$", table, flags=re.M))
    documented = {name for name in available_methods() if get_method(name).method_class.training_defaults}
    assert set(stated) == documented
    for name, text in stated.items():
        defaults = get_method(name).method_class.training_defaults
        assert text == ", ".join(f"{key}={value}" for key, value in defaults.items()), name
