"""Built-in unlearning methods, one module each. Importing this package registers every one of them (one import
line per method) and gives the registry's lookups, which need them registered."""

from ..registry import MethodSpec, available_methods, get_method, register_method
from . import (
    finetune,
    gan_cascade,
    gppu,
    gradient_ascent,
    neggrad_plus,
    random_label,
    remain_geometry,
    retrain,
    svd_projection,
)

__all__ = ["MethodSpec", "available_methods", "get_method", "register_method", "finetune", "gan_cascade", "gppu",
           "gradient_ascent", "neggrad_plus", "random_label", "remain_geometry", "retrain", "svd_projection"]  # fmt: skip
