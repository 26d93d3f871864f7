"""Loading classifiers from Hub IDs or local paths, and checking that a model can be unlearned."""

from __future__ import annotations

import re

import torch
from accelerate.logging import get_logger

logger = get_logger(__name__)

_CLASSIFIER_CLASS = re.compile(r"For(Image|Audio|Sequence)Classification")


def load_classifier(model_id: str, *, trust_remote_code: bool = False):
    """Load `(model, processor)` for an image or audio classifier from a Hub ID or local path.

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

    config = AutoConfig.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    model_type = getattr(config, "model_type", None)
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


def check_classifier(model) -> None:
    """Raise a `TypeError` unless `model` is a transformers classifier (a model with a classification head)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"`model` must be a transformers model or a Hub ID / local path string, got {type(model).__name__}."
        )
    name = type(model).__name__
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if not _CLASSIFIER_CLASS.search(name) or not num_labels:
        raise TypeError(
            f"`model` is a {name}, which has no classification head. Unlearning a class needs a classifier: load "
            "it with AutoModelForImageClassification or AutoModelForAudioClassification (e.g. "
            "ViTForImageClassification), with `num_labels` set."
        )


def reinitialized_copy(model, seed: int):
    """A freshly initialised model of the same class and config (the `retrain` starting point), seeded."""
    from transformers import set_seed

    set_seed(seed)
    fresh = type(model)(model.config)
    return fresh.to(next(model.parameters()).device)
