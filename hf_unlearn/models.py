"""Classifier internals the methods share: the classification head, a head refit, the last blocks (the tail), and a
freshly initialised copy."""

from __future__ import annotations

import contextlib
import itertools
import logging

import torch
from accelerate.logging import get_logger
from transformers import set_seed

from .activations import evaluating
from .passes import one_row_inputs

logger = get_logger(__name__)
_plain_logger = logging.getLogger(__name__)  # for helpers that also run outside an accelerate run


def reinitialized_copy(model, seed: int):
    """A freshly initialised model of the same class and config (the `retrain` starting point), seeded."""
    set_seed(seed)
    fresh = type(model)(model.config)
    return fresh.to(next(model.parameters()).device)


def classification_head(model, name: str | None = None) -> tuple[str, torch.nn.Linear]:
    """`(name, module)` of the Linear layer that produces the logits: the last `nn.Linear` with `num_labels` outputs
    (ViT/DeiT/ConvNeXt `classifier`, ResNet `classifier.1`, AST `classifier.dense`, Wav2Vec2/HuBERT `classifier`), or
    the module called `name`."""
    if name is not None:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"`head_module={name!r}` is not a module of {type(model).__name__}.") from None
        num_labels = getattr(getattr(model, "config", None), "num_labels", None)
        if not isinstance(module, torch.nn.Linear) or (num_labels is not None and module.out_features != num_labels):
            found = (f"a {type(module).__name__}" if not isinstance(module, torch.nn.Linear)
                     else f"an nn.Linear with {module.out_features} outputs")  # fmt: skip
            fitting = [linear_name for linear_name, _ in _linears(model, num_labels)] or "none"
            raise ValueError(
                f"`head_module={name!r}` is {found}; it must name the nn.Linear that gives the {num_labels} class "
                f"logits. Linear layers with {num_labels} outputs: {fitting}."
            )
        return name, module
    num_labels = model.config.num_labels
    heads = _linears(model, num_labels)
    if not heads:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear with num_labels={num_labels} outputs to serve as the "
            "classification head; pass its name as `head_module`."
        )
    return heads[-1]


