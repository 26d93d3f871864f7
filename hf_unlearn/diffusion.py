"""Class-conditional diffusion models for hf-unlearn: a denoiser from diffusers (a `UNet2DModel` in pixel space, or a
`DiTTransformer2DModel` in the latent space of an `AutoencoderKL`) with its noise scheduler, trained, sampled, saved
and unlearned as one model.

`DiffusionModel` is a `PreTrainedModel` whose forward pass is the denoising loss, so the Trainer-based methods
(`finetune`, `gradient_ascent`, `remain_geometry`, ...) train it like a classifier. It saves as a diffusers pipeline
folder (`DDPMPipeline` layout for a UNet, `DiTPipeline` layout for a DiT: `model_index.json`, `unet/` or
`transformer/` + `vae/`, `scheduler/`) plus a `config.json` of its own (label names, the null class of classifier-free
guidance, the classes unlearned so far), so `DiffusionModel.from_pretrained` and `DiTPipeline.from_pretrained` /
`UNet2DModel.from_pretrained(path, subfolder="unet")` all reload it.

`sample()` is a class-conditional sampler (diffusers' `DDPMPipeline` cannot pass class labels and `DiTPipeline`'s
guidance hard-codes 1000 classes): any diffusers scheduler, a step count, and classifier-free guidance when the model
was trained with a null class.

Needs diffusers: `pip install 'hf-unlearn[diffusion]'`.

```python
>>> from diffusers import DDPMScheduler, UNet2DModel
>>> from hf_unlearn.diffusion import DiffusionModel, train_diffusion
>>> unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64),
...                    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
...                    layers_per_block=1, norm_num_groups=8, num_class_embeds=11)   # 10 digits + the null class
>>> model = DiffusionModel.wrap(unet, DDPMScheduler(), labels=["zero", "one", ...])
>>> train_diffusion(model, data["train"], steps=1500)
>>> images = model.sample([3] * 16, num_inference_steps=25, guidance_scale=2.0, seed=0)
>>> model.save_pretrained("digits-ddpm")
```
"""

from __future__ import annotations

import inspect
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import file_exists
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput, logging

from .activations import evaluating
from .data import label_maps, label_names
from .generative import cycled, image_tensors, judge_outputs
from .metrics import generative_metrics
from .outputs import public_reference, write_atomic
from .precision import weights_dtype

logger = logging.get_logger(__name__)

INSTALL_HINT = "Diffusion models need diffusers: `pip install 'hf-unlearn[diffusion]'` (or `pip install diffusers`)."
DENOISERS = {"UNet2DModel": "unet", "DiTTransformer2DModel": "transformer"}
DEFAULT_SAMPLER = "DDIMScheduler"


def diffusers_module():
    """The `diffusers` package, or an ImportError that says how to install it."""
    try:
        import diffusers
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return diffusers


class DiffusionConfig(PretrainedConfig):
    """What a [`DiffusionModel`] keeps beside its diffusers components: the label names (`id2label`), the null class
    used for classifier-free guidance (None: the model was not trained for guidance), the probability of replacing a
    label by it in training steps, and the pixel range of the data (mapped to the model's [-1, 1])."""

    model_type = "hf_unlearn_diffusion"

    def __init__(self, denoiser: str = "unet", null_class: int | None = None, label_dropout: float = 0.0,
                 data_range: tuple[float, float] = (0.0, 1.0), **kwargs):  # fmt: skip
        self.denoiser = denoiser
        self.null_class = null_class
        self.label_dropout = label_dropout
        self.data_range = list(data_range)
        super().__init__(**kwargs)


@dataclass
class DiffusionOutput(ModelOutput):
    """`loss`: the mean denoising loss of the batch; `losses`: one per row."""

    loss: torch.Tensor | None = None
    losses: torch.Tensor | None = None


