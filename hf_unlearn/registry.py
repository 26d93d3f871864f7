"""The method registry: one name per unlearning method, mapped to its config dataclass and its implementation.

Every method module registers itself when `hf_unlearn.methods` is imported:

    register_method("finetune", FinetuneConfig, Finetune, description="...", paper="https://...")

Adding a method is one new module, its config, its tests and one import line in `hf_unlearn/methods/__init__.py`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, is_dataclass


@dataclass(frozen=True)
class MethodSpec:
    """What the registry knows about one method."""

    name: str
    config_class: type
    method_class: type
    description: str
    paper: str | None = None
    #: How to cite the method's paper (plain text), for model cards.
    citation: str | None = None
    #: What a user of an unlearned model must know about the method (e.g. which steps are reconstructions).
    limitations: str | None = None


_METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    config_class: type,
    method_class: type,
    *,
    description: str,
    paper: str | None = None,
    citation: str | None = None,
    limitations: str | None = None,
) -> MethodSpec:
    """Register an unlearning method under `name`.

    Args:
        name: the value users put in `UnlearnConfig(method=...)`.
        config_class: a dataclass holding the method's own hyperparameters (`UnlearnConfig.method_kwargs`
            is resolved to it).
        method_class: a subclass of `hf_unlearn.methods.base.UnlearningMethod`.
        description: one line, shown when listing methods.
        paper: link to the paper the method implements, if any.
        citation: how to cite that paper (plain text), shown in model cards.
        limitations: what users of a model unlearned with this method must know, shown in model cards.
    """
    if not is_dataclass(config_class):
        raise TypeError(f"`config_class` for method '{name}' must be a dataclass, got {config_class!r}.")
    if name in _METHODS and _METHODS[name].method_class is not method_class:
        raise ValueError(f"An unlearning method named '{name}' is already registered ({_METHODS[name].method_class}).")
    spec = MethodSpec(name, config_class, method_class, description, paper, citation, limitations)
    _METHODS[name] = spec
    return spec


def _ensure_builtin_methods_loaded() -> None:
    # Importing the package registers every built-in method; done lazily so that `registry` has no import cycle.
    import hf_unlearn.methods  # noqa: F401


def available_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    _ensure_builtin_methods_loaded()
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    """The registered method `name`; a `ValueError` listing the valid names otherwise."""
    _ensure_builtin_methods_loaded()
    if name not in _METHODS:
        close = difflib.get_close_matches(str(name), list(_METHODS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"Unknown unlearning method '{name}'.{hint} Available: {', '.join(sorted(_METHODS))}.")
    return _METHODS[name]
