"""Layer inputs recorded by forward hooks: the Gram matrix of what each Linear / Conv layer receives (streamed), and
the features that feed a classification head (one row per sample).

Projection methods (`svd_projection`, `gppu`) need the subspace a layer's inputs span on a set of samples. Storing the
inputs costs memory that grows with the samples; their Gram matrix G = sum x x^T does not (O(d^2) per layer), and its
eigendecomposition G = U diag(s^2) U^T gives exactly the left singular vectors and squared singular values of the
input matrix. Gram matrices of several processes add up, so a distributed pass costs one all_reduce per layer.

What counts as one input row `x`:

- `nn.Linear`: one row per token (a transformer's batch x tokens inputs are flattened).
- `nn.Conv1d` / `nn.Conv2d`: one im2col patch per output position (the layer's kernel, stride, dilation and padding),
  laid out like the flattened weight `W.reshape(out_channels, -1)`. Grouped convolutions (depthwise ones included)
  get one Gram matrix per group, since each group of output channels only sees its own input channels.
  After Kodge et al. (2024), each sample contributes only the patches of one random spatial crop about 3k input
  pixels wide (k the kernel size; `conv_window`), which bounds the cost on large feature maps. By default the crop
  is 3 whole kernel windows of the padded input (the patches the layer computes: 49 for a 3x3 kernel); the official
  code's crop of the unpadded input, padded again (81 patches, the border ones partly zeros), is
  `conv_crop="official"`. The crop of a sample is
  drawn from its position in the pass and the seed alone, so the statistics do not depend on the batch size or
  the number of processes.

```python
>>> layers = find_target_modules(model)                      # every Linear / Conv layer
>>> layers = find_target_modules(model, r".*attention.*")    # a regex (full match), or a list of name suffixes
>>> statistics = GramStatistics(layers, num_samples=len(rows))
>>> with statistics.recording():
...     for sample_ids, batch in batches:
...         statistics.sample_ids = sample_ids
...         model(**batch)
>>> statistics.all_reduce()
>>> statistics.grams["vit.layers.0.attention.q_proj"].shape   # (groups, d, d)
```

The features feeding the head (`collect_head_features`) are what graph-based methods (`gppu`) work on: the pooled /
CLS representation of a transformer, the pooled features of a CNN, the pooled projector output of Wav2Vec2.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from transformers.utils.logging import get_logger

logger = get_logger(__name__)

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
_STOCK_FORWARDS = {layer.forward for layer in WEIGHT_LAYERS}


def name_matches(name: str, pattern: str | Sequence[str]) -> bool:
    """peft-style module selection: a regex matching the whole `name`, or a list of names / name suffixes."""
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == key or name.endswith("." + key) for key in pattern)


def find_target_modules(
    model: nn.Module,
    target_modules: str | Sequence[str] | None = None,
    exclude_modules: str | Sequence[str] | None = None,
) -> dict[str, nn.Module]:
    """The Linear / Conv1d / Conv2d layers of `model` to work on, by name, found from module types (no per-model table).

    `target_modules` / `exclude_modules` follow peft: a string is a regex that must match the whole module name, a list
    matches names equal to or ending in `"." + entry`. `None` targets every such layer (patch embedding and
    classification head included). Weight-normalised layers (a parametrised weight, e.g. Wav2Vec2's positional
    convolution) are skipped with a log line: their weight is not a plain parameter that can be rewritten; so are
    subclasses with a forward of their own (BiT's weight-standardised convolutions, which standardise the weight and
    pad inside forward), whose output is not the weight times the input the statistics record.
    """
    selected, skipped, own_forward = {}, [], []
    for name, module in model.named_modules():
        if not isinstance(module, WEIGHT_LAYERS):
            continue
        if target_modules is not None and not name_matches(name, target_modules):
            continue
        if exclude_modules is not None and name_matches(name, exclude_modules):
            continue
        if parametrize.is_parametrized(module) or hasattr(module, "weight_g"):
            skipped.append(name)
            continue
        if type(module).forward not in _STOCK_FORWARDS:
            own_forward.append(name)
            continue
        selected[name] = module
    if skipped:
        logger.info(f"Skipping weight-normalised layers (no plain weight to project): {', '.join(skipped)}")
    if own_forward:
        logger.info(f"Skipping layers with a forward of their own (e.g. weight standardisation, padding inside forward: "
                    f"their output is not weight x input): {', '.join(own_forward)}")
    if not selected:
        examples = [n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)][:5]
        raise ValueError(
            f"`target_modules={target_modules!r}` (exclude_modules={exclude_modules!r}) selects no Linear/Conv layer of "
            f"{type(model).__name__}. Its layers are named like {examples}; pass a regex matching whole names or a "
            "list of name suffixes, or None for all."
        )
    return selected


def layer_input_shape(module: nn.Module) -> tuple[int, int]:
    """`(groups, d)`: the number of input groups of a weight layer and the size of one group's input row."""
    if isinstance(module, nn.Linear):
        return 1, module.in_features
    return module.groups, module.in_channels // module.groups * math.prod(module.kernel_size)


def _padding(module: nn.Module) -> tuple[int, int, int, int]:
    """The conv's padding as `F.pad` (left, right, top, bottom) on a 2-D view (Conv1d is 1 x length)."""
    kernel, dilation = _as_2d(module, module.kernel_size, 1), _as_2d(module, module.dilation, 1)
    if module.padding == "valid":
        return 0, 0, 0, 0
    if module.padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        return total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2
    pad_h, pad_w = _as_2d(module, module.padding, 0)
    return pad_w, pad_w, pad_h, pad_h


