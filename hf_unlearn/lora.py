"""LoRA adapters injected into a model in place (peft's low-level API) and merged back into plain layers, for
parameter-efficient unlearning: the model object stays the same, so the Trainer and every reference to it stay valid,
and after `merge_lora` its state dict has exactly the original keys.

```python
>>> adapted = add_lora(model, rank=8)            # every Linear / Conv layer but the classification head
>>> ...                                          # train: only the adapters (and whatever else you unfreeze)
>>> merge_lora(model)                            # plain layers again, W <- W + (alpha / r) B A
```
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .activations import find_target_modules


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float | None = None,
    target_modules: str | Sequence[str] | None = None,
    exclude_modules: Sequence[str] = (),
) -> list[str]:
    """Inject LoRA adapters (rank `rank`, scale `alpha / rank`, default alpha = rank) into `target_modules` (regex or
    name suffixes as in peft; None: every Linear / Conv1d / Conv2d layer except `exclude_modules`) and freeze every
    other parameter. Returns the adapted layer names."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as error:
        raise ImportError("Parameter-efficient unlearning needs peft: pip install 'hf-unlearn[peft]'") from error
    targets = [name for name in find_target_modules(model, target_modules) if name not in set(exclude_modules)]
    if not targets:
        raise ValueError(f"`lora_target_modules={target_modules!r}` leaves no layer to adapt.")
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, lora_dropout=0.0, target_modules=targets)
    inject_adapter_in_model(config, model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return targets


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base layer and put the plain layer back in its place (in place; returns
    `model`)."""
    from peft.tuners.lora import LoraLayer

    adapted = [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    for name, module in adapted:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    return model