def _linears(model, outputs: int) -> list[tuple[str, torch.nn.Linear]]:
    """`(name, module)` of every `nn.Linear` of `model` with `outputs` outputs, in module order."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module.out_features == outputs]  # fmt: skip


@torch.enable_grad()
def refit_head(
    head: torch.nn.Linear,
    features: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    learning_rate: float,
    weight_decay: float = 0.0,
    transform=None,
    keep_rows: list[int] | None = None,
) -> None:
    """Refit the classification `head` in place on head inputs already computed (`features`, `(rows, d)`) with the
    cross-entropy to `labels`: `steps` full-batch AdamW steps. The head's input does not depend on the head, so this is
    exact fine-tuning of the head at the cost of a linear model, with no forward pass through the network.
    `transform` (e.g. a projection of the weight) is applied to the weight throughout and folded in at the end.
    `keep_rows`: output rows (classes) whose weight and bias stay as they are, e.g. forget classes that have no rows
    in `labels` (the refit would only push them around)."""
    transform = transform or (lambda weight: weight)
    weight = head.weight.detach().float().clone().requires_grad_()
    bias = None if head.bias is None else head.bias.detach().float().clone().requires_grad_()
    parameters = [weight] + ([bias] if bias is not None else [])
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    features, labels = features.float().to(weight.device), labels.to(weight.device)
    kept = torch.as_tensor(sorted(keep_rows or []), dtype=torch.long, device=weight.device)
    kept_values = [parameter.detach()[kept].clone() for parameter in parameters]
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(features, transform(weight), bias), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if len(kept):
            with torch.no_grad():
                for parameter, values in zip(parameters, kept_values, strict=True):
                    parameter[kept] = values
    with torch.no_grad():
        head.weight.copy_(transform(weight))
        if bias is not None:
            head.bias.copy_(bias)


class _SameAsHead(torch.nn.Module):
    """Stands in for a second head while `one_head` runs: calls the head (held as a plain attribute, so its
    parameters are listed once, under the head)."""

    def __init__(self, head: torch.nn.Linear):
        super().__init__()
        object.__setattr__(self, "head", head)

    def forward(self, features, *args, **kwargs):
        return self.head(features, *args, **kwargs)


@contextlib.contextmanager
def one_head(model, batch: dict, name: str | None = None):
    """For a method that edits the classification head itself (a projection, a refit): a model whose logits combine
    several heads reading the same features (SwiftFormer averages `head` and `dist_head`) runs with one head.

    The other heads are the nn.Linear layers of the head's shape, device and dtype that receive exactly the head's
    input in a pass on `batch` (model inputs). The head takes their mean weight and bias, and each of them is
    replaced by a stand-in that calls the head. The model's logits on `batch` must then be what they were (true
    whenever the model sums or averages the heads), else nothing changes and a warning says the method edits the
    head alone. On exit each head gets the head's final weight and bias (on an error in the block, they all get
    their own back). Yields the names of the heads stood in for ([] when there are none). During the block the
    model's `state_dict` has no entries for them, and it must not be wrapped in `nn.DataParallel` (whose replicas
    would call the head on the first device: `one_head_for` merges nothing there)."""
    try:
        head_name, head = classification_head(model, name)
    except ValueError:
        yield []
        return
    shaped = {
        other_name: module
        for other_name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head and module.weight.shape == head.weight.shape
        and module.weight.dtype == head.weight.dtype and module.weight.device == head.weight.device
        and (module.bias is None) == (head.bias is None)
    }  # fmt: skip
    if not shaped:
        yield []
        return
    inputs = {}
    handles = [module.register_forward_pre_hook(lambda module, args, key=key: inputs.setdefault(key, args[0]))
               for key, module in [(head_name, head), *shaped.items()]]  # fmt: skip
    with torch.no_grad(), evaluating(model):
        try:
            before = model(**batch).logits
        finally:
            for handle in handles:
                handle.remove()
    others = {other_name: module for other_name, module in shaped.items()
              if other_name in inputs and head_name in inputs and inputs[other_name].shape == inputs[head_name].shape
              and torch.equal(inputs[other_name], inputs[head_name])}  # fmt: skip
    if not others:
        elsewhere = sorted(other_name for other_name in shaped if other_name in inputs)
        if elsewhere:  # e.g. distilled DeiT's `cls_classifier` (class token) beside its `distillation_classifier`
            _plain_logger.warning(
                f"{elsewhere} also give {head.out_features} outputs, from another input than the classification head "
                f"`{head_name}`: the method edits `{head_name}` alone, and if the logits combine them, the others "
                f"keep what it removes (the forget check then fails)."
            )
        yield []
        return
    group = [head, *others.values()]
    kept = [value.detach().clone() for value in (head.weight, head.bias) if value is not None]

    def swap(modules):
        for other_name, module in modules.items():
            model.set_submodule(other_name, module)

    @torch.no_grad()
    def restore():
        swap(others)
        for value, original in zip((head.weight, head.bias), kept, strict=False):
            value.copy_(original)

    tolerance = max(1e-4, 4 * torch.finfo(before.dtype).eps)  # averaging in bf16 moves logits by its precision
    with torch.no_grad(), evaluating(model):
        try:
            head.weight.copy_(torch.stack([module.weight for module in group]).mean(0))
            if head.bias is not None:
                head.bias.copy_(torch.stack([module.bias for module in group]).mean(0))
            swap({other_name: _SameAsHead(head) for other_name in others})
            after = model(**batch).logits
            same = torch.allclose(after, before, rtol=tolerance, atol=tolerance * (1 + before.abs().max().item()))
        except Exception:  # noqa: BLE001 - a model that cannot run with one head is left as it was
            same = False
    if not same:
        restore()
        _plain_logger.warning(
            f"{sorted(others)} read the input of the classification head `{head_name}` but the logits are not their "
            f"sum or mean: the method edits `{head_name}` alone, and the others keep what it removes."
        )
        yield []
        return
    _plain_logger.info(f"The heads {sorted(others)} read `{head_name}`'s input: they take its edits for this run.")
    try:
        yield sorted(others)
    except BaseException:
        restore()
        raise
    swap(others)
    with torch.no_grad():
        for module in others.values():
            module.weight.copy_(head.weight)
            if head.bias is not None:
                module.bias.copy_(head.bias)


def one_head_for(trainer):
    """`one_head` around the trainer's method when it edits the classification head itself
    (`UnlearningMethod.edits_head`), with the head it names (`head_module`, where it has one)."""
    method = trainer.method
    if not method.edits_head:
        return contextlib.nullcontext([])
    if trainer.args.n_gpu > 1:  # nn.DataParallel's replicas would share the stand-ins' head on the first device
        _plain_logger.warning("Several GPUs in one process (nn.DataParallel): heads are not merged for this run.")
        return contextlib.nullcontext([])
    return one_head(trainer.model, one_row_inputs(trainer, trainer.retain_view),
                    getattr(method.config, "head_module", None))  # fmt: skip


@torch.no_grad()
def _forward_order(model, batch: dict) -> tuple[dict, dict]:
    """`(starts, ends)`: the order in which each module of `model` first starts and last ends running in one
    forward pass on `batch` (model inputs), in eval mode."""
    order, starts, ends = itertools.count(), {}, {}

    def started(module, args):
        starts.setdefault(module, next(order))  # a module run twice keeps its first start

    def ended(module, args, output):
        ends[module] = next(order)

    handles = []
    for module in model.modules():
        handles += [module.register_forward_pre_hook(started), module.register_forward_hook(ended)]
    try:
        with evaluating(model):
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return starts, ends


def _block_list(model, ends: dict) -> tuple[str, torch.nn.ModuleList] | None:
    """The model's list of blocks: the `nn.ModuleList` (of blocks with parameters) whose last child finishes last."""
    block_lists = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) and module[-1] in ends
        and any(True for _ in module[-1].parameters())
    ]  # fmt: skip
    return max(block_lists, key=lambda item: ends[item[1][-1]]) if block_lists else None