def _as_2d(module: nn.Module, value: tuple, conv1d_height: int) -> tuple[int, int]:
    return (conv1d_height, value[0]) if isinstance(module, nn.Conv1d) else tuple(value)


#: How conv inputs are cropped (`GramStatistics`'s `conv_crop`).
CONV_CROPS = ("windows", "official")
#: What one row of a Linear layer's token inputs is (`GramStatistics`'s `token_rows`).
TOKEN_ROWS = ("tokens", "mean")


class GramStatistics:
    """Streams the input Gram matrix of each layer in `modules` (name -> module) over forward passes.

    Args:
        modules: from [`find_target_modules`].
        num_samples: the number of samples of the whole pass (all processes); fixes each sample's conv crop.
        conv_window: crop side in kernel sizes for conv inputs (3 as in Kodge et al.); `None` keeps every patch.
        seed: seeds the crops.
        conv_crop: "windows" (default): the crop is `conv_window` whole kernel windows per side of the padded input,
            so every patch is one the layer computes ((3 - 1) * k + 1 positions per side at stride 1: 49 patches
            for a 3x3 kernel); "official": as the official code of Kodge et al., a `conv_window * k` square of the
            unpadded input, padded again as the layer pads and unfolded (81 patches for 3x3), so the patches on
            the crop's border see zeros where the image has pixels.
        token_rows: for a Linear layer whose input has token dimensions (`(batch, tokens, d)`): "tokens" (default)
            makes every token a row; "mean" makes each sample's mean over its tokens its one row, so the statistics
            describe what differs between samples rather than between the tokens of one sample.
        max_token_rows: with "tokens", about how many rows a Linear layer's statistics take from the whole pass: each
            sample contributes ceil(max_token_rows / num_samples) of its tokens, drawn at random from its position in
            the pass and the seed (the same tokens for every layer of one token count), or all of them when it has
            fewer. After Kodge et al.'s official code, which keeps 10,000 random rows of each layer's input. None:
            every token. The Gram matrices' cost falls with it (about rows x d^2 per layer).
        keep_rows: a layer whose pass gives at most `keep_rows` x d input rows keeps the rows themselves instead of
            their Gram matrix (`kept_rows`): an n x d matrix with n < d holds the same subspace in less memory, and a
            QR of it gives the eigendecomposition for far less than a d x d one (`svd_projection`). Past that count
            the rows kept so far are folded into the Gram matrix and the layer streams as without it. 0 (default):
            never. A distributed pass gathers the rows of a layer whose rows over all processes are few enough.

    Set `sample_ids` (the pass-wide position of each row of the next batch) before each forward pass while
    `recording()`. After the pass, `grams[name]` is a float32 `(groups, d, d)` tensor (computed from the kept rows
    for a layer that kept them) and `rows[name]` the number of input rows that went into it; call `all_reduce()` to
    sum them over processes.
    """

    def __init__(self, modules: dict[str, nn.Module], num_samples: int, conv_window: int | None = 3, seed: int = 0,
                 conv_crop: str = "windows", token_rows: str = "tokens", max_token_rows: int | None = None,
                 keep_rows: float = 0.0):  # fmt: skip
        if conv_crop not in CONV_CROPS:
            raise ValueError(f"`conv_crop` must be one of {CONV_CROPS}, got {conv_crop!r}.")
        if token_rows not in TOKEN_ROWS:
            raise ValueError(f"`token_rows` must be one of {TOKEN_ROWS}, got {token_rows!r}.")
        if max_token_rows is not None and max_token_rows < 1:
            raise ValueError(f"`max_token_rows` must be >= 1 or None, got {max_token_rows!r}.")
        if not 0.0 <= keep_rows < 1.0:
            raise ValueError(f"`keep_rows` is a fraction of the input size in [0, 1), got {keep_rows!r}.")
        self.modules = modules
        self.conv_window, self.conv_crop, self.token_rows = conv_window, conv_crop, token_rows
        self.num_samples, self.seed = num_samples, seed
        self.tokens_per_sample = None if max_token_rows is None else -(-max_token_rows // max(1, num_samples))
        self._token_draws: dict[int, torch.Tensor] = {}
        #: Per layer, whether each of its calls in one forward pass reads the samples (`probe`); None: not probed.
        self.sample_calls: dict[str, list[bool]] | None = None
        self._calls: dict[str, int] = {}
        self._sample_ids: torch.Tensor | None = None
        self.rows, self._crop_draws = {}, {}
        #: Per layer, its Gram matrix (None until it streams one) and its input rows while it keeps them (None after).
        self._grams: dict[str, torch.Tensor | None] = {}
        self._kept: dict[str, list[torch.Tensor] | None] = {}
        self._row_limits: dict[str, int] = {}
        for index, (name, module) in enumerate(modules.items()):
            groups, size = layer_input_shape(module)
            self._row_limits[name] = math.floor(keep_rows * size)
            self._kept[name] = [] if self._row_limits[name] else None
            self._grams[name] = None if self._row_limits[name] else self._zeros(name)
            self.rows[name] = 0
            if not isinstance(module, nn.Linear) and conv_window is not None:
                generator = torch.Generator().manual_seed(seed * 100_003 + index)
                self._crop_draws[name] = torch.rand(num_samples, 2, generator=generator)

    def _zeros(self, name: str) -> torch.Tensor:
        groups, size = layer_input_shape(self.modules[name])
        return torch.zeros(groups, size, size, device=self.modules[name].weight.device, dtype=torch.float32)

    def kept_rows(self, name: str) -> torch.Tensor | None:
        """The input rows of layer `name` as `(groups, n, d)` float32 when it kept them (`keep_rows`), else None."""
        kept = self._kept[name]
        if kept is None:
            return None
        if not kept:
            groups, size = layer_input_shape(self.modules[name])
            return torch.zeros(groups, 0, size, device=self.modules[name].weight.device, dtype=torch.float32)
        return torch.cat(kept).transpose(0, 1)

    @property
    def grams(self) -> Mapping[str, torch.Tensor]:
        """Every layer's `(groups, d, d)` float32 Gram matrix, read-only; a layer that kept its rows computes it from
        them when it is looked up."""
        return _GramView(self)

    def gram(self, name: str) -> torch.Tensor:
        """Layer `name`'s `(groups, d, d)` float32 Gram matrix (from its kept rows, if it kept them)."""
        rows = self.kept_rows(name)
        if rows is None:
            return self._grams[name]
        return (rows.transpose(-1, -2) @ rows).to(self.modules[name].weight.device)

    def _fold(self, name: str) -> None:
        """Stop keeping layer `name`'s rows: they go into its Gram matrix."""
        if self._kept[name] is not None:
            self._grams[name] = self.gram(name)
            self._kept[name] = None

    @property
    def sample_ids(self) -> torch.Tensor | None:
        return self._sample_ids

    @sample_ids.setter
    def sample_ids(self, value: torch.Tensor | None) -> None:
        """Set before each forward pass: it also starts counting each layer's calls in that pass anew."""
        self._sample_ids, self._calls = value, {}

    @torch.no_grad()
    def probe(self, model: nn.Module, batch: dict) -> None:
        """Find which calls of each layer read the samples, from two passes that record nothing: on the first row of
        `batch` (model inputs) and on that row twice. A call reads the samples when its input's
        first dimension doubles with the rows (one row a sample, or several: Swin's attention windows); not when it
        stays (a table every sample shares: the coordinates Swin v2's position-bias MLP reads, the relative positions
        of Wav2Vec2-Conformer's `linear_pos`), whatever the batch size. Unprobed (a pass of single rows), a call
        counts when its input's first dimension is a multiple of the batch's rows."""
        rows = next(value for value in batch.values() if torch.is_tensor(value) and value.dim()).shape[0]
        sizes: dict[str, list[list[int]]] = {name: [] for name in self.modules}

        def recorder(name):
            return lambda module, args: sizes[name][-1].append(args[0].shape[0])

        handles = [module.register_forward_pre_hook(recorder(name)) for name, module in self.modules.items()]
        try:
            for count in (1, 2):  # the first row, then that row twice: any batch (of one row too) can be probed
                for calls in sizes.values():
                    calls.append([])
                model(**{key: torch.cat([value[:1]] * count) if torch.is_tensor(value) and value.dim()
                         and value.shape[0] == rows else value for key, value in batch.items()})  # fmt: skip
        finally:
            for handle in handles:
                handle.remove()
        self.sample_calls = {name: [two == 2 * one for one, two in zip(*calls, strict=True)]
                             for name, calls in sizes.items() if len(calls[0]) == len(calls[1])}  # fmt: skip

    def reads_samples(self, name: str, x: torch.Tensor) -> bool:
        """Whether this call of layer `name` (input `x`) reads the batch's samples: as `probe` found for the call at
        its place in the pass, else when `x`'s first dimension is a multiple of the batch's rows."""
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        probed = (self.sample_calls or {}).get(name)
        if probed is not None and call < len(probed):
            return probed[call]
        return self._sample_ids is None or x.shape[0] % len(self._sample_ids) == 0

    @contextlib.contextmanager
    def recording(self):
        """Hooks on every layer for the duration of the block (removed even on error)."""
        handles = [
            module.register_forward_pre_hook(self._hook(name), with_kwargs=False)
            for name, module in self.modules.items()
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, name: str):
        def hook(module, args):
            x = args[0].detach()
            if not self.reads_samples(name, x):
                return
            rows = self.input_rows(name, module, x)
            self.rows[name] += rows.shape[0]
            if self._kept[name] is not None:
                if self.rows[name] <= self._row_limits[name]:
                    self._kept[name].append(rows.clone())  # not a view of an activation a later op may change
                    return
                self._fold(name)  # past the limit: the rows so far into the Gram matrix, these rows streamed
            self._grams[name] += torch.einsum("ngi,ngj->gij", rows, rows)

        return hook

    def input_rows(self, name: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as rows `(n, groups, d)` (float32)."""
        groups, size = layer_input_shape(module)
        if isinstance(module, nn.Linear):
            if x.dim() > 2 and (self.token_rows == "mean" or self.tokens_per_sample is not None):
                tokens = self._tokens_per_sample(x, size)
                x = tokens.float().mean(dim=1) if self.token_rows == "mean" else self._some_tokens(tokens)
            return x.reshape(-1, 1, size).float()
        if isinstance(module, nn.Conv1d):
            x = x.unsqueeze(2)
        kernel, stride = _as_2d(module, module.kernel_size, 1), _as_2d(module, module.stride, 1)
        dilation = _as_2d(module, module.dilation, 1)
        if self.conv_window is not None and self.conv_crop == "official":
            x = self._crop_input(name, x, [self.conv_window * k for k in kernel])
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, _padding(module), mode=mode)
        if self.conv_window is not None and self.conv_crop == "windows":
            x = self._crop(name, x, kernel, stride, dilation)
        patches = F.unfold(x.float(), kernel, dilation=dilation, stride=stride)  # (batch, groups * d, positions)
        return patches.transpose(1, 2).reshape(-1, groups, size)

    def _batch_sample_ids(self, batch_size: int) -> torch.Tensor:
        """`sample_ids` of the batch being recorded, which the random crops and token draws are drawn from."""
        if self.sample_ids is None or len(self.sample_ids) != batch_size:
            raise RuntimeError("Set `GramStatistics.sample_ids` to the batch's sample positions before each forward.")
        return self.sample_ids

    def _tokens_per_sample(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """A Linear layer's token input as `(batch, tokens, d)`. Swin's windowed attention runs its layers on
        `(batch * windows, tokens, d)` with each sample's windows in consecutive rows (the window partition is a
        reshape of the sample's own tokens, batch first), so a sample's tokens are every row it owns."""
        batch = x.shape[0] if self.sample_ids is None else len(self.sample_ids)
        if x.shape[0] % batch:
            raise RuntimeError(
                f"A Linear layer's input has {x.shape[0]} rows in its first dimension for a batch of {batch} samples; "
                "expected a multiple of it (one or several rows a sample). Pass `exclude_modules` for that layer."
            )
        return x.reshape(batch, -1, size)

    def _some_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens_per_sample` of each sample's tokens `(batch, count, d)`, drawn from its position in the pass."""
        count = tokens.shape[1]
        if self.tokens_per_sample >= count:
            return tokens
        sample_ids = self._batch_sample_ids(tokens.shape[0])
        if count not in self._token_draws:  # drawn on the CPU (the same on every device), kept where the tokens are
            generator = torch.Generator().manual_seed(self.seed * 100_003 + 7_919 * count)
            self._token_draws[count] = torch.rand(self.num_samples, count, generator=generator).to(tokens.device)
        draws = self._token_draws[count][sample_ids.to(tokens.device)]
        index = draws.topk(self.tokens_per_sample, dim=1, largest=False).indices
        return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))

    def _crop(self, name, x, kernel, stride, dilation):
        """Each sample's random window of output positions covering `conv_window` kernels of input per side."""
        spans = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
        outputs = [(x.shape[2 + i] - spans[i]) // stride[i] + 1 for i in range(2)]
        window = [min(outputs[i], max(1, (self.conv_window * kernel[i] - spans[i]) // stride[i] + 1)) for i in range(2)]
        if window == outputs:
            return x
        sizes = [(window[i] - 1) * stride[i] + spans[i] for i in range(2)]
        return self._windows(name, x, sizes, [outputs[i] - window[i] + 1 for i in range(2)], stride)

    def _crop_input(self, name, x, sides):
        """Each sample's random `sides` square of the unpadded input (the whole input where it is smaller)."""
        sides = [min(side, x.shape[2 + i]) for i, side in enumerate(sides)]
        if sides == list(x.shape[2:]):
            return x
        return self._windows(name, x, sides, [x.shape[2 + i] - sides[i] + 1 for i in range(2)], (1, 1))

    def _windows(self, name, x, sizes, choices, steps):
        """Each sample's `sizes` window of `x`, starting at one of `choices` positions per side, `steps` pixels apart,
        drawn from the sample's position in the pass (`sample_ids`)."""
        draws = self._crop_draws[name][self._batch_sample_ids(x.shape[0]).cpu()]
        starts = [((draws[:, i] * choices[i]).long() * steps[i]).tolist() for i in range(2)]
        crops = [
            sample[:, top : top + sizes[0], left : left + sizes[1]]
            for sample, top, left in zip(x, starts[0], starts[1], strict=True)
        ]
        return torch.stack(crops)

    def all_reduce(self) -> None:
        """Sum the statistics over processes (no-op outside a distributed run). The row counts first: a layer whose
        rows over all processes are still few enough to keep (`keep_rows`) gathers them, in process order (one
        all_gather of the counts, one of the padded rows); every other layer folds its rows and sums its Gram matrix
        (one all_reduce)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        if torch.distributed.get_world_size() == 1:
            return
        device = next(iter(self.modules.values())).weight.device
        counts = torch.tensor([self.rows[name] for name in self.modules], device=device, dtype=torch.float64)
        torch.distributed.all_reduce(counts)
        totals = {name: int(count) for name, count in zip(self.modules, counts.tolist(), strict=True)}
        for name in self.modules:  # the same branch on every process: a total within the limit was kept everywhere
            if not totals[name]:
                continue
            if self._kept[name] is not None and totals[name] <= self._row_limits[name]:
                self._gather_rows(name)
            else:
                self._fold(name)
                torch.distributed.all_reduce(self._grams[name])
        self.rows = totals

    def _gather_rows(self, name: str) -> None:
        """Every process's kept rows of layer `name`, in process order, kept on each."""
        rows = self.kept_rows(name)  # (groups, n, d)
        count = torch.tensor([rows.shape[1]], device=rows.device)
        counts = [torch.zeros_like(count) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(counts, count)
        padded = rows.new_zeros(rows.shape[0], max(int(c) for c in counts), rows.shape[2])
        padded[:, : rows.shape[1]] = rows
        parts = [torch.empty_like(padded) for _ in counts]
        torch.distributed.all_gather(parts, padded)
        gathered = torch.cat([part[:, : int(c)] for part, c in zip(parts, counts, strict=True)], dim=1)
        self._kept[name] = [gathered.transpose(0, 1).contiguous()]


class _GramView(Mapping):
    """`GramStatistics.grams`: layer name -> Gram matrix, each computed on lookup."""

    def __init__(self, statistics: GramStatistics):
        self._statistics = statistics

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._statistics.modules:
            raise KeyError(name)
        return self._statistics.gram(name)

    def __iter__(self):
        return iter(self._statistics.modules)

    def __len__(self) -> int:
        return len(self._statistics.modules)


@torch.no_grad()
def collect_input_grams(
    trainer, dataset, modules: dict[str, nn.Module], conv_window: int | None = 3, description: str = "Statistics",
    conv_crop: str = "windows", token_rows: str = "tokens", max_token_rows: int | None = None, keep_rows: float = 0.0,
) -> GramStatistics:
    """One forward pass of `trainer.model` (eval mode) over `dataset`, shared between processes without duplicates,
    accumulating the input Gram matrix of every layer in `modules`, summed over processes. Each process's first batch
    is probed first (`GramStatistics.probe`): only the calls of a layer that read the samples count."""
    model = trainer.model
    statistics = GramStatistics(modules, num_samples=len(dataset), conv_window=conv_window, seed=trainer.args.seed,
                                conv_crop=conv_crop, token_rows=token_rows, max_token_rows=max_token_rows,
                                keep_rows=keep_rows)  # fmt: skip
    with evaluating(model):
        for sample_ids, batch in trainer.shard_batches(dataset, description):
            batch.pop("labels", None)
            if statistics.sample_calls is None:
                statistics.probe(model, batch)
            for ids, rows in unpadded(sample_ids, batch):
                statistics.sample_ids = ids
                with statistics.recording():
                    model(**rows)
    statistics.all_reduce()
    return statistics


def unpadded(sample_ids: torch.Tensor, batch: dict):
    """`(sample_ids, batch)` as it is, or, when its `attention_mask` marks padding (audio clips of different lengths
    padded to the longest), each row alone without its padded positions: padded frames are no input of the sample
    (the model masks them before its output), and as rows of the statistics they would make a clip's statistics
    depend on what it was batched with."""
    mask = batch.get("attention_mask")
    if not torch.is_tensor(mask) or mask.dim() != 2 or bool(mask.bool().all()):
        yield sample_ids, batch
        return
    for row in range(mask.shape[0]):
        keep = mask[row].bool()
        yield sample_ids[row : row + 1], {
            key: value[row : row + 1][:, keep] if torch.is_tensor(value) and value.shape[:2] == mask.shape
            else value[row : row + 1] if torch.is_tensor(value) and value.dim() and value.shape[0] == mask.shape[0]
            else value for key, value in batch.items()
        }  # fmt: skip


class InputCapture:
    """The latest input of one module, recorded while `capturing(module)` is active (`value`, with its graph)."""

    value: torch.Tensor | None = None


@contextlib.contextmanager
def modes_kept(model: nn.Module) -> Iterator[None]:
    """Every module of `model` in the training / eval mode it had before the block, after it (also on an error).

    The Trainer's loop leaves a model in training mode, so a model passed in eval mode (as `from_pretrained` gives it)
    came back with its dropout active: `result.model(x)` then gave different logits on every call. Modules the block
    added (peft's adapters) are left as they are."""
    before = {name: module.training for name, module in model.named_modules()}
    try:
        yield
    finally:
        for name, module in model.named_modules():
            if name in before:
                module.training = before[name]


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """`module` in eval mode for the block; after it (also on an error) each submodule is back in its own mode
    (`modes_kept`: a model in training mode may hold layers kept in eval mode, e.g. frozen BatchNorm layers)."""
    with modes_kept(module):
        module.eval()
        yield module


@contextlib.contextmanager
def batchnorm_statistics_kept(module: nn.Module, keep: bool = True):
    """BatchNorm layers of `module` that are in training mode still normalise with each batch's own statistics for
    the block, but leave their running statistics (and batch count) as they are: for batches that are not a sample of
    the data the model will serve, e.g. a batch of one class being forgotten, whose mean and variance would otherwise
    pull the statistics every class is normalised with at inference. Restored after (also on an error). With `keep`
    False the block runs as it is (a method's setting that lets such batches move the statistics)."""
    layers = [layer for layer in module.modules() if keep and isinstance(layer, nn.modules.batchnorm._BatchNorm)
              and layer.training and layer.track_running_stats]  # fmt: skip
    for layer in layers:
        layer.track_running_stats = False  # training mode: batch statistics, the running buffers are not passed
    try:
        yield module
    finally:
        for layer in layers:
            layer.track_running_stats = True


@contextlib.contextmanager
def capturing(module: nn.Module):
    """Record `module`'s input during the block: `with capturing(head) as captured: model(**batch)`, then
    `captured.value`."""
    captured = InputCapture()

    def hook(module, args):
        captured.value = args[0]

    handle = module.register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def pooled_rows(value: torch.Tensor) -> torch.Tensor:
    """One row per sample: a `(batch, ..., d)` head input averaged over its middle (token) dimensions."""
    return value.reshape(value.shape[0], -1, value.shape[-1]).mean(1) if value.dim() > 2 else value


@dataclass
class HeadFeatures:
    """Per-row head inputs (`features`, float32, `(rows, d)`), the model's `logits` and the `labels`."""

    features: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def collect_head_features(trainer, dataset, head: nn.Linear, description: str = "Features",
                          batches=None) -> HeadFeatures:  # fmt: skip
    """One forward pass of `trainer.model` (eval mode) over `dataset`, shared between processes without duplicates,
    recording the input of `head` for every row; the result holds every row of `dataset`, in order, on every
    process. `batches`: this process's batches of `dataset` already decoded (`trainer.shard_batches`, kept in a list
    to score many weights on the same rows), used instead of decoding them again."""
    model = trainer.model
    parts = {"features": [], "logits": [], "labels": []}
    with evaluating(model):
        for _, batch in trainer.shard_batches(dataset, description) if batches is None else batches:
            labels = batch["labels"]
            inputs = {name: value for name, value in batch.items() if name != "labels"}
            with capturing(head) as captured:
                logits = model(**inputs).logits
            parts["features"].append(pooled_rows(captured.value).float())
            parts["logits"].append(logits.float())
            parts["labels"].append(labels)
    empty = {
        "features": torch.zeros(0, head.in_features),
        "logits": torch.zeros(0, trainer.num_labels),
        "labels": torch.zeros(0, dtype=torch.long),
    }  # an empty share (fewer rows than processes) still joins the gather
    gathered = {
        name: trainer.gather_shards(torch.cat(values) if values else empty[name].to(trainer.args.device), len(dataset))
        for name, values in parts.items()
    }
    return HeadFeatures(**gathered)


def block_list_owners(model: nn.Module, list_name: str) -> list[nn.Module]:
    """The modules that hold the block list `list_name` (the model first): the ones whose own training flag decides
    whether blocks run at all (LayerDrop) and whether what reaches them is masked (SpecAugment) in Wav2Vec2 / HuBERT."""
    parts = list_name.split(".")
    return [model.get_submodule(".".join(parts[:depth])) for depth in range(len(parts))]


#: What a model that cannot be replayed raises in `BlockInputReplay.matches` (it then keeps the full pass); e.g.
#: an AttributeError from WavLM, whose later blocks read the position bias only its first block has the weights for.
REPLAY_FAILURES = (RuntimeError, KeyError, IndexError, TypeError, ValueError, AttributeError)


class BlockInputReplay:
    """The input of one block of a model's `nn.ModuleList` of blocks (an encoder layer, a CNN stage), recorded per
    row during one pass, then replayed: inside `replaying()`, a forward pass with recorded rows runs without the
    blocks before this one (they are dropped from the list for that pass) and feeds the block the recorded input of
    each row; its rows not recorded get theirs from the model run on them alone up to the block. A pass with no
    recorded row runs whole. `replayed_rows` and `computed_rows` count the rows of the passes in `replaying()` by
    whether the blocks before this one ran for them.

    A row is recognised by what the model receives: every tensor input but `labels`, read bit for bit
    (`row_keys`), so a row replays exactly where its inputs are the ones recorded, in whatever batch, position or
    order it comes: a method's checks on the rows it recorded, and its training steps on those rows (shuffled,
    paired with others). A row whose inputs differ (another padding, an augmentation) is computed, not replayed.

    The same computation while the dropped blocks and what precedes the list are unchanged (frozen, eval mode) and
    run as at inference: during a pass the modules that hold the list run with their own training flag off
    (`block_list_owners`: in training mode Wav2Vec2 and HuBERT skip blocks, LayerDrop, and mask what reaches them,
    SpecAugment; the blocks and every other module keep their own mode). A method that fine-tunes a model's tail runs
    its checks and its steps at the cost of the tail (`gppu`). `matches` replays one batch, and computes the block
    input of its first row as for a row not recorded, and compares what a later layer (the head) receives with what
    it received in the recorded pass; a model whose forward pass does not iterate its block list, or reads the dropped
    blocks' outputs elsewhere, fails it and keeps the full pass. Memory: the recorded inputs, on their device
    (`nbytes`); recognising a pass's rows costs a few integer operations per input element and one copy of two
    integers per row and input tensor to the host.
    "The same" is up to rounding: a row computed in another batch, or under autocast where the recorded pass was
    not, can differ in the last bits.

    ```python
    >>> replay = BlockInputReplay(model, "vit.layers.11")
    >>> with replay.recording():
    ...     for _, batch in batches:
    ...         model(**batch)
    >>> with replay.replaying():          # later, the same rows in any batches: layers 0-10 do not run
    ...     logits = model(**batch).logits
    >>> replay.replayed_rows, replay.computed_rows
    ```
    """

    #: Input elements hashed at once (bounds the integer copy of a batch's inputs).
    HASH_CHUNK = 1 << 16

    def __init__(self, model: nn.Module, block_name: str):
        list_name, _, index = block_name.rpartition(".")
        if not isinstance(model.get_submodule(list_name), nn.ModuleList) or not index.isdigit():
            raise ValueError(f"'{block_name}' is not a block of an nn.ModuleList of {type(model).__name__}.")
        self.model, self.list_name, self.index = model, list_name, int(index)
        self.block = model.get_submodule(block_name)
        self.inputs: list[torch.Tensor] = []  # the block's recorded input, one tensor per recorded pass
        self.rows: dict[tuple, tuple[int, int]] = {}  # a row's key -> (recorded pass, row in it)
        self.replayed_rows = self.computed_rows = 0  # rows of the passes in `replaying()`: did the blocks before run?
        self._keys: list[tuple] | None = None  # the rows of the pass under way
        self._replayed: torch.Tensor | None = None  # what the block receives in the pass under way, when replayed
        self._replaying = self._computing = False
        self._pass_flags: list[bool] | None = None  # the owners' own flags before the pass under way
        self._weights: dict[tuple, torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        return sum(value.numel() * value.element_size() for value in self.inputs)

    def clear(self) -> None:
        """Forget every recorded row (and free their inputs)."""
        self.inputs, self.rows = [], {}

    def _hash_weights(self, length: int, device: torch.device) -> torch.Tensor:
        """Two rows of random integer weights for inputs of `length` 16-bit words, small enough that the weighted sum
        of a row is exact in int64 (|word| <= 2^15): two inputs that differ collide with probability at most
        2^-(2 bits), bits = 47 - log2(length) (28 for a 224x224 RGB image in float32)."""
        key = (length, str(device))
        if key not in self._weights:
            bits = max(8, 47 - math.ceil(math.log2(max(length, 2))))
            generator = torch.Generator().manual_seed(0x5EED)
            self._weights[key] = torch.randint(1, 2**bits, (2, length), generator=generator).to(device)
        return self._weights[key]

    def row_keys(self, args: tuple, kwargs: dict) -> list[tuple]:
        """One key per row of a forward pass's inputs: the names, shapes and dtypes of its tensors (all but `labels`,
        each with the batch first) and two exact integer hashes of each row's raw bytes."""
        tensors = [(str(i), value) for i, value in enumerate(args) if isinstance(value, torch.Tensor)]
        tensors += [(name, value) for name, value in sorted(kwargs.items())
                    if isinstance(value, torch.Tensor) and name != "labels"]  # fmt: skip
        if not tensors or any(value.dim() == 0 for _, value in tensors):
            return []
        size = len(tensors[0][1])
        if not size or any(len(value) != size for _, value in tensors):
            return []
        signature = tuple((name, tuple(value.shape[1:]), str(value.dtype)) for name, value in tensors)
        hashes = []
        for _, value in tensors:
            words = value.detach().reshape(size, -1)
            if words.element_size() == 1:
                words = words.to(torch.int16)
            words = words.contiguous().view(torch.int16)
            weights = self._hash_weights(words.shape[1], words.device)
            sums = torch.zeros(size, 2, dtype=torch.int64, device=words.device)
            for start in range(0, words.shape[1], self.HASH_CHUNK):
                chunk = words[:, start : start + self.HASH_CHUNK].to(torch.int64)
                for column in range(2):
                    sums[:, column] += (chunk * weights[column, start : start + self.HASH_CHUNK]).sum(1)
            hashes.append(sums)
        return [(signature, *row) for row in torch.cat(hashes, 1).tolist()]

    @staticmethod
    def _hidden_slot(args: tuple, kwargs: dict) -> int | str:
        """Where the block receives its hidden state: the first tensor argument (position, or keyword name)."""
        if args and isinstance(args[0], torch.Tensor):
            return 0
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                return name
        raise RuntimeError("The block received no tensor to record.")

    def _recognise(self, module, args, kwargs):
        self._keys = self.row_keys(args, kwargs)

    @contextlib.contextmanager
    def recording(self):
        """Record the block's input for every row of the forward passes run in the block: what the block receives,
        after any hook registered on it before (another replay's, whose rows then record as replayed). A pass run
        inside a pass (another replay computing the input of its rows not recorded) is not recorded."""
        depth = [0]

        def enter(module, args, kwargs):
            depth[0] += 1
            if depth[0] == 1:
                self._recognise(module, args, kwargs)

        def leave(module, args, output):
            depth[0] -= 1

        def record(module, args, kwargs):
            slot = self._hidden_slot(args, kwargs)
            value = args[slot] if isinstance(slot, int) else kwargs[slot]
            if depth[0] != 1 or not self._keys or len(self._keys) != len(value):
                return  # rows not recognised (or not along the first dimension): they will run whole
            self.inputs.append(value.detach().clone())
            for row, key in enumerate(self._keys):
                self.rows.setdefault(key, (len(self.inputs) - 1, row))

        # First of the model's hooks: a pass that another replay starts inside this one counts as nested.
        handles = [self.model.register_forward_pre_hook(enter, with_kwargs=True, prepend=True),
                   self.model.register_forward_hook(leave, always_call=True),
                   self.block.register_forward_pre_hook(record, with_kwargs=True)]  # fmt: skip
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._keys = None

    @contextlib.contextmanager
    def replaying(self):
        """Run each forward pass with recorded rows from this block on (the blocks before it dropped for that pass),
        fed their recorded input and, for its other rows, the input computed for them alone; a pass without a
        recorded row runs whole. Re-entrant."""
        if self._replaying:
            yield self
            return
        parent_name, _, attribute = self.list_name.rpartition(".")
        parent = self.model.get_submodule(parent_name)
        blocks = getattr(parent, attribute)
        tail = nn.ModuleList(list(blocks)[self.index :])
        owners = block_list_owners(self.model, self.list_name)

        def choose(module, args, kwargs):
            if self._computing:
                return
            setattr(parent, attribute, blocks)  # the rows computed below need every block
            if self._pass_flags is None:
                # The modules that hold the list run as at inference for this pass (their own flag only): in
                # training mode they may skip blocks (Wav2Vec2's and HuBERT's LayerDrop; a skipped block would skip
                # the recorded input too) or mask what reaches the blocks (SpecAugment), which recorded rows never saw.
                self._pass_flags = [owner.training for owner in owners]
            for owner in owners:
                owner.training = False
            self._recognise(module, args, kwargs)
            found = [self.rows.get(key) for key in self._keys]
            missing = [row for row, place in enumerate(found) if place is None]
            self._replayed = None
            if found and len(missing) < len(found):
                if not missing and self._recorded_pass(found):
                    self._replayed = self.inputs[found[0][0]]  # a recorded pass, as it was
                else:
                    computed = iter(self._computed_inputs(args, kwargs, missing) if missing else ())
                    self._replayed = torch.stack([next(computed) if place is None else self.inputs[place[0]][place[1]]
                                                  for place in found])  # fmt: skip
            setattr(parent, attribute, tail if self._replayed is not None else blocks)
            self.replayed_rows += len(found) - len(missing)  # a pass run whole has every row missing
            self.computed_rows += len(missing)

        def replay(module, args, kwargs):
            if self._replayed is None or self._computing:
                return None
            slot, recorded = self._hidden_slot(args, kwargs), self._replayed
            live = args[slot] if isinstance(slot, int) else kwargs[slot]
            # What reaches the block now is what precedes the list (a CNN's stem output, of other channels and size
            # than the stage's input); only the rows must agree.
            if live.shape[:1] != recorded.shape[:1]:
                raise RuntimeError(f"Recorded block input {tuple(recorded.shape)} for a batch of {len(live)} rows.")
            if isinstance(slot, int):
                return (recorded, *args[1:]), kwargs
            return args, {**kwargs, slot: recorded}

        def restore_flags():
            if self._pass_flags is not None:
                for owner, flag in zip(owners, self._pass_flags, strict=True):
                    owner.training = flag
                self._pass_flags = None

        def whole_again(module, args, output):
            if self._computing:  # the rows computed inside a pass: that pass goes on
                return
            setattr(parent, attribute, blocks)  # between passes the model is whole (parameters, state_dict)
            restore_flags()
            self._replayed = None

        handles = [self.model.register_forward_pre_hook(choose, with_kwargs=True),
                   self.model.register_forward_hook(whole_again, always_call=True),  # also after a pass that raised
                   self.block.register_forward_pre_hook(replay, with_kwargs=True)]  # fmt: skip
        self._replaying = True
        try:
            yield self
        finally:
            self._replaying = False
            setattr(parent, attribute, blocks)
            restore_flags()
            for handle in handles:
                handle.remove()
            self._keys = self._replayed = None

    def _recorded_pass(self, found: list[tuple[int, int]]) -> bool:
        """Whether the rows `found` are one recorded pass, whole and in order."""
        first = found[0][0]
        return len(found) == len(self.inputs[first]) and all(place == (first, row) for row, place in enumerate(found))

    @torch.no_grad()
    def _computed_inputs(self, args: tuple, kwargs: dict, rows: list[int]) -> torch.Tensor:
        """The block's input for `rows` of a forward pass's inputs (rows not recorded, in a pass whose others are):
        the model runs on those rows alone (without `labels`) and stops at the block, so only what precedes it runs
        for them."""
        size = len(self._keys)
        index = torch.tensor(rows)

        def some(value):
            if isinstance(value, torch.Tensor) and value.dim() and len(value) == size:
                return value[index.to(value.device)]
            return value

        class Reached(Exception):
            pass

        def stop(module, block_args, block_kwargs):
            slot = self._hidden_slot(block_args, block_kwargs)
            captured.append((block_args[slot] if isinstance(slot, int) else block_kwargs[slot]).detach())
            raise Reached

        captured = []
        handle = self.block.register_forward_pre_hook(stop, with_kwargs=True)
        self._computing = True
        try:
            self.model(*(some(value) for value in args),
                       **{name: some(value) for name, value in kwargs.items() if name != "labels"})  # fmt: skip
        except Reached:
            pass
        finally:
            self._computing = False
            handle.remove()
        if not captured:
            raise RuntimeError(f"The forward pass never reached '{self.list_name}.{self.index}'.")
        return captured[0]

    @torch.no_grad()
    def matches(self, batches, module: nn.Module, recorded: torch.Tensor, rtol: float = 1e-4) -> bool:
        """Whether replaying the first of `batches` (`(sample_ids, batch)` of recorded rows) feeds `module` (a layer
        after the block, e.g. the head) what it received in the recorded pass: `recorded`, its inputs then (one row
        per sample, pooled over tokens, `(rows, d)`). Costs one replayed batch; True when there is no batch. A batch
        whose rows are not recognised, or whose replay raises, does not match."""
        for sample_ids, batch in batches:
            inputs = {name: value for name, value in batch.items() if name != "labels"}
            before = self.replayed_rows
            try:
                with evaluating(self.model), self.replaying(), capturing(module) as captured:
                    self.model(**inputs)
            except REPLAY_FAILURES as error:
                logger.info(f"Replaying '{self.list_name}' failed ({type(error).__name__}: {error}).")
                return False
            if self.replayed_rows == before:
                logger.info(f"The rows checked were not recognised as recorded ones: '{self.list_name}' is not replayed.")
                return False
            replayed, expected = pooled_rows(captured.value), recorded[sample_ids.to(recorded.device)]
            if not close_to(replayed, expected, rtol):
                return False
            # A row not recorded gets its input from the model stopped at the block: so must a recorded row.
            self._keys = self.row_keys((), inputs)
            first = next(position for position, key in enumerate(self._keys) if key in self.rows)  # one replayed
            index, row = self.rows[self._keys[first]]
            try:
                with evaluating(self.model):
                    computed = self._computed_inputs((), inputs, [first])
            except REPLAY_FAILURES as error:
                logger.info(f"Computing the input of '{self.list_name}.{self.index}' failed ({error}).")
                return False
            return close_to(computed[0], self.inputs[index][row], rtol)
        return True


def close_to(got: torch.Tensor, expected: torch.Tensor, rtol: float) -> bool:
    """Same shape and equal within `rtol` (absolute: `rtol` of the largest expected value)."""
    got, expected = got.float(), expected.float().to(got.device)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return got.shape == expected.shape and bool(torch.allclose(got, expected, rtol=rtol, atol=rtol * max(scale, 1e-3)))