class DiffusionModel(PreTrainedModel):
    """A class-conditional diffusion model: `denoiser` (`UNet2DModel` with `num_class_embeds`, or
    `DiTTransformer2DModel`), its training `noise_scheduler` (e.g. `DDPMScheduler`) and, for latent models, a frozen
    `vae` (`AutoencoderKL`).

    Build one with `DiffusionModel.wrap(...)`, `DiffusionModel.from_pipeline(pipeline)` (a `DDPMPipeline` or
    `DiTPipeline`) or `DiffusionModel.from_pretrained(path_or_hub_id)`. Calling it with `pixel_values` (in
    `config.data_range`) and class `labels` returns the denoising loss ([`DiffusionOutput`]).
    """

    config_class = DiffusionConfig
    base_model_prefix = "diffusion"
    main_input_name = "pixel_values"

    def __init__(self, config: DiffusionConfig, denoiser: nn.Module, noise_scheduler, vae: nn.Module | None = None):
        super().__init__(config)
        self.denoiser = denoiser
        self.vae = vae
        if vae is not None:
            vae.requires_grad_(False)
        for module in denoiser.modules():
            # diffusers' DiT drops labels inside every block's label embedding (10 % in training mode), so forget steps
            # could not keep their labels: the model drops them itself, once per row (`config.label_dropout`).
            if type(module).__name__ == "LabelEmbedding":
                module.dropout_prob = 0.0
        self.noise_scheduler = noise_scheduler
        self.post_init()

    def _init_weights(self, module):
        # diffusers modules initialise themselves.
        pass

    # ------------------------------------------------------------------------------------------- building
    @classmethod
    def wrap(cls, denoiser: nn.Module, noise_scheduler, vae: nn.Module | None = None, *, labels=None,
             null_class: int | str | None = "auto", label_dropout: float | None = None,
             data_range: tuple[float, float] = (0.0, 1.0)) -> DiffusionModel:  # fmt: skip
        """Wrap diffusers components.

        Args:
            denoiser: a class-conditional `UNet2DModel` (`num_class_embeds` set) or a `DiTTransformer2DModel`.
            noise_scheduler: the scheduler it was trained with, of the DDPM family (`DDPMScheduler`,
                `DDIMScheduler`, ...: its `alphas_cumprod`, `num_train_timesteps` and `prediction_type` define the
                training loss; any scheduler can sample).
            vae: the `AutoencoderKL` of a DiT (required for a DiT, absent for a UNet).
            labels: class names in id order (or their number). Default: `LABEL_i` for every class the denoiser
                embeds.
            null_class: the class id meaning "no class" for classifier-free guidance. "auto": a UNet with one more
                class embedding than `labels` names uses the last (without `labels`: no null class); a DiT uses its
                built-in one (`num_embeds_ada_norm`). None: no guidance.
            label_dropout: share of training labels replaced by the null class (default 0.1 with a null class, the
                usual classifier-free-guidance training; diffusers' own dropout inside a DiT is switched off in favour
                of this one, so that forget steps can keep their labels).
            data_range: the pixel range of the dataset's `pixel_values` (mapped to the model's [-1, 1]).
        """
        if getattr(noise_scheduler, "alphas_cumprod", None) is None:
            raise ValueError(
                f"`noise_scheduler` {type(noise_scheduler).__name__} has no `alphas_cumprod`: pass the DDPM-family "
                "scheduler the model was trained with (e.g. `DDPMScheduler.from_config(scheduler.config)`)."
            )
        kind = DENOISERS.get(type(denoiser).__name__)
        if kind is None:
            raise TypeError(
                f"`denoiser` must be a diffusers UNet2DModel or DiTTransformer2DModel, got {type(denoiser).__name__}."
            )
        if kind == "unet":
            embeds = denoiser.config.num_class_embeds
            if not embeds or denoiser.config.class_embed_type is not None:
                raise ValueError(
                    "The UNet2DModel is not class-conditional: build it with `num_class_embeds` (the number of classes, "
                    "plus one for the null class of classifier-free guidance) and no `class_embed_type`."
                )
            if vae is not None:
                raise ValueError(
                    "A UNet2DModel works in pixel space here: drop `vae` (or use a DiTTransformer2DModel)."
                )
        else:
            embeds = denoiser.config.num_embeds_ada_norm
            if vae is None:
                raise ValueError("A DiTTransformer2DModel denoises VAE latents: pass its `vae` (an AutoencoderKL).")
        count = labels if isinstance(labels, int) else (len(labels) if labels is not None else None)
        if null_class == "auto":
            if kind == "transformer":
                null_class = embeds  # diffusers' LabelEmbedding keeps one extra row for dropped labels
            else:
                null_class = embeds - 1 if count == embeds - 1 else None
        if count is None:
            count = embeds
        if count > embeds:
            raise ValueError(f"`labels` names {count} classes but the denoiser embeds only {embeds}.")
        table = embeds + 1 if kind == "transformer" else embeds  # a DiT's embedding table has its null row appended
        if null_class is not None and not count <= null_class < table:
            raise ValueError(
                f"`null_class` {null_class} must be an embedding row after the {count} named classes (< {table})."
            )
        names = label_names(count if labels is None else labels)
        if label_dropout is None:
            label_dropout = 0.1 if null_class is not None else 0.0
        config = DiffusionConfig(denoiser=kind, null_class=null_class, label_dropout=label_dropout,
                                 data_range=data_range, **label_maps(names))  # fmt: skip
        return cls(config, denoiser, noise_scheduler, vae)

    @classmethod
    def from_pipeline(cls, pipeline, labels=None, **wrap_kwargs) -> DiffusionModel:
        """Wrap the components of a diffusers pipeline (`DDPMPipeline`, `DiTPipeline`, or any with a `unet` or
        `transformer`, a `scheduler` and, for latent models, a `vae`). A `DiTPipeline`'s label names are used unless
        `labels` is given. The pipeline's `name_or_path` is kept as the model's `config._name_or_path`."""
        denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
        if denoiser is None or getattr(pipeline, "scheduler", None) is None:
            raise TypeError(f"{type(pipeline).__name__} has no `unet` / `transformer` and `scheduler` to unlearn.")
        if labels is None and getattr(pipeline, "labels", None):
            by_id = {}
            for name, class_id in pipeline.labels.items():  # DiTPipeline splits "a, b" synonyms and sorts them
                by_id.setdefault(class_id, []).append(name)
            labels = [", ".join(by_id.get(i, [f"LABEL_{i}"])) for i in range(max(by_id) + 1)]
        model = cls.wrap(denoiser, pipeline.scheduler, getattr(pipeline, "vae", None), labels=labels, **wrap_kwargs)
        # where it came from: the card's base model, and the push that must never target the original's repository
        model.config._name_or_path = str(getattr(pipeline, "name_or_path", None) or "")
        return model

    def pipeline(self):
        """The components as a diffusers pipeline (`DDPMPipeline` for a UNet, `DiTPipeline` for a DiT), sharing this
        model's modules (for saving; sample with [`sample`], which passes class labels)."""
        diffusers = diffusers_module()
        if self.config.denoiser == "unet":
            return diffusers.DDPMPipeline(unet=self.denoiser, scheduler=self.noise_scheduler)
        id2label = {int(k): v for k, v in self.config.id2label.items()}
        pipeline = diffusers.DiTPipeline(transformer=self.denoiser, vae=self.vae, scheduler=self.noise_scheduler,
                                         id2label=id2label)  # fmt: skip
        pipeline.register_to_config(id2label=id2label)  # written to model_index.json: DiTPipeline reloads the names
        return pipeline

    def save_pretrained(self, save_directory, is_main_process: bool = True, **kwargs):
        """Write the diffusers pipeline folder and this model's `config.json` (the keyword arguments of
        `PreTrainedModel.save_pretrained`, e.g. the Trainer's `state_dict`, are not needed: the modules are saved)."""
        if not is_main_process:
            return
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.pipeline().save_pretrained(str(directory))
        self.config.save_pretrained(str(directory))
        # diffusers records where each component was loaded from (`_name_or_path`, often a local path): keep only
        # what a reader of a pushed folder can use.
        for component in directory.glob("*/config.json"):
            config = json.loads(component.read_text())
            if config.get("_name_or_path"):
                config["_name_or_path"] = public_reference(config["_name_or_path"])
                write_atomic(component, json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> DiffusionModel:
        """Load a saved model, or any diffusers pipeline folder / Hub ID with a class-conditional UNet or a DiT
        (its own `config.json`, when present, restores label names, null class and unlearned classes)."""
        diffusers = diffusers_module()
        source = str(pretrained_model_name_or_path)
        pipeline = diffusers.DiffusionPipeline.from_pretrained(source, **kwargs)
        hub = {key: kwargs[key] for key in ("revision", "token", "cache_dir", "local_files_only") if key in kwargs}
        if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
            return cls.from_pipeline(pipeline)  # a plain diffusers pipeline folder (its name_or_path is `source`)
        try:
            config = DiffusionConfig.from_pretrained(source, **hub)
        except OSError as error:
            logger.warning(
                f"'{source}' has no readable hf-unlearn config.json ({error}): label names, null class and unlearned "
                "classes are taken from the pipeline alone (pass `labels=` / `null_class=` to `from_pipeline` if wrong)."
            )
            return cls.from_pipeline(pipeline)
        names = [config.id2label[i] for i in range(len(config.id2label))]
        model = cls.from_pipeline(pipeline, labels=names, null_class=config.null_class,
                                  label_dropout=config.label_dropout, data_range=tuple(config.data_range))  # fmt: skip
        model.config.unlearned_classes = getattr(config, "unlearned_classes", None)
        model.config._name_or_path = source
        return model

    # ------------------------------------------------------------------------------------------ denoising
    def to_model_space(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Data images -> what the denoiser sees: [-1, 1] pixels (UNet) or scaled VAE latents (DiT)."""
        images = to_signed_range(pixel_values, self.config.data_range)
        if self.vae is None:
            return images
        with torch.no_grad():
            latents = self.vae.encode(images.to(weights_dtype(self.vae))).latent_dist.sample().to(images.dtype)
        return latents * self.vae.config.scaling_factor

    def to_data_space(self, x: torch.Tensor) -> torch.Tensor:
        """Denoised samples -> images in `config.data_range`."""
        if self.vae is not None:
            x = self.vae.decode((x / self.vae.config.scaling_factor).to(weights_dtype(self.vae))).sample.to(x.dtype)
        low, high = self.config.data_range
        return ((x.clamp(-1, 1) + 1) / 2) * (high - low) + low

    def predict(self, x_t: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor,
                with_variance: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """The denoiser's prediction for `x_t` at `timesteps` under class `labels`. A DiT that learns its variances
        also outputs their interpolation values v in [-1, 1] (Nichol & Dhariwal's learned range): dropped, or
        returned as `(prediction, v)` with `with_variance`. A half-precision denoiser takes `x_t` in its dtype and
        answers in `x_t`'s (`hf_unlearn.precision`)."""
        x = x_t.to(weights_dtype(self.denoiser))
        if self.config.denoiser == "unet":
            output = self.denoiser(x, timesteps, class_labels=labels).sample
        else:
            output = self.denoiser(x, timestep=timesteps, class_labels=labels).sample
        output = output.to(x_t.dtype)
        channels = x_t.shape[1]
        if with_variance:
            return output[:, :channels], output[:, channels : 2 * channels]
        return output[:, :channels]

    @property
    def learns_variance(self) -> bool:
        """Whether the denoiser also predicts its variances (a DiT with twice its input channels out)."""
        config = self.denoiser.config
        return self.config.denoiser != "unet" and getattr(config, "out_channels", None) == 2 * config.in_channels

    def noised(self, x0: torch.Tensor, antithetic: bool = False):
        """`(x_t, timesteps, target)`: `x0` noised at random timesteps (`antithetic`: the second half of the batch at
        T-1-t of the first, as SFR-on's forget step), and what the denoiser must predict (per the scheduler's
        `prediction_type`)."""
        total = self.noise_scheduler.config.num_train_timesteps
        n = len(x0)
        timesteps = torch.randint(0, total, (n,), device=x0.device)
        if antithetic and n > 1:
            half = n // 2
            timesteps[half : 2 * half] = total - 1 - timesteps[:half]
        noise = torch.randn_like(x0)
        # The scheduler's add_noise / get_velocity, computed here without moving the scheduler's tensors between
        # devices (replicas of nn.DataParallel share one scheduler).
        alphas = self.noise_scheduler.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[timesteps]
        signal, sigma = alphas.sqrt().view(-1, 1, 1, 1), (1 - alphas).sqrt().view(-1, 1, 1, 1)
        x_t = signal * x0 + sigma * noise
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = signal * noise - sigma * x0
        elif kind == "sample":
            target = x0
        else:
            raise ValueError(f"Unsupported scheduler `prediction_type` {kind!r}.")
        return x_t, timesteps, target

    def forward(self, pixel_values=None, labels=None, antithetic: bool = False, class_dropout: float | None = None,
                remap_classes=None, guidance_scale: float | None = None, vlb: bool = False) -> DiffusionOutput:  # fmt: skip
        """The denoising loss (per-row mean squared error) of `pixel_values` under class `labels`.

        `antithetic`: antithetic timesteps (see [`noised`]). `class_dropout`: share of labels replaced by the null
        class (default: `config.label_dropout` in training mode, 0 in eval mode). `remap_classes`: instead of the
        noise, the target is the (detached) prediction under these classes, which maps `labels` onto them (SFR-on's
        "rl" forget loss). `guidance_scale` s: the loss of the guided prediction eps_null + s (eps_label - eps_null)
        (as sampling uses it; the official SFR-on DDPM Fisher), for a model trained with a null class. `vlb`: add
        the variational bound term of the learned variances (`vlb_terms`; DiT's training loss, MSE + VLB), for a
        model that `learns_variance` and predicts the noise. (No argument but `labels` has "label" in its name: the
        Trainer takes those for labels.)"""
        if pixel_values is None or labels is None:
            raise ValueError("A DiffusionModel needs `pixel_values` and class `labels` to compute its loss.")
        guided = guidance_scale is not None and guidance_scale != 1
        if guided:
            self._check_guidance()
        if vlb:
            if not self.learns_variance or self.noise_scheduler.config.prediction_type != "epsilon":
                raise ValueError("The VLB term needs a denoiser that predicts the noise and learns its variances.")
            if remap_classes is not None or guided:
                raise ValueError("The VLB term is for the plain denoising loss (no `remap_classes`, no guidance).")
        x0 = self.to_model_space(pixel_values)
        x_t, timesteps, target = self.noised(x0, antithetic)
        dropout = (self.config.label_dropout if self.training else 0.0) if class_dropout is None else class_dropout
        if dropout > 0 and self.config.null_class is not None:
            dropped = torch.rand(len(labels), device=labels.device) < dropout
            labels = torch.where(dropped, torch.full_like(labels, self.config.null_class), labels)
        if vlb:
            prediction, variance = self.predict(x_t, timesteps, labels, with_variance=True)
        else:
            prediction = self.predict(x_t, timesteps, labels)
        if guided:
            unconditional = self.predict(x_t, timesteps, torch.full_like(labels, self.config.null_class))
            prediction = guide(prediction, unconditional, guidance_scale)
        if remap_classes is not None:
            with torch.no_grad():
                target = self.predict(x_t, timesteps, remap_classes)
        losses = F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)
        if vlb:
            losses = losses + vlb_terms(self.noise_scheduler, x0, x_t, timesteps, prediction.detach(), variance)
        return DiffusionOutput(loss=losses.mean(), losses=losses)

    def _check_guidance(self) -> None:
        if self.config.null_class is None:
            raise ValueError(
                "Classifier-free guidance needs a model trained with a null class (`null_class`); use "
                "`guidance_scale=1`."
            )

    # ------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, labels, num_inference_steps: int = 25, guidance_scale: float | None = None,
               sampler=DEFAULT_SAMPLER, seed: int | None = None, batch_size: int = 250,
               progress: bool = False, eta: float = 0.0) -> torch.Tensor:  # fmt: skip
        """Images (in `config.data_range`) generated for class `labels` (`(n,)` ids).

        Args:
            num_inference_steps: denoising steps of the sampler.
            guidance_scale: classifier-free guidance s in eps_uncond + s (eps_cond - eps_uncond) (1: none; needs a
                model trained with a null class). Default: 2 with a null class, else 1. A paper's w in
                (1 + w) eps_cond - w eps_uncond is s = w + 1 (`guidance_scale_from_paper`).
            eta: the sampler's eta where its `step` takes one (DDIM), else ignored.
            sampler: a diffusers scheduler (instance or class name, e.g. "DDIMScheduler", "DDPMScheduler",
                "DPMSolverMultistepScheduler"), configured from the training scheduler's config.
            seed: seeds the starting noise (and stochastic samplers) for repeatable samples.
        """
        guidance_scale = self.default_guidance() if guidance_scale is None else guidance_scale
        if guidance_scale != 1:
            self._check_guidance()
        scheduler = self.sampler(sampler)
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        shape = self.sample_shape()
        # Stochastic samplers take the generator; deterministic ones (PNDM, Heun, ...) have no such argument.
        step_parameters = inspect.signature(scheduler.step).parameters
        step_options = {"generator": generator} if "generator" in step_parameters else {}
        if "eta" in step_parameters:
            step_options["eta"] = eta
        images = []
        with evaluating(self):
            for start in tqdm(range(0, len(labels), batch_size), desc="Sampling", disable=not progress, leave=False):
                batch = labels[start : start + batch_size].to(self.device)
                x = torch.randn((len(batch), *shape), generator=generator).to(self.device)
                scheduler.set_timesteps(num_inference_steps)
                x = x * scheduler.init_noise_sigma
                null = torch.full_like(batch, self.config.null_class if self.config.null_class is not None else 0)
                for t in scheduler.timesteps:
                    model_input = scheduler.scale_model_input(x, t)
                    steps = t.reshape(1).expand(len(batch)).to(self.device)
                    if guidance_scale == 1:
                        prediction = self.predict(model_input, steps, batch)
                    else:
                        both = self.predict(torch.cat([model_input] * 2), torch.cat([steps] * 2),
                                            torch.cat([batch, null]))  # fmt: skip
                        conditional, unconditional = both.chunk(2)
                        prediction = guide(conditional, unconditional, guidance_scale)
                    x = scheduler.step(prediction, t, x, **step_options).prev_sample
                images.append(self.to_data_space(x).float().cpu())
        return torch.cat(images) if images else torch.zeros((0, *shape))

    def default_guidance(self) -> float:
        """s = 2 (a paper's w = 1) for a model trained with a null class, else 1 (no guidance)."""
        return 2.0 if self.config.null_class is not None else 1.0

    def sampler(self, sampler=DEFAULT_SAMPLER):
        """A fresh scheduler for sampling: `sampler` (a class name or an instance) configured like the training
        scheduler."""
        if not isinstance(sampler, str):
            return sampler
        diffusers = diffusers_module()
        scheduler_class = getattr(diffusers, sampler, None)
        is_scheduler = isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)
        if not is_scheduler:  # a name from a config: only scheduler classes are built from it
            raise ValueError(f"`sampler` {sampler!r} is not a diffusers scheduler class (e.g. 'DDIMScheduler').")
        # Latents are not bounded like [-1, 1] pixels: clipping the predicted sample would cut them.
        overrides = {"clip_sample": False} if self.vae is not None else {}
        return scheduler_class.from_config(self.noise_scheduler.config, **overrides)

    def sample_shape(self) -> tuple[int, int, int]:
        """`(channels, height, width)` of what the denoiser denoises (latents for a DiT)."""
        config = self.denoiser.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (config.in_channels, height, width)


