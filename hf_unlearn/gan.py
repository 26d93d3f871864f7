"""GANs for hf-unlearn: a generator/discriminator pair that saves and loads like a transformers model, a small
DCGAN-style pair for recipes and benchmarks, and plain GAN training (for the original and the retrained GAN).

`GANPair` wraps any generator and discriminator `nn.Module`s:

- the generator takes `(noise)` (unconditional) or `(noise, labels)` (class-conditional, `conditional=True`) and
  returns images shaped like the dataset's `pixel_values`;
- the discriminator takes `(images)` or `(images, labels)` and returns one logit per image ("real" > 0).

The pair is a `PreTrainedModel`: `save_pretrained` writes `config.json` (the modules' classes and constructor
arguments, the label names, the classes unlearned so far) and `model.safetensors`, `from_pretrained` rebuilds it
(classes other than hf-unlearn's own only with `trust_remote_code=True`: a config is data, and building the classes
it names runs their code), and `UnlearningTrainer` unlearns, saves and pushes it like any model.

```python
>>> from hf_unlearn.gan import GANPair, dcgan_pair, train_gan
>>> from hf_unlearn.examples.digits import load_digits_dataset
>>> data = load_digits_dataset()
>>> gan = train_gan(dcgan_pair(image_size=16), data["train"], steps=3000)
>>> images = gan.sample(16, seed=0)
>>> gan.save_pretrained("digits-gan")
>>> GANPair.from_pretrained("digits-gan")  # doctest: +SKIP
```
"""

from __future__ import annotations

import contextvars
import importlib
import inspect
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from .activations import evaluating
from .data import label_maps, label_names
from .generative import cycled, image_tensors, judge_outputs
from .metrics import generative_metrics
from .precision import weights_dtype

logger = get_logger(__name__)

#: The module classes a GAN's config.json may name without `trust_remote_code=True`: the library's own.
TRUSTED_MODULE_CLASSES = ("hf_unlearn.gan:DCGANGenerator", "hf_unlearn.gan:DCGANDiscriminator")
# Set by `GANPair.from_pretrained(..., trust_remote_code=True)` for the modules it builds from the config.
_code_trusted = contextvars.ContextVar("hf_unlearn_gan_code_trusted", default=False)


