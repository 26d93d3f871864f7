"""Built-in unlearning methods. Importing this package registers each of them (one import line per method)."""

from . import (  # noqa: F401
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