AutoConfig.register(DiffusionConfig.model_type, DiffusionConfig, exist_ok=True)


def to_signed_range(pixel_values: torch.Tensor, data_range) -> torch.Tensor:
    """Pixel values in `data_range` (low, high) mapped linearly to [-1, 1], the range diffusion models work in."""
    low, high = data_range
    return (pixel_values - low) / (high - low) * 2 - 1


def is_diffusion(model) -> bool:
    """Whether `model` is a [`DiffusionModel`] (possibly wrapped by accelerate / DistributedDataParallel)."""
    return isinstance(getattr(model, "module", model), DiffusionModel)


def as_diffusion_model(model):
    """`model` as a [`DiffusionModel`] when it is a diffusers pipeline; a bare denoiser is refused with the fix;
    anything else is returned unchanged."""
    name = type(model).__name__
    if name in DENOISERS:
        raise TypeError(
            f"`model` is a bare {name}: diffusion unlearning also needs its noise scheduler{' and VAE' if name != 'UNet2DModel' else ''}. "
            "Pass `DiffusionModel.wrap(denoiser, scheduler, vae=...)` (from hf_unlearn.diffusion), or a pipeline "
            "(e.g. `DDPMPipeline(unet=unet, scheduler=scheduler)`, `DiTPipeline(transformer, vae, scheduler)`)."
        )
    if type(model).__module__.startswith("diffusers.") and hasattr(model, "scheduler"):
        return DiffusionModel.from_pipeline(model)
    return model


