"""Architectures beyond the families the other tests cover (found by an architecture sweep): windowed attention (Swin),
a Linear layer that reads no sample (Swin v2's position-bias MLP), and several heads on one input (SwiftFormer)."""

import logging
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
import transformers as tf
from torch import nn

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.activations import GramStatistics, find_target_modules
from hf_unlearn.models import classification_head, one_head


def tiny_image_classifier(name: str, num_labels: int = 4):
    """A tiny random `name` ("swin", "swinv2", "swiftformer") classifier of 32x32 RGB images."""
    if name == "swiftformer":
        config = tf.SwiftFormerConfig(depths=[1, 1, 1, 1], embed_dims=[8, 8, 16, 16], num_labels=num_labels)
        return tf.SwiftFormerForImageClassification(config).eval()
    config_class, model_class = {
        "swin": (tf.SwinConfig, tf.SwinForImageClassification),
        "swinv2": (tf.Swinv2Config, tf.Swinv2ForImageClassification),
    }[name]
    config = config_class(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
                          num_labels=num_labels)  # fmt: skip
    return model_class(config).eval()


def attention_query(layers: dict) -> str:
    """The first attention block's query layer: its input is `(batch * windows, window tokens, d)` in Swin."""
    return next(name for name in layers if ".attention." in name and name.rsplit(".", 1)[-1] in ("q_proj", "query"))


def test_windowed_attention_gives_each_sample_its_windows_tokens():
    """Swin runs attention on `(batch * windows, tokens, d)`: a sample's tokens are those of all its windows, so the
    token cap takes its share from each sample and "mean" rows are one per sample (it used to raise)."""
    torch.manual_seed(0)
    model = tiny_image_classifier("swin")
    layers = find_target_modules(model)
    query = attention_query(layers)
    images = torch.randn(3, 3, 32, 32)
    inputs = []
    handle = layers[query].register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    means = []
    with torch.no_grad():  # each sample alone: all its windows' tokens, averaged
        for i in range(3):
            model(pixel_values=images[i : i + 1])
            means.append(inputs[-1].flatten(0, -2).mean(0))
    means = torch.stack(means)
    for token_rows, max_token_rows, expected_rows in (("tokens", 3 * 5, 3 * 5), ("mean", None, 3)):
        statistics = GramStatistics(layers, num_samples=3, token_rows=token_rows, max_token_rows=max_token_rows)
        statistics.sample_ids = torch.arange(3)
        with torch.no_grad(), statistics.recording():
            model(pixel_values=images)
        assert inputs[-1].shape[0] > 3 and inputs[-1].shape[0] % 3 == 0  # windows, not samples, in the first dimension
        assert statistics.rows[query] == expected_rows
        if token_rows == "mean":
            torch.testing.assert_close(statistics.grams[query][0], means.T @ means)
    handle.remove()


@pytest.mark.parametrize("batch_rows", [2, 1])
def test_a_layer_that_reads_no_sample_gets_no_statistics(batch_rows):
    """Swin v2's continuous position-bias MLP reads a table of window coordinates, the same for every sample: the
    probe pass finds that its input does not grow with the rows, so it gets no statistics (not projected) even from
    batches of one row, where its table's first dimension (1) is a multiple of the batch; every other layer gets its
    rows."""
    torch.manual_seed(0)
    model = tiny_image_classifier("swinv2")
    layers = find_target_modules(model)
    images = torch.randn(4, 3, 32, 32)
    statistics = GramStatistics(layers, num_samples=4, max_token_rows=40)
    statistics.probe(model, {"pixel_values": images[:batch_rows]})  # a batch of one row can be probed too
    with torch.no_grad():
        for start in range(0, 4, batch_rows):
            statistics.sample_ids = torch.arange(start, start + batch_rows)
            with statistics.recording():
                model(pixel_values=images[start : start + batch_rows])
    empty = sorted(name for name in layers if statistics.rows[name] == 0)
    assert empty and all("continuous_position_bias_mlp" in name for name in empty)
    assert len(empty) < len(layers)


def test_heads_averaged_on_one_input_run_as_one_head():
    """SwiftFormer averages `head` and `dist_head` on the same features: inside `one_head` the model has one head
    with their mean (the logits do not change), an edit of it is the model's, and on exit both heads carry it."""
    torch.manual_seed(0)
    model = tiny_image_classifier("swiftformer")
    inputs = {"pixel_values": torch.randn(3, 3, 32, 32)}
    with torch.no_grad():
        before = model(**inputs).logits
    head_name, head = classification_head(model)
    assert head_name == "dist_head"
    with one_head(model, inputs) as stood_in, torch.no_grad():
        assert stood_in == ["head"] and not isinstance(model.head, nn.Linear)
        assert [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][-1] == "dist_head"
        torch.testing.assert_close(model(**inputs).logits, before)
        head.weight[1] = 0.0  # an edit of the one head: class 1 now gets its bias alone
        head.bias[1] = -5.0
        edited = model(**inputs).logits
    assert isinstance(model.head, nn.Linear) and model.dist_head is head
    torch.testing.assert_close(model.head.weight, model.dist_head.weight)
    torch.testing.assert_close(model.head.bias, model.dist_head.bias)
    with torch.no_grad():
        after = model(**inputs).logits
    torch.testing.assert_close(after, edited)
    torch.testing.assert_close(after[:, 1], torch.full((3,), -5.0))


