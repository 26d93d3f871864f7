"""The method registry: one name per unlearning method, mapped to its config dataclass and its implementation.

Every built-in method module registers itself when `hf_unlearn.methods` is imported (the package's own names,
`hf_unlearn.get_method` and friends, import it first):

    register_method("finetune", FinetuneConfig, Finetune, description="...", paper="https://...")

Adding a method is one new module, its config, its tests and one import line in `hf_unlearn/methods/__init__.py`.
`MethodSpec.validate` holds every check of what a method can do for a request.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, is_dataclass
from typing import TYPE_CHECKING, Any

from .contract import UnlearningMethod

if TYPE_CHECKING:
    import torch

    from .config import UnlearnConfig
    from .kinds import ModelKind


@dataclass(frozen=True)
class MethodSpec:
    """What the registry knows about one method."""

    name: str
    config_class: type
    method_class: type[UnlearningMethod]
    description: str
    paper: str | None = None
    #: How to cite the method's paper (plain text), for model cards.
    citation: str | None = None
    #: What a user of an unlearned model must know about the method (e.g. which steps are reconstructions).
    limitations: str | None = None

    def validate(self, *, kind: ModelKind, args: UnlearnConfig, model: torch.nn.Module, class_level: bool) -> None:
        """Refuse, with the fix, a request this method cannot serve: another model kind, rows for a class-only
        method, settings that do not fit the model (`UnlearningMethod.check_settings`)."""
        method = self.method_class
        if kind.name not in method.model_kinds:
            fitting = [name for name in available_methods() if kind.name in get_method(name).method_class.model_kinds]
            raise ValueError(
                f"Method '{self.name}' does not unlearn {kind.name} models (it works on: "
                f"{', '.join(method.model_kinds)}). Methods for this model: {', '.join(fitting)}."
            )
        preset = getattr(args, "preset_applied", None)
        if preset and preset["kind"] != kind.name:
            fitting = [p.dataset for p in method.paper_presets if p.kind == kind.name]
            raise ValueError(
                f"`preset_dataset={preset['dataset']!r}` holds the paper's settings for {preset['kind']} models, and "
                f"this is a {kind.name} model. Paper settings of '{self.name}' for it: {fitting or 'none'}."
            )
        denoiser = getattr(getattr(model, "config", None), "denoiser", None)
        if preset and preset.get("denoiser") and preset["denoiser"] != denoiser:
            fitting = [p.dataset for p in method.paper_presets if p.denoiser == denoiser]
            raise ValueError(
                f"`preset_dataset={preset['dataset']!r}` holds the paper's settings for a {preset['denoiser']} "
                f"denoiser, and this model's is a {denoiser}. Paper settings for it: {fitting or 'none'}."
            )
        method.check_settings(args.method_config, args, model)
        if method.class_level_only and not class_level:
            raise ValueError(
                f"Method '{self.name}' forgets whole classes, so it needs `forget_classes`, not `forget_indices`. "
                "For samples use a sample-level method, e.g. method='neggrad_plus'."
            )

    def validate_sharding(self, kind: ModelKind, sharded: bool) -> None:
        """Refuse FSDP / DeepSpeed sharding where the method or the model kind needs whole weights."""
        if sharded and not kind.supports_sharding:
            raise ValueError(
                f"A {kind.name} model is saved whole by its own code, which FSDP / DeepSpeed shard: run it with data "
                "parallelism (recipes/accelerate_configs/multi_gpu.yaml) or on one process."
            )
        if sharded and not self.method_class.supports_sharding:
            raise ValueError(
                f"Method '{self.name}' reads or writes whole weights itself, which FSDP / DeepSpeed shard. Run it "
                "with data parallelism (recipes/accelerate_configs/multi_gpu.yaml) or on one process."
            )


_METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    config_class: type,
    method_class: type[UnlearningMethod],
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
        method_class: a subclass of `hf_unlearn.contract.UnlearningMethod` that defines `run()`.
        description: one line, shown when listing methods.
        paper: link to the paper the method implements, if any.
        citation: how to cite that paper (plain text), shown in model cards.
        limitations: what users of a model unlearned with this method must know, shown in model cards.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"A method's name must be a Python identifier (e.g. 'my_method'), got {name!r}.")
    if not is_dataclass(config_class) or not isinstance(config_class, type):
        raise TypeError(f"`config_class` for method '{name}' must be a dataclass, got {config_class!r}.")
    if not (isinstance(method_class, type) and issubclass(method_class, UnlearningMethod)):
        raise TypeError(
            f"`method_class` for method '{name}' must be a subclass of hf_unlearn.UnlearningMethod, got {method_class!r}."
        )
    if method_class.run is UnlearningMethod.run:
        raise TypeError(f"`method_class` {method_class.__name__} for method '{name}' must define `run()`.")
    if not method_class.model_kinds or not all(isinstance(kind, str) for kind in method_class.model_kinds):
        raise TypeError(f"{method_class.__name__}.model_kinds must name the model kinds it unlearns, e.g. ('classifier',).")
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"Method '{name}' needs a one-line `description`.")
    if name in _METHODS and _METHODS[name].method_class is not method_class:
        raise ValueError(f"An unlearning method named '{name}' is already registered ({_METHODS[name].method_class}).")
    spec = MethodSpec(name, config_class, method_class, description, paper, citation, limitations)
    _METHODS[name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove the method `name` (e.g. one a test registered)."""
    _METHODS.pop(name, None)


def available_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_METHODS)


def get_method(name: Any) -> MethodSpec:
    """The registered method `name`; a `ValueError` listing the valid names otherwise."""
    if name not in _METHODS:
        close = difflib.get_close_matches(str(name), list(_METHODS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"Unknown unlearning method '{name}'.{hint} Available: {', '.join(sorted(_METHODS)) or 'none yet'}."
            + ("" if _METHODS else " The built-in methods register when `hf_unlearn.methods` is imported: use "
               "`hf_unlearn.get_method` (or import hf_unlearn.methods first).")
        )
    return _METHODS[name]
