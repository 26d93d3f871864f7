"""Writing outputs safely: every file written whole (`write_atomic`), an output folder built beside its target and
swapped in at the end (`staged_folder`), no secret in what is saved (`public_reference`), nothing non-finite saved
(`check_finite`).

A run killed while saving leaves either the old folder or the new one, never a mix: the new model, processor, card,
plot and results are written into `.NAME.hf-unlearn-partial` in the same parent folder, which replaces `NAME` whole
when everything is written (an old LoRA adapter or an old card cannot survive beside a new model).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

#: Files that show a folder holds a saved model or an hf-unlearn output, which a new save may replace whole.
MODEL_FOLDER_FILES = (
    "config.json", "model_index.json", "adapter_config.json", "unlearning_results.json", "training_args.bin",
)  # fmt: skip
#: What the Trainer itself writes into `output_dir` while it trains (logs, checkpoints): kept across a replacement.
TRAINING_ARTEFACTS = re.compile(r"runs|checkpoint-\d+")


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` to `path` whole: into a temporary file in the same folder, then renamed over `path`."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def staging_path(target: Path) -> Path:
    """Where the new contents of `target` are written before they replace it (the same on every process)."""
    return target.parent / f".{target.name}.hf-unlearn-partial"


def check_replaceable(target: Path, overwrite: bool = False) -> None:
    """Refuse to replace `target` unless it is missing, empty, a saved model / hf-unlearn output, or `overwrite`
    is set; never a folder that holds the current working directory."""
    target = Path(target)
    if not target.exists():
        return
    if not target.is_dir():
        raise ValueError(f"`output_dir` '{target}' is a file, not a folder: choose a folder path.")
    if Path.cwd().resolve().is_relative_to(target.resolve()):
        raise ValueError(
            f"`output_dir` '{target}' holds the current working directory: saving replaces the whole folder, so "
            "choose a new folder for the unlearned model, e.g. `output_dir='outputs/model-unlearned'`."
        )
    entries = [entry.name for entry in target.iterdir() if not TRAINING_ARTEFACTS.fullmatch(entry.name)]
    if overwrite or not entries or any(name in MODEL_FOLDER_FILES for name in entries):
        return
    raise ValueError(
        f"`output_dir` '{target}' holds files that are not a saved model ({', '.join(sorted(entries)[:5])}): saving "
        "replaces the whole folder, so it is left alone. Choose a new or empty folder (or, from the command line, "
        "pass --overwrite_output_dir true to replace it)."
    )


def prepare_staging(target: Path) -> Path:
    """A fresh, empty staging folder for `target` (a leftover of a killed run is removed)."""
    staging = staging_path(target)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def swap_in(staging: Path, target: Path) -> None:
    """Replace `target` by `staging` whole (the Trainer's logs and checkpoints in `target` move across)."""
    if target.exists():
        for entry in target.iterdir():
            if TRAINING_ARTEFACTS.fullmatch(entry.name) and not (staging / entry.name).exists():
                entry.rename(staging / entry.name)
        old = target.parent / f".{target.name}.hf-unlearn-old"
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(target)


def check_finite(model: torch.nn.Module, when: str) -> None:
    """Raise a `RuntimeError` naming the first parameters or buffers of `model` that hold NaN or infinite values."""
    bad = [
        name
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise RuntimeError(
            f"{when}: {len(bad)} weight tensors hold NaN or infinite values (e.g. {', '.join(bad[:3])}), so the model "
            "is not saved or measured. The run diverged: lower `learning_rate` (or the method's step sizes such as "
            "`alpha`), keep `max_grad_norm` clipping on, and check the data for NaN values."
        )


def public_reference(value):
    """What a reader of a pushed repository can use instead of this machine's paths: a Hub ID or a name is kept, a
    local path becomes its last part (the file or folder name). Lists and dicts are mapped item by item."""
    if isinstance(value, dict):
        return {key: public_reference(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [public_reference(item) for item in value]
    if not isinstance(value, str) or not value:
        return value
    local = os.path.isabs(value) or value.startswith((".", "~")) or os.path.exists(value) or value.count("/") > 1
    return Path(value).name if local else value
