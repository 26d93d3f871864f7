"""Forget/retain splits, the views methods train on, and the collator that turns dataset rows into model inputs.

The split is computed once per trainer (`split_forget_retain`) and every method and metric reuses it.
"""

from __future__ import annotations

import inspect
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import gcd

import datasets
import numpy as np
import soundfile
import torch
from scipy.signal import resample_poly
from transformers.utils.logging import get_logger

logger = get_logger(__name__)


def label_maps(names) -> dict:
    """`id2label` / `label2id` config fields for class `names` (in id order)."""
    return {"id2label": dict(enumerate(names)), "label2id": {name: i for i, name in enumerate(names)}}


def label_names(labels: Sequence[str] | int) -> list[str]:
    """Class names from `labels`: the names themselves, or a count (`LABEL_0`, `LABEL_1`, ... as transformers
    names them)."""
    return [f"LABEL_{i}" for i in range(labels)] if isinstance(labels, int) else [str(name) for name in labels]

LABEL_COLUMNS = ("label", "labels")
# Columns that already hold model inputs and pass through the collator unchanged.
MODEL_INPUT_COLUMNS = ("pixel_values", "input_values", "input_features", "attention_mask")
RAW_IMAGE_COLUMNS = ("image", "img")
RAW_AUDIO_COLUMNS = ("audio",)
# With raw samples in the audio column, their rate.
SAMPLING_RATE_COLUMNS = ("sampling_rate",)


def find_label_column(dataset, argument: str = "train_dataset") -> str:
    """The name of the label column (`label` or `labels`) of `dataset`."""
    columns = list(getattr(dataset, "column_names", None) or [])
    for name in LABEL_COLUMNS:
        if name in columns:
            return name
    raise ValueError(
        f"`{argument}` has no label column: expected one named 'label' or 'labels', found columns {columns}. "
        "Rename yours, e.g. `dataset.rename_column('target', 'label')`."
    )


def check_dataset(dataset, argument: str) -> None:
    """Raise a `TypeError` unless `dataset` is a map-style `datasets.Dataset`."""
    if not isinstance(dataset, datasets.Dataset):
        hint = ""
        if isinstance(dataset, datasets.DatasetDict):
            hint = f" It is a DatasetDict with splits {list(dataset)}: pass one split, e.g. `dataset['train']`."
        elif isinstance(dataset, datasets.IterableDataset):
            hint = " Streaming datasets are not supported: load it without `streaming=True`."
        else:
            hint = " Build one with `datasets.Dataset.from_dict(...)` or `Dataset.from_list(...)`."
        raise TypeError(f"`{argument}` must be a `datasets.Dataset`, got {type(dataset).__name__}.{hint}")


def has_transform(dataset) -> bool:
    """Whether `dataset` reads its rows through a transform of its own (`set_transform` / `with_transform`), which
    `with_format`, `map` and `flatten_indices` would drop or apply once too often."""
    return dataset.format.get("type") == "custom"


def check_label_transform(dataset, label_column: str, argument: str, rows: int = 32) -> None:
    """Refuse a `set_transform` / `with_transform` that changes labels. The split into forget and retain rows reads
    the stored labels (`dataset_labels`, without the transform) while the rows scored go through it, so remapped labels
    would be forgotten under one id and measured under another. Checked on the first `rows` rows; a transform that
    keeps the labels (an image preprocessing one, say) passes."""
    if not has_transform(dataset) or not len(dataset):
        return
    count = min(rows, len(dataset))
    transformed = dataset[:count]
    if label_column not in transformed:
        return  # the transform drops the labels: the collator reports a missing label column
    stored = np.asarray(dataset.with_format(None)[:count][label_column]).reshape(-1).tolist()
    read = np.asarray(transformed[label_column]).reshape(-1).tolist()
    if read != stored:
        raise ValueError(
            f"`{argument}`'s transform changes its '{label_column}' values (first rows: stored {stored[:5]}, "
            f"transformed {read[:5]}): the "
            "forget and retain rows are chosen from the stored labels. Map the labels into the dataset itself "
            "(`dataset.map(...)`, or `align_labels`) and keep the transform for the inputs."
        )