def _class_path(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_class(path: str, role: str, trust_remote_code: bool) -> type:
    """The class `path` ("module:Class") names. A config is data: unless `trust_remote_code`, only the classes of
    `TRUSTED_MODULE_CLASSES` are imported, since importing and calling anything else would run code the folder (or
    Hub repository) chose."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise ValueError(f"`{role}_class` in the GAN's config must be 'module:Class', got {path!r}.")
    if path not in TRUSTED_MODULE_CLASSES:
        if not trust_remote_code:
            raise ValueError(
                f"The GAN's config.json names `{role}_class` {path!r}, which is not one of hf-unlearn's own GAN "
                f"modules ({', '.join(TRUSTED_MODULE_CLASSES)}). Building it would import and run that code, so it "
                "is refused. If you trust the folder (or Hub repository) and the code it names, load it with "
                f"`trust_remote_code=True` (`--trust_remote_code true` on the command line); or build the module "
                f"yourself and pass it: `GANPair.from_pretrained(path, {role}=...)`."
            )
        logger.warning(
            f"`trust_remote_code=True`: importing and calling {path!r}, named by the GAN's config, to build its {role}. "
            "Make sure you trust the code it names."
        )
    module_name, _, qualname = path.partition(":")
    target = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, nn.Module)):
        raise ValueError(f"`{role}_class` {path!r} in the GAN's config is not an nn.Module class.")
    return target


def _constructor_arguments(module: nn.Module, given: dict | None) -> dict | None:
    """The arguments that rebuild `module`: `given`, else the module's own `config` dict (as the DCGAN modules keep),
    else None when a module takes no arguments; a module that needs arguments and records none cannot be rebuilt."""
    if given is not None:
        return dict(given)
    own = getattr(module, "config", None)
    if isinstance(own, dict):
        return dict(own)
    required = [
        name
        for name, parameter in inspect.signature(type(module).__init__).parameters.items()
        if name != "self" and parameter.default is inspect.Parameter.empty
        and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]  # fmt: skip
    return {} if not required else None


@dataclass
class Players:
    """The two networks of a GAN as training code calls them: possibly wrapped by `accelerator.prepare`
    (DistributedDataParallel), so a loss calls each wrapper once per step."""

    generator: nn.Module
    discriminator: nn.Module
    conditional: bool
    latent_dim: int

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def noise(self, n: int, seed: int | None = None) -> torch.Tensor:
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return torch.randn(n, self.latent_dim, generator=generator).to(self.device)

    def generate(self, noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        noise = noise.to(weights_dtype(self.generator))  # a half-precision network takes its own dtype
        return self.generator(noise, labels) if self.conditional else self.generator(noise)

    def discriminate(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        images = images.to(weights_dtype(self.discriminator))
        logits = self.discriminator(images, labels) if self.conditional else self.discriminator(images)
        return logits.reshape(len(images))


class GANConfig(PretrainedConfig):
    """What rebuilds a [`GANPair`]: the generator's and discriminator's classes (`"module:Class"`) and constructor
    arguments, the latent size, whether both take class labels, and the label names (`id2label`) of the data."""

    model_type = "hf_unlearn_gan"

    def __init__(
        self,
        generator_class: str | None = None,
        generator_kwargs: dict | None = None,
        discriminator_class: str | None = None,
        discriminator_kwargs: dict | None = None,
        latent_dim: int = 64,
        conditional: bool = False,
        **kwargs,
    ):
        self.generator_class = generator_class
        self.generator_kwargs = generator_kwargs
        self.discriminator_class = discriminator_class
        self.discriminator_kwargs = discriminator_kwargs
        self.latent_dim = latent_dim
        self.conditional = conditional
        super().__init__(**kwargs)


class GANPair(PreTrainedModel):
    """A generator and its discriminator, saved, loaded, unlearned and pushed as one model.

    Args:
        config: a [`GANConfig`]. Built for you from the modules when you pass them.
        generator / discriminator: the modules (see the module docstring for their call signatures). Without them they
            are rebuilt from `config` (what `from_pretrained` does).

    Use `GANPair.wrap(generator, discriminator, latent_dim=..., labels=[...], conditional=...)` to pair modules of your
    own; their constructor arguments come from `generator_kwargs` / `discriminator_kwargs` or from a `config` dict
    attribute on the module, so that `from_pretrained` can rebuild them: with `trust_remote_code=True` (config.json
    names your classes, and building them runs their code), or pass the modules built, `from_pretrained(path,
    generator=..., discriminator=...)`. hf-unlearn's own DCGAN modules need neither.
    """

    config_class = GANConfig
    base_model_prefix = "gan"
    main_input_name = "pixel_values"

    def __init__(self, config: GANConfig, generator: nn.Module | None = None, discriminator: nn.Module | None = None,
                 *, trust_remote_code: bool = False):  # fmt: skip
        super().__init__(config)
        trusted = trust_remote_code or _code_trusted.get()
        self.generator = generator if generator is not None else self._build(config, "generator", trusted)
        self.discriminator = (
            discriminator if discriminator is not None else self._build(config, "discriminator", trusted)
        )
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, trust_remote_code: bool = False, **kwargs):
        """As `PreTrainedModel.from_pretrained`. The generator and discriminator are built from the classes the
        config names only when they are hf-unlearn's own (`TRUSTED_MODULE_CLASSES`), or with
        `trust_remote_code=True`; or pass them built: `GANPair.from_pretrained(path, generator=g, discriminator=d)`."""
        token = _code_trusted.set(bool(trust_remote_code))
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        finally:
            _code_trusted.reset(token)

    @staticmethod
    def _build(config: GANConfig, role: str, trust_remote_code: bool = False) -> nn.Module:
        path, arguments = getattr(config, f"{role}_class"), getattr(config, f"{role}_kwargs")
        if path is None or arguments is None:
            raise ValueError(
                f"This GANConfig does not say how to build its {role} (`{role}_class` / `{role}_kwargs` unset): pass "
                f"the module, e.g. `GANPair.from_pretrained(path, {role}=My{role.title()}(...))`."
            )
        if not isinstance(arguments, dict):
            raise ValueError(f"`{role}_kwargs` in the GAN's config must be an object, got {type(arguments).__name__}.")
        return _import_class(path, role, trust_remote_code)(**arguments)

    @classmethod
    def wrap(
        cls,
        generator: nn.Module,
        discriminator: nn.Module,
        *,
        latent_dim: int,
        labels: list[str] | int,
        conditional: bool = False,
        generator_kwargs: dict | None = None,
        discriminator_kwargs: dict | None = None,
    ) -> GANPair:
        """Pair your own modules. `labels`: the data's class names in id order (or their number); `conditional`:
        whether both modules take class labels."""
        names = [f"LABEL_{i}" for i in range(labels)] if isinstance(labels, int) else list(labels)
        arguments = {}
        for role, module, given in (("generator", generator, generator_kwargs),
                                    ("discriminator", discriminator, discriminator_kwargs)):  # fmt: skip
            found = _constructor_arguments(module, given)
            if found is None:
                raise ValueError(
                    f"{type(module).__name__} needs constructor arguments to be rebuilt by `from_pretrained`: pass "
                    f"`{role}_kwargs=` (the arguments it was built with) or give it a `config` dict attribute."
                )
            arguments[role] = found
        config = GANConfig(
            generator_class=_class_path(generator),
            generator_kwargs=arguments["generator"],
            discriminator_class=_class_path(discriminator),
            discriminator_kwargs=arguments["discriminator"],
            latent_dim=latent_dim,
            conditional=conditional,
            **label_maps(names),
        )
        return cls(config, generator, discriminator)

    def _init_weights(self, module):
        # The modules initialise themselves; weights absent from a checkpoint keep that initialisation.
        pass

    # ------------------------------------------------------------------------------------------------ calls
    def players(self) -> Players:
        """The generator and discriminator as a [`Players`] (what training code calls)."""
        return Players(self.generator, self.discriminator, self.config.conditional, self.config.latent_dim)

    def generate_images(self, noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images from latent `noise` `(n, latent_dim)` (and class `labels` `(n,)` for a conditional pair)."""
        return self.players().generate(noise, labels)

    def discriminate(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The discriminator's logit per image, `(n,)` (> 0: judged real)."""
        return self.players().discriminate(images, labels)

    def forward(self, pixel_values=None, labels=None, noise=None):
        """`pixel_values` given: the discriminator's logits; otherwise images generated from `noise`."""
        if pixel_values is not None:
            return self.discriminate(pixel_values, labels)
        return self.generate_images(noise, labels)

    def noise(self, n: int, seed: int | None = None) -> torch.Tensor:
        """`n` latent vectors from N(0, I), seeded when `seed` is given."""
        return self.players().noise(n, seed)

    @torch.no_grad()
    def sample(self, n: int, labels=None, seed: int | None = None, batch_size: int = 500) -> torch.Tensor:
        """`n` generated images (eval mode, float32 whatever the generator's precision), from seeded noise when `seed`
        is given. A conditional pair needs `labels` (`(n,)` class ids, or one id for all)."""
        if self.config.conditional:
            if labels is None:
                raise ValueError("This GAN is class-conditional: pass `labels` (class ids) to `sample`.")
            labels = torch.as_tensor(labels, dtype=torch.long).expand(n).to(self.device)
        noise = self.noise(n, seed)
        with evaluating(self):
            images = [
                self.generate_images(noise[i : i + batch_size], None if labels is None else labels[i : i + batch_size])
                for i in range(0, n, batch_size)
            ]
        return torch.cat(images).float()


AutoConfig.register(GANConfig.model_type, GANConfig, exist_ok=True)


# ---------------------------------------------------------------------------------------------- DCGAN pair
class DCGANGenerator(nn.Module):
    """A small DCGAN generator: latent vector -> `width x 4 x 4`... -> `channels x image_size x image_size` in
    [0, 1] (the range of `hf_unlearn.examples.digits` pixel values). `num_classes` makes it class-conditional (a label
    embedding is added to the latent vector)."""

    def __init__(self, latent_dim: int = 64, image_size: int = 16, channels: int = 1, width: int = 64,
                 num_classes: int | None = None):  # fmt: skip
        super().__init__()
        if image_size % 4 or image_size < 8:
            raise ValueError(f"`image_size` must be a multiple of 4, at least 8; got {image_size}.")
        self.config = {"latent_dim": latent_dim, "image_size": image_size, "channels": channels, "width": width,
                       "num_classes": num_classes}  # fmt: skip
        self.start = image_size // 4
        self.embedding = nn.Embedding(num_classes, latent_dim) if num_classes else None
        self.project = nn.Sequential(
            nn.Linear(latent_dim, 2 * width * self.start**2), nn.BatchNorm1d(2 * width * self.start**2), nn.ReLU()
        )
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, noise, labels=None):
        if self.embedding is not None:
            noise = noise * self.embedding(labels)
        hidden = self.project(noise).reshape(len(noise), -1, self.start, self.start)
        return self.upsample(hidden)


class DCGANDiscriminator(nn.Module):
    """A small DCGAN discriminator: two strided convolutions and a linear logit. `num_classes` makes it
    class-conditional (projection discriminator: the logit adds <label embedding, features>)."""

    def __init__(self, image_size: int = 16, channels: int = 1, width: int = 64, num_classes: int | None = None):
        super().__init__()
        self.config = {"image_size": image_size, "channels": channels, "width": width, "num_classes": num_classes}
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        size = 2 * width * (image_size // 4) ** 2
        self.logit = nn.Linear(size, 1)
        self.embedding = nn.Embedding(num_classes, size) if num_classes else None

    def forward(self, images, labels=None):
        features = self.features(images)
        logit = self.logit(features).squeeze(-1)
        if self.embedding is not None:
            logit = logit + (self.embedding(labels) * features).sum(-1)
        return logit


def dcgan_pair(image_size: int = 16, channels: int = 1, latent_dim: int = 64, width: int = 64,
               labels: list[str] | int = 10, conditional: bool = False, seed: int = 0) -> GANPair:  # fmt: skip
    """A randomly initialised (seeded) small DCGAN pair for `image_size` x `image_size` images with `channels`."""
    names = label_names(labels)
    num_classes = len(names) if conditional else None
    torch.manual_seed(seed)
    generator = DCGANGenerator(latent_dim, image_size, channels, width, num_classes)
    discriminator = DCGANDiscriminator(image_size, channels, width, num_classes)
    return GANPair.wrap(generator, discriminator, latent_dim=latent_dim, labels=names, conditional=conditional)


# ------------------------------------------------------------------------------------------------- training
def discriminator_loss(players: Players, real, real_labels, fake, fake_labels) -> torch.Tensor:
    """The non-saturating GAN loss of the discriminator: real images scored 1, generated ones 0 (one forward pass
    over both, as a DistributedDataParallel discriminator needs)."""
    labels = None if real_labels is None else torch.cat([real_labels, fake_labels])
    logits = players.discriminate(torch.cat([real, fake]), labels)
    targets = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))]).to(logits)
    return F.binary_cross_entropy_with_logits(logits, targets)