def is_pipeline_folder(model_id: str) -> bool:
    """Whether `model_id` is a local folder (or, online, a Hub repository) holding a diffusers pipeline."""
    if Path(model_id).is_dir():
        return (Path(model_id) / "model_index.json").is_file()
    try:
        return file_exists(model_id, "model_index.json")
    except Exception:  # offline, or not a repository id: not a pipeline we can find
        return False


# ------------------------------------------------------------------------------------------- small models
def small_ddpm(image_size: int = 16, channels: int = 1, widths: tuple[int, ...] = (32, 64), labels: list[str] | int = 10,
               num_train_timesteps: int = 1000, seed: int = 0) -> DiffusionModel:  # fmt: skip
    """A randomly initialised (seeded) small class-conditional pixel-space DDPM: a `UNet2DModel` (one ResNet layer per
    block, `widths` channels) with a class embedding per label plus a null class for classifier-free guidance, and a
    `DDPMScheduler` of `num_train_timesteps` steps."""
    diffusers = diffusers_module()
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(
        sample_size=image_size, in_channels=channels, out_channels=channels, block_out_channels=widths,
        down_block_types=("DownBlock2D",) * len(widths), up_block_types=("UpBlock2D",) * len(widths),
        layers_per_block=1, norm_num_groups=min(8, widths[0]), num_class_embeds=len(label_names(labels)) + 1,
    )  # fmt: skip
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=num_train_timesteps)
    return DiffusionModel.wrap(unet, scheduler, labels=label_names(labels))


