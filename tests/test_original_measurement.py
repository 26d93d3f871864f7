"""The original model measured after a method that names the modules it changes (gppu), in the unlearned model's
passes through the tail alone (`hf_unlearn.measure_cache`): the same numbers as a whole pass, fewer rows through the
blocks before the tail, and an error when the method changed more than it named."""

import copy
from unittest import mock

import numpy as np
import pytest
import torch
from transformers import ViTForImageClassification

import hf_unlearn.measure_cache as measure_cache
from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.activations import BlockInputReplay
from hf_unlearn.contract import UnlearningMethod
from hf_unlearn.measure_cache import OriginalTail
from hf_unlearn.methods.gppu import GPPU
from hf_unlearn.models import block_before
from hf_unlearn.passes import predict_logits


def gppu_run(model, digits, tmp_path, **overrides):
    args = UnlearnConfig(output_dir=str(tmp_path), method="gppu", report_to="none", disable_tqdm=True, seed=0,
                         **overrides)  # fmt: skip
    trainer = UnlearningTrainer(model, args, train_dataset=digits["train"], eval_dataset=digits["test"],
                                forget_classes=[3])  # fmt: skip
    return trainer.unlearn()


def float_values(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if isinstance(value, float) and "seconds" not in key}


@pytest.mark.parametrize("architecture, block", [("vit", "vit.layers.1"), ("resnet", "resnet.encoder.stages.1")])
def test_gppus_original_is_measured_through_its_tail_with_the_numbers_of_a_whole_pass(trained, digits, tmp_path,
                                                                                     architecture, block):  # fmt: skip
    model = trained(architecture)
    measure_cache._CACHE.clear()
    after = gppu_run(model, digits, tmp_path)
    measure_cache._CACHE.clear()
    with mock.patch.object(GPPU, "changed_modules", UnlearningMethod.changed_modules):  # names none: measured first
        before = gppu_run(model, digits, tmp_path)
    assert after.metrics["original_measured_from_block"] == block
    assert before.metrics["original_measured_from_block"] is None
    assert float_values(after.original_metrics) == float_values(before.original_metrics)
    assert after.original_metrics["per_class_accuracy"] == before.original_metrics["per_class_accuracy"]
    assert float_values(after.metrics) == float_values(before.metrics)
    # Measured after the method, it is kept for the next request on the same model and rows.
    again = gppu_run(model, digits, tmp_path)
    assert again.metrics["original_measurement_reused"] and again.original_metrics == after.original_metrics


class SpiedTail(OriginalTail):
    made: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        SpiedTail.made.append(self)


@pytest.mark.parametrize("fine_tuned", [True, False])
def test_gppu_hands_over_its_recorded_rows_only_once_checked(trained, digits, tmp_path, fine_tuned):
    """The rows gppu recorded skip the frozen blocks in the unlearned model's pass, once its fine-tuning checked
    the replay; a run that skipped the fine-tuning (the head edit recovered) hands nothing over. Either way gppu keeps
    no reference after the run."""
    SpiedTail.made.clear()
    overrides = {} if fine_tuned else {"method_kwargs": {"forget_objective": "projection"}}
    measure_cache._CACHE.clear()
    with mock.patch.object(measure_cache, "OriginalTail", SpiedTail):
        args = UnlearnConfig(output_dir=str(tmp_path), method="gppu", report_to="none", disable_tqdm=True, seed=0,
                             **overrides)  # fmt: skip
        trainer = UnlearningTrainer(trained("vit"), args, train_dataset=digits["train"], eval_dataset=digits["test"],
                                    forget_classes=[3])  # fmt: skip
        result = trainer.unlearn()
    assert (result.metrics["finetune_steps"] > 0) == fine_tuned
    (tail,) = SpiedTail.made
    assert (tail.known is not None) == fine_tuned
    if fine_tuned:
        assert tail.known.replayed_rows > 0  # rows of the measuring passes that skipped the frozen blocks
    assert trainer.method.replay is None


def test_a_model_that_reads_every_blocks_output_gets_its_original_measured_whole():
    """Wav2Vec2 with a weighted sum of every layer's output: the original's tail cannot run without the blocks before
    it (the replayed pass raises or differs), so every batch runs the whole original, and its outputs are right."""
    from accelerate import Accelerator
    from tiny_models import tiny_classifier

    torch.manual_seed(0)
    original, inputs = tiny_classifier("wav2vec2", num_layers=2, use_weighted_layer_sum=True)
    original.eval()
    unlearned = copy.deepcopy(original)
    with torch.no_grad():
        unlearned.classifier.weight.add_(1.0)
    kept = {"classifier.weight": original.classifier.weight.detach().clone()}
    batches = [{**inputs, "labels": torch.zeros(2, dtype=torch.long)}] * 2
    tail = OriginalTail(unlearned, kept, "wav2vec2.encoder.layers.1")
    _, theirs = predict_logits(unlearned, batches, Accelerator(cpu=True), dict, 4, original=tail)
    expected = predict_logits(original, batches, Accelerator(cpu=True), dict, 4)
    assert tail.block is None
    np.testing.assert_allclose(theirs[0], expected[0], rtol=1e-5, atol=1e-6)


