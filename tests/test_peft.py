"""LoRA (peft) for every gradient method through `UnlearnConfig.peft_config`: only the adapters and the head's copy
train; merged, the model is plain again; kept, it saves as a peft adapter that reloads onto the original model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.examples.digits import training_arguments

LORA = {"r": 4, "target_modules": ["q_proj", "v_proj"]}


def unlearn(model, digits, tmp_path, method="neggrad_plus", **overrides):
    values = training_arguments(str(tmp_path / "out"), disable_tqdm=True, max_steps=4, learning_rate=1e-2, **overrides)
    args = UnlearnConfig(**values, method=method)
    trainer = UnlearningTrainer(
        model, args, train_dataset=digits["train"], eval_dataset=digits["test"], forget_classes=[3]
    )
    return trainer, trainer.unlearn()


def pixels(digits, rows=16):
    return torch.tensor(np.asarray(digits["test"][:rows]["pixel_values"]), dtype=torch.float32)


def test_only_adapters_and_the_head_train_and_the_merged_model_is_plain(trained, digits, tmp_path):
    model = trained("vit")
    before = {name: value.clone() for name, value in model.state_dict().items()}
    trainer, result = unlearn(model, digits, tmp_path, peft_config=LORA, peft_merge=False)
    # Before merging: the base weights are untouched, the adapters and the head's copy moved.
    kept = trainer.model.state_dict()
    for name, value in kept.items():
        if "lora_" in name or "modules_to_save" in name:
            continue
        original = name.replace(".base_layer", "").replace(".original_module", "")
        assert torch.equal(value, before[original]), name
    assert any("lora_B" in name and value.abs().sum() > 0 for name, value in kept.items())  # B starts at 0
    head_copy = kept["classifier.modules_to_save.default.weight"]
    assert not torch.equal(head_copy, before["classifier.weight"])
    assert result.metrics["peft"] == {"adapted_layers": 4, "merged": False, **LORA}

    # Merged (the default): the original keys, plain layers, only q / v and the head changed.
    model = trained("vit")
    _, result = unlearn(model, digits, tmp_path, peft_config=LORA)
    after = result.model.state_dict()
    assert set(after) == set(before)
    assert not any(type(module).__module__.startswith("peft.") for module in result.model.modules())
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {f"vit.layers.{i}.attention.{p}.weight" for i in (0, 1) for p in ("q_proj", "v_proj")} | {
        "classifier.weight",
        "classifier.bias",
    }
    assert all(parameter.requires_grad for parameter in result.model.parameters())


def test_kept_adapters_save_as_a_peft_adapter_that_reloads(trained, digits, tmp_path):
    from peft import PeftModel

    model = trained("vit")
    model.config._name_or_path = str(tmp_path / "models" / "base-vit")  # as if loaded from this machine's folder
    trainer, result = unlearn(model, digits, tmp_path, peft_config=LORA, peft_merge=False)
    trainer.save_model(str(tmp_path / "adapter"))
    # The adapter names its base model by the folder's name, not this machine's path; the card names the folder
    # written, not `args.output_dir`.
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "base-vit"
    assert "\n# adapter\n" in (tmp_path / "adapter" / "README.md").read_text()
    assert Path(trainer.args.output_dir).name != "adapter"
    # The adapter, with the run's card and results (no full model weights).
    assert sorted(path.name for path in (tmp_path / "adapter").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "per_class_accuracy.png",
        "unlearning_results.json",
    ]
    reloaded = PeftModel.from_pretrained(trained("vit"), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        expected = result.model.eval()(pixel_values=pixels(digits)).logits
        torch.testing.assert_close(reloaded(pixel_values=pixels(digits)).logits, expected)


@pytest.mark.parametrize("method", ["finetune", "random_label", "remain_geometry"])
def test_every_gradient_method_takes_lora(method, trained, digits, tmp_path):
    model = trained("resnet")  # convolutions get the adapters here
    convolutions = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)]
    norms = [name for name, module in model.named_modules() if isinstance(module, torch.nn.BatchNorm2d)]
    assert len(convolutions) == 6 and len(norms) == 6  # the digits ResNet: stem, 2 stages, 1 shortcut
    before = {name: value.clone() for name, value in model.state_dict().items()}
    _, result = unlearn(model, digits, tmp_path, method=method, peft_config={"r": 2})
    after = result.model.state_dict()
    assert set(after) == set(before)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    # Every convolution got an adapter (merged into its weight) and the head trained in full ...
    adapted = {f"{name}.weight" for name in convolutions} | {"classifier.1.weight", "classifier.1.bias"}
    # ... BatchNorm's running statistics are buffers, updated by any forward pass in training mode ...
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    statistics = {f"{name}.{buffer}" for name in norms for buffer in buffers}
    # ... and BatchNorm's affine parameters, neither adapted nor the head, stayed frozen.
    frozen = {f"{name}.{parameter}" for name in norms for parameter in ("weight", "bias")}
    assert adapted | statistics | frozen == set(before)
    assert changed == adapted | statistics  # so nothing in `frozen` moved
    assert result.metrics["peft"]["adapted_layers"] == len(convolutions)


@pytest.mark.parametrize("method", ["svd_projection", "gppu", "retrain"])
def test_methods_without_gradient_training_refuse_peft(method, tmp_path):
    with pytest.raises(ValueError, match=f"Method '{method}' does not train the model's weights by gradient"):
        UnlearnConfig(output_dir=str(tmp_path), method=method, peft_config={"r": 4})


@pytest.mark.parametrize("value", [{"rank": 4}, {"r": 0}, "{r: 4"])
def test_bad_peft_config_is_named(value, tmp_path):
    with pytest.raises(ValueError, match="`peft_config`"):
        UnlearnConfig(output_dir=str(tmp_path), method="finetune", peft_config=value)


def test_svd_projection_refuses_a_model_that_still_carries_adapters(trained, digits, tmp_path):
    """A model returned with its adapters kept (`peft_merge=False`) then given to svd_projection: the base layers and
    the adapter matrices would each be projected, and a save would keep only the adapters. Refused, naming the merge;
    merged, it runs."""
    from hf_unlearn.lora import merge_lora

    _, result = unlearn(trained("vit"), digits, tmp_path, peft_config=LORA, peft_merge=False)
    args = UnlearnConfig(**training_arguments(str(tmp_path / "svd"), disable_tqdm=True), method="svd_projection")
    with pytest.raises(ValueError, match="still carries LoRA adapters.*merge_lora"):
        UnlearningTrainer(result.model, args, train_dataset=digits["train"], eval_dataset=digits["test"],
                          forget_classes=[5])  # fmt: skip
    UnlearningTrainer(merge_lora(result.model), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                      forget_classes=[5])  # fmt: skip


@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
def test_the_bias_setting_of_peft_config_decides_which_biases_train(trained, bias):
    """peft's `bias`: "none" trains no bias but the head copy's, "all" every bias, "lora_only" those of the adapted
    layers; everything else stays frozen (only adapters, the head's copy and those biases train)."""
    from hf_unlearn.lora import add_lora

    model = trained("vit")
    add_lora(model, {**LORA, "bias": bias}, "classifier")
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    biases = {name for name in trainable if name.endswith(".bias") and "modules_to_save" not in name}
    adapted_biases = {f"vit.layers.{i}.attention.{p}.base_layer.bias" for i in (0, 1) for p in ("q_proj", "v_proj")}
    expected = {"none": set(), "lora_only": adapted_biases,
                "all": {name for name, _ in model.named_parameters() if name.endswith(".bias")
                        and "modules_to_save" not in name and "original_module" not in name}}[bias]  # fmt: skip
    assert biases == expected
    assert all("lora_" in name or "modules_to_save.default." in name or name.endswith(".bias") for name in trainable)
    assert any("modules_to_save.default." in name for name in trainable)


def test_peft_config_values_are_read_as_their_types():
    """From YAML or the command line, "false" must be False: given to LoraConfig as a string it is true and switches
    rsLoRA / DoRA on silently. Values are read by LoraConfig's field types, or refused naming the key."""
    from tiny_models import tiny_classifier

    from hf_unlearn.lora import lora_config

    model, _ = tiny_classifier("vit")
    config = lora_config({"r": "4", "use_rslora": "false", "use_dora": "no", "lora_dropout": "0.1"}, model, "classifier")
    assert (config.r, config.use_rslora, config.use_dora, config.lora_dropout) == (4, False, False, 0.1)
    with pytest.raises(ValueError, match=r"`peft_config\['use_rslora'\]` must be true or false, got 'maybe'"):
        lora_config({"r": 4, "use_rslora": "maybe"}, model, "classifier")
