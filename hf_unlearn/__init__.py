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
    "available_methods": ".registry",
    "get_method": ".registry",
    "register_method": ".registry",
    "UnlearningMethod": ".methods.base",
    "TrainerLoopMethod": ".methods.base",
    "align_labels": ".data",
    "GANPair": ".gan",
    "DiffusionModel": ".diffusion",
}

__all__ = [
    "DiffusionModel",
    "GANPair",
    "TrainerLoopMethod",
    "UnlearnConfig",
    "UnlearningMethod",
    "UnlearningOutput",
    "UnlearningTrainer",
    "align_labels",
    "available_methods",
    "get_method",
    "register_method",
]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .config import UnlearnConfig
    from .data import align_labels
    from .diffusion import DiffusionModel
    from .gan import GANPair
    from .methods.base import TrainerLoopMethod, UnlearningMethod
    from .registry import available_methods, get_method, register_method
    from .trainer import UnlearningOutput, UnlearningTrainer


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hf_unlearn' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