def block_list_name(model, batch: dict) -> str | None:
    """The name of the model's list of blocks (`model_tail`'s), found from one forward pass on `batch`; None without
    one."""
    found = _block_list(model, _forward_order(model, batch)[1])
    return found[0] if found else None


def model_tail(model, batch: dict, num_blocks: int = 1) -> tuple[list[str], list[str]]:
    """The last `num_blocks` blocks of `model` and everything that runs after them (final norm, pooler, projector,
    head), found from one forward pass on `batch` (model inputs) instead of a per-architecture table.

    The blocks are the children of the `nn.ModuleList` whose last child finishes last in the forward pass: the encoder
    layers of ViT/DeiT/AST/Wav2Vec2/HuBERT, the stages of ResNet/ConvNeXt. The tail is every module with parameters of
    its own that starts running at or after the first of those blocks.

    Returns `(block_names, tail_module_names)`.
    """
    starts, ends = _forward_order(model, batch)
    found = _block_list(model, ends)
    names = {module: name for name, module in model.named_modules()}
    if found is None:
        logger.warning(f"{type(model).__name__} has no list of blocks (nn.ModuleList): only the head will be trained.")
        blocks, first_start = [], max(starts.values())
    else:
        list_name, block_list = found
        if num_blocks > len(block_list):
            logger.warning(f"`num_trainable_blocks={num_blocks}` but '{list_name}' has {len(block_list)} blocks.")
        blocks = list(block_list)[-num_blocks:] if num_blocks else []
        first_start = min((starts[block] for block in blocks if block in starts), default=None)
        if first_start is None:  # no block: the head and what follows the blocks
            first_start = ends[block_list[-1]]
    tail = [
        names[module]
        for module in model.modules()
        if module in starts and starts[module] >= first_start and any(True for _ in module.parameters(recurse=False))
    ]
    return [names[block] for block in blocks], tail


def block_before(model, batch: dict, module_names: list[str]) -> tuple[str | None, list[str]]:
    """`(block, tail)`: the last block of `model`'s list of blocks (as `model_tail` finds it) that starts running
    before (or as) every module in `module_names` does, in a forward pass on `batch`, and the names of every module
    that starts running at or after it. A model whose changes are confined to the tail computes the same input to
    that block as before the changes. `(None, [])` when there is no such block (a module named runs before the
    blocks, or never runs, or the model has no list of blocks)."""
    starts, ends = _forward_order(model, batch)
    found = _block_list(model, ends)
    modules = [model.get_submodule(name) for name in module_names]
    if found is None or not modules or any(module not in starts for module in modules):
        return None, []
    list_name, block_list = found
    first = min(starts[module] for module in modules)
    before = [index for index, block in enumerate(block_list) if block in starts and starts[block] <= first]
    if not before:
        return None, []
    start = starts[block_list[before[-1]]]
    return f"{list_name}.{before[-1]}", [name for name, module in model.named_modules() if starts.get(module, -1) >= start]