def dataset_labels(dataset, label_column: str, argument: str = "train_dataset") -> np.ndarray:
    """All labels of `dataset` as an int64 array, read from the column without decoding other columns. Labels must
    be integer class ids: strings, floats (which would be truncated) or missing values are a `ValueError` naming
    `argument`."""
    values = np.asarray(dataset.with_format(None)[label_column])
    if values.ndim != 1:  # lists of labels (multi-label or multi-hot rows)
        raise ValueError(
            f"`{argument}`'s label column '{label_column}' holds a list per row (shape {values.shape}): hf-unlearn "
            "forgets classes of single-label classifiers, one class id per row."
        )
    if values.size and values.dtype.kind not in "iu":
        example = values[0] if values.dtype.kind != "O" else next((v for v in values if v is not None), None)
        raise ValueError(
            f"`{argument}`'s label column '{label_column}' must hold integer class ids, got {values.dtype.name} "
            f"values (e.g. {example!r}). Encode names as ids with `dataset.class_encode_column('{label_column}')` "
            f"or cast whole-number floats: `dataset.cast_column('{label_column}', datasets.Value('int64'))`."
        )
    return values.astype(np.int64)


def label_ids(config) -> dict[str, int]:
    """A model's class ids by name, from its `id2label`: the names every report and card uses. (`label2id` can
    disagree with it, or be None: transformers 5 leaves it unset when a config is given `id2label` alone.) A name
    that several ids share (ImageNet's two "crane"s) names none of them: it must be given as an id."""
    return {name: found[0] for name, found in _ids_by_name(config).items() if len(found) == 1}


def shared_label_names(config) -> dict[str, list[int]]:
    """The names of `id2label` that several class ids share, with their ids."""
    return {name: found for name, found in _ids_by_name(config).items() if len(found) > 1}


def _ids_by_name(config) -> dict[str, list[int]]:
    ids = {}
    for index, name in (getattr(config, "id2label", None) or {}).items():
        ids.setdefault(str(name), []).append(int(index))
    return {name: sorted(found) for name, found in ids.items()}


def class_name(id2label: dict | None, class_id: int) -> str:
    """The name reports, cards, per-class tables and `align_labels` give class `class_id`: its `id2label` name (or the
    id), with the id added where several classes share the name (ImageNet's "crane (134)" and "crane (517)"), so that
    no class's row stands for another's."""
    names = id2label or {}
    name = names.get(int(class_id), names.get(str(int(class_id)), int(class_id)))
    shared = sum(other == name for other in names.values()) > 1
    return f"{name} ({int(class_id)})" if shared else str(name)


def resolve_forget_classes(forget_classes, label2id: dict | None, num_labels: int,
                           shared: dict[str, list[int]] | None = None) -> list[int]:  # fmt: skip
    """Class ids from ids or label names; raises a `ValueError` listing the valid classes on a miss, and naming the
    ids of a name several classes share (`shared`, from `shared_label_names`)."""
    if hasattr(forget_classes, "tolist") and not isinstance(forget_classes, str):  # a tensor or an array
        forget_classes = forget_classes.tolist()
    if isinstance(forget_classes, (int, str, np.integer)):
        forget_classes = [forget_classes]
    if not isinstance(forget_classes, (list, tuple, set, range)):
        raise ValueError(
            f"`forget_classes` must be a class id, a label name or a list of them, got {type(forget_classes).__name__} "
            f"{forget_classes!r}: e.g. `forget_classes=[3]`."
        )
    label2id = dict(label2id or {})
    valid_names = sorted(label2id, key=label2id.get)
    resolved = []
    for value in forget_classes:
        if isinstance(value, str):
            if value in label2id:
                resolved.append(int(label2id[value]))
                continue
            if value.isdigit() and int(value) < num_labels:
                resolved.append(int(value))
                continue
            if value in (shared or {}):
                raise ValueError(
                    f"`forget_classes` contains {value!r}, the label of several classes of the model (ids "
                    f"{shared[value]}): name the class by its id, e.g. `forget_classes=[{shared[value][0]}]`."
                )
            raise ValueError(
                f"`forget_classes` contains {value!r}, which is not a label of the model. "
                f"Valid labels: {valid_names} (or class ids 0..{num_labels - 1})."
            )
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= int(value) < num_labels:
            resolved.append(int(value))
            continue
        raise ValueError(
            f"`forget_classes` contains {value!r}, which is not a class of the model: use ids 0..{num_labels - 1} "
            f"or the labels {valid_names}."
        )
    resolved = sorted(set(resolved))
    if not resolved:
        raise ValueError("`forget_classes` is empty: name at least one class to forget.")
    if len(resolved) >= num_labels:
        raise ValueError(
            f"`forget_classes` names all {num_labels} classes of the model; at least one class must be retained."
        )
    return resolved


