"""hf-unlearn: machine unlearning for the Hugging Face stack.

```python
>>> from hf_unlearn import UnlearnConfig, UnlearningTrainer
>>> args = UnlearnConfig(output_dir="out", method="neggrad_plus")
>>> result = UnlearningTrainer(model, args, train_dataset=train, eval_dataset=test, forget_classes=[3]).unlearn()
```

Names are imported when first used (so `hf-unlearn --help` does not load torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0.dev0"

# Public name -> the module that defines it.
_EXPORTS = {
    "UnlearnConfig": ".config",
    "UnlearningOutput": ".trainer",
    "UnlearningTrainer": ".trainer",
    "UnlearningRequest": ".request",
    "available_methods": ".methods",
    "get_method": ".methods",
    "register_method": ".methods",
    "UnlearningMethod": ".contract",
    "TrainerLoopMethod": ".contract",
    "TrainerSurface": ".contract",
    "ModelKind": ".kinds",
    "register_kind": ".kinds",
    "kind_of": ".kinds",
    "load_model": ".kinds",
    "Metric": ".metric_registry",
    "register_metric": ".metric_registry",
    "align_labels": ".data",
    "GANPair": ".gan",
    "DiffusionModel": ".diffusion",
    "FinetuneConfig": ".methods.finetune",
    "GANCascadeConfig": ".methods.gan_cascade",
    "GPPUConfig": ".methods.gppu",
    "GradientAscentConfig": ".methods.gradient_ascent",
    "NegGradPlusConfig": ".methods.neggrad_plus",
    "RandomLabelConfig": ".methods.random_label",
    "RemainGeometryConfig": ".methods.remain_geometry",
    "RetrainConfig": ".methods.retrain",
    "SVDProjectionConfig": ".methods.svd_projection",
}

__all__ = [
    "DiffusionModel",
    "FinetuneConfig",
    "GANCascadeConfig",
    "GANPair",
    "GPPUConfig",
    "GradientAscentConfig",
    "Metric",
    "ModelKind",
    "NegGradPlusConfig",
    "RandomLabelConfig",
    "RemainGeometryConfig",
    "RetrainConfig",
    "SVDProjectionConfig",
    "TrainerLoopMethod",
    "TrainerSurface",
    "UnlearnConfig",
    "UnlearningMethod",
    "UnlearningOutput",
    "UnlearningRequest",
    "UnlearningTrainer",
    "align_labels",
    "available_methods",
    "get_method",
    "kind_of",
    "load_model",
    "register_kind",
    "register_method",
    "register_metric",
]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .config import UnlearnConfig
    from .contract import TrainerLoopMethod, TrainerSurface, UnlearningMethod
    from .data import align_labels
    from .diffusion import DiffusionModel
    from .gan import GANPair
    from .kinds import ModelKind, kind_of, load_model, register_kind
    from .methods import available_methods, get_method, register_method
    from .methods.finetune import FinetuneConfig
    from .methods.gan_cascade import GANCascadeConfig
    from .methods.gppu import GPPUConfig
    from .methods.gradient_ascent import GradientAscentConfig
    from .methods.neggrad_plus import NegGradPlusConfig
    from .methods.random_label import RandomLabelConfig
    from .methods.remain_geometry import RemainGeometryConfig
    from .methods.retrain import RetrainConfig
    from .methods.svd_projection import SVDProjectionConfig
    from .metric_registry import Metric, register_metric
    from .request import UnlearningRequest
    from .trainer import UnlearningOutput, UnlearningTrainer


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hf_unlearn' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
