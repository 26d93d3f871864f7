"""Writing outputs safely: every file written whole (`write_atomic`), an output folder built beside its target and
swapped in at the end (`staged_folder`), no secret in what is saved (`public_reference`), nothing non-finite saved
(`check_finite`).

A run killed while saving leaves either the old folder or the new one, never a mix (a kill between the two renames
of the swap is settled by the next save, which puts the old folder back first): the new model, processor, card,
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
from urllib.parse import urlsplit, urlunsplit

import torch

#: What a saved model folder holds (transformers, peft, diffusers, processors) plus hf-unlearn's card files: a folder
#: with nothing else may be replaced whole by a new save.
SAVED_MODEL_ENTRIES = re.compile(
    r"(config|generation_config|preprocessor_config|processor_config|feature_extractor_config|model_index"
    r"|adapter_config|tokenizer_config|tokenizer|special_tokens_map|added_tokens|vocab)\.json"
    r"|.*\.safetensors(\.index\.json)?|pytorch_model.*\.bin|adapter_model\.bin|training_args\.bin"
    r"|vocab\.txt|merges\.txt|.*\.model|chat_template\.jinja"
    r"|README\.md|per_class_accuracy\.png|unlearning_results\.json"
    r"|unet|vae|transformer|scheduler|runs|checkpoint-\d+"
)
#: What the Trainer itself writes into `output_dir` while it trains (logs, checkpoints): kept across a replacement
#: when written by this run.
TRAINING_ARTEFACTS = re.compile(r"runs|checkpoint-\d+")


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` to `path` whole: into a temporary file in the same folder, then renamed over `path`."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # as `open` would create it (mkstemp makes 0600)
        with os.fdopen(handle, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux's /proc: setting it to read it
    back would, for that moment, give files other threads create world-writable modes); elsewhere the one read at
    import."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return _UMASK_AT_IMPORT


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _read_umask()


def staging_path(target: Path) -> Path:
    """Where the new contents of `target` are written before they replace it (the same on every process)."""
    return target.parent / f".{target.name}.hf-unlearn-partial"


def _old_path(target: Path) -> Path:
    return target.parent / f".{target.name}.hf-unlearn-old"


def resolved_output(target: str | Path) -> Path:
    """`target` with links resolved: a save replaces the folder a link points to, not the link."""
    return Path(target).expanduser().resolve()


def check_replaceable(target: Path, overwrite: bool = False) -> None:
    """Refuse to replace `target` unless it is missing, empty, holds only what a saved model folder holds
    (`SAVED_MODEL_ENTRIES`), or `overwrite` is set; never a folder that holds the current working directory, nor a
    mount point (the swap renames it)."""
    target = resolved_output(target)
    if not target.exists():
        return
    if not target.is_dir():
        raise ValueError(f"`output_dir` '{target}' is a file, not a folder: choose a folder path.")
    if os.path.ismount(target):
        raise ValueError(
            f"`output_dir` '{target}' is a mount point: a save writes the new folder beside it and swaps it in, which "
            "cannot cross into a mounted file system. Choose a folder inside the mount, e.g. "
            f"`output_dir='{target / 'model-unlearned'}'`."
        )
    if Path.cwd().resolve().is_relative_to(target):
        raise ValueError(
            f"`output_dir` '{target}' holds the current working directory: saving replaces the whole folder, so "
            "choose a new folder for the unlearned model, e.g. `output_dir='outputs/model-unlearned'`."
        )
    foreign = sorted(entry.name for entry in target.iterdir() if not SAVED_MODEL_ENTRIES.fullmatch(entry.name))
    if overwrite or not foreign:
        return
    raise ValueError(
        f"`output_dir` '{target}' holds files that are not part of a saved model ({', '.join(foreign[:5])}): saving "
        "replaces the whole folder, so it is left alone. Choose a new or empty folder (or, from the command line, "
        "pass --overwrite_output_dir true to replace it)."
    )


def prepare_staging(target: Path) -> Path:
    """A fresh, empty staging folder for `target`. Leftovers of a run killed while saving are settled first: a
    partial folder is removed; an old folder moved aside is put back if the new one never arrived (an empty folder in
    its place, as the Trainer creates `output_dir` when a run starts, is not the new one), else deleted (it may hold
    the weights before unlearning, which must not linger)."""
    target = resolved_output(target)
    staging, old = staging_path(target), _old_path(target)
    if old.exists():
        if target.is_dir() and not any(target.iterdir()):  # the Trainer makes `output_dir` at start-up: not a save
            target.rmdir()
        if target.exists():
            shutil.rmtree(old)
        else:
            old.rename(target)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def swap_in(staging: Path, target: Path, keep_artefacts_since: float | None = None) -> None:
    """Replace `target` by `staging` whole. The Trainer's logs and checkpoints in `target` that were written at or
    after `keep_artefacts_since` (a `time.time()`) move across; older ones go with the folder."""
    target = resolved_output(target)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(target)
        return
    if keep_artefacts_since is not None:
        for entry in target.iterdir():
            fresh = entry.stat().st_mtime >= keep_artefacts_since
            if TRAINING_ARTEFACTS.fullmatch(entry.name) and fresh and not (staging / entry.name).exists():
                entry.rename(staging / entry.name)
    old = _old_path(target)
    target.rename(old)  # (`check_replaceable` refuses a mount point, which cannot be renamed)
    staging.rename(target)
    shutil.rmtree(old)


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
            "`alpha`), keep `max_grad_norm` clipping on, and check the data for NaN values. A projection "
            "(svd_projection's) that produces them is a bug: please report it with the model's config."
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
    if "://" in value:  # a URL: no credentials, query or fragment (signed URLs carry secrets there)
        parts = urlsplit(value)
        return urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))
    local = os.path.isabs(value) or value.startswith((".", "~")) or os.path.exists(value) or value.count("/") > 1
    return Path(value).name if local else value