@dataclass
class ForgetRetainSplit:
    """Row indices of the forget and retain parts of the train and eval datasets.

    For class forgetting the eval split divides by class as well. For sample-level forgetting (`forget_indices`)
    every eval row is a retain row: forgotten samples have no counterpart outside the training set.

    Classes the model unlearned in an earlier request (`unlearned_before`, from `model.config.unlearned_classes`) are
    in neither part: retaining them would teach them again. Their eval rows are kept apart
    (`eval_unlearned_before_indices`) to check they stay forgotten.
    """

    forget_indices: np.ndarray
    retain_indices: np.ndarray
    eval_forget_indices: np.ndarray
    eval_retain_indices: np.ndarray
    forget_classes: list[int] | None = None
    unlearned_before: list[int] = field(default_factory=list)
    eval_unlearned_before_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def is_class_level(self) -> bool:
        return self.forget_classes is not None


def split_forget_retain(
    train_labels: np.ndarray,
    eval_labels: np.ndarray | None,
    forget_classes: list[int] | None = None,
    forget_indices: Sequence[int] | None = None,
    unlearned_before: Sequence[int] = (),
) -> ForgetRetainSplit:
    """Compute the forget/retain split once. Exactly one of `forget_classes` (resolved ids) and `forget_indices`;
    rows of the `unlearned_before` classes join neither the retain part nor (unless asked for) the forget part."""
    eval_labels = np.zeros(0, dtype=np.int64) if eval_labels is None else eval_labels
    num_train = len(train_labels)
    if forget_classes is not None:
        forget_mask = np.isin(train_labels, forget_classes)
        if not forget_mask.any():
            raise ValueError(
                f"The forget set is empty: `train_dataset` has no rows of `forget_classes` {forget_classes}."
            )
        eval_forget = np.isin(eval_labels, forget_classes)
    else:
        indices = resolve_forget_indices(forget_indices, num_train)
        if indices.size == 0:
            raise ValueError("`forget_indices` is empty: give the training rows to forget.")
        out_of_range = indices[(indices < 0) | (indices >= num_train)]
        if out_of_range.size:
            raise ValueError(
                f"`forget_indices` holds {out_of_range[:5].tolist()}, outside `train_dataset` (rows 0..{num_train - 1})."
            )
        forget_mask = np.zeros(num_train, dtype=bool)
        forget_mask[indices] = True
        eval_forget = np.zeros(len(eval_labels), dtype=bool)
    earlier = sorted(set(unlearned_before) - set(forget_classes or []))
    retain_mask = ~forget_mask & ~np.isin(train_labels, earlier)
    if not retain_mask.any():
        extra = f" or of the classes unlearned before ({earlier})" if earlier else ""
        what = "`forget_classes`" if forget_classes is not None else "`forget_indices`"
        raise ValueError(f"Every row of `train_dataset` belongs to {what}{extra}: the retain set is empty.")
    eval_earlier = np.isin(eval_labels, earlier) & ~eval_forget
    return ForgetRetainSplit(
        np.flatnonzero(forget_mask),
        np.flatnonzero(retain_mask),
        np.flatnonzero(eval_forget),
        np.flatnonzero(~eval_forget & ~eval_earlier),
        None if forget_classes is None else list(forget_classes),
        earlier,
        np.flatnonzero(eval_earlier),
    )


