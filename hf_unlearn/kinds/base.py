"""The model-kind protocol and its registry.

A *kind* is everything the library does differently for one family of models: how a folder or Hub ID is loaded,
which models belong to it, what it refuses, its training loss, how it is measured, what the per-class table shows, and
how its card is labelled on the Hub. The trainer, the report and the card ask the model's kind (`kind_of(model)`);
nothing else tells kinds apart. The built-in kinds are `classifier`, `gan` and `diffusion`; a new one is a subclass
registered with `register_kind` (its metrics registered in the same module, `hf_unlearn.metric_registry`):

```python
>>> class Regressor(ModelKind):
...     name = "regressor"
...     def matches(self, model): return isinstance(model, MyRegressor)
...     def training_loss(self, model, batch, reduction="mean", forget=False, **options): ...
...     def measure(self, trainer, model): return {"forget_mse": ...}
>>> register_kind(Regressor())
```
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import extract_model_from_parallel
from transformers import AutoConfig

from ..data import model_label_names, name_mismatches
from ..generative import judge_head

if TYPE_CHECKING:  # annotations only: the trainer module imports the kinds
    from ..trainer import UnlearningTrainer


class ModelKind:
    """One family of models the library unlearns. Subclasses set the class attributes and override `matches`,
    `training_loss` and `measure` (and `load`, `check_model`, `pipeline_tag`, `card_template` where the defaults do
    not fit)."""

    #: The kind's name: what methods list in `UnlearningMethod.model_kinds` and cards record.
    name: str = ""
    #: Whether the kind is a generator, measured by a judge classifier on its samples (`UnlearningTrainer(judge=)`).
    generator: bool = False
    #: The per-class table and plot: `(results key, what a value is, the plot's title)`.
    per_class: tuple[str, str, str] = ("per_class_accuracy", "accuracy", "per-class accuracy")
    #: Results that show a forget class is still there (the forget check: each at most the threshold).
    forget_keys: tuple[str, ...] = ()
    #: The result that shows the retained classes are kept (compared with the original's; None: not checked).
    retain_key: str | None = None
    #: The card's `library_name` (the library that loads the saved folder).
    library_name: str = "hf-unlearn"
    #: Whether a request may name training rows (`forget_indices`) instead of classes.
    supports_forget_indices: bool = True
    #: Whether `UnlearnConfig.peft_config` (LoRA) applies.
    supports_peft: bool = False
    #: Whether FSDP / DeepSpeed may shard the model (False when it is saved whole by its own code).
    supports_sharding: bool = True
    #: Whether `UnlearnConfig.forget_accuracy_target` can stop a run (it needs a classifier's accuracy).
    supports_forget_accuracy_target: bool = False
    #: Whether `measure_with_original` measures a model and the original inside it in the same passes.
    measures_with_original: bool = False

    def matches(self, model: torch.nn.Module) -> bool:
        """Whether `model` (unwrapped) is of this kind."""
        raise NotImplementedError

    def load(self, model_id: str, config: Any, trust_remote_code: bool = False) -> tuple[Any, Any] | None:
        """`(model, processor)` when `model_id` holds a model of this kind (`config`: its `AutoConfig`, or None when
        the folder has no `config.json`); None when it does not."""
        return None

    def check_model(self, model: torch.nn.Module, judge: torch.nn.Module | None) -> None:
        """Raise a clear error when `model` or `judge` cannot be unlearned as this kind."""
        if self.generator:
            if judge is not None and not isinstance(judge, torch.nn.Module):
                raise TypeError(f"`judge` must be an image classifier (an nn.Module), got {type(judge).__name__}.")
            if judge is not None:
                _check_judge_classes(model, judge)
        elif judge is not None:
            raise ValueError(
                f"`judge` measures the samples of a generator; this model is a {self.name}, which is measured on the "
                "data itself: drop `judge`."
            )

    def training_loss(self, model, batch: dict, reduction: str = "mean", forget: bool = False,
                      **options) -> torch.Tensor:  # fmt: skip
        """The loss that trained `model` on `batch` (model inputs plus `labels`), reduced by `reduction` ("mean",
        "sum" or "none": one value per row). `forget`: the rows are being forgotten."""
        raise NotImplementedError

    def measure(self, trainer: UnlearningTrainer, model: torch.nn.Module) -> dict:
        """The metrics of `model` for the trainer's request (its `metric_views`, `judge`, `args`)."""
        raise NotImplementedError

    def measure_with_original(self, trainer: UnlearningTrainer, model: torch.nn.Module, original) -> tuple[dict, dict]:
        """`(metrics of model, metrics of the original)` from the same passes over the rows (`original`: a
        `measure_cache.OriginalTail`, the original inside `model`); only where `measures_with_original`."""
        raise NotImplementedError(f"Model kind '{self.name}' measures one model at a time.")

    def forget_check_metrics(self, trainer: UnlearningTrainer) -> dict:
        """When evaluation is off: the cheapest measurement the forget check can use (may be empty)."""
        return {}

    def pipeline_tag(self, model: torch.nn.Module) -> str:
        """The Hub task of the unlearned model."""
        return "unconditional-image-generation" if self.generator else "other"

    def card_template(self, model: torch.nn.Module) -> str:
        """The card template (`hf_unlearn/templates/NAME.md`) for `model`: the generic one unless the kind has its
        own (with a quick start for its models)."""
        return "base"


