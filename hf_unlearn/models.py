"""Loading classifiers from Hub IDs or local paths, and checking that a model can be unlearned."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import torch
from accelerate.logging import get_logger

logger = get_logger(__name__)

_CLASSIFIER_CLASS = re.compile(r"For(Image|Audio|Sequence)Classification")


def load_model(model_id: str, *, trust_remote_code: bool = False):
    """Load `(model, processor)` for an image or audio classifier, a saved `hf_unlearn.gan.GANPair`, or a diffusers
    pipeline with a class-conditional UNet or a DiT (as a `hf_unlearn.diffusion.DiffusionModel`; GANs and diffusion
    models have no processor), from a Hub ID or local path.

    The Auto class is chosen from the config's model type: `AutoModelForImageClassification` with its image
    processor, or `AutoModelForAudioClassification` with its feature extractor. The processor is None when the
    checkpoint has none (a logged note; datasets must then hold model inputs already).
    """
    from transformers import (
        AutoConfig,
        AutoFeatureExtractor,
        AutoImageProcessor,
        AutoModelForAudioClassification,
        AutoModelForImageClassification,
    )
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    )

    from .diffusion import DiffusionConfig, DiffusionModel, is_pipeline_folder
    from .gan import GANConfig, GANPair  # importing it registers the GAN config with AutoConfig

    if not Path(model_id).exists() and (model_id.count("/") > 1 or model_id.startswith((".", "/", "~"))):
        raise FileNotFoundError(
            f"`model` '{model_id}' is a local path that does not exist (and not a Hub ID, which is 'org/name'). "
            "Prepare the model first: a recipe's header names the command (e.g. `python -m hf_unlearn.examples.digits "
            "--output_dir outputs/digits-vit` for the digits recipes)."
        )
    if Path(model_id).is_dir() and not (Path(model_id) / "config.json").is_file() and is_pipeline_folder(model_id):
        return DiffusionModel.from_pretrained(model_id), None  # a plain diffusers pipeline folder
    try:
        config = AutoConfig.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    except OSError:
        # No config.json: a diffusers pipeline on the Hub has model_index.json instead (asked only now, so loading a
        # classifier costs no extra Hub request).
        if is_pipeline_folder(model_id):
            return DiffusionModel.from_pretrained(model_id), None
        raise
    model_type = getattr(config, "model_type", None)
    if model_type == GANConfig.model_type:
        return GANPair.from_pretrained(model_id, trust_remote_code=trust_remote_code), None
    if model_type == DiffusionConfig.model_type:  # saved by hf-unlearn (found here even when the Hub is offline)
        return DiffusionModel.from_pretrained(model_id), None
    if model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        model_class, processor_class = AutoModelForImageClassification, AutoImageProcessor
    elif model_type in MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES:
        model_class, processor_class = AutoModelForAudioClassification, AutoFeatureExtractor
    else:
        raise ValueError(
            f"`model` '{model_id}' has model type '{model_type}', which has no image or audio classification "
            "class in transformers. Load the model yourself and pass the object."
        )
    model = model_class.from_pretrained(model_id, config=config, trust_remote_code=trust_remote_code)
    try:
        processor = processor_class.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        logger.info(f"No processor could be loaded for '{model_id}' ({error}); datasets must hold model inputs.")
        processor = None
    return model, processor


def model_kind(model) -> str:
    """What kind of model `model` is for unlearning: "gan" (`hf_unlearn.gan.GANPair`), "diffusion"
    (`hf_unlearn.diffusion.DiffusionModel`) or "classifier" (anything else, checked by `check_unlearnable`). GANs and
    diffusion models are generators: a judge classifier measures their samples."""
    from .diffusion import DiffusionModel
    from .gan import GANPair

    if isinstance(model, GANPair):
        return "gan"
    if isinstance(model, DiffusionModel):
        return "diffusion"
    return "classifier"


def check_unlearnable(model, judge=None) -> None:
    """Raise a `TypeError` unless `model` is a transformers classifier (a model with a classification head) or a
    generator (GAN or diffusion model), and unless `judge` (which only generators use) is an `nn.Module` given with a
    generator."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"`model` must be a transformers model, a diffusers pipeline or a Hub ID / local path string, got "
            f"{type(model).__name__}."
        )
    if model_kind(model) != "classifier":
        if judge is not None and not isinstance(judge, torch.nn.Module):
            raise TypeError(f"`judge` must be an image classifier (an nn.Module), got {type(judge).__name__}.")
        return
    if judge is not None:
        raise ValueError(
            "`judge` measures the samples of a generator; this model is a classifier, which is measured on the data "
            "itself: drop `judge`."
        )
    name = type(model).__name__
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if not _CLASSIFIER_CLASS.search(name) or not num_labels:
        raise TypeError(
            f"`model` is a {name}, which has no classification head. Unlearning a class needs a classifier: load "
            "it with AutoModelForImageClassification or AutoModelForAudioClassification (e.g. "
            "ViTForImageClassification), with `num_labels` set; or a GAN wrapped in `hf_unlearn.gan.GANPair`, or a "
            "diffusion model (a diffusers pipeline, or `hf_unlearn.diffusion.DiffusionModel`)."
        )