def resolve_forget_indices(forget_indices, num_rows: int) -> np.ndarray:
    """Row positions from `forget_indices`: a sequence (list, tuple, numpy array, torch tensor) of integer row
    positions, or a boolean mask with one entry per row of `train_dataset` (its True rows). Anything else (a bare
    number, a string, floats, a mask of another length) is a `ValueError` naming the argument."""
    if isinstance(forget_indices, str | bytes | int | float | np.generic | dict) or forget_indices is None:
        raise ValueError(
            f"`forget_indices` must be a sequence of row positions (e.g. [4, 17]) or a boolean mask over "
            f"`train_dataset`, got {type(forget_indices).__name__} {forget_indices!r}."
        )
    if isinstance(forget_indices, torch.Tensor):
        forget_indices = forget_indices.detach().cpu().numpy()
    values = np.asarray(forget_indices if isinstance(forget_indices, np.ndarray) else list(forget_indices))
    if values.ndim != 1:
        raise ValueError(f"`forget_indices` must be one-dimensional, got shape {values.shape}.")
    if values.dtype == bool:
        if len(values) != num_rows:
            raise ValueError(
                f"`forget_indices` is a boolean mask of {len(values)} entries, but `train_dataset` has {num_rows} rows: "
                "a mask needs one entry per row."
            )
        return np.flatnonzero(values)
    if values.dtype.kind in "iu" and len(values) == num_rows > 2 and set(np.unique(values).tolist()) <= {0, 1}:
        raise ValueError(
            "`forget_indices` holds only 0 and 1, one entry per row of `train_dataset`: it looks like a mask, which "
            "would be read as rows 0 and 1. Pass it as booleans, e.g. `mask.astype(bool)` / `mask.bool()`."
        )
    if values.size and values.dtype.kind not in "iu":
        raise ValueError(
            f"`forget_indices` must hold integer row positions (or be a boolean mask), got values of type "
            f"{values.dtype} (e.g. {values[:3].tolist()}): convert them, e.g. `[int(i) for i in rows]`."
        )
    return values.astype(np.int64)


def subsample(indices: np.ndarray, limit: int | None, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    """At most `limit` of `indices` (sorted), drawn at random; balanced over `labels` when given."""
    if limit is None or len(indices) <= limit:
        return indices
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(indices, size=limit, replace=False))
    row_labels = labels[indices]
    classes = np.unique(row_labels)
    per_class = [rng.permutation(indices[row_labels == c]) for c in classes]
    chosen, quota = [], limit
    # Round-robin over classes so small classes give what they have and larger ones fill the rest.
    for position in range(max(len(p) for p in per_class)):
        for pool in per_class:
            if position < len(pool) and quota:
                chosen.append(pool[position])
                quota -= 1
        if not quota:
            break
    return np.sort(np.asarray(chosen, dtype=np.int64))


def balanced_forget(labels: np.ndarray) -> np.ndarray | None:
    """`labels` for `subsample` to balance the forget rows over their classes when they hold several (a class of 20
    rows beside one of 5,000 would often get none of a random 500); None for one class, whose draw stays the plain
    one."""
    return labels if len(np.unique(labels)) > 1 else None


class RelabeledDataset(torch.utils.data.Dataset):
    """Rows of `dataset` at `indices` with their label replaced by `labels` (used by `random_label`)."""

    def __init__(self, dataset, indices: np.ndarray, labels: np.ndarray, label_column: str):
        self.dataset, self.indices, self.labels, self.label_column = dataset, indices, labels, label_column

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        row = dict(self.dataset[int(self.indices[i])])
        row[self.label_column] = int(self.labels[i])
        return row


class PairedDataset(torch.utils.data.Dataset):
    """One pass over `retain` rows, each paired with a `forget` row (cycled): `{"retain": row, "forget": row}`.

    Methods that combine a forget and a retain loss in one step (e.g. `neggrad_plus`) train on this.
    """

    def __init__(self, retain, forget, seed: int = 0):
        self.retain, self.forget = retain, forget
        self.forget_order = np.random.default_rng(seed).permutation(len(forget))

    def __len__(self):
        return len(self.retain)

    def __getitem__(self, i):
        return {"retain": self.retain[i], "forget": self.forget[int(self.forget_order[i % len(self.forget)])]}

    def __getitems__(self, indices: list[int]) -> list[dict]:
        # The DataLoader fetches a whole batch through this: one read per part instead of one per row (a third less
        # time per batch on digits).
        forget_rows = [int(self.forget_order[i % len(self.forget)]) for i in indices]
        pairs = zip(_rows(self.retain, indices), _rows(self.forget, forget_rows), strict=True)
        return [{"retain": retain, "forget": forget} for retain, forget in pairs]


