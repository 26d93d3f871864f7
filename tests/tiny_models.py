"""Tiny random classifiers of every family users have (built from configs, seconds on a CPU), shared by the tests."""

import torch
from torch import nn

FAMILIES = ["vit", "deit", "resnet", "convnext", "ast", "wav2vec2", "hubert"]


def tiny_classifier(family: str, num_layers: int = 1, num_labels: int = 4, **overrides):
    """`(model, inputs)`: a tiny random classifier of `family` with `num_layers` encoder layers (transformers) or
    stages of depth `num_layers` (CNNs, always 2 stages), and an input batch of 2 for it. `overrides` are fields of the
    Wav2Vec2 / HuBERT config (e.g. its convolution strides)."""
    import transformers as tf

    labels = {"num_labels": num_labels}
    if family in ("vit", "deit"):
        config_class = tf.ViTConfig if family == "vit" else tf.DeiTConfig
        model_class = tf.ViTForImageClassification if family == "vit" else tf.DeiTForImageClassification
        config = config_class(
            image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=num_layers,
            num_attention_heads=2, intermediate_size=32, **labels,
        )  # fmt: skip
        return model_class(config), {"pixel_values": torch.randn(2, 3, 16, 16)}
    if family == "resnet":
        config = tf.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[num_layers] * 2, layer_type="bottleneck", **labels
        )
        return tf.ResNetForImageClassification(config), {"pixel_values": torch.randn(2, 3, 32, 32)}
    if family == "convnext":
        config = tf.ConvNextConfig(hidden_sizes=[8, 16], depths=[num_layers] * 2, num_stages=2, **labels)
        return tf.ConvNextForImageClassification(config), {"pixel_values": torch.randn(2, 3, 32, 32)}
    if family == "ast":
        config = tf.ASTConfig(
            hidden_size=16, num_hidden_layers=num_layers, num_attention_heads=2, intermediate_size=32,
            num_mel_bins=32, max_length=40, patch_size=16, frequency_stride=16, time_stride=16, **labels,
        )  # fmt: skip
        return tf.ASTForAudioClassification(config), {"input_values": torch.randn(2, 40, 32)}
    config_class, model_class = {
        "wav2vec2": (tf.Wav2Vec2Config, tf.Wav2Vec2ForSequenceClassification),
        "hubert": (tf.HubertConfig, tf.HubertForSequenceClassification),
    }[family]
    shape = {
        "hidden_size": 16, "num_hidden_layers": num_layers, "num_attention_heads": 2, "intermediate_size": 32,
        "conv_dim": (8, 8), "conv_stride": (5, 2), "conv_kernel": (10, 3), "num_conv_pos_embeddings": 8,
        "num_conv_pos_embedding_groups": 2, "classifier_proj_size": 8,
    }  # fmt: skip
    config = config_class(**{**shape, **overrides}, **labels)
    return model_class(config), {"input_values": torch.randn(2, 800)}


class ConstantJudge(nn.Module):
    """A judge that calls every image `label` (its head's bias decides), with a real head for the features."""

    def __init__(self, label: int):
        super().__init__()
        self.head = nn.Linear(64, 10)
        with torch.no_grad():
            self.head.weight.mul_(0.01)
            self.head.bias.zero_()
            self.head.bias[label] = 100.0

    def forward(self, images):
        return self.head(images.flatten(1))