_KINDS: dict[str, ModelKind] = {}


def register_kind(kind: ModelKind) -> ModelKind:
    """Register `kind` (a `ModelKind` instance). Kinds registered later are asked first by `kind_of`."""
    if not isinstance(kind, ModelKind) or not kind.name:
        raise TypeError(f"`register_kind` takes a named ModelKind instance, got {kind!r}.")
    if type(kind).matches is ModelKind.matches:
        raise TypeError(f"Model kind '{kind.name}' ({type(kind).__name__}) must define `matches(model)`.")
    _KINDS.pop(kind.name, None)  # a replacement is asked first too
    _KINDS[kind.name] = kind
    return kind


def unregister_kind(name: str) -> None:
    """Remove the kind `name` (e.g. one a test registered)."""
    _KINDS.pop(name, None)


def available_kinds() -> list[str]:
    """The registered kinds' names."""
    return list(_KINDS)


def get_kind(name: str) -> ModelKind:
    """The registered kind `name`."""
    if name not in _KINDS:
        raise ValueError(f"Unknown model kind '{name}'. Registered: {', '.join(_KINDS)}.")
    return _KINDS[name]


def kind_of(model: torch.nn.Module) -> ModelKind:
    """The kind of `model` (possibly wrapped by accelerate / DistributedDataParallel); a `TypeError` naming what the
    library unlearns when no kind claims it."""
    inner = extract_model_from_parallel(model, keep_torch_compile=False)  # DDP, DeepSpeed, torch.compile wrappers
    # First: peft's PeftModelForSequenceClassification would pass for a classifier by its name and forwarded config.
    if callable(getattr(inner, "merge_and_unload", None)) and callable(getattr(inner, "get_base_model", None)):
        raise TypeError(
            f"`model` is a {type(inner).__name__}: peft adapters on a {type(inner.get_base_model()).__name__}. Merge "
            "them first, `model = model.merge_and_unload()`, and unlearn the plain model; to unlearn with new LoRA "
            "adapters, pass `peft_config` in the UnlearnConfig."
        )
    for kind in reversed(_KINDS.values()):
        if kind.matches(inner):
            return kind
    raise TypeError(
        f"`model` is a {type(model).__name__}, which has no classification head and is of no other model kind "
        f"hf-unlearn takes ({', '.join(_KINDS)}). "
        "Unlearning a class needs a classifier: load it with AutoModelForImageClassification or "
        "AutoModelForAudioClassification (e.g. ViTForImageClassification), with `num_labels` set; or a GAN wrapped "
        "in `hf_unlearn.gan.GANPair`, or a diffusion model (a diffusers pipeline, or "
        "`hf_unlearn.diffusion.DiffusionModel`)."
    )


_PREPARE_HINT = ("Prepare the model first: a recipe's header names the command (e.g. `python -m "
                 "hf_unlearn.examples.digits --output_dir outputs/digits-vit` for the digits recipes).")