def _rows(dataset, indices: list[int]) -> list[dict]:
    """Rows of `dataset` at `indices`: one columnar read for a `datasets.Dataset`, row by row otherwise."""
    if not isinstance(dataset, datasets.Dataset):
        return [dataset[i] for i in indices]
    columns = dataset[indices]
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


class ConcatRows(torch.utils.data.Dataset):
    """Rows of several datasets one after the other."""

    def __init__(self, *parts):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self):
        return int(self.offsets[-1])

    def __getitem__(self, i):
        part = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.parts[part][i - int(self.offsets[part])]


def without_audio_decoding(dataset):
    """`dataset` with every `datasets.Audio` column left undecoded (`{"bytes", "path"}` rows), so reading a row never
    needs torchcodec (which `datasets` 5 decodes with and which cannot be installed everywhere); `decode_audio` reads
    the bytes with soundfile instead. Other datasets are returned as they are."""
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Audio) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Audio(sampling_rate=feature.sampling_rate, decode=False))
    return dataset


def decode_audio(value, target_rate: int | None, sampling_rate: int | None = None) -> np.ndarray:
    """A mono float32 waveform at `target_rate` from what an `audio` column holds.

    Accepts `{"array", "sampling_rate"}` (decoded), `{"bytes", "path"}` (undecoded, read with soundfile, so no
    torchcodec is needed), raw samples (a list, array or tensor) whose rate is `sampling_rate` (a `sampling_rate`
    column of the dataset), or a decoder object with `get_all_samples()`. Rates are converted with a polyphase
    filter (`scipy.signal.resample_poly`).
    """
    if isinstance(value, dict) and value.get("array") is not None:
        waveform, rate = np.asarray(value["array"], dtype=np.float32), value.get("sampling_rate")
    elif isinstance(value, dict) and (value.get("bytes") is not None or value.get("path")):
        waveform, rate = _read_with_soundfile(value)
    elif isinstance(value, (list, tuple, np.ndarray, torch.Tensor)):
        if sampling_rate is None:
            raise ValueError(
                "The audio column holds raw samples but no sampling rate: add a `sampling_rate` column, e.g. "
                "`dataset.add_column('sampling_rate', [16000] * len(dataset))`, or store "
                "`{'array': samples, 'sampling_rate': rate}` rows."
            )
        waveform, rate = np.asarray(value, dtype=np.float32), sampling_rate
    elif hasattr(value, "get_all_samples"):
        samples = value.get_all_samples()
        waveform, rate = samples.data.numpy().mean(axis=0).astype(np.float32), samples.sample_rate
    else:
        raise TypeError(
            f"Cannot read audio from a value of type {type(value).__name__}: expected a dict with 'array' and "
            "'sampling_rate', or with 'bytes'/'path' (cast the column with `Audio(decode=False)`), or raw samples "
            "with a `sampling_rate` column."
        )
    if waveform.ndim > 1:
        waveform = waveform.mean(axis=-1 if waveform.shape[-1] < waveform.shape[0] else 0)
    if target_rate and rate and int(rate) != int(target_rate):
        common = gcd(int(rate), int(target_rate))
        waveform = resample_poly(waveform, int(target_rate) // common, int(rate) // common).astype(np.float32)
    return waveform


def _read_with_soundfile(value: dict) -> tuple[np.ndarray, int]:
    source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
    try:
        waveform, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError) as error:
        raise ValueError(
            f"Cannot decode the audio {value.get('path') or '(bytes)'!r}: soundfile (libsndfile "
            f"{soundfile.__libsndfile_version__}) failed with '{error}', and torchcodec, which `datasets` would decode "
            "with, is not used. soundfile reads WAV, FLAC, OGG/Vorbis/Opus and MP3: convert the files to FLAC or WAV, "
            "or install torchcodec where its wheels work (pip install torchcodec) and pass decoded "
            "{'array', 'sampling_rate'} rows."
        ) from error
    return waveform.mean(axis=1), rate


