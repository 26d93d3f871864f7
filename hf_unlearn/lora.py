"""LoRA adapters injected into a model in place (peft's low-level API), then merged back into plain layers or saved
as a peft adapter, for parameter-efficient unlearning. The model object stays the same, so the Trainer and every
reference to it stay valid, and after `merge_lora` its state dict has exactly the original keys.

```python
>>> add_lora(model, {"r": 8}, head_name="classifier")   # every Linear / Conv layer but the head; the head in full
>>> ...                                                  # train: only the adapters and the head's copy
>>> merge_lora(model)                                    # plain layers again, W <- W + (alpha / r) B A
```
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Iterator
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from .activations import find_target_modules
from .models import classification_head
from .outputs import public_reference
from .validation import coerce

ADAPTER = "default"


def _peft():
    try:
        import peft
    except ImportError as error:
        raise ImportError("Parameter-efficient unlearning needs peft: pip install 'hf-unlearn[peft]'") from error
    return peft


def lora_config(settings: dict, model: nn.Module, head_name: str):
    """A `peft.LoraConfig` from `settings` (LoraConfig fields; `r` required). Without `target_modules`: every
    Linear / Conv1d / Conv2d layer but the head; the head is trained in full (`modules_to_save`)."""
    peft = _peft()
    settings = dict(settings)
    if "target_modules" not in settings or settings["target_modules"] is None:
        settings["target_modules"] = [name for name in find_target_modules(model) if name != head_name]
    settings.setdefault("lora_alpha", settings.get("r", 8))
    settings.setdefault("lora_dropout", 0.0)
    settings.setdefault("modules_to_save", [head_name])
    try:
        hints = typing.get_type_hints(peft.LoraConfig)
    except Exception:  # an annotation this Python cannot resolve: the values go as they are
        hints = {}
    # read as the command line reads values ("false" is False, "8" is 8), or a clear error naming the key: a string
    # given to a bool field would otherwise be true and switch on rsLoRA or DoRA
    settings = {key: coerce(value, hints[key], f"peft_config['{key}']") if key in hints else value
                for key, value in settings.items()}  # fmt: skip
    try:
        return peft.LoraConfig(**settings)
    except TypeError as error:
        raise ValueError(f"`peft_config` {settings} is not a valid LoraConfig: {error}") from None


def add_lora(model: nn.Module, settings: dict, head_name: str) -> list[str]:
    """Inject LoRA adapters described by `settings` into `model` (in place); peft freezes every other parameter but the
    head's trained copy and the biases its `bias` names. Returns the adapted layer names."""
    peft = _peft()
    config = lora_config(settings, model, head_name)
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    adapted = [name for name, module in model.named_modules() if isinstance(module, peft.tuners.lora.LoraLayer)]
    if not adapted:
        raise ValueError(f"`peft_config` target_modules={config.target_modules!r} matched no layer of the model.")
    # peft has frozen everything but the adapters, the head's copy and the biases `bias` asks for ("all",
    # "lora_only"): those flags are kept (forcing only adapters and the head, as before, froze the biases asked for)
    return adapted


def has_lora(model: nn.Module) -> bool:
    return any(type(module).__module__.startswith("peft.") for module in model.modules())


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base layer and put the plain layers back (the head's trained copy replaces
    the original head), in place; returns `model`."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    wrapped = [
        (name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer | ModulesToSaveWrapper)
    ]
    for name, module in wrapped:
        if isinstance(module, LoraLayer):
            module.merge()
            plain = module.get_base_layer()
        else:
            plain = module.modules_to_save[ADAPTER]
        model.set_submodule(name, plain)
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def save_adapter(model: nn.Module, output_dir: str | Path) -> None:
    """The adapters (and the head's trained copy) as a peft checkpoint in `output_dir`: `adapter_config.json` and
    `adapter_model.safetensors`, loadable with `peft.PeftModel.from_pretrained(base_model, output_dir)`."""
    peft = _peft()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    weights = peft.get_peft_model_state_dict(model, adapter_name=ADAPTER)
    # A PeftModel wraps the model as `base_model.model`; its checkpoints (what PeftModel.from_pretrained reads) carry
    # that prefix.
    weights = {f"base_model.model.{name}": value.detach().cpu().contiguous() for name, value in weights.items()}
    save_file(weights, output_dir / "adapter_model.safetensors")
    config = model.peft_config[ADAPTER]
    # a Hub ID or a folder's name, never this machine's path (the folder may be pushed)
    config.base_model_name_or_path = public_reference(getattr(model.config, "_name_or_path", None) or None)
    config.save_pretrained(str(output_dir))


@contextlib.contextmanager
def lora_if_asked(model: nn.Module, settings: dict | None, merge: bool, report: dict) -> Iterator[None]:
    """With `settings` (`UnlearnConfig.peft_config`): LoRA adapters (and a trainable copy of the head) on `model` for
    the block, then merged into plain layers (`merge`), or kept for the trainer to save as a peft adapter. What was
    adapted goes in `report["peft"]`. Without settings, nothing changes."""
    if not settings:
        yield
        return
    flags = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    adapted = add_lora(model, settings, classification_head(model)[0])
    report["peft"] = {"adapted_layers": len(adapted), "merged": merge, **settings}
    try:
        yield
    finally:
        if merge:
            merge_lora(model)
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(flags.get(name, True))
