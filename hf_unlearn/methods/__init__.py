"""Built-in unlearning methods. Importing this package registers each of them (one import line per method)."""

from . import finetune, gppu, gradient_ascent, neggrad_plus, random_label, retrain, svd_projection  # noqa: F401