def small_dit(image_size: int = 16, channels: int = 1, vae_widths: tuple[int, ...] = (16, 32),
              latent_channels: int = 4, heads: int = 4, head_dim: int = 32, layers: int = 4, patch_size: int = 2,
              labels: list[str] | int = 10, num_train_timesteps: int = 1000, seed: int = 0,
              learn_variance: bool = False) -> DiffusionModel:  # fmt: skip
    """A randomly initialised (seeded) small latent DiT: an `AutoencoderKL` (downsampling by 2 per extra entry of
    `vae_widths`; train it with [`train_vae`] first) and a `DiTTransformer2DModel` over its latents (`layers` blocks
    of `heads` x `head_dim`, `patch_size` patches, diffusers' null class row, 10 % label dropout). With
    `learn_variance`, the DiT also outputs its variances (twice the latent channels, as the published DiTs)."""
    diffusers = diffusers_module()
    torch.manual_seed(seed)
    groups = min(8, vae_widths[0])
    vae = diffusers.AutoencoderKL(
        in_channels=channels, out_channels=channels, latent_channels=latent_channels, block_out_channels=vae_widths,
        down_block_types=("DownEncoderBlock2D",) * len(vae_widths),
        up_block_types=("UpDecoderBlock2D",) * len(vae_widths), norm_num_groups=groups, sample_size=image_size,
    )  # fmt: skip
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=latent_channels, num_layers=layers,
        out_channels=2 * latent_channels if learn_variance else latent_channels,
        sample_size=image_size // 2 ** (len(vae_widths) - 1), patch_size=patch_size, num_embeds_ada_norm=len(label_names(labels)),
        norm_num_groups=groups,
    )  # fmt: skip
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=num_train_timesteps, clip_sample=False)
    return DiffusionModel.wrap(transformer, scheduler, vae, labels=label_names(labels))