def load_model(model_id: str, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load `(model, processor)` from a Hub ID or local path with the kind that recognises it (the processor is None
    when there is none): an image or audio classifier with its processor, a saved `hf_unlearn.gan.GANPair`, or a
    diffusers pipeline with a class-conditional UNet or a DiT (as a `hf_unlearn.diffusion.DiffusionModel`). Code
    named by the folder runs only with `trust_remote_code=True`."""
    if model_id.startswith("~"):
        model_id = str(Path(model_id).expanduser())
    path = Path(model_id)
    if not path.exists() and (model_id.count("/") > 1 or model_id.startswith((".", "/"))):
        raise FileNotFoundError(f"`model` '{model_id}' is a local path that does not exist (and not a Hub ID, which is "
                                f"'org/name'). {_PREPARE_HINT}")  # fmt: skip
    config, error = None, None
    if path.is_dir() and not (path / "config.json").is_file():
        error = FileNotFoundError(
            f"`model` '{model_id}' is a folder with neither a config.json (transformers, a saved GANPair) nor a "
            "model_index.json (a diffusers pipeline): point it at the folder `save_pretrained` wrote."
        )
    else:
        try:
            config = AutoConfig.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        except OSError as raised:  # no config.json: a diffusers pipeline has model_index.json instead
            error = raised
    for kind in reversed(_KINDS.values()):
        loaded = kind.load(model_id, config, trust_remote_code)
        if loaded is not None:
            return loaded
    if error is not None and not path.exists():  # 'outputs/digits-vit' reads as a Hub ID as well
        raise FileNotFoundError(f"`model` '{model_id}' is no local folder, and no model on the Hub could be loaded "
                                f"under that ID ({' '.join(str(error).split())}). If it names a folder: {_PREPARE_HINT}"
                                ) from error  # fmt: skip
    if error is not None:
        raise error
    raise ValueError(
        f"`model` '{model_id}' (model type '{getattr(config, 'model_type', None)}') is none of the kinds hf-unlearn "
        f"loads ({', '.join(_KINDS)}): an image or audio classification class in transformers, a saved GANPair, or a "
        "diffusers pipeline. Load the model yourself and pass the object."
    )


def _check_judge_classes(model, judge) -> None:
    """A judge's class ids must be the generator's: the same number of classes, and the same names where both have
    real ones (transformers' `LABEL_i` defaults say nothing). Otherwise `forget_share` and `class_shares` would count
    the judge's class 3 as the generator's."""
    config, judge_config = getattr(model, "config", None), getattr(judge, "config", None)
    if not hasattr(config, "num_labels"):
        return
    count = int(config.num_labels)
    judge_count = _judge_classes(judge)
    if judge_count is not None and judge_count != count:
        hint = (" A class-conditional UNet loaded from a plain diffusers folder counts its null-class embedding as a "
                "class: wrap it with `DiffusionModel.from_pipeline(pipeline, labels=...)` (the null class is then the "
                "last id)." if count == judge_count + 1 else "")  # fmt: skip
        raise ValueError(
            f"`judge` has {judge_count} classes, the generator {count}: the judge must classify into the generator's "
            f"classes, with the same ids. Pass a judge trained on its data.{hint}"
        )
    names = model_label_names(config)
    judge_names = model_label_names(judge_config) if names is not None and hasattr(judge_config, "num_labels") else None
    differing, examples = name_mismatches(judge_names, names, "judge", "generator") if judge_names else ([], "")
    if differing:
        raise ValueError(f"`judge`'s classes are not the generator's ({examples}): its ids would mean other classes. "
                         "Pass a judge trained on the generator's data, labels in the same order.")


def _judge_classes(judge) -> int | None:
    """How many classes `judge` scores: its config's `num_labels`, else its classification head's outputs
    (`generative.judge_head`), else None (nothing says)."""
    judge_config = getattr(judge, "config", None)
    if hasattr(judge_config, "num_labels"):
        return int(judge_config.num_labels)
    try:
        return judge_head(judge).out_features
    except ValueError:  # no nn.Linear head: measuring says so, with its own message
        return None