def align_labels(dataset, label2id, label_column: str = "label"):
    """`dataset` with its label ids renumbered to a model's classes (`label2id`: the model's config, whose `id2label`
    is used, or a name -> id mapping; names matched case-insensitively) and the rows of labels the model does not have
    dropped (e.g. Speech Commands' `_silence_` for a model trained without it), and unlabelled rows (-1) too.

    ```python
    >>> train = align_labels(train, model.config)
    ```
    """
    names, shared = None, {}
    if hasattr(label2id, "id2label"):  # a model config: its id2label, names several classes share told apart by id
        config, shared = label2id, shared_label_names(label2id)
        names = [class_name(config.id2label, i) for i in range(int(config.num_labels))]
        label2id = label_ids(config)
    feature = dataset.features.get(label_column)
    if not isinstance(feature, datasets.ClassLabel):
        raise ValueError(
            f"`align_labels` needs the '{label_column}' column to be a `datasets.ClassLabel` (it maps label names), "
            f"got {feature!r}."
        )
    ambiguous = sorted(name for name in feature.names if name.lower() in {key.lower() for key in shared})
    if ambiguous:
        raise ValueError(
            f"The dataset's labels {ambiguous} name several classes of the model (ids {shared}): "
            "which one a row means is not known. Renumber those rows yourself, then pass the dataset as it is."
        )
    model_ids = {str(name).lower(): int(index) for name, index in label2id.items()}
    renumber = np.array([model_ids.get(name.lower(), -1) for name in feature.names], dtype=np.int64)
    raw = dataset_labels(dataset, label_column)
    labels = np.where(raw >= 0, renumber[np.clip(raw, 0, None)], -1)  # -1 (unlabelled) must not index from the end
    kept = np.flatnonzero(labels >= 0)
    dropped = sorted({feature.names[i] for i in np.flatnonzero(renumber < 0)} | ({"(unlabelled, -1)"} if (raw < 0).any()
                                                                               else set()))  # fmt: skip
    if dropped:
        logger.info(f"align_labels: dropping {len(labels) - len(kept)} rows of labels the model lacks: {dropped}")
    if not len(kept):
        raise ValueError(f"No label of the dataset ({feature.names[:10]}...) is a label of the model: nothing is left.")
    names = names or [name for name, _ in sorted(label2id.items(), key=lambda item: int(item[1]))]
    aligned = dataset.select(kept).remove_columns(label_column)
    return aligned.add_column(label_column, labels[kept].tolist(), feature=datasets.ClassLabel(names=names))


