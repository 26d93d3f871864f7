"""Forward passes over a dataset split across processes: each process reads its own contiguous share of the rows,
exactly once (no padding duplicates, unlike a prepared dataloader), for statistics summed over processes afterwards.
They need an `accelerate.Accelerator`, a collator and a device, not a Trainer; `UnlearningTrainer.shard_batches` and
friends call them with the trainer's. `broadcast_weights` hands process 0's weights to every process."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .activations import capturing, evaluating, pooled_rows
from .data import has_transform

if TYPE_CHECKING:
    from .measure_cache import OriginalTail


def shard_bounds(total: int, num_processes: int) -> list[tuple[int, int]]:
    """`(start, stop)` of each process's contiguous share of `total` rows (the layout of `shard_batches`)."""
    share = math.ceil(total / num_processes)
    return [(min(total, rank * share), min(total, (rank + 1) * share)) for rank in range(num_processes)]


def shard_batches(dataset, accelerator: Accelerator, collate: Callable, prepare: Callable, batch_size: int,
                  description: str = "Forward pass", show: bool = True) -> Iterator[tuple[torch.Tensor, dict]]:  # fmt: skip
    """This process's contiguous share of `dataset` (a `datasets.Dataset`) in batches of `batch_size` rows:
    `(sample_ids, batch)`, the rows' positions in `dataset` and `prepare(collate(rows))` (inputs with `labels`).

    The share is read in contiguous in-memory chunks of 16 batches: reading a selection row by row decodes every row
    separately, ten times slower than slicing (measured on digits), and chunks keep memory flat."""
    start, stop = shard_bounds(len(dataset), accelerator.num_processes)[accelerator.process_index]
    chunk_size = 16 * batch_size
    batches = math.ceil((stop - start) / batch_size)
    progress = tqdm(total=batches, desc=description, disable=not (show and batches > 20), leave=False)
    for chunk_start in range(start, stop, chunk_size):
        with quiet_datasets():
            chunk_rows = range(chunk_start, min(stop, chunk_start + chunk_size))
            chunk = contiguous_rows(dataset, chunk_rows)
        for offset in range(0, len(chunk), batch_size):
            columns = chunk[offset : offset + batch_size]
            rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
            first = chunk_start + offset
            yield torch.arange(first, first + len(rows)), prepare(collate(rows))
            progress.update()
    progress.close()


def contiguous_rows(dataset, rows):
    """`dataset`'s `rows` stored contiguously in memory (`flatten_indices`), in `dataset`'s format. A transform
    (`set_transform` / `with_transform`) runs when rows are read, and `flatten_indices` writes rows as read, so a
    transformed dataset is flattened without it and given it back: flattened through it, its stored rows would be the
    transformed ones and every read would transform them a second time (an input scaled twice, silently)."""
    if not has_transform(dataset):
        return dataset.select(rows).flatten_indices(keep_in_memory=True)
    form = dataset.format
    chunk = dataset.with_format(None).select(rows).flatten_indices(keep_in_memory=True)
    chunk.set_format("custom", columns=form["columns"], output_all_columns=form["output_all_columns"],
                     **form["format_kwargs"])  # fmt: skip
    return chunk


def broadcast_weights(module: torch.nn.Module, accelerator: Accelerator) -> None:
    """Every process takes process 0's parameters and buffers of `module`, in place (no-op in one process). For
    methods that compute whole weights on every process from the same statistics: floating-point results may differ
    between devices, and processes holding different weights would measure and save a mix of models."""
    if accelerator.num_processes == 1:
        return
    for tensor in module.state_dict().values():
        torch.distributed.broadcast(tensor, src=0)


def gather_shards(local: torch.Tensor, total: int, accelerator: Accelerator) -> torch.Tensor:
    """Per-row results of this process's share from `shard_batches` (`(rows, ...)`, possibly 0 rows), joined over
    processes into all `total` rows in dataset order, on every process."""
    if accelerator.num_processes == 1:
        return local
    bounds = shard_bounds(total, accelerator.num_processes)
    share = max(stop - start for start, stop in bounds)  # gather needs one shape on every process
    padded = local.new_zeros((share, *local.shape[1:]))
    padded[: len(local)] = local
    everything = accelerator.gather(padded)
    return torch.cat([everything[rank * share : rank * share + stop - start] for rank, (start, stop) in enumerate(bounds)])


