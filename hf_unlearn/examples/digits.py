"""scikit-learn's handwritten digits as a `datasets` benchmark, with small ViT / ResNet classifiers built from configs.

The data ships with scikit-learn (1,797 real 8x8 grey images, 10 classes), so the demo, the tests and the
benchmarks run offline. Images are upsampled to `image_size` pixels, scaled to [0, 1] and stored as
`pixel_values` (1 x size x size); the split is stratified and seeded.

```python
>>> from hf_unlearn.examples.digits import load_digits_dataset, digits_classifier, train_classifier
>>> data = load_digits_dataset()
>>> model = train_classifier(digits_classifier("vit"), data["train"], epochs=30)
```
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import datasets
import numpy as np
import torch
import yaml
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from transformers import (
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    set_seed,
)

from ..config import UnlearnConfig
from ..data import label_maps
from ..diffusion import small_ddpm, train_diffusion
from ..gan import dcgan_pair, train_gan
from ..jobs import JOB_KEYS
from ..trainer import UnlearningTrainer

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ARCHITECTURES = ("vit", "resnet")


def load_digits_dataset(image_size: int = 16, test_size: float = 0.2, seed: int = 0):
    """`DatasetDict` with `train` / `test` splits: `pixel_values` (float32, 1 x size x size) and `label`
    (`ClassLabel` with names "zero".."nine")."""
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    if image_size != images.shape[-1]:
        images = torch.nn.functional.interpolate(images, size=image_size, mode="bilinear", align_corners=False)
    train_rows, test_rows = train_test_split(
        np.arange(len(digits.target)), test_size=test_size, random_state=seed, stratify=digits.target
    )
    features = datasets.Features(
        {
            "pixel_values": datasets.Array3D(shape=(1, image_size, image_size), dtype="float32"),
            "label": datasets.ClassLabel(names=DIGIT_NAMES),
        }
    )

    def split(rows):
        return datasets.Dataset.from_dict(
            {"pixel_values": images[rows].numpy(), "label": digits.target[rows].tolist()}, features=features
        )

    return datasets.DatasetDict({"train": split(train_rows), "test": split(test_rows)})


def tiny_vit_config(image_size: int = 16, num_channels: int = 1, **overrides):
    """The small ViT shape used for digits (2 layers, 32 wide, 4x4 patches); `overrides` are ViTConfig fields."""
    shape = {
        "patch_size": 4,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    return ViTConfig(image_size=image_size, num_channels=num_channels, **{**shape, **overrides})


def digits_classifier(architecture: str = "vit", image_size: int = 16, seed: int = 0):
    """A small, randomly initialised transformers classifier for digits: `"vit"` (ViTForImageClassification,
    2 layers, 32 wide, 4x4 patches) or `"resnet"` (ResNetForImageClassification, 2 basic stages of 16/32 channels)."""
    labels = label_maps(DIGIT_NAMES)
    set_seed(seed)
    if architecture == "vit":
        return ViTForImageClassification(tiny_vit_config(image_size=image_size, **labels))
    if architecture == "resnet":
        config = ResNetConfig(
            num_channels=1, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", **labels
        )
        return ResNetForImageClassification(config)
    raise ValueError(f"`architecture` must be one of {ARCHITECTURES}, got {architecture!r}.")


#: The recipe (`recipes/digits/NAME.yaml`) that holds each method's budget on digits: the demo and the benchmarks read
#: their budgets from these files (`unlearn_budgets`), so a recipe and the numbers measured with it cannot drift apart.
#: `retrain` always uses DEFAULT_TRAINING, the original model's recipe.
BUDGET_RECIPES = {
    "finetune": "vit_finetune",
    "gradient_ascent": "vit_gradient_ascent",
    "neggrad_plus": "vit_neggrad_plus",
    "random_label": "vit_random_label",
    "gppu": "vit_gppu",
    "remain_geometry": "vit_remain_geometry",
    "svd_projection": "resnet_svd_projection",
}
RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "digits"
#: Keys of a recipe that are not the unlearning budget: the job's (model, data, classes), the output, method and seed.
_NOT_BUDGET = JOB_KEYS | {"output_dir", "method", "seed"}


def recipe_budget(path: str | Path) -> dict:
    """The unlearning budget of a recipe (its `UnlearnConfig` fields but the output folder and the method), as
    keyword arguments of `unlearn_digits` / `training_arguments`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Recipe {path} not found: the digits budgets are read from the repository's `recipes/digits/` (run from "
            "a clone of hf-unlearn, or pass your own budget)."
        )
    values = yaml.safe_load(path.read_text()) or {}
    return {key: value for key, value in values.items() if key not in _NOT_BUDGET}


@functools.cache
def unlearn_budgets() -> dict[str, dict]:
    """Each method's budget on digits, read from its recipe (`BUDGET_RECIPES`)."""
    return {method: recipe_budget(RECIPES / f"{name}.yaml") for method, name in BUDGET_RECIPES.items()}