def model_label_names(config) -> list[str] | None:
    """The model's class names in id order, or None when it only has transformers' defaults (`LABEL_0`, ...), which
    say nothing about its classes."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(int(config.num_labels))]
    return None if all(re.fullmatch(r"LABEL_\d+", name) for name in names) else names


def name_mismatches(first: list[str], second: list[str], first_label: str, second_label: str,
                    ignore_case: bool = True) -> tuple[list[int], str]:  # fmt: skip
    """The class ids whose names differ between two lists of class names (a name one list lacks counts as None, and
    differs), and the first three as "i: <first_label> 'a' vs <second_label> 'b'" for an error message."""

    def name(names, index):
        return names[index] if index < len(names) else None

    def same(a, b):
        return a is not None and b is not None and (a.lower() == b.lower() if ignore_case else a == b)

    ids = [i for i in range(max(len(first), len(second))) if not same(name(first, i), name(second, i))]
    text = ", ".join(f"{i}: {first_label} {name(first, i)!r} vs {second_label} {name(second, i)!r}" for i in ids[:3])
    return ids, text


def check_labels(labels: np.ndarray, dataset, label_column: str, config, argument: str) -> None:
    """Refuse label ids outside the model's classes and a dataset whose label names are the model's in another order
    (the ids would mean other classes); warn when the names differ otherwise."""
    num_labels = int(config.num_labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(
            f"`{argument}` has label ids {int(labels.min())}..{int(labels.max())}, but the model has {num_labels} "
            f"classes (0..{num_labels - 1}). Map the dataset to the model's labels first: "
            "`hf_unlearn.data.align_labels(dataset, model.config)` (it drops labels the model lacks and unlabelled rows)."
        )
    names = getattr(dataset.features.get(label_column), "names", None)
    model_names = model_label_names(config)
    if not names or model_names is None:
        return
    names = names[:num_labels]
    differing, examples = name_mismatches(names, model_names[: len(names)], "dataset", "model")
    if not differing:
        return
    model_ids = {name.lower(): i for i, name in enumerate(model_names)}
    if any(names[i].lower() in model_ids for i in differing):
        raise ValueError(
            f"`{argument}` numbers its labels differently from the model ({examples}): the same id would mean "
            "another class. Align the dataset first: `hf_unlearn.data.align_labels(dataset, model.config)`."
        )
    logger.warning(f"`{argument}`'s label names differ from the model's ({examples}); the ids are used as they are.")


def with_model_inputs(dataset, collator, description: str = "Computing model inputs"):
    """`dataset` with its raw `image` / `audio` column replaced by model inputs computed once with `datasets.map`
    (the collator's own processing, one row at a time so nothing is padded; written to the cache files of a
    file-backed dataset, so a large set is never held in memory). A dataset without raw columns, or with a transform
    of its own (`with_transform`: `map` would store transformed rows that reading transforms again), is returned as
    is."""
    raw = [name for name in RAW_IMAGE_COLUMNS + RAW_AUDIO_COLUMNS if name in dataset.column_names]
    if not raw or any(name in dataset.column_names for name in MODEL_INPUT_COLUMNS) or len(dataset) == 0:
        return dataset
    if has_transform(dataset):
        return dataset
    dropped = raw + [name for name in SAMPLING_RATE_COLUMNS if name in dataset.column_names]
    sample = collator.model_inputs([dataset[0]])
    features = datasets.Features({name: feature for name, feature in dataset.features.items() if name not in dropped})
    for name, value in sample.items():
        value = value[0]
        if name == "attention_mask":
            features[name] = datasets.List(datasets.Value("int32"))
        elif value.dim() == 1:
            features[name] = datasets.List(datasets.Value("float32"))  # waveforms: their own length
        else:
            array_type = {2: datasets.Array2D, 3: datasets.Array3D, 4: datasets.Array4D}[value.dim()]
            features[name] = array_type(tuple(value.shape), "float32")  # processors give one size (AST, ViT)

    def convert(batch):
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        outputs = [collator.model_inputs([row]) for row in rows]
        return {name: [output[name][0].numpy() for output in outputs] for name in sample}

    return dataset.map(
        convert, batched=True, batch_size=64, remove_columns=dropped, features=features, desc=description
    )


def numpy_model_inputs(dataset):
    """`dataset` with its model-input columns (`MODEL_INPUT_COLUMNS`) read as numpy arrays, when it has no format of
    its own: read as python lists, every float is built as a python object and stacked again by the collator (on a
    32 x 32 ViT task about 3 of the 5.3 s that `unlearn()` spent measuring, `benchmarks/results/decode_numpy.md`). The
    values are the same; other columns, and a dataset with a format or a transform, are left as they are."""
    if dataset is None or dataset.format["type"] is not None:
        return dataset
    columns = [name for name in MODEL_INPUT_COLUMNS if name in dataset.column_names]
    return dataset.with_format("numpy", columns=columns, output_all_columns=True) if columns else dataset


#: The shortest audio clip a row may hold: one 25 ms analysis window (AST's filter banks, Wav2Vec2's first conv).
MIN_AUDIO_SECONDS = 0.025


class UnlearningCollator:
    """Turns dataset rows into a model batch `{<model input>: tensor, "labels": tensor}`.

    Rows may already hold model inputs (`pixel_values`, `input_values`, ...; rows of different lengths are padded by
    `processing_class`) or raw `image` / `audio` columns, which are run through `processing_class` (an image processor
    or feature extractor) on the fly. Rows of a `PairedDataset` become `{"retain": batch, "forget": batch}`.
    """

    def __init__(self, label_column: str = "label", processing_class=None):
        self.label_column = label_column
        self.processing_class = processing_class

    def __call__(self, rows: list[dict]) -> dict:
        first = rows[0]
        if isinstance(first.get("retain"), dict) and isinstance(first.get("forget"), dict):
            return {part: self([row[part] for row in rows]) for part in ("retain", "forget")}
        inputs = [name for name in MODEL_INPUT_COLUMNS if name in first]
        batch = self._stack_inputs(rows, inputs) if inputs else self.model_inputs(rows)
        label_column = self.label_column if self.label_column in first else _first_present(first, LABEL_COLUMNS)
        if label_column is None:
            raise ValueError(f"A dataset row has no label column ('label' or 'labels'); it has {sorted(first)}.")
        batch["labels"] = torch.as_tensor([int(row[label_column]) for row in rows], dtype=torch.long)
        for name, value in batch.items():  # one cheap pass: NaN inputs would silently give a NaN model
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad = int((~torch.isfinite(value.reshape(len(value), -1))).any(1).sum())
                raise ValueError(
                    f"{bad} of {len(rows)} rows in a batch have NaN or infinite values in '{name}': clean the dataset, "
                    f"e.g. `dataset.filter(lambda row: np.isfinite(row['{name}']).all())`."
                )
        return batch

    def _stack_inputs(self, rows: list[dict], names: list[str]) -> dict:
        values = {name: [np.asarray(row[name]) for row in rows] for name in names}
        shapes = {value.shape for value in values[names[0]]}
        if len(shapes) > 1:
            if not hasattr(self.processing_class, "pad"):
                raise ValueError(
                    f"Rows of '{names[0]}' have different shapes ({sorted(shapes)[:3]}) and no `processing_class` can "
                    "pad them: pass the model's feature extractor."
                )
            return dict(self.processing_class.pad(values, padding=True, return_tensors="pt"))
        return {
            name: torch.as_tensor(np.stack(column), dtype=torch.long if name == "attention_mask" else torch.float32)
            for name, column in values.items()
        }

    def model_inputs(self, rows: list[dict]) -> dict:
        """Model inputs (tensors) from rows with a raw `image` / `audio` column, through `processing_class`."""
        first = rows[0]
        image_column = _first_present(first, RAW_IMAGE_COLUMNS)
        audio_column = _first_present(first, RAW_AUDIO_COLUMNS)
        if image_column is None and audio_column is None:
            raise ValueError(
                f"Dataset rows have no model input: expected one of {list(MODEL_INPUT_COLUMNS)}, or a raw "
                f"{list(RAW_IMAGE_COLUMNS + RAW_AUDIO_COLUMNS)} column with `processing_class`; found {sorted(first)}."
            )
        if self.processing_class is None:
            raise ValueError(
                f"Dataset rows hold a raw '{image_column or audio_column}' column but no `processing_class` was "
                "given: pass the model's image processor or feature extractor (loaded automatically with a Hub ID)."
            )
        if image_column is not None:
            images = [_to_rgb_if_needed(row[image_column], self.processing_class) for row in rows]
            return dict(self.processing_class(images=images, return_tensors="pt"))
        rate = getattr(self.processing_class, "sampling_rate", None)
        rate_column = _first_present(first, SAMPLING_RATE_COLUMNS)
        waveforms = [decode_audio(row[audio_column], rate, row[rate_column] if rate_column else None) for row in rows]
        shortest = int(np.ceil(MIN_AUDIO_SECONDS * (rate or 16_000)))
        for row, waveform in zip(rows, waveforms, strict=True):
            if len(waveform) < shortest or not np.isfinite(waveform).all():
                value = row[audio_column]
                where = value.get("path") if isinstance(value, dict) and value.get("path") else "a row"
                what = f"{len(waveform)} samples" if len(waveform) < shortest else "NaN or infinite samples"
                raise ValueError(
                    f"The audio of {where!r} in '{audio_column}' has {what}; feature extractors need at least "
                    f"{shortest} finite samples ({1000 * MIN_AUDIO_SECONDS:.0f} ms at {rate or 16_000} Hz). Drop or pad "
                    "such rows first, e.g. `dataset.filter(...)`."
                )
        # Extractors that take waveforms of any length (Wav2Vec2, HuBERT) pad the batch; AST pads each clip itself.
        padding = {"padding": True} if "padding" in inspect.signature(self.processing_class.__call__).parameters else {}
        features = self.processing_class(waveforms, sampling_rate=rate, return_tensors="pt", **padding)
        return {name: value for name, value in features.items() if name in MODEL_INPUT_COLUMNS}


def _first_present(row: dict, names: Sequence[str]) -> str | None:
    return next((name for name in names if name in row), None)


def _to_rgb_if_needed(image, processor):
    # Grey or RGBA images fed to a processor that normalises 3 channels would fail deep inside numpy.
    mean = getattr(processor, "image_mean", None)
    if hasattr(image, "mode") and mean is not None and len(np.atleast_1d(mean)) == 3 and image.mode != "RGB":
        return image.convert("RGB")
    return image