@torch.no_grad()
def predict_logits(model: torch.nn.Module, loader: Iterable[dict] | None, accelerator: Accelerator, prepare: Callable,
                   num_labels: int, head: torch.nn.Module | None = None, description: str = "Scoring",
                   show: bool = True, original: OriginalTail | None = None) -> tuple:  # fmt: skip
    """Logits and labels of `model` on every batch of `loader` (a prepared dataloader; None: no rows), gathered over
    processes; with `head` (a module of `model`), also the rows' inputs to it (pooled over tokens), a third array.
    With `original` (`measure_cache.OriginalTail`: the original model inside the unlearned one), the same arrays for
    the original model from the same batches, as a second tuple: `(model's, original's)`."""
    runs = [None] if original is None else [None, original]
    if loader is None:
        empty = (np.zeros((0, num_labels), dtype=np.float32), np.zeros(0, dtype=np.int64))
        empty = empty if head is None else (*empty, np.zeros((0, head.in_features), dtype=np.float32))
        return empty if original is None else (empty, empty)
    parts = [([], [], []) for _ in runs]
    with evaluating(model):
        for batch in tqdm(loader, desc=description, disable=not (show and len(loader) > 20), leave=False):
            batch = prepare(batch)
            labels = batch.pop("labels")
            for run, run_parts in zip(runs, parts, strict=True):
                # The model's pass records what the original's then starts from.
                recording = original.recording() if run is None and original is not None else contextlib.nullcontext()
                with capturing(head) if head is not None else contextlib.nullcontext() as captured, recording:
                    logits = (model(**batch) if run is None else run(model, batch)).logits.float()
                # `.clone()`: a head's input can be a view of the whole hidden state (ViT's CLS token), kept alive
                # otherwise
                outputs = (logits, labels) if head is None else (logits, labels, pooled_rows(captured.value).float().clone())
                for part, values in zip(run_parts[: len(outputs)], accelerator.gather_for_metrics(outputs), strict=True):
                    part.append(values.cpu().numpy())
    arrays = [tuple(np.concatenate(part) for part in run_parts if part) for run_parts in parts]
    return arrays[0] if original is None else tuple(arrays)


@torch.no_grad()
def batch_logits(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, dict]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`(float logits, labels)` of `model` (in eval mode meanwhile) on each batch from `shard_batches`, in order: the
    one forward pass `shard_accuracy`, `shard_logits` and `shard_divergence` score."""
    with evaluating(model):
        for _, batch in batches:
            yield model(**{name: value for name, value in batch.items() if name != "labels"}).logits.float(), batch["labels"]


@torch.no_grad()
def shard_counts(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, dict]], accelerator: Accelerator,
                 plausible_at: float | None = None, max_correct: int | None = None,
                 max_wrong: int | None = None) -> tuple[int, int] | None:  # fmt: skip
    """`(correct, rows)` of `model` on batches from `shard_batches`, summed over processes (`plausible_at`: see
    `shard_accuracy`).

    With `max_correct` / `max_wrong`: None once more rows than that are correct / wrong overall. Each process stops
    its own share as soon as that share alone has more (the check costs one copy of two numbers to the host per
    batch), so a pass that cannot stay within the limits ends early; whether it stayed within them does not depend on
    the number of processes, only the time saved does."""
    counts = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # correct, rows, stopped early
    bounded = max_correct is not None or max_wrong is not None
    with contextlib.closing(batch_logits(model, batches)) as scored:
        for logits, labels in scored:
            counted = logits.argmax(-1) == labels
            if plausible_at is not None:
                label_probability = logits.softmax(-1).gather(-1, labels[:, None])[:, 0]
                counted |= label_probability >= plausible_at
            counts[:2] += torch.stack([counted.sum(), torch.tensor(len(labels), device=counted.device)]).to(counts)
            if bounded and _exceeds(*counts[:2].tolist(), max_correct, max_wrong):
                counts[2] = 1
                break
    correct, total, stopped = accelerator.reduce(counts, reduction="sum").tolist()
    if stopped or _exceeds(correct, total, max_correct, max_wrong):
        return None
    return int(correct), int(total)


def _exceeds(correct: float, total: float, max_correct: int | None, max_wrong: int | None) -> bool:
    return (max_correct is not None and correct > max_correct) or (max_wrong is not None and total - correct > max_wrong)


def shard_accuracy(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, dict]], accelerator: Accelerator,
                   plausible_at: float | None = None) -> float | None:  # fmt: skip
    """Accuracy of `model` on batches from `shard_batches` (kept, e.g. to score many candidate weights on the same
    rows without decoding them again), summed over processes; None for no rows.

    With `plausible_at` (a probability), a row also counts when its label keeps at least that probability without
    being the top prediction: an upper bound of the accuracy that reaches 0 only once the label is implausible
    everywhere, the margin a forget check needs so that rows it never saw are forgotten too."""
    correct, total = shard_counts(model, batches, accelerator, plausible_at)
    return correct / total if total else None


def shard_logits(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, dict]]) -> list[torch.Tensor]:
    """`model`'s float logits on each of this process's batches from `shard_batches`, in order."""
    return [logits for logits, _ in batch_logits(model, batches)]


@torch.no_grad()
def shard_divergence(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, dict]], reference: list[torch.Tensor],
                     accelerator: Accelerator) -> float | None:  # fmt: skip
    """Mean KL divergence KL(reference || model) of the predicted class distributions over the rows of `batches`
    (`reference`: `shard_logits` of another model on the same batches), summed over processes; None for no rows."""
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for (logits, _), reference_logits in zip(batch_logits(model, batches), reference, strict=True):
        divergence = torch.nn.functional.kl_div(logits.log_softmax(-1), reference_logits.log_softmax(-1),
                                                reduction="sum", log_target=True)  # fmt: skip
        totals += torch.stack([divergence.double(), torch.tensor(len(logits), device=logits.device).double()])
    divergence, rows = accelerator.reduce(totals, reduction="sum").tolist()
    return divergence / rows if rows else None


@contextlib.contextmanager
def quiet_datasets():
    """No `datasets` progress bar inside the block (for quick internal copies); the user's setting is restored."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def one_row_inputs(trainer, view) -> dict:
    """The model inputs of `view`'s first row, collated and on the device, without labels: for a pass that reads the
    model's structure (the forward order of its modules), not its predictions."""
    sample = trainer.prepare_inputs(trainer.data_collator([view[0]]))
    sample.pop("labels", None)
    return sample