# ------------------------------------------------------------------------------------------------- training
def train_diffusion(model: DiffusionModel, dataset, steps: int = 1500, batch_size: int = 64,
                    learning_rate: float = 1e-3, seed: int = 0, progress: bool = True) -> DiffusionModel:  # fmt: skip
    """Train `model` (in place, and returned) on the `pixel_values` / `label` rows of `dataset` with the denoising
    loss (only the denoiser: a DiT's VAE is frozen, train it first with [`train_vae`]): AdamW, the rate warmed up linearly over the first 5 % of `steps` and then decayed to 0 by a cosine, gradients
    clipped to norm 1, labels dropped to the null class at `config.label_dropout`. `model.training_seconds` holds the
    wall time (what a retrain costs)."""
    start = time.perf_counter()
    images, labels = (t.to(model.device) for t in image_tensors(dataset))
    torch.manual_seed(seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    model.train()
    for _ in tqdm(range(steps), desc="Training diffusion model", disable=not progress, leave=False):
        rows = torch.randint(len(images), (batch_size,), device=images.device)
        loss = model(pixel_values=images[rows], labels=labels[rows]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
    model.eval()
    model.training_seconds = time.perf_counter() - start
    return model


def train_vae(vae: nn.Module, dataset, steps: int = 1000, batch_size: int = 64, learning_rate: float = 1e-3,
              kl_weight: float = 1e-4, data_range=(0.0, 1.0), seed: int = 0, progress: bool = True):  # fmt: skip
    """Train an `AutoencoderKL` (in place, and returned) to reconstruct the `pixel_values` of `dataset` (mapped to
    [-1, 1]): mean squared error plus `kl_weight` times the KL term. Its `scaling_factor` is then set to 1 / the
    standard deviation of the latents, as Stable Diffusion's VAE is, so that latents have unit variance."""
    images = image_tensors(dataset)[0].to(vae.device)
    vae.requires_grad_(True)
    images = to_signed_range(images, data_range)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate)
    vae.train()
    for _ in tqdm(range(steps), desc="Training VAE", disable=not progress, leave=False):
        batch = images[torch.randint(len(images), (batch_size,), device=images.device)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, batch) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    vae.eval()
    vae.requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i : i + 500]).latent_dist.sample() for i in range(0, len(images), 500)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


