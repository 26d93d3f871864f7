"""Classifiers (transformers `...ForImageClassification` / `...ForAudioClassification` and any model with a
classification head and `config.num_labels`): trained by cross-entropy, measured on the data itself."""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from transformers import (
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoModelForAudioClassification,
    AutoModelForImageClassification,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
)

from ..metrics import accuracy, unlearning_metrics, worst_class_accuracy
from ..models import classification_head
from .base import ModelKind, register_kind

logger = get_logger(__name__)
_plain_logger = logging.getLogger(__name__)  # loading also runs outside an accelerate run (before the trainer)

_CLASSIFIER_CLASS = re.compile(r"For(Image|Audio|Sequence)Classification")
_AUDIO_INPUTS = ("input_values", "input_features")


class Classifier(ModelKind):
    name = "classifier"
    # (with several forget classes, each must be forgotten: a small one would hide in the pooled accuracies)
    forget_keys = ("forget_train_accuracy", "forget_accuracy", "forget_train_worst_class_accuracy")
    retain_key = "retain_accuracy"
    library_name = "transformers"
    supports_peft = True
    supports_forget_accuracy_target = True
    measures_with_original = True

    def matches(self, model) -> bool:
        num_labels = getattr(getattr(model, "config", None), "num_labels", None)
        return bool(_CLASSIFIER_CLASS.search(type(model).__name__) and num_labels)

    def load(self, model_id: str, config: Any, trust_remote_code: bool = False):
        model_type = getattr(config, "model_type", None)
        # custom modelling code (the folder's `auto_map`) is only ever reached with `trust_remote_code=True`
        custom = (getattr(config, "auto_map", None) or {}) if trust_remote_code else {}
        if model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES or "AutoModelForImageClassification" in custom:
            model_class, processor_class = AutoModelForImageClassification, AutoImageProcessor
        elif model_type in MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES or "AutoModelForAudioClassification" in custom:
            model_class, processor_class = AutoModelForAudioClassification, AutoFeatureExtractor
        else:
            return None
        model = model_class.from_pretrained(model_id, config=config, trust_remote_code=trust_remote_code)
        try:
            processor = processor_class.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            _plain_logger.info(f"No processor could be loaded for '{model_id}' ({error}); datasets must hold model "
                               "inputs.")
            processor = None
        return model, processor

    def training_loss(self, model, batch, reduction="mean", forget=False, **options) -> torch.Tensor:
        inputs = {name: value for name, value in batch.items() if name != "labels"}
        logits = model(**inputs).logits
        return F.cross_entropy(logits.float(), batch["labels"], reduction=reduction)

    def measure(self, trainer, model) -> dict:
        return self._measure(trainer, model, None)[0]

    def measure_with_original(self, trainer, model, original) -> tuple[dict, dict]:
        return self._measure(trainer, model, original)

    def _measure(self, trainer, model, original) -> tuple[dict, ...]:
        head = None
        if trainer.split.is_class_level:  # the feature probe reads the head's inputs in the same pass
            try:  # the head a method was told to use (`head_module`), where it was
                head = classification_head(model, getattr(trainer.method.config, "head_module", None))[1]
            except (ValueError, AttributeError):
                logger.info("No classification head found: the feature probe is not measured.")
        passes = {
            name: trainer.predict_logits(view, model, f"Scoring {name}", head=head, original=original)
            for name, view in trainer.metric_views.items()
        }
        runs = [passes] if original is None else [{name: both[i] for name, both in passes.items()} for i in (0, 1)]
        return tuple(
            unlearning_metrics(
                **{name: part[:2] for name, part in parts.items()},
                class_level=trainer.split.is_class_level,
                # The request's names (a reference model may name its classes LABEL_i): one key per class in every
                # column.
                id2label=getattr(trainer.model.config, "id2label", None),
                seed=trainer.args.seed,
                features=None if head is None else {name: part[2] for name, part in parts.items()},
            )
            for parts in runs
        )

    def forget_check_metrics(self, trainer) -> dict:
        # Evaluation off: the forget training rows alone (a short pass), so the record is never a guess. All of them,
        # not the method's `forget_view`: that is a random draw of `max_forget_samples` rows (a small forget class
        # may have none in it) and the rows a gradient method trained on.
        forget_rows = trainer.train_dataset.select(trainer.split.forget_indices)
        logits, labels = trainer.predict_logits(forget_rows, description="Forget check")
        metrics = {"forget_train_accuracy": accuracy(logits, labels),
                   "forget_train_worst_class_accuracy": worst_class_accuracy(logits, labels)}  # fmt: skip
        return {key: value for key, value in metrics.items() if value is not None}

    def pipeline_tag(self, model) -> str:
        return f"{self.card_template(model)}-classification"

    def card_template(self, model) -> str:
        # audio models read waveforms (`input_values`) or spectrogram features (`input_features`: Whisper, W2V-BERT)
        return "audio" if getattr(model, "main_input_name", "") in _AUDIO_INPUTS else "image"

    def check_model(self, model, judge) -> None:
        super().check_model(model, judge)
        if getattr(model, "main_input_name", None) == "input_ids":
            raise ValueError(
                f"`model` is a {type(model).__name__}, a text classifier: hf-unlearn unlearns image and audio "
                "classifiers (and generators); text classification is not supported."
            )


register_kind(Classifier())