# Budgets for sample-level forgetting (a random 10 % of the training rows), where "forgotten" means "as a model that
# never saw the rows", not accuracy 0: no forget-accuracy stop; gradient_ascent takes one gentle epoch.
SAMPLE_BUDGETS = {
    "finetune": {"epochs": 3, "learning_rate": 3e-3},
    "gradient_ascent": {"epochs": 1, "learning_rate": 1e-4},
    "neggrad_plus": {"epochs": 3, "learning_rate": 1e-3},
    "random_label": {"epochs": 2, "learning_rate": 1e-3},
    # SFR-on with the paper's random-forgetting K = 5, alpha = 25; AdamW instead of the paper's SGD (see its docs).
    "remain_geometry": {
        "max_steps": 150,
        "learning_rate": 1e-3,
        "optim": "adamw_torch",
        "weight_decay": 0.0,
        "max_grad_norm": 0.0,
    },
}

DEFAULT_TRAINING = {"vit": {"epochs": 30, "learning_rate": 3e-3}, "resnet": {"epochs": 15, "learning_rate": 3e-3}}


def training_arguments(
    output_dir: str, epochs: float = 1, learning_rate: float = 1e-3, seed: int = 0, **overrides
) -> dict:
    """The training recipe shared by the original model and the `retrain` reference (so the two are comparable)."""
    return {
        "output_dir": output_dir,
        "num_train_epochs": epochs,
        "learning_rate": learning_rate,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 256,
        "weight_decay": 0.01,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0,
        "logging_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "seed": seed,
        "dataloader_pin_memory": False,  # nothing to pin for on a CPU machine; torch warns otherwise
        **overrides,
    }


def train_classifier(model, train_dataset, output_dir: str = "digits_original", seed: int = 0, **recipe):
    """Train `model` on `train_dataset` with a plain `transformers.Trainer` (the "original" model to unlearn from)."""
    args = TrainingArguments(**training_arguments(output_dir, seed=seed, **recipe))
    Trainer(model=model, args=args, train_dataset=train_dataset).train()
    return model.eval()


def unlearn_digits(
    model,
    data,
    method: str,
    forget_classes,
    output_dir: str,
    seed: int = 0,
    processing_class=None,
    forget_indices=None,
    **budget,
):
    """Run `method` on a model trained on `data["train"]` (digits, or any `train` / `test` splits; raw columns need
    `processing_class`) with a budget from `unlearn_budgets()` / `DEFAULT_TRAINING` (or your own), forgetting
    `forget_classes`, or the training rows `forget_indices` when given (then `forget_classes` is None).
    Returns `(trainer, UnlearningOutput)`."""
    args = UnlearnConfig(**training_arguments(output_dir, seed=seed, **budget), method=method)
    trainer = UnlearningTrainer(
        model,
        args,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=processing_class,
        forget_classes=forget_classes,
        forget_indices=forget_indices,
    )
    return trainer, trainer.unlearn()


GENERATORS = ("gan", "ddpm")


def prepare_digits(output_dir: str, architecture: str = "vit", seed: int = 0, gan_steps: int = 3000,
                   ddpm_steps: int = 1500) -> dict:  # fmt: skip
    """Train the small digits classifier and write what a `hf-unlearn unlearn` job reads: `OUTPUT_DIR/model`
    (model, `save_pretrained`) and `OUTPUT_DIR/{train,test}.parquet` (the dataset, features kept).

    `architecture="gan"`: the model is the small DCGAN of `hf_unlearn.gan` (`gan_steps` steps, about 2 minutes on
    2 CPU cores); `"ddpm"`: the small class-conditional DDPM of `hf_unlearn.diffusion` (`ddpm_steps` steps, about 6
    minutes; needs diffusers; the DDPM of `benchmarks/diffusion.py`). Either way the ResNet classifier is saved as its judge in `OUTPUT_DIR/judge`."""

    output = Path(output_dir)
    data = load_digits_dataset(seed=seed)
    written = {"model": str(output / "model")}
    classifier = "resnet" if architecture in GENERATORS else architecture
    model = train_classifier(
        digits_classifier(classifier, seed=seed), data["train"], str(output / "training"), seed=seed,
        **DEFAULT_TRAINING[classifier],
    )  # fmt: skip
    if architecture in GENERATORS:
        model.save_pretrained(output / "judge")
        written["judge"] = str(output / "judge")
    if architecture == "gan":
        model = train_gan(dcgan_pair(seed=seed, labels=DIGIT_NAMES), data["train"], steps=gan_steps, seed=seed)
    elif architecture == "ddpm":
        model = train_diffusion(small_ddpm(seed=seed, labels=DIGIT_NAMES), data["train"], steps=ddpm_steps, seed=seed)
    model.save_pretrained(output / "model")
    files = {split: str(output / f"{split}.parquet") for split in data}
    for split, path in files.items():
        data[split].to_parquet(path)
    return {**written, "data_files": files}


def main(argv=None) -> None:
    """`python -m hf_unlearn.examples.digits --output_dir outputs/digits-vit [--architecture resnet|gan|ddpm]`: prepare a
    digits job (`gan`: a small DCGAN, `ddpm`: a small class-conditional DDPM, each with its ResNet judge)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--architecture", choices=(*ARCHITECTURES, *GENERATORS), default="vit")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    written = prepare_digits(options.output_dir, options.architecture, options.seed)
    print("\n".join(f"{name}: {value}" for name, value in written.items()))


if __name__ == "__main__":
    main()
