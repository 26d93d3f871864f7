"""Helpers shared by the generators (GANs and diffusion models): their training images as tensors, the judge
classifier's logits and features on generated samples, and class ids in turn for class-conditional sampling."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from .activations import capturing, evaluating, pooled_rows
from .data import has_transform


def image_tensors(dataset, image_column: str = "pixel_values", label_column: str = "label"):
    """`(images, labels)` of every row of a `datasets.Dataset` as tensors (generators are trained and measured from
    memory: one row lookup per sample would cost more than a step of a small GAN). A dataset's own transform
    (`with_transform`) is applied to the images, as the Trainer's loop applies it (`with_format` would drop it)."""
    if image_column not in dataset.column_names:
        raise ValueError(
            f"Training or measuring a generator (GAN, diffusion model) reads images from a '{image_column}' column of "
            f"float pixel values (shaped like the generated images); the dataset has {dataset.column_names}. Map your "
            "images to that column first, e.g. as `hf_unlearn.examples.digits.load_digits_dataset` does."
        )
    labels = dataset.with_format("torch", columns=[label_column])[:][label_column].long()
    if has_transform(dataset):  # read through it, as training does
        images = dataset[:][image_column]
        images = torch.stack([torch.as_tensor(image) for image in images]) if isinstance(images, list) else images
        return torch.as_tensor(images).float(), labels
    return dataset.with_format("torch", columns=[image_column])[:][image_column].float(), labels


def cycled(classes, n: int) -> torch.Tensor:
    """`n` class ids going round `classes` (equal numbers of samples per class)."""
    classes = torch.as_tensor(list(classes), dtype=torch.long)
    return classes.repeat(-(-n // len(classes)))[:n]


def judge_head(judge: nn.Module) -> nn.Linear:
    """The judge's last `nn.Linear` (its classification head): its input is the feature space of the Frechet
    distance."""
    linears = [module for module in judge.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(
            f"`judge` ({type(judge).__name__}) has no nn.Linear classification head, whose input features the Frechet "
            "distance uses: pass an image classifier (e.g. a ResNetForImageClassification)."
        )
    return linears[-1]


@torch.no_grad()
def judge_outputs(judge: nn.Module, images: torch.Tensor, batch_size: int = 500):
    """`(logits, features)` of the judge (eval mode) on `images`, as numpy arrays; features are the input of its
    head, averaged over any token dimensions. A transformers classifier is called with `pixel_values=`, any other
    module with the images. Non-finite images (a generator whose samples overflow) or logits are an error: judged,
    NaN logits would count as class 0, so a forget class could look forgotten."""
    if not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images.flatten(1))).any(1).sum())
        raise RuntimeError(f"{bad} of {len(images)} images given to the judge hold NaN or infinite values (generated "
                           "samples overflow: check the model's weights and dtype, lower the learning rate); they "
                           "cannot be judged, and NaN logits would count as class 0.")
    head = judge_head(judge)
    device = next(judge.parameters()).device
    logits, features = [], []
    with evaluating(judge):
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device)
            with capturing(head) as captured:
                output = judge(pixel_values=batch) if isinstance(judge, PreTrainedModel) else judge(batch)
            logits.append(getattr(output, "logits", output).float().cpu())
            features.append(pooled_rows(captured.value).float().cpu())
    logits = torch.cat(logits)
    if not bool(torch.isfinite(logits).all()):
        raise RuntimeError("The judge's logits hold NaN or infinite values on finite images: check the judge's weights "
                           "and dtype; NaN logits would count as class 0.")
    return logits.numpy(), torch.cat(features).numpy()