class TwoHeads(nn.Module):
    """Two heads of one shape whose logits are not one head's: on different inputs ("tokens", as DeiT's distilled
    model reads two tokens), or on one input but weighted unequally ("weighted")."""

    def __init__(self, mode: str):
        super().__init__()
        self.config, self.mode = tf.PretrainedConfig(num_labels=3), mode
        self.body = nn.Linear(4, 8)
        self.cls_head = nn.Linear(4, 3)
        self.dist_head = nn.Linear(4, 3)

    def forward(self, x):
        tokens = self.body(x).view(-1, 2, 4)
        if self.mode == "tokens":
            return SimpleNamespace(logits=(self.cls_head(tokens[:, 0]) + self.dist_head(tokens[:, 1])) / 2)
        return SimpleNamespace(logits=self.cls_head(tokens[:, 0]) + 0.5 * self.dist_head(tokens[:, 0]))


@pytest.mark.parametrize("mode", ["tokens", "weighted"])
def test_heads_that_are_not_one_head_are_left_as_they_are(mode, caplog):
    torch.manual_seed(0)
    model = TwoHeads(mode)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    model.train()
    with caplog.at_level(logging.WARNING), one_head(model, {"x": torch.randn(5, 4)}) as stood_in:
        assert stood_in == [] and isinstance(model.cls_head, nn.Linear)
        assert torch.is_grad_enabled() and model.training  # the method runs as it would without one_head
        for name, value in model.state_dict().items():
            assert torch.equal(value, state[name]), name
    # Heads on other inputs are not the head's to stand in for, nor one input weighted otherwise: either is said.
    assert "edits `dist_head` alone" in caplog.text
    assert ("from another input" in caplog.text) == (mode == "tokens")
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_an_error_in_the_block_gives_every_head_its_own_weights_back():
    torch.manual_seed(0)
    model = tiny_image_classifier("swiftformer")
    state = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="the method failed"), one_head(model, {"pixel_values": torch.randn(2, 3, 32, 32)}):
        with torch.no_grad():
            model.dist_head.weight.zero_()
        raise RuntimeError("the method failed")
    assert isinstance(model.head, nn.Linear)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def random_images(rows: int, num_labels: int = 4, seed: int = 0):
    generator = np.random.default_rng(seed)
    labels = np.arange(rows) % num_labels
    return datasets.Dataset.from_dict(
        {"pixel_values": generator.standard_normal((rows, 3, 32, 32)).astype(np.float32), "label": labels.tolist()}
    ).with_format("torch")


@pytest.mark.parametrize(
    "name,method", [("swin", "svd_projection"), ("swinv2", "svd_projection"), ("swiftformer", "svd_projection"),
                    ("swiftformer", "gppu")],  # fmt: skip
)
def test_projection_methods_run_on_these_architectures(name, method, tmp_path):
    """End to end with the defaults (svd_projection raised on Swin's windows); SwiftFormer's two heads come out as
    one edited head, both carrying it."""
    torch.manual_seed(0)
    model = tiny_image_classifier(name)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    args = UnlearnConfig(output_dir=str(tmp_path), method=method, seed=0, disable_tqdm=True, report_to="none",
                         dataloader_pin_memory=False)  # fmt: skip
    result = UnlearningTrainer(model, args, train_dataset=random_images(48), eval_dataset=random_images(16, seed=1),
                               forget_classes=[1]).unlearn()  # fmt: skip
    assert set(result.model.state_dict()) == set(before)
    assert any(not torch.equal(before[key], value) for key, value in result.model.state_dict().items())
    if name == "swiftformer":
        assert isinstance(result.model.head, nn.Linear)
        assert not torch.equal(result.model.head.weight, before["head.weight"])
        torch.testing.assert_close(result.model.head.weight, result.model.dist_head.weight)
        torch.testing.assert_close(result.model.head.bias, result.model.dist_head.bias)
        features = []  # the model's logits are the edited head's on its input
        handle = result.model.head.register_forward_pre_hook(lambda module, args: features.append(args[0]))
        with torch.no_grad():
            logits = result.model.eval()(pixel_values=torch.randn(2, 3, 32, 32)).logits
        handle.remove()
        torch.testing.assert_close(logits, nn.functional.linear(features[0], result.model.head.weight,
                                                                result.model.head.bias))  # fmt: skip


def test_gppu_runs_on_wavlm_whose_later_blocks_cannot_be_replayed(tmp_path):
    """WavLM's later blocks read the position bias its first block computes (only the first has its weights), so
    replaying the last block's input raises an AttributeError: gppu's replay check then keeps the full passes."""
    torch.manual_seed(0)
    config = tf.WavLMConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                            num_conv_pos_embedding_groups=2, classifier_proj_size=8, num_labels=4)  # fmt: skip
    model = tf.WavLMForSequenceClassification(config).eval()

    def clips(rows, seed):
        generator = np.random.default_rng(seed)
        return datasets.Dataset.from_dict(
            {"input_values": generator.standard_normal((rows, 800)).astype(np.float32),
             "label": (np.arange(rows) % 4).tolist()}  # fmt: skip
        ).with_format("torch")

    args = UnlearnConfig(output_dir=str(tmp_path), method="gppu", seed=0, disable_tqdm=True, report_to="none",
                         dataloader_pin_memory=False)  # fmt: skip
    result = UnlearningTrainer(model, args, train_dataset=clips(48, 0), eval_dataset=clips(16, 1),
                               forget_classes=[1]).unlearn()  # fmt: skip
    assert result.metrics["replay_block"] is None and result.metrics["replay_mb"] == 0.0  # the replay was refused
    assert result.metrics["finetune_steps"] > 0