# ------------------------------------------------------------------------------------------------ the VLB term
def normal_kl(mean1, log_var1, mean2, log_var2) -> torch.Tensor:
    """KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))), elementwise."""
    return 0.5 * (-1.0 + log_var2 - log_var1 + torch.exp(log_var1 - log_var2)
                  + (mean1 - mean2).pow(2) * torch.exp(-log_var2))  # fmt: skip


def discretized_gaussian_log_likelihood(x, mean, log_scale) -> torch.Tensor:
    """Log-likelihood of data `x` in [-1, 1] quantised to 8 bits under N(mean, exp(log_scale)^2), elementwise (the
    decoder term at t = 0; the normal CDF by its tanh approximation)."""

    def cdf(value):
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (value + 0.044715 * value.pow(3))))

    centred, inverse_std = x - mean, torch.exp(-log_scale)
    upper, lower = cdf(inverse_std * (centred + 1.0 / 255.0)), cdf(inverse_std * (centred - 1.0 / 255.0))
    log_upper = torch.log(upper.clamp_min(1e-12))
    log_one_minus_lower = torch.log((1.0 - lower).clamp_min(1e-12))
    log_delta = torch.log((upper - lower).clamp_min(1e-12))
    return torch.where(x < -0.999, log_upper, torch.where(x > 0.999, log_one_minus_lower, log_delta))


