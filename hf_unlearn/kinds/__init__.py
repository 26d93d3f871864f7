"""Model kinds: what the library does differently for classifiers, GANs and diffusion models (`base.ModelKind`),
registered by name. The built-in kinds register themselves here; `kind_of(model)` finds a model's kind."""

from . import classifier, diffusion, gan  # noqa: F401  (registers the built-in kinds, in this order)
from .base import (
    ModelKind,
    available_kinds,
    get_kind,
    kind_of,
    load_model,
    register_kind,
    unregister_kind,
)

__all__ = ["ModelKind", "available_kinds", "get_kind", "kind_of", "load_model", "register_kind", "unregister_kind"]