def test_a_replay_that_raises_measures_the_original_whole(trained, digits):
    from accelerate import Accelerator

    original = trained("vit").eval()
    model = copy.deepcopy(original)  # the unlearned model: its head moved
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    kept = {"classifier.weight": original.classifier.weight.detach().clone()}
    batches = [{"pixel_values": torch.tensor(np.stack(digits["test"]["pixel_values"][:16]), dtype=torch.float32),
                "labels": torch.zeros(16, dtype=torch.long)}] * 2  # fmt: skip
    tail = OriginalTail(model, kept, "vit.layers.1")
    with mock.patch.object(tail.replay, "replaying", side_effect=RuntimeError("the blocks are read elsewhere")):
        ours, theirs = predict_logits(model, batches, Accelerator(cpu=True), dict, 10, original=tail)
    expected = predict_logits(original, batches, Accelerator(cpu=True), dict, 10)
    assert tail.block is None
    np.testing.assert_allclose(theirs[0], expected[0], rtol=1e-5, atol=1e-6)  # the original's, whole
    assert not np.allclose(ours[0], expected[0])  # and the unlearned model's own are other numbers


def test_a_method_that_changes_what_runs_before_the_shared_block_is_an_error(trained, digits, tmp_path):
    """The head named alone puts the shared block at the last one; fine-tuning the last two blocks changes the first,
    whose output the original's tail would be fed."""
    head_only = lambda self: ["classifier"]  # noqa: E731
    measure_cache._CACHE.clear()
    with mock.patch.object(GPPU, "changed_modules", head_only), pytest.raises(RuntimeError, match="which run before 'vit.layers.1'"):
        gppu_run(trained("vit"), digits, tmp_path, method_kwargs={"num_trainable_blocks": 2})


def test_a_replay_that_does_not_reproduce_the_whole_pass_measures_the_original_whole(trained, digits, tmp_path):
    model = trained("vit")
    measure_cache._CACHE.clear()
    reference = gppu_run(model, digits, tmp_path)
    measure_cache._CACHE.clear()
    with mock.patch.object(measure_cache, "close_to", lambda *args: False):
        result = gppu_run(model, digits, tmp_path)
    assert result.metrics["original_measured_from_block"] is None
    assert float_values(result.original_metrics) == float_values(reference.original_metrics)


@pytest.mark.parametrize("known_rows", [0, 20])
def test_original_tail_runs_the_blocks_before_it_once_per_row_and_gives_the_originals_outputs(trained, digits,
                                                                                           known_rows):  # fmt: skip
    from accelerate import Accelerator

    original = trained("vit").eval()
    unlearned = copy.deepcopy(original)
    with torch.no_grad():  # a changed tail: the last block and the head
        for tensor in [*unlearned.vit.layers[1].parameters(), *unlearned.classifier.parameters()]:
            tensor.add_(0.1 * torch.randn_like(tensor))
    changed = {f"vit.layers.1.{name}": tensor.detach().clone() for name, tensor in original.vit.layers[1].named_parameters()}
    changed.update({f"classifier.{name}": tensor.detach().clone() for name, tensor in original.classifier.named_parameters()})
    pixels = torch.tensor(np.stack(digits["test"]["pixel_values"][:40]), dtype=torch.float32)
    batches = [{"pixel_values": pixels[i : i + 16], "labels": torch.zeros(len(pixels[i : i + 16]), dtype=torch.long)}
               for i in range(0, 40, 16)]  # fmt: skip
    # The block input a method recorded for some rows (gppu's replay), in one pass of their own.
    known = BlockInputReplay(unlearned, "vit.layers.1")
    if known_rows:
        with known.recording(), torch.no_grad():
            unlearned(pixel_values=pixels[:known_rows])
    rows_through_first_block = []
    hook = unlearned.vit.layers[0].register_forward_pre_hook(lambda module, args: rows_through_first_block.append(len(args[0])))
    tail = OriginalTail(unlearned, changed, "vit.layers.1", known if known_rows else None)
    ours, theirs = predict_logits(unlearned, batches, Accelerator(cpu=True), dict, 10, head=unlearned.classifier,
                                  original=tail)  # fmt: skip
    hook.remove()
    # Every row not recorded once, for the unlearned model (a batch partly recorded computes the others alone), plus
    # the first batch again: the whole original checks the replay.
    assert sum(rows_through_first_block) == 40 - known_rows + 16
    expected_ours = predict_logits(unlearned, batches, Accelerator(cpu=True), dict, 10, head=unlearned.classifier)
    expected_theirs = predict_logits(original, batches, Accelerator(cpu=True), dict, 10, head=original.classifier)
    for got, expected in [*zip(ours, expected_ours, strict=True), *zip(theirs, expected_theirs, strict=True)]:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ours[0], theirs[0])  # the two models differ: the original's outputs are its own
    assert tail.block == "vit.layers.1"


def test_block_before_finds_the_last_block_that_starts_before_every_named_module(trained):
    model = trained("vit")
    assert isinstance(model, ViTForImageClassification)
    size = model.config.image_size
    sample = {"pixel_values": torch.zeros(1, model.config.num_channels, size, size)}
    block, tail = block_before(model, sample, ["classifier"])
    assert block == "vit.layers.1" and {"vit.layers.1", "vit.layers.1.mlp.fc2", "vit.layernorm", "classifier"} <= set(tail)
    assert not {"vit.layers.0", "vit.embeddings", "vit", ""} & set(tail)
    assert block_before(model, sample, ["vit.layers.0.attention.q_proj", "classifier"])[0] == "vit.layers.0"
    assert block_before(model, sample, ["vit.embeddings.patch_embeddings.projection"]) == (None, [])  # before the blocks
