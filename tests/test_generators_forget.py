"""Generators actually forget: a tiny GAN and a tiny class-conditional DDPM, trained here on three brightness classes
of 8x8 images, stop generating the forget class, as a judge that really classifies (by brightness) measures. The
other generator tests check mechanics with constant judges; these check the outcome."""

import datasets
import numpy as np
import pytest
import torch
from conftest import QUIET

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.gan import dcgan_pair, train_gan

NAMES = ["dark", "mid", "bright"]
LEVELS = torch.tensor([0.15, 0.5, 0.85])


def brightness_data(rows: int, seed: int) -> datasets.Dataset:
    """8x8 grey images of three classes: uniform brightness 0.15 / 0.5 / 0.85 plus a little noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, rows)
    images = LEVELS.numpy()[labels, None, None, None] + 0.03 * rng.standard_normal((rows, 1, 8, 8))
    features = datasets.Features({"pixel_values": datasets.Array3D((1, 8, 8), "float32"),
                                  "label": datasets.ClassLabel(names=NAMES)})  # fmt: skip
    return datasets.Dataset.from_dict(
        {"pixel_values": np.clip(images, 0, 1).astype(np.float32), "label": labels}, features=features
    )


class BrightnessJudge(torch.nn.Module):
    """Classifies an image by its mean brightness (the nearest class level); its head's input features are the
    image's mean and standard deviation (the Frechet distance's feature space)."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(2, 3)
        with torch.no_grad():  # -(mean - level)^2 up to a term shared by every class
            self.head.weight.copy_(torch.stack([2 * LEVELS, torch.zeros(3)], 1))
            self.head.bias.copy_(-(LEVELS**2))

    def forward(self, images):
        flat = images.flatten(1)
        return self.head(torch.stack([flat.mean(1), flat.std(1)], 1))


@pytest.fixture(scope="module")
def data():
    return {"train": brightness_data(600, 0), "test": brightness_data(300, 1)}


def test_the_judge_classifies_the_data(data):
    images = torch.as_tensor(np.array(data["test"]["pixel_values"], dtype=np.float32))
    labels = torch.as_tensor(data["test"]["label"])
    assert (BrightnessJudge()(images).argmax(-1) == labels).float().mean() == 1.0


def test_a_gan_stops_generating_the_forgotten_class(data, tmp_path):
    gan = train_gan(dcgan_pair(image_size=8, latent_dim=8, width=8, labels=NAMES, seed=0), data["train"], steps=1000,
                    seed=0, progress=False)  # fmt: skip
    args = UnlearnConfig(output_dir=str(tmp_path), method="gan_cascade", eval_generated_samples=500,
                         method_kwargs={"max_iterations": 100}, **QUIET)  # fmt: skip
    trainer = UnlearningTrainer(gan, args, train_dataset=data["train"], eval_dataset=data["test"],
                                judge=BrightnessJudge(), forget_classes=["bright"])  # fmt: skip
    result = trainer.unlearn()
    before, after = result.original_metrics, result.metrics
    assert before["forget_share"] > 0.15, before["class_shares"]  # the trained GAN draws bright images
    assert after["forget_share"] <= 0.05, after["class_shares"]  # and no longer does
    assert after["class_shares"]["dark"] > 0.15 and after["class_shares"]["mid"] > 0.15  # the others remain
    assert result.forgotten is True and trainer.model.config.unlearned_classes == [2]


def test_a_diffusion_model_stops_generating_the_forgotten_class(data, tmp_path):
    from hf_unlearn.diffusion import small_ddpm, train_diffusion

    model = train_diffusion(small_ddpm(image_size=8, widths=(16, 32), num_train_timesteps=50, labels=NAMES, seed=0),
                            data["train"], steps=600, seed=0, progress=False)  # fmt: skip
    # The digits DDPM recipe's budget (recipes/digits/ddpm_remain_geometry.yaml), shorter.
    args = UnlearnConfig(output_dir=str(tmp_path), method="remain_geometry", max_steps=60, learning_rate=1e-4,
                         weight_decay=0.0, lr_scheduler_type="constant", per_device_train_batch_size=32,
                         eval_generated_samples=150, eval_inference_steps=10, **QUIET)  # fmt: skip
    trainer = UnlearningTrainer(model, args, train_dataset=data["train"], eval_dataset=data["test"],
                                judge=BrightnessJudge(), forget_classes=["bright"])  # fmt: skip
    result = trainer.unlearn()
    before, after = result.original_metrics, result.metrics
    assert before["forget_share"] > 0.6 and before["retain_judge_accuracy"] > 0.8, before  # it learned the classes
    assert after["forget_share"] <= 0.05, after  # samples asked for "bright" are no longer bright
    assert after["retain_judge_accuracy"] > 0.8, after  # the retained classes are still drawn as asked
    assert result.forgotten is True and trainer.model.config.unlearned_classes == [2]
