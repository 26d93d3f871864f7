"""Half-precision models (what transformers 5 loads from a float16 / bfloat16 checkpoint): measured in their own
precision, unlearned on float32 weights, returned and saved in their own dtypes."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.precision import float32_method, inputs_follow_weights


def tensor_dtypes(model: nn.Module) -> dict[str, torch.dtype]:
    return {name: tensor.dtype for name, tensor in [*model.named_parameters(), *model.named_buffers()]}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_resnet_is_unlearned_as_its_float32_copy(trained, digits, make_args, tmp_path, dtype):
    """A ResNet does not cast its input: a float32 batch into half-precision convolutions raised before any method
    ran. Now it is measured in its own precision, gppu runs on float32 weights, and every tensor keeps its dtype."""
    float32 = trained("resnet")
    half = trained("resnet").to(dtype)
    dtypes = tensor_dtypes(half)
    results = {}
    for name, model in (("float32", float32), ("half", half)):
        args = make_args("gppu", output_dir=str(tmp_path / name), in_place=True)
        trainer = UnlearningTrainer(model, args, train_dataset=digits["train"], eval_dataset=digits["test"],
                                    forget_classes=[3])  # fmt: skip
        results[name] = trainer.unlearn()
    out = results["half"]
    assert tensor_dtypes(out.model) == dtypes
    assert all(torch.isfinite(p).all() for p in out.model.parameters())
    assert out.forgotten
    assert out.metrics["forget_accuracy"] == results["float32"].metrics["forget_accuracy"] == 0.0
    # Measured in half precision: a few rows may round to another class.
    assert out.metrics["retain_accuracy"] == pytest.approx(results["float32"].metrics["retain_accuracy"], abs=0.02)
    assert out.original_metrics["retain_accuracy"] == pytest.approx(
        results["float32"].original_metrics["retain_accuracy"], abs=0.02
    )
    trainer.save_model()
    saved = load_file(tmp_path / "half" / "model.safetensors")
    assert {tensor.dtype for tensor in saved.values() if tensor.is_floating_point()} == {dtype}


def test_float16_weights_take_gradient_steps_in_float32(trained, digits, make_args):
    """Optimizer steps on float16 weights underflow (AdamW's epsilon is 0 in float16): neggrad_plus on a float16 ViT
    ended with non-finite weights, an error. Run on float32 weights it gives the float32 model's result."""
    results = {}
    for name, dtype in (("float32", torch.float32), ("float16", torch.float16)):
        model = trained("vit").to(dtype)
        trainer = UnlearningTrainer(model, make_args("neggrad_plus", in_place=True), train_dataset=digits["train"],
                                    eval_dataset=digits["test"], forget_classes=[3])  # fmt: skip
        results[name] = trainer.unlearn()
    out = results["float16"]
    assert {p.dtype for p in out.model.parameters()} == {torch.float16}
    assert all(torch.isfinite(p).all() for p in out.model.parameters())
    assert out.metrics["forget_accuracy"] == pytest.approx(results["float32"].metrics["forget_accuracy"], abs=0.02)
    assert out.metrics["retain_accuracy"] == pytest.approx(results["float32"].metrics["retain_accuracy"], abs=0.02)


class Mixed(nn.Module):
    """A float16 conv, a bfloat16 buffer, a float32 layer (kept in float32, as transformers' `_keep_in_fp32_modules`),
    a float64 buffer, a float16 weight tied into two modules and a float16 buffer two modules share."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3).half()
        self.register_buffer("scale", torch.ones(4, dtype=torch.bfloat16))
        self.register_buffer("precise", torch.tensor([1 / 3], dtype=torch.float64))
        self.kept = nn.Linear(4, 4)
        self.first, self.second = nn.Linear(4, 2).half(), nn.Linear(4, 2).half()
        self.second.weight = self.first.weight
        shared = torch.full((2,), 0.5, dtype=torch.float16)
        self.first.register_buffer("table", shared)
        self.second.register_buffer("table", shared)


def stub_trainer(model):
    dropped = []
    return SimpleNamespace(model=model, method=SimpleNamespace(take_block_inputs=lambda: dropped.append(True))), dropped


def test_float32_method_casts_half_tensors_for_the_block_and_back():
    model = Mixed()
    before = tensor_dtypes(model)
    trainer, dropped = stub_trainer(model)
    precise = model.precise.clone()
    with float32_method(trainer) as cast:
        assert cast
        assert set(tensor_dtypes(model).values()) == {torch.float32, torch.float64}
        assert model.precise.dtype == torch.float64  # only half-precision tensors are cast
        assert model.first.table is model.second.table and model.first.table.dtype == torch.float32
        model.conv.weight.grad = torch.ones_like(model.conv.weight)
        wrapped = model.first  # a module a method wraps (LoRA's base_layer) is still cast back
        model.first = nn.Sequential(wrapped)
        model.added = nn.Linear(2, 2)  # a tensor the method adds takes the model's weights' dtype
        model.kept = nn.Linear(4, 4)  # a module the method replaced: its path's dtype
        model.conv.weight.data = model.conv.weight.data.clone()  # a parameter given new values keeps its place
    assert model.first[0].weight.dtype == torch.float16 and model.second.weight is model.first[0].weight
    assert model.conv.weight.dtype == torch.float16 and model.conv.weight.grad is None
    assert model.scale.dtype == torch.bfloat16 and model.kept.weight.dtype == torch.float32
    assert model.added.weight.dtype == torch.float16
    assert dropped == [True]  # block inputs recorded in float32 are not replayed into the half-precision model
    assert torch.equal(model.precise, precise)
    assert model.first[0].table is model.second.table and model.second.table.dtype == torch.float16
    del model.added
    model.first = wrapped
    assert tensor_dtypes(model) == before


def test_float32_method_restores_dtypes_on_an_error_and_leaves_float32_models_alone():
    model = Mixed()
    before = tensor_dtypes(model)
    trainer, _ = stub_trainer(model)
    with pytest.raises(RuntimeError, match="method failed"), float32_method(trainer):
        raise RuntimeError("method failed")
    assert tensor_dtypes(model) == before
    plain = nn.Linear(3, 2)
    trainer, dropped = stub_trainer(plain)
    with float32_method(trainer) as cast:
        assert not cast
    assert plain.weight.dtype == torch.float32 and dropped == []


def test_weights_beyond_float16s_range_are_an_error_not_infinite_weights():
    """A float32 value above 65504 would come back to float16 as infinity: the error says why."""
    model = Mixed()
    trainer, _ = stub_trainer(model)
    with pytest.raises(RuntimeError, match=r"beyond the range of the half precision.*'conv.weight'"):
        with float32_method(trainer):
            model.conv.weight.data[0, 0, 0, 0] = 1e5
    assert model.conv.weight.dtype == torch.float16  # still given its dtype back
    trainer, _ = stub_trainer(Mixed())
    with float32_method(trainer):
        trainer.model.kept.weight.data[0, 0] = 1e5  # float32 before and after: nothing to say
        trainer.model.conv.weight.data[0, 0, 0, 0] = float("inf")  # non-finite: the trainer's finite check says it


def test_sharded_weights_are_left_to_their_engine():
    model = Mixed()
    before = tensor_dtypes(model)
    trainer, dropped = stub_trainer(model)
    trainer.is_fsdp_enabled = True
    with float32_method(trainer) as cast:
        assert not cast and tensor_dtypes(model) == before
    assert dropped == []


def test_evaluating_a_half_precision_model_given_to_the_trainer(trained, digits, make_args):
    trainer = UnlearningTrainer(trained("resnet"), make_args("gppu"), train_dataset=digits["train"],
                                eval_dataset=digits["test"], forget_classes=[3])  # fmt: skip
    half = trained("resnet").to(torch.float16)
    expected = trainer.evaluate_unlearning()
    measured = trainer.evaluate_unlearning(model=half)  # a ResNet does not cast its float32 batches itself
    assert measured["retain_accuracy"] == pytest.approx(expected["retain_accuracy"], abs=0.02)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_takes_float32_inputs(dtype):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).to(dtype)
    images = torch.randn(2, 3, 5, 5)
    with pytest.raises(RuntimeError):  # what a float32 batch did to a ResNet in half precision
        model(images)
    assert inputs_follow_weights(inputs_follow_weights(model)) is model
    assert len(model._forward_pre_hooks) == 1  # registered once
    assert model(images).dtype == dtype
    model.float()  # the weights' dtype at each call decides
    assert model(images.to(dtype)).dtype == torch.float32
    plain = nn.Linear(3, 2)
    inputs_follow_weights(plain)
    assert not plain._forward_pre_hooks


@pytest.mark.parametrize("denoiser", ["ddpm", "dit"])
def test_half_precision_diffusion_model_samples_like_float32_and_is_unlearned(tmp_path, denoiser):
    """The sampler's float32 noise and the DiT's VAE images reach half-precision networks in their dtype
    (`DiffusionModel.predict`, `to_model_space`, `to_data_space`)."""
    from test_diffusion import tiny_ddpm, tiny_dit, unlearn
    from tiny_models import ConstantJudge

    from hf_unlearn.examples.digits import load_digits_dataset

    model = {"ddpm": tiny_ddpm, "dit": tiny_dit}[denoiser]()
    half = copy.deepcopy(model).to(torch.bfloat16)
    expected = model.sample([3, 5], num_inference_steps=3, seed=0)
    sampled = half.sample([3, 5], num_inference_steps=3, seed=0)
    assert sampled.dtype == torch.float32 and torch.allclose(sampled, expected, atol=0.1)
    data = load_digits_dataset(image_size=8)
    latents = half.to_model_space(torch.stack([torch.as_tensor(data["train"][i]["pixel_values"]) for i in range(2)]))
    assert latents.dtype == torch.float32
    dtypes = tensor_dtypes(half)
    trainer, output = unlearn(half, tmp_path, data, judge=ConstantJudge(3))  # every sample judged a "three"
    assert tensor_dtypes(trainer.model) == dtypes and output.metrics["forget_share"] == 1.0


@pytest.mark.parametrize("conditional", [False, True])
def test_half_precision_gan_is_unlearned_and_measured(tmp_path, conditional):
    from test_gan_cascade import gan_trainer, tiny_gan
    from tiny_models import ConstantJudge

    from hf_unlearn.examples.digits import load_digits_dataset

    gan = tiny_gan(conditional).to(torch.float16)
    dtypes = tensor_dtypes(gan)
    trainer = gan_trainer(tmp_path, load_digits_dataset(image_size=8), gan=gan, judge=ConstantJudge(3), eval_=True,
                          forget_classes=[3])  # fmt: skip (every sample judged a "three")
    output = trainer.unlearn()
    assert tensor_dtypes(trainer.model) == dtypes
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert output.metrics["forget_share"] == 1.0 and output.original_metrics["forget_share"] == 1.0


@pytest.mark.parametrize("merge", [True, False])
def test_half_precision_model_with_lora_gets_its_dtypes_back(trained, digits, tmp_path, merge):
    """LoRA wraps the layers it adapts (`base_layer`) and peft replaces the head by a trained copy: every tensor gets
    float16 back, the adapters the method added (kept unmerged) too, so the model runs and saves as it came."""
    from test_peft import LORA, unlearn

    _, expected = unlearn(trained("vit"), digits, tmp_path / "float32", peft_config=LORA, peft_merge=merge)
    model = trained("vit").to(torch.float16)
    trainer, result = unlearn(model, digits, tmp_path, peft_config=LORA, peft_merge=merge)
    dtypes = {name: tensor.dtype for name, tensor in trainer.model.state_dict().items() if tensor.is_floating_point()}
    assert any("lora_" in name for name in dtypes) is not merge
    assert set(dtypes.values()) == {torch.float16}
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    for key in ("forget_accuracy", "retain_accuracy"):  # the float32 run's, measured in float16
        assert result.metrics[key] == pytest.approx(expected.metrics[key], abs=0.03)


def test_a_float16_checkpoint_by_path_loads_in_float16_and_is_unlearned(trained, digits, make_args, tmp_path):
    """transformers 5 loads a checkpoint in its saved dtype: the path of a float16 ResNet gives a float16 model."""
    folder = tmp_path / "float16-resnet"
    trained("resnet").to(torch.float16).save_pretrained(folder)
    trainer = UnlearningTrainer(str(folder), make_args("svd_projection"), train_dataset=digits["train"],
                                eval_dataset=digits["test"], forget_classes=[3])  # fmt: skip
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float16}
    output = trainer.unlearn()
    assert output.forgotten and {p.dtype for p in output.model.parameters()} == {torch.float16}


def test_the_unlearned_model_is_not_left_computing_under_autocast(digits, make_args):
    """`bf16=True`: accelerate wraps the model's forward in autocast for the method's training loop. The wrapper is
    removed after it, so the unlearned model is measured (and returned) computing in its own precision, as its
    original was measured: its logits are those of the model class's own forward."""
    from hf_unlearn.examples.digits import digits_classifier

    model = digits_classifier("vit")  # never prepared by accelerate (a prepared model is not wrapped again)
    args = make_args("neggrad_plus", bf16=True, use_cpu=True, max_steps=3)
    result = UnlearningTrainer(model, args, train_dataset=digits["train"], eval_dataset=digits["test"],
                               forget_classes=[3]).unlearn()  # fmt: skip
    assert "forward" not in vars(result.model) and "_original_forward" not in vars(result.model)
    pixels = torch.tensor(np.asarray(digits["test"][:8]["pixel_values"]), dtype=torch.float32)
    with torch.no_grad():
        got = result.model(pixel_values=pixels).logits
        plain = type(result.model).forward(result.model, pixel_values=pixels).logits
    torch.testing.assert_close(got, plain, rtol=0, atol=0)


def test_a_model_wrapped_by_an_earlier_predict_is_measured_and_returned_plain(digits, make_args):
    """`trainer.predict` with `bf16=True` before `unlearn()` leaves accelerate's autocast wrapper on the model; the
    run takes it off first, so the original and the unlearned model are measured in the model's own precision."""
    from hf_unlearn.examples.digits import digits_classifier

    args = make_args("neggrad_plus", bf16=True, use_cpu=True, max_steps=2)
    trainer = UnlearningTrainer(digits_classifier("vit"), args, train_dataset=digits["train"],
                                eval_dataset=digits["test"], forget_classes=[3])  # fmt: skip
    trainer.predict(digits["test"].select(range(8)))
    assert "_original_forward" in vars(trainer.model)  # what accelerate's evaluation left
    result = trainer.unlearn()
    assert "forward" not in vars(result.model) and "_original_forward" not in vars(result.model)


def test_gan_cascade_leaves_neither_network_under_autocast(tmp_path):
    """gan_cascade prepares the generator and the discriminator itself (no `train_with`): with `bf16=True` their
    autocast wrappers are removed after the run too, so the GAN is measured and returned in its own precision."""
    from hf_unlearn.examples.digits import DIGIT_NAMES, load_digits_dataset
    from hf_unlearn.gan import dcgan_pair

    data = load_digits_dataset(image_size=8)
    pair = dcgan_pair(image_size=8, latent_dim=8, width=4, seed=0, labels=DIGIT_NAMES)
    args = UnlearnConfig(output_dir=str(tmp_path / "gan"), method="gan_cascade", bf16=True, use_cpu=True,
                         method_kwargs={"max_iterations": 2}, eval_before_unlearn=False, eval_after_unlearn=False,
                         report_to=[], disable_tqdm=True)  # fmt: skip
    result = UnlearningTrainer(pair, args, train_dataset=data["train"], eval_dataset=data["test"],
                               forget_indices=list(range(8))).unlearn()  # fmt: skip
    for network in (result.model.generator, result.model.discriminator):
        assert "forward" not in vars(network) and "_original_forward" not in vars(network)