def generator_loss(players: Players, batch_size: int, labels=None) -> torch.Tensor:
    """The non-saturating GAN loss of the generator: its images scored as real by the (current) discriminator."""
    logits = players.discriminate(players.generate(players.noise(batch_size), labels), labels)
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def random_labels(players: Players, n: int, classes: torch.Tensor) -> torch.Tensor | None:
    """Class ids drawn uniformly from `classes` for a conditional pair (None for an unconditional one)."""
    if not players.conditional:
        return None
    return classes[torch.randint(len(classes), (n,), device=classes.device)].to(players.device)


def gan_optimizers(pair: GANPair, learning_rate: float, betas: tuple[float, float] = (0.5, 0.999)):
    """Adam for the discriminator and the generator (DCGAN's settings: lr 2e-4, betas (0.5, 0.999))."""
    return (
        torch.optim.Adam(pair.discriminator.parameters(), lr=learning_rate, betas=betas),
        torch.optim.Adam(pair.generator.parameters(), lr=learning_rate, betas=betas),
    )


def train_gan(pair: GANPair, dataset, steps: int = 3000, batch_size: int = 64, learning_rate: float = 2e-4,
              seed: int = 0, progress: bool = True) -> GANPair:  # fmt: skip
    """Train `pair` (in place, and returned) on the `pixel_values` / `label` rows of `dataset` with the
    non-saturating GAN loss: per step one discriminator update on a real batch and a generated one, then one
    generator update. `pair.training_seconds` holds the wall time (the cost a retrain pays)."""
    start = time.perf_counter()
    images, labels = image_tensors(dataset)
    images, labels = images.to(pair.device), labels.to(pair.device)
    classes = torch.unique(labels)
    torch.manual_seed(seed)
    optimizer_d, optimizer_g = gan_optimizers(pair, learning_rate)
    players = pair.players()
    pair.train()
    for _ in tqdm(range(steps), desc="Training GAN", disable=not progress, leave=False):
        rows = torch.randint(len(images), (batch_size,), device=images.device)
        fake_labels = random_labels(players, batch_size, classes)
        with torch.no_grad():
            fake = players.generate(players.noise(batch_size), fake_labels)
        real_labels = labels[rows] if players.conditional else None
        optimizer_d.zero_grad(set_to_none=True)
        discriminator_loss(players, images[rows], real_labels, fake, fake_labels).backward()
        optimizer_d.step()
        optimizer_g.zero_grad(set_to_none=True)
        generator_loss(players, batch_size, random_labels(players, batch_size, classes)).backward()
        optimizer_g.step()
    pair.eval()
    pair.training_seconds = time.perf_counter() - start
    return pair