def vlb_terms(scheduler, x0, x_t, timesteps, eps, variance) -> torch.Tensor:
    """Per-row variational bound term, in bits per dimension, of a denoiser that learns its variances (Nichol &
    Dhariwal 2021, as DiT trains: MSE + VLB): the KL from the true posterior q(x_{t-1} | x_t, x0) to the model's
    Gaussian, whose mean comes from the noise prediction `eps` (pass it detached, so that only the variance output
    learns from this term) and whose log-variance interpolates between the posterior's (clipped at t = 0) and
    log beta_t by (v + 1) / 2, v = `variance`; at t = 0 the discretized decoder's negative log-likelihood instead."""
    betas = scheduler.betas.to(device=x_t.device, dtype=torch.float32)
    alphas_cumprod = scheduler.alphas_cumprod.to(device=x_t.device, dtype=torch.float32)
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - previous) / (1.0 - alphas_cumprod)
    posterior_log_variance = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))

    def at(values):
        return values[timesteps].view(-1, 1, 1, 1)

    x0, x_t, eps, variance = x0.float(), x_t.float(), eps.float(), variance.float()
    coefficient_x0 = at(betas * previous.sqrt() / (1.0 - alphas_cumprod))
    coefficient_xt = at((1.0 - previous) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod))
    true_mean = coefficient_x0 * x0 + coefficient_xt * x_t
    true_log_variance = at(posterior_log_variance)
    predicted_x0 = (x_t - at((1.0 - alphas_cumprod).sqrt()) * eps) / at(alphas_cumprod.sqrt())
    model_mean = coefficient_x0 * predicted_x0 + coefficient_xt * x_t
    fraction = (variance + 1.0) / 2.0
    model_log_variance = fraction * at(torch.log(betas)) + (1.0 - fraction) * true_log_variance
    kl = normal_kl(true_mean, true_log_variance, model_mean, model_log_variance).flatten(1).mean(1) / math.log(2.0)
    decoder = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)
    decoder = decoder.flatten(1).mean(1) / math.log(2.0)
    return torch.where(timesteps == 0, decoder, kl)


# ------------------------------------------------------------------------------------------------ measuring
def guide(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance in this library's convention: eps_uncond + s (eps_cond - eps_uncond)."""
    return unconditional + scale * (conditional - unconditional)


def guidance_scale_from_paper(w: float) -> float:
    """The `guidance_scale` s (eps_uncond + s (eps_cond - eps_uncond)) that equals a paper's w in
    (1 + w) eps_cond - w eps_uncond (Ho & Salimans; SFR-on's `cond_scale`): s = w + 1."""
    return w + 1.0


def guidance_scale_to_paper(s: float) -> float:
    """The inverse of `guidance_scale_from_paper`: w = s - 1."""
    return s - 1.0


def measure_diffusion(model: DiffusionModel, judge: nn.Module, *, forget_classes, retained_classes,
                      real_retain_rows, num_samples: int, seed: int, num_inference_steps: int,
                      guidance_scale: float | None, sampler: str, id2label=None, eta: float = 0.0) -> dict:  # fmt: skip
    """`hf_unlearn.metrics.generative_metrics` of `model`: `num_samples` generated for the forget classes and as many
    for the retained classes (in turn; seeded), judged by `judge`, with the Frechet distance in the judge's features
    against `real_retain_rows` (`(images, labels)`). The sampling settings are recorded with the numbers."""
    guidance_scale = model.default_guidance() if guidance_scale is None else guidance_scale
    settings = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "sampler": sampler,
                "eta": eta}  # fmt: skip
    retain_labels = cycled(retained_classes, num_samples)
    retain_logits, retain_features = judge_outputs(judge, model.sample(retain_labels, seed=seed, **settings))
    forget_logits = None
    if forget_classes:
        forget_samples = model.sample(cycled(forget_classes, num_samples), seed=seed + 1, **settings)
        forget_logits = judge_outputs(judge, forget_samples)[0]
    metrics = generative_metrics(
        forget_classes=forget_classes,
        forget_logits=forget_logits,
        retain_logits=retain_logits,
        retain_sample_labels=retain_labels.numpy(),
        retain_sample_features=retain_features,
        real_retain_features=judge_outputs(judge, real_retain_rows[0])[1],
        id2label=id2label,
    )
    metrics["sampling"] = {"samples": num_samples, "seed": seed, "sampler": sampler, "eta": eta,
                           "steps": num_inference_steps, "guidance_scale": guidance_scale,
                           "guidance_scale_paper_w": guidance_scale_to_paper(guidance_scale)}  # fmt: skip
    return metrics