def reinitialized_copy(model, seed: int):
    """A freshly initialised model of the same class and config (the `retrain` starting point), seeded."""
    from transformers import set_seed

    set_seed(seed)
    fresh = type(model)(model.config)
    return fresh.to(next(model.parameters()).device)


def classification_head(model, name: str | None = None) -> tuple[str, torch.nn.Linear]:
    """`(name, module)` of the Linear layer that produces the logits: the last `nn.Linear` with `num_labels` outputs
    (ViT/DeiT/ConvNeXt `classifier`, ResNet `classifier.1`, AST `classifier.dense`, Wav2Vec2/HuBERT `classifier`), or
    the module called `name`."""
    if name is not None:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"`head_module={name!r}` is not a module of {type(model).__name__}.") from None
        if not isinstance(module, torch.nn.Linear):
            raise ValueError(f"`head_module={name!r}` is a {type(module).__name__}; it must name an nn.Linear.")
        return name, module
    num_labels = model.config.num_labels
    heads = [
        (module_name, module)
        for module_name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module.out_features == num_labels
    ]
    if not heads:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear with num_labels={num_labels} outputs to serve as the "
            "classification head; pass its name as `head_module`."
        )
    return heads[-1]


@torch.enable_grad()
def refit_head(
    head: torch.nn.Linear,
    features: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    learning_rate: float,
    weight_decay: float = 0.0,
    transform=None,
) -> None:
    """Refit the classification `head` in place on head inputs already computed (`features`, `(rows, d)`) with the
    cross-entropy to `labels`: `steps` full-batch AdamW steps. The head's input does not depend on the head, so this is
    exact fine-tuning of the head at the cost of a linear model, with no forward pass through the network.
    `transform` (e.g. a projection of the weight) is applied to the weight throughout and folded in at the end."""
    transform = transform or (lambda weight: weight)
    weight = head.weight.detach().float().clone().requires_grad_()
    bias = None if head.bias is None else head.bias.detach().float().clone().requires_grad_()
    parameters = [weight] + ([bias] if bias is not None else [])
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    features, labels = features.float().to(weight.device), labels.to(weight.device)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(features, transform(weight), bias), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        head.weight.copy_(transform(weight))
        if bias is not None:
            head.bias.copy_(bias)


@torch.no_grad()
def model_tail(model, batch: dict, num_blocks: int = 1) -> tuple[list[str], list[str]]:
    """The last `num_blocks` blocks of `model` and everything that runs after them (final norm, pooler, projector,
    head), found from one forward pass on `batch` (model inputs) instead of a per-architecture table.

    The blocks are the children of the `nn.ModuleList` whose last child finishes last in the forward pass: the encoder
    layers of ViT/DeiT/AST/Wav2Vec2/HuBERT, the stages of ResNet/ConvNeXt. The tail is every module with parameters of
    its own that starts running at or after the first of those blocks.

    Returns `(block_names, tail_module_names)`.
    """
    order, starts, ends = itertools.count(), {}, {}

    def started(module, args):
        starts.setdefault(module, next(order))  # a module run twice keeps its first start

    def ended(module, args, output):
        ends[module] = next(order)

    handles = []
    for module in model.modules():
        handles += [module.register_forward_pre_hook(started), module.register_forward_hook(ended)]
    was_training = model.training
    model.eval()
    try:
        model(**batch)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    block_lists = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) and module[-1] in ends
        and any(True for _ in module[-1].parameters())
    ]  # fmt: skip
    names = {module: name for name, module in model.named_modules()}
    if not block_lists:
        logger.warning(f"{type(model).__name__} has no list of blocks (nn.ModuleList): only the head will be trained.")
        blocks, first_start = [], max(starts.values())
    else:
        list_name, block_list = max(block_lists, key=lambda item: ends[item[1][-1]])
        if num_blocks > len(block_list):
            logger.warning(f"`num_trainable_blocks={num_blocks}` but '{list_name}' has {len(block_list)} blocks.")
        blocks = list(block_list)[-num_blocks:] if num_blocks else []
        first_start = min((starts[block] for block in blocks if block in starts), default=None)
        if first_start is None:  # no block: the head and what follows the blocks
            first_start = ends[block_list[-1]]
    tail = [
        names[module]
        for module in model.modules()
        if module in starts and starts[module] >= first_start and any(True for _ in module.parameters(recurse=False))
    ]
    return [names[block] for block in blocks], tail