# ------------------------------------------------------------------------------------------------ measuring
@torch.no_grad()
def discriminator_probabilities(pair: GANPair, images: torch.Tensor, labels: torch.Tensor | None,
                                batch_size: int = 500):  # fmt: skip
    """The discriminator's probability "real" per image (eval mode), as a numpy array."""
    with evaluating(pair):
        scores = [
            torch.sigmoid(pair.discriminate(images[i : i + batch_size].to(pair.device),
                                            None if labels is None else labels[i : i + batch_size].to(pair.device)))
            for i in range(0, len(images), batch_size)
        ]  # fmt: skip
    return torch.cat(scores).float().cpu().numpy() if scores else np.zeros(0, dtype=np.float32)


def measure_generator(pair: GANPair, judge: nn.Module, *, forget_classes, retained_classes, forget_rows,
                      held_out_rows, real_retain_rows, num_samples: int, seed: int, id2label=None) -> dict:  # fmt: skip
    """`hf_unlearn.metrics.generative_metrics` of `pair`: `num_samples` generated from seeded noise (`seed`; for a
    conditional pair, as many for the forget classes and for the retained classes, in turn), judged by `judge`;
    `forget_rows` / `held_out_rows` / `real_retain_rows` are `(images, labels)` tensors. The sampling settings are
    recorded with the numbers."""
    conditional = pair.config.conditional
    retain_sample_labels = cycled(retained_classes, num_samples) if conditional else None
    retain_samples = pair.sample(num_samples, retain_sample_labels, seed=seed)
    forget_logits, generated_labels = None, retain_sample_labels
    if conditional and forget_classes:
        forget_samples = pair.sample(num_samples, cycled(forget_classes, num_samples), seed=seed + 1)
        forget_logits = judge_outputs(judge, forget_samples)[0]
    retain_logits, retain_features = judge_outputs(judge, retain_samples)
    forget_images, forget_labels = forget_rows
    held_images, held_labels = held_out_rows
    same_classes = torch.isin(held_labels, torch.unique(forget_labels))
    metrics = generative_metrics(
        forget_classes=forget_classes,
        forget_logits=forget_logits,
        retain_logits=retain_logits,
        retain_sample_labels=None if retain_sample_labels is None else retain_sample_labels.numpy(),
        retain_sample_features=retain_features,
        real_retain_features=judge_outputs(judge, real_retain_rows[0])[1],
        forget_scores=discriminator_probabilities(pair, forget_images, forget_labels),
        held_out_scores=discriminator_probabilities(pair, held_images[same_classes], held_labels[same_classes]),
        generated_scores=discriminator_probabilities(pair, retain_samples, generated_labels),
        id2label=id2label,
    )
    metrics["sampling"] = {"samples": num_samples, "seed": seed, "sampler": "one generator pass from N(0, I) noise"}
    return metrics
