"""`svd_projection`: gradient-free class forgetting by projecting every layer's weights (Kodge, Saha & Roy, "Deep
Unlearning: Fast and Efficient Gradient-free Class Forgetting", TMLR 2024, arXiv 2312.00761).

1. One forward pass (eval mode) over `num_samples` retain rows balanced over the retained classes and up to
   `num_samples` forget rows records, for every Linear / Conv layer (patch embedding and head included), the Gram
   matrix of the layer's inputs (`hf_unlearn.activations`: tokens flattened, about `max_token_rows` of them per pass
   drawn evenly over the samples as the official code keeps 10,000 random rows, conv inputs as im2col patches of one
   random crop per sample: 3 whole kernel windows of the padded input per side by default, the official code's
   3k x 3k crop of the unpadded input with `conv_crop="official"`; `token_rows` makes each sample's mean token its
   row instead), all computed on the ORIGINAL model.
2. Eigendecomposition G = U diag(s^2) U^T per layer and split (float32 on the symmetrised matrix by default,
   `eigen_dtype`; an `eigh` that fails or returns NaN is retried with a jitter, then in float64, then replaced by an
   SVD; a layer with at most `keep_rows` x d input rows n over all processes (d its input size; default d / 2) keeps
   the rows and is decomposed from them, a QR and an n x n eigenproblem, the same eigenspace for O(d n^2)); importance
   e_i = s_i^2 / sum_j s_j^2 scaled to lambda_i = alpha e_i / ((alpha - 1) e_i + 1), M = U diag(lambda) U^T, with
   `alpha_r` for the retain space and `alpha_f` for the forget space.
3. The part of the forget space not shared with the retain space is removed from each layer's input,
   x <- x - (I - M_r) M_f x, folded into the weights: W <- W (I - (I - M_r) M_f) (conv weights flattened to
   out x in*k*k, one block per group). Biases and norm layers are unchanged.
4. `alpha_search` (default on): the eigendecompositions are computed once, then each (alpha_r, alpha_f) of the grid
   costs a few matrix products per layer and one evaluation on rows held out from the statistics
   (`search_fraction` of the forget and retain rows, never the eval set). `alpha_score="forget_first"` (default)
   keeps the point with the best held-out retain accuracy among those whose projection alone is at the forget
   target (with `score_after_refit`, the retain accuracy after a trial head refit of step 5, cross-fitted on the
   held-out rows: refitted on half, scored on the other half, both ways); `"forget_first_kl"` ranks the same points
   by how little their retain predictions moved from the original's (mean KL). `"product"` keeps the best
   retain x (1 - forget), before any refit. The grid is reported in the metrics (`alpha_grid`). With
   "forget_first" only the points at the forget target (none: those with the lowest forget accuracy) are scored on
   the held-out retain rows, since no other point can be kept, and a pass that shows its point cannot be kept stops
   early: a forget pass once it is past the target and has more correct rows than the lowest point so far, a
   retain pass once it has as many wrong rows as the best point so far (reported as `"stopped"`; the point kept is
   the same; `full_grid=True` scores every point in full).
   `refine_steps` (off by default) bisects alpha_f where an alpha_r's row crosses the forget target.
5. Not in the paper (`head_refit_steps`, default 100; 0 is the paper's method): the classification head is refitted
   on the projected model's features of the retain statistics rows (retain cross-entropy; a linear model, no
   gradient through the network). The projection also removes input directions the retained classes share; on the
   tune tasks of `benchmarks/transfer.py` that cost 4-37 points of retain accuracy on ViT, AST and Wav2Vec2 models
   whatever layers were projected, and the refit recovered most of it
   (`benchmarks/results/ablation_svd_projection*.md`).

The paper's settings, `UnlearnConfig(method="svd_projection", preset="paper", preset_dataset=...)` (`PAPER_PRESETS`):

| `preset_dataset` | S (`num_samples`) | `alpha_r` | `alpha_f` |
|---|---|---|---|
| "cifar10" (the default preset) | 900 | 100 | 3 |
| "cifar100" | 990 | 1000 | 30 |
| "imagenet" | 999 | 100 | 10 |

each with `alpha_search=False`, `head_refit_steps=0`, `conv_crop="official"` and `max_token_rows=10000` (the
official code's random rows per token layer, also the library's default). The library's defaults differ on purpose:
the alphas are searched on held-out training rows and the head is refitted (measured in `benchmarks/results/`).

Several forget classes are removed at once: their rows together make the forget space. The method is class-level
(it removes input directions, not samples); for `forget_indices` use a gradient method.

Example:

```python
>>> args = UnlearnConfig(output_dir="out", method="svd_projection", method_kwargs={"num_samples": 900})
>>> result = UnlearningTrainer(model, args, train_dataset=train, eval_dataset=test, forget_classes=[3]).unlearn()
>>> result.metrics["alpha_r"], result.metrics["alpha_f"]
```
"""

from __future__ import annotations

import contextlib
import logging
import math
from copy import deepcopy
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from ..activations import CONV_CROPS, collect_head_features, collect_input_grams, find_target_modules
from ..contract import PaperPreset, UnlearningMethod
from ..data import subsample
from ..lora import has_lora
from ..metrics import accuracy
from ..models import classification_head, refit_head
from ..passes import shard_counts, shard_divergence, shard_logits
from ..registry import register_method
from ..validation import check_pattern

logger = get_logger(__name__)
_plain_logger = logging.getLogger(__name__)  # for helpers that also run outside an accelerate run


ALPHA_SCORES = ("forget_first", "forget_first_kl", "product")
#: `SVDProjectionConfig.token_rows` -> the `GramStatistics` token rows of each split.
SPLIT_TOKEN_ROWS = {
    "tokens": {"retain": "tokens", "forget": "tokens"},
    "mean": {"retain": "mean", "forget": "mean"},
    "forget_mean": {"retain": "tokens", "forget": "mean"},
}


@dataclass
class SVDProjectionConfig:
    num_samples: int = field(
        default=900,
        metadata={
            "help": "S: retain rows (balanced over the retained classes) and at most this many forget rows for the "
            "statistics. The paper uses 900 on CIFAR-10, 999 on ImageNet."
        },
    )
    alpha_r: float = field(
        default=100.0,
        metadata={
            "help": "Retain-space importance scaling when `alpha_search` is off (paper: 100 on CIFAR-10 and "
            "ImageNet, 1000 on CIFAR-100)."
        },
    )
    alpha_f: float = field(
        default=3.0,
        metadata={
            "help": "Forget-space importance scaling when `alpha_search` is off (paper: 3 on CIFAR-10, 30 on "
            "CIFAR-100, 10 on ImageNet)."
        },
    )
    alpha_search: bool = field(
        default=True,
        metadata={
            "help": "Choose (alpha_r, alpha_f) from the grids on held-out training rows instead of the fixed pair."
        },
    )
    alpha_r_grid: list[float] = field(default_factory=lambda: [10.0, 30.0, 100.0, 300.0, 1000.0])
    alpha_f_grid: list[float] = field(default_factory=lambda: [1.0, 3.0, 10.0, 30.0, 100.0])
    search_fraction: float = field(
        default=0.2,
        metadata={
            "help": "Share of the forget and retain rows held out from the statistics to score the grid (the retain "
            "share is capped at num_samples)."
        },
    )
    head_refit_steps: int = field(
        default=100,
        metadata={
            "help": "After the projection, refit the classification head on the projected model's features of the "
            "retain statistics rows (retain cross-entropy, full-batch AdamW; no gradient through the network): the "
            "projection also removes directions the retained classes shared, and the head is where that costs "
            "accuracy. Not in the paper (hf-unlearn's addition, measured in benchmarks/results/ablation_svd_projection.md); 0 "
            "keeps the paper's method."
        },
    )
    head_learning_rate: float = field(default=1e-2, metadata={"help": "Learning rate of that head refit."})
    refit_keeps_forget_rows: bool = field(
        default=False,
        metadata={
            "help": "The head refit leaves the forget classes' rows of the head (weight and bias) as the projection "
            "left them: they have no rows in the retain cross-entropy, which only pushes them around. Not the "
            "default: on the tune tasks it brought the forget test accuracy from 14 to 0 % on one request and from 0 "
            "to 6 % on another, the same on the other 6 "
            "(benchmarks/results/ablation_svd_projection_refit_rows.md)."
        },
    )
    alpha_score: str = field(
        default="forget_first",
        metadata={
            "help": "How the alpha grid is scored on the held-out rows: 'forget_first' keeps, among the points whose "
            "forget accuracy is at `UnlearnConfig.forget_accuracy_target` (0 when unset), the one with the best "
            "retain accuracy (no such point: the lowest forget accuracy, then the best retain); 'forget_first_kl' keeps "
            "among the same points the one whose predictions on the held-out retain rows moved least from the "
            "original's (mean KL divergence), a score that does not saturate where the accuracy does (on the tune "
            "tasks it kept the same point as 'forget_first' on all 8 requests: "
            "benchmarks/results/ablation_svd_projection_kl_score.md); 'product' maximises retain x (1 - forget), "
            "which trades retain accuracy for forgetting."
        },
    )
    score_after_refit: bool = field(
        default=False,
        metadata={
            "help": "With `head_refit_steps`, 'forget_first' compares the grid points' held-out retain accuracy after "
            "a trial head refit (cross-fitted on the held-out rows), the state the method returns, instead of before "
            "it. Not the default: on the tune tasks it kept the same retain accuracy, changed the point on 2 of 8 "
            "requests (one forgot more, one moved the MIA away from retrain) and cost 20-70 % more time "
            "(benchmarks/results/ablation_svd_projection_refit_score.md)."
        },
    )
    full_grid: bool = field(
        default=False,
        metadata={
            "help": "Score every grid point in full on the held-out forget and retain rows, so `alpha_grid` reports "
            "each point's accuracies. By default 'forget_first' scores on the retain rows only the points at the "
            "forget target (or, when none is, those with the lowest forget accuracy), and stops a point's pass as "
            "soon as it cannot be kept: its forget rows once past the target and past the fewest correct rows of "
            "the points before it, its retain rows once it has as many wrong as the best point before it "
            "(`\"stopped\": \"forget\"` / `\"retain\"`, accuracy None; `retain_scored_points` counts the "
            "retain passes, stopped or not); the point kept is the same. "
            "`score_after_refit`, `refine_steps` and the other `alpha_score`s also score every pass in full."
        },
    )
    refine_steps: int = field(
        default=0,
        metadata={
            "help": "With 'forget_first' (or 'forget_first_kl'), bisect alpha_f (on a log scale) this many times at "
            "each alpha_r whose grid "
            "crosses the forget target between two alpha_f values, and score the weakest point found at the target "
            "like a grid point (reported with `refined: true`). 0 keeps the grid alone. Not the default: on the tune "
            "tasks 3 steps kept 1.1 and 0.6 points more retain accuracy on 2 of 8 requests, but on one of them the "
            "entropy MIA moved from 21.5 to 55.5 % (retrain: 0), a weaker projection "
            "(benchmarks/results/ablation_svd_projection_refine.md)."
        },
    )
    target_modules: str | list[str] | None = field(
        default=None,
        metadata={"help": "Layers to project: a regex matching whole names, a list of name suffixes, or None (all)."},
    )
    exclude_modules: str | list[str] | None = field(default=None, metadata={"help": "Layers to leave untouched."})
    conv_window: int | None = field(
        default=3, metadata={"help": "Conv crop side in kernel sizes (paper: 3); None keeps every patch."}
    )
    eigen_dtype: str = field(
        default="float32",
        metadata={
            "help": "Precision of the eigendecompositions of the symmetrised Gram matrices: 'float32' (default) or "
            "'float64'. Measured (benchmarks/results/eigen_precision.md): float32 takes half the time on a CPU "
            "(ResNet-50: 31 s against 63 s) and its projected weights differ from float64's by at most 0.2 % of what "
            "the projection changed (2.2e-3 relative, ResNet-50; 1e-5 on the digits models, same accuracies)."
        },
    )
    keep_rows: float = field(
        default=0.5,
        metadata={
            "help": "A layer whose statistics pass gives at most this fraction of d input rows (d its input size) keeps "
            "the rows instead of their d x d Gram matrix and is decomposed from them: a QR of the n x d rows and an "
            "n x n eigenproblem give the same eigenspace (exactly: the Gram matrix's other d - n eigenvalues are 0) "
            "for O(d n^2) instead of O(d^3), e.g. few forget samples through a ViT-base MLP's 3,072 inputs, or conv "
            "crops of a few samples (benchmarks/results/scale_svd_rows.md). 0: always the Gram matrix. A distributed "
            "run gathers the rows of such a layer from every process."
        },
    )
    token_rows: str = field(
        default="tokens",
        metadata={
            "help": "What one row of a transformer Linear layer's statistics is: 'tokens' (default, every token of "
            "every sample, both spaces), 'mean' (each sample's mean token, both spaces) or 'forget_mean' (the "
            "retain space from every token, the forget space from each forget sample's mean token, so the forget "
            "space is what the class's samples share rather than every token they hold). Conv layers are unchanged. Not "
            "the default: on the tune tasks' transformers both kept less retain accuracy on most requests (mean "
            "tokens: 5 of 6, up to 6.9 points) and brought the mean gap to retrain closer on 2 of 6 "
            "(benchmarks/results/ablation_svd_projection_tokens.md)."
        },
    )
    max_token_rows: int | None = field(
        default=10_000,
        metadata={
            "help": "About how many rows a transformer Linear layer's statistics take from each pass (retain, forget) "
            "with token_rows='tokens': each sample gives ceil(max_token_rows / samples) of its tokens, drawn at "
            "random, instead of all of them (Kodge et al.'s official code keeps 10,000 random rows per layer). The "
            "Gram matrices cost about rows x d^2 per layer, so at the paper's 900 samples of a ViT-base (197 tokens) "
            "10,000 rows are an 18th of the work. On the tune tasks it changed no retain or forget accuracy by more "
            "than 0.2 points (benchmarks/results/ablation_svd_projection_token_cap.md). None: every token. Conv layers "
            "keep their crop (`conv_window`)."
        },
    )
    conv_crop: str = field(
        default="windows",
        metadata={
            "help": "How conv inputs are cropped: 'windows' (default), `conv_window` whole kernel windows of the "
            "padded input (49 patches for a 3x3 kernel, each one the layer computes); 'official', the official "
            "code's crop of the unpadded input, padded again (81 patches, those on the crop's border partly zeros)."
        },
    )

    def __post_init__(self):
        for name in ('target_modules', 'exclude_modules'):
            if isinstance(getattr(self, name), str):
                check_pattern(getattr(self, name), name)
        if self.num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1, got {self.num_samples!r}.")
        for name in ("alpha_r", "alpha_f"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0 (1 keeps the raw importances), got {getattr(self, name)!r}.")
        for name in ("alpha_r_grid", "alpha_f_grid"):
            grid = getattr(self, name)
            if self.alpha_search and (not grid or any(value <= 0 for value in grid)):
                raise ValueError(f"`{name}` must be a non-empty list of values > 0 with alpha_search, got {grid!r}.")
        if self.alpha_search and not 0.0 < self.search_fraction < 1.0:
            raise ValueError(f"`search_fraction` must be in (0, 1), got {self.search_fraction!r}.")
        if self.head_refit_steps < 0 or self.head_learning_rate <= 0:
            raise ValueError(
                f"`head_refit_steps` must be >= 0 and `head_learning_rate` > 0, got {self.head_refit_steps!r} and "
                f"{self.head_learning_rate!r}."
            )
        if self.refine_steps < 0:
            raise ValueError(f"`refine_steps` must be >= 0, got {self.refine_steps!r}.")
        if self.alpha_score not in ALPHA_SCORES:
            raise ValueError(f"`alpha_score` must be one of {ALPHA_SCORES}, got {self.alpha_score!r}.")
        if self.conv_window is not None and self.conv_window < 1:
            raise ValueError(f"`conv_window` must be >= 1 or None, got {self.conv_window!r}.")
        if not 0.0 <= self.keep_rows < 1.0:
            raise ValueError(f"`keep_rows` is a fraction of a layer's input size in [0, 1), got {self.keep_rows!r}.")
        if self.eigen_dtype not in ("float32", "float64"):
            raise ValueError(f"`eigen_dtype` must be 'float32' or 'float64', got {self.eigen_dtype!r}.")
        if self.conv_crop not in CONV_CROPS:
            raise ValueError(f"`conv_crop` must be one of {CONV_CROPS}, got {self.conv_crop!r}.")
        if self.max_token_rows is not None and self.max_token_rows < 1:
            raise ValueError(f"`max_token_rows` must be >= 1 or None, got {self.max_token_rows!r}.")
        if self.token_rows not in SPLIT_TOKEN_ROWS:
            raise ValueError(f"`token_rows` must be one of {tuple(SPLIT_TOKEN_ROWS)}, got {self.token_rows!r}.")


def symmetric_eigen(gram: torch.Tensor, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of symmetric PSD matrices `(..., d, d)`, computed in `dtype`
    (float64 by default) on the symmetrised matrix, robustly.

    LAPACK's `eigh` can fail on an ill-conditioned Gram matrix: raise (no convergence, e.g. a 3x3 convolution at 1x1
    spatial size whose 8 padded kernel positions leave most rows exactly zero, repeated zero eigenvalues), or, in
    float32, return NaN without raising (a 288 x 288 conv Gram matrix of rank 103 on the textures ResNet of
    `benchmarks/transfer.py`, at seed 1). Either way: the same with a tiny diagonal jitter (1e-12 of the mean
    eigenvalue in float64, 1e-6 in float32: far below anything the projection resolves), then in float64, then an SVD
    in float64, which equals the eigendecomposition for a symmetric PSD matrix. Such a matrix is not an error; the
    result is returned in `dtype`."""
    if not bool(torch.isfinite(gram).all()):
        raise RuntimeError(f"A {gram.shape[-1]} x {gram.shape[-1]} Gram matrix holds NaN or infinite values: the "
                           "layer's inputs overflow or hold NaN (check the data and the model's dtype).")
    gram = gram.to(dtype)
    gram = (gram + gram.transpose(-1, -2)) / 2
    try:
        return _finite_eigh(gram)
    except torch.linalg.LinAlgError as error:
        _plain_logger.info(f"eigh failed on an ill-conditioned Gram matrix ({error}): retrying with a small jitter.")
    size = gram.shape[-1]
    relative = 1e-12 if dtype == torch.float64 else 1e-6
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(torch.finfo(dtype).tiny)
    jitter = relative * scale[..., None, None] * torch.eye(size, dtype=gram.dtype, device=gram.device)
    try:
        values, vectors = _finite_eigh(gram + jitter)
        return values - relative * scale[..., None], vectors
    except torch.linalg.LinAlgError:
        _plain_logger.info("eigh failed again with the jitter.")
    if dtype != torch.float64:
        try:
            values, vectors = _finite_eigh(gram.double())
            return values.to(dtype), vectors.to(dtype)
        except torch.linalg.LinAlgError:
            _plain_logger.info("eigh failed in float64 too.")
    _plain_logger.info("Using an SVD of the Gram matrix (float64) instead of eigh.")
    try:
        left, singular, _ = torch.linalg.svd(gram.double())
        if not (torch.isfinite(singular).all() and torch.isfinite(left).all()):
            raise torch.linalg.LinAlgError("svd returned non-finite values")
    except torch.linalg.LinAlgError as error:
        raise RuntimeError(f"No eigendecomposition of a {size} x {size} Gram matrix could be computed: eigh (with a "
                           f"jitter, in float64) and an SVD all failed ({error}).") from error
    return singular.flip(-1).to(dtype), left.flip(-1).to(dtype)


def _finite_eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.linalg.eigh`, with non-finite results (float32 LAPACK can return NaN instead of raising) raised as the
    `LinAlgError` a failed convergence raises."""
    values, vectors = torch.linalg.eigh(matrix)
    if not (torch.isfinite(values).all() and torch.isfinite(vectors).all()):
        raise torch.linalg.LinAlgError("eigh returned non-finite values")
    return values, vectors


def row_eigen(rows: torch.Tensor, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The nonzero eigenpairs of G = X^T X from the input rows X `(..., n, d)` themselves (n < d), in `dtype`, without
    the d x d matrix: the reduced QR X^T = Q R (Q: d x n, orthonormal columns) gives G = Q (R R^T) Q^T, so the n x n
    eigendecomposition R R^T = W diag(s^2) W^T (`symmetric_eigen`, with its fallbacks) gives G's eigenvalues s^2 and
    eigenvectors Q W. G's d - n other eigenvalues are 0, and a direction of importance 0 takes no part in the
    projection (lambda(0) = 0), so they are left out. O(d n^2) instead of `eigh`'s O(d^3)."""
    if not bool(torch.isfinite(rows).all()):
        raise RuntimeError(f"The {rows.shape[-2]} input rows of size {rows.shape[-1]} hold NaN or infinite values: the "
                           "layer's inputs overflow or hold NaN (check the data and the model's dtype).")
    orthonormal, triangular = torch.linalg.qr(rows.transpose(-1, -2).to(dtype))
    values, vectors = symmetric_eigen(triangular @ triangular.transpose(-1, -2), dtype)
    return values, orthonormal @ vectors


def eigen_space(statistic: torch.Tensor, dtype: torch.dtype = torch.float64,
                rows: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """`(importance, vectors)` of a `(groups, d, d)` Gram matrix (or, with `rows`, of the `(groups, n, d)` input rows
    it sums, n < d: `row_eigen`): e_i = s_i^2 / sum_j s_j^2 and the eigenvectors (columns), both float32, from an
    eigendecomposition in `dtype` (`symmetric_eigen`)."""
    values, vectors = row_eigen(statistic, dtype) if rows else symmetric_eigen(statistic, dtype)
    values = values.clamp_min(0.0)
    importance = values / values.sum(-1, keepdim=True).clamp_min(torch.finfo(values.dtype).tiny)
    return importance.float(), vectors.float()


def scaled_importance(importance: torch.Tensor, alpha: float) -> torch.Tensor:
    """lambda_i = alpha e_i / ((alpha - 1) e_i + 1): 1 keeps e_i, larger alpha lifts small directions towards 1."""
    return alpha * importance / ((alpha - 1.0) * importance + 1.0)


def layer_space(statistics, name: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """`eigen_space` of layer `name`'s statistics (`GramStatistics`): from its rows where it kept them, else from its
    Gram matrix."""
    rows = statistics.kept_rows(name)
    return eigen_space(statistics.gram(name) if rows is None else rows, dtype, rows=rows is not None)


class LayerProjection:
    """One layer's original weight and its retain and forget eigenspaces (`(importance, vectors)` pairs from
    `eigen_space`, vectors `(groups, d, k)`, k <= d); gives the projected weight for any (alpha_r, alpha_f), reusing
    the products that do not depend on alpha: W U_r, W U_f and U_r^T U_f, so that one alpha_r costs an
    out x k_r x k_f product (`kept_on_forget`) instead of out x d x d (W M_r) and then out x d x k_f."""

    def __init__(self, weight, retain: tuple[torch.Tensor, torch.Tensor], forget: tuple[torch.Tensor, torch.Tensor]):
        for split, space in (("retain", retain), ("forget", forget)):
            if not (isinstance(space, tuple) and len(space) == 2 and space[1].dim() == 3
                    and weight.numel() % (space[1].shape[0] * space[1].shape[1]) == 0
                    and space[0].shape == space[1].shape[::2]):  # fmt: skip
                raise TypeError(f"LayerProjection's `{split}` must be an `(importance, vectors)` pair from "
                                f"`eigen_space` matching the weight {tuple(weight.shape)}, got {type(space).__name__}.")
        self.weight = weight.detach().clone()
        self.retain_importance, retain_vectors = retain
        self.forget_importance, self.forget_vectors = forget
        groups, size = retain_vectors.shape[0], retain_vectors.shape[-2]
        self.blocks = self.weight.float().reshape(groups, -1, size)
        # reused for every alpha_r: W U_r, W U_f and U_r^T U_f (U_r itself is not needed again, and not kept)
        self.blocks_on_retain = self.blocks @ retain_vectors
        self.blocks_on_forget = self.blocks @ self.forget_vectors
        self.retain_on_forget = retain_vectors.transpose(-1, -2) @ self.forget_vectors

    def kept_on_forget(self, alpha_r: float) -> torch.Tensor:
        """W (I - M_r) U_f = W U_f - (W U_r) diag(lambda_r) (U_r^T U_f) for one alpha_r."""
        scaled = self.blocks_on_retain * scaled_importance(self.retain_importance, alpha_r).unsqueeze(-2)
        return self.blocks_on_forget - scaled @ self.retain_on_forget

    def weight_for(self, kept_on_forget: torch.Tensor, alpha_f: float) -> torch.Tensor:
        """W - W (I - M_r) M_f = W - (W (I - M_r) U_f) diag(lambda_f) U_f^T."""
        scaled = kept_on_forget * scaled_importance(self.forget_importance, alpha_f).unsqueeze(-2)
        removed = scaled @ self.forget_vectors.transpose(-1, -2)
        return (self.blocks - removed).reshape(self.weight.shape).to(self.weight.dtype)


#: The paper's settings (Kodge, Saha & Roy, TMLR 2024, section 5 and the official scripts `scripts/our_*.sh`): the
#: sample count S and fixed alphas per dataset, no grid search, no head refit (ours), the official conv crop and the
#: official code's 10,000 random input rows per token layer.
_PAPER = {"alpha_search": False, "head_refit_steps": 0, "conv_crop": "official", "conv_window": 3,
          "max_token_rows": 10_000}
PAPER_PRESETS = (
    PaperPreset("cifar10", "classifier", method={**_PAPER, "num_samples": 900, "alpha_r": 100.0, "alpha_f": 3.0},
                source="Kodge et al. 2024, CIFAR-10: S = 900, alpha_r = 100, alpha_f = 3"),
    PaperPreset("cifar100", "classifier", method={**_PAPER, "num_samples": 990, "alpha_r": 1000.0, "alpha_f": 30.0},
                source="Kodge et al. 2024, CIFAR-100: S = 990, alpha_r = 1000, alpha_f = 30"),
    PaperPreset("imagenet", "classifier", method={**_PAPER, "num_samples": 999, "alpha_r": 100.0, "alpha_f": 10.0},
                source="Kodge et al. 2024, ImageNet: S = 999, alpha_r = 100, alpha_f = 10"),
)  # fmt: skip


class SVDProjection(UnlearningMethod):
    paper_presets = PAPER_PRESETS
    stops_at_forget_target = False  # one projection, no steps to stop
    class_level_only = True  # it removes the input directions whole classes use
    supports_peft = False  # gradient-free
    supports_sharding = False  # it rewrites whole weights from their statistics
    edits_head = True  # its head refit (and projection) rewrite the head
    #: With `alpha_score="forget_first_kl"`: the original's logits on this process's held-out retain batches.
    original_retain_logits: list[torch.Tensor] | None = None

    @classmethod
    def check_settings(cls, config, args, model) -> None:
        if has_lora(model):
            raise ValueError(
                "svd_projection rewrites plain layer weights, but this model still carries LoRA adapters (an earlier "
                "run with `peft_merge=False`): their base layers and adapter matrices would each be projected, and a "
                "save keeps only the adapters, not the projected base weights. Merge them first: "
                "`hf_unlearn.lora.merge_lora(model)` (or peft's `merge_and_unload()`)."
            )

    def split_rows(self) -> dict:
        """Positions in `forget_view` / `retain_view` of the statistics rows and (with alpha_search) of the disjoint
        held-out rows that score the grid: `{"forget": (statistics, held_out), "retain": (...)}`, class-balanced."""
        trainer, config, seed = self.trainer, self.config, self.trainer.args.seed
        rows = {}
        for split, labels in (("forget", trainer.forget_labels), ("retain", trainer.retain_labels)):
            everything = np.arange(len(labels))
            held_out = np.zeros(0, dtype=np.int64)
            if config.alpha_search:
                count = min(max(1, round(config.search_fraction * len(labels))), config.num_samples, len(labels) - 1)
                held_out = subsample(everything, count, seed, labels)
            remaining = np.setdiff1d(everything, held_out)
            rows[split] = (subsample(remaining, config.num_samples, seed, labels), held_out)
        return rows

    @torch.no_grad()
    def run(self) -> None:
        trainer, config = self.trainer, self.config
        model = trainer.model
        modules = find_target_modules(model, config.target_modules, config.exclude_modules)
        views = {"forget": trainer.forget_view, "retain": trainer.retain_view}
        rows = {split: [views[split].select(part) for part in parts] for split, parts in self.split_rows().items()}
        with self.stage("statistics"):
            grams = {
                split: collect_input_grams(trainer, rows[split][0], modules, config.conv_window,
                                           f"Statistics ({split})", config.conv_crop,
                                           SPLIT_TOKEN_ROWS[config.token_rows][split], config.max_token_rows,
                                           config.keep_rows)  # fmt: skip
                for split in ("retain", "forget")
            }
        with self.stage("eigendecompositions"):
            spaces, dtype = {}, getattr(torch, config.eigen_dtype)
            for name, module in modules.items():
                if grams["retain"].rows[name] and grams["forget"].rows[name]:
                    try:
                        spaces[name] = LayerProjection(module.weight, layer_space(grams["retain"], name, dtype),
                                                       layer_space(grams["forget"], name, dtype))  # fmt: skip
                    except RuntimeError as error:
                        raise RuntimeError(f"svd_projection, layer '{name}': {error}") from error
        if len(spaces) < len(modules):
            logger.warning(f"Not projected (no input of the samples on one split): "
                           f"{sorted(set(modules) - set(spaces))}")
        self.report["projected_layers"] = len(spaces)
        self.report["statistics_rows"] = {split: len(rows[split][0]) for split in rows}
        with self.originals_on_error(modules, spaces):
            self.project(modules, spaces, rows)

    @contextlib.contextmanager
    def originals_on_error(self, modules, spaces):
        """Within the block the weights are rewritten (every grid point, the projection, the head refit): on an error
        every projected layer gets its original weight back (kept by its `LayerProjection`), and the head its weight
        and bias, so the caller's model is not left at some grid point."""
        try:
            head = classification_head(self.trainer.model)[1]
        except ValueError:  # no head to refit either (`head_to_refit` says so)
            head = None
        kept = {} if head is None else {key: value.detach().clone() for key, value in head.named_parameters()}
        try:
            yield
        except BaseException:
            with torch.no_grad():
                for name, space in spaces.items():
                    modules[name].weight.copy_(space.weight)
                for key, value in kept.items():
                    getattr(head, key).copy_(value)
            raise

    def project(self, modules, spaces, rows) -> None:
        """The alpha search (or the fixed pair), the projection and the head refit."""
        config = self.config
        if config.alpha_search:
            scored = {}
            for split, (statistics_rows, held_out) in rows.items():
                scored[split] = held_out
                if not len(held_out):  # a single row: nothing is left to hold out
                    logger.warning(
                        f"Only {len(statistics_rows)} {split} row(s): the alpha grid is scored on the rows the "
                        "statistics came from (no held-out rows are left), which favours strong projections."
                    )
                    scored[split] = statistics_rows
            with self.stage("alpha_search"):
                alpha_r, alpha_f = self.search(modules, spaces, scored["forget"], scored["retain"])
        else:
            alpha_r, alpha_f = config.alpha_r, config.alpha_f
        with self.stage("projection"):
            self.apply(modules, spaces, alpha_r, alpha_f)
        self.report.update(alpha_r=alpha_r, alpha_f=alpha_f)
        if config.head_refit_steps:
            with self.stage("head_refit"):
                self.refit_head(rows["retain"][0])

    def head_to_refit(self) -> tuple[str, torch.nn.Linear] | None:
        """`(name, head)` when the head is refitted after the projection (`head_refit_steps`), else None."""
        if not self.config.head_refit_steps:
            return None
        try:
            return classification_head(self.trainer.model)
        except ValueError as error:
            logger.warning(f"No head refit: {error}")
            return None

    def kept_head_rows(self) -> list[int] | None:
        """The head rows the refit leaves alone (`refit_keeps_forget_rows`): every class without retain rows (the
        forget classes and those unlearned before)."""
        if not self.config.refit_keeps_forget_rows:
            return None
        return sorted(set(range(self.trainer.num_labels)) - set(self.trainer.retained_classes))

    def refit_head(self, retain_rows) -> None:
        """Refit the head on the projected model's features of `retain_rows` (`models.refit_head`)."""
        trainer, config = self.trainer, self.config
        found = self.head_to_refit()
        if found is None:
            return
        head_name, head = found
        retain = collect_head_features(trainer, retain_rows, head, "Head features (retain)")
        refit_head(head, retain.features, retain.labels, config.head_refit_steps, config.head_learning_rate,
                   trainer.args.weight_decay, keep_rows=self.kept_head_rows())  # fmt: skip
        self.report["refit_head"] = head_name

    def apply(self, modules, spaces, alpha_r: float, alpha_f: float, kept: dict | None = None) -> None:
        kept = kept or {name: space.kept_on_forget(alpha_r) for name, space in spaces.items()}
        for name, space in spaces.items():
            modules[name].weight.copy_(space.weight_for(kept[name], alpha_f))

    def score_retain(self, point: dict, retain_rows, retain_batches, head, max_wrong: int | None = None) -> int | None:
        """The held-out retain accuracy of the weights in place (with `head`, also after a cross-fitted trial refit)
        and the product score, into `point`; returns the wrong rows (without `head`). With `max_wrong`, a pass with
        more wrong rows stops early: its accuracy is None and the point `"stopped": "retain"`."""
        trainer, config = self.trainer, self.config
        wrong = None
        if head is None:
            counts = shard_counts(trainer.model, retain_batches, trainer.accelerator, max_wrong=max_wrong)
            point["retain_accuracy"] = None if counts is None else counts[0] / counts[1]
            if counts is None:
                point.update(stopped="retain", score=None)
                return None
            wrong = counts[1] - counts[0]
        else:
            retain = collect_head_features(trainer, retain_rows, head[1], batches=retain_batches)
            point["retain_accuracy"] = accuracy(retain.logits.cpu().numpy(), retain.labels.cpu().numpy())
            point["retain_after_refit"] = cross_fitted_refit_accuracy(
                head[1], retain.features, retain.labels, config.head_refit_steps, config.head_learning_rate,
                trainer.args.weight_decay, keep_rows=self.kept_head_rows(),
            )
        if self.original_retain_logits is not None:  # "forget_first_kl"
            point["retain_kl"] = shard_divergence(trainer.model, retain_batches, self.original_retain_logits,
                                                  trainer.accelerator)  # fmt: skip
        point["score"] = point["retain_accuracy"] * (1.0 - point["forget_accuracy"])
        return wrong

    def score_forget(self, point: dict, forget_batches, max_correct: int | None = None) -> int | None:
        """The held-out forget accuracy of the weights in place, into `point`; returns the correct rows. With
        `max_correct`, a pass with more correct rows stops early: its accuracy is None and the point
        `"stopped": "forget"`."""
        counts = shard_counts(self.trainer.model, forget_batches, self.trainer.accelerator, max_correct=max_correct)
        point["forget_accuracy"] = None if counts is None else counts[0] / counts[1]
        if counts is None:
            point["stopped"] = "forget"
            return None
        return counts[0]

    def search(self, modules, spaces, forget_rows, retain_rows) -> tuple[float, float]:
        """Score the grid points on the held-out rows (the retain rows only where a point can be kept, see
        `full_grid`); keep the one `alpha_score` prefers (`best_grid_point`)."""
        trainer, config = self.trainer, self.config
        grid = []
        points = len(config.alpha_r_grid) * len(config.alpha_f_grid)
        show = trainer.is_local_process_zero() and not trainer.args.disable_tqdm
        progress = tqdm(total=points, desc="alpha search", disable=not show, leave=False)
        forget_batches = list(trainer.shard_batches(forget_rows, "Decoding held-out forget rows"))
        retain_batches = list(trainer.shard_batches(retain_rows, "Decoding held-out retain rows"))
        head = self.head_to_refit() if config.score_after_refit else None
        target = trainer.args.forget_accuracy_target or 0.0
        # "forget_first_kl" compares the points' retain predictions with the original's (the weights still in place)
        self.original_retain_logits = (shard_logits(trainer.model, retain_batches)
                                       if config.alpha_score == "forget_first_kl" else None)  # fmt: skip
        # With "forget_first", a point above the forget target cannot be kept while another reaches it: its retain
        # rows (most of the held-out rows) are scored only once no point has reached the target (`full_grid`: all).
        every_point = config.full_grid or config.alpha_score == "product"
        # Plain "forget_first" only needs to know which points reach the forget target and, among them, which keeps
        # the most held-out retain rows. So a forget pass stops once past the target and past the fewest correct rows
        # so far (such a point is neither at the target nor, when none reaches it, of the lowest forget accuracy,
        # kept then); a retain pass once it has as many wrong rows as the best point so far (ties go to the earlier
        # point). The point kept is the same.
        bounded = config.alpha_score == "forget_first" and not (config.full_grid or config.score_after_refit
                                                                 or config.refine_steps)  # fmt: skip
        forget_limit = math.floor(target * len(forget_rows) + 1e-9) if bounded else None
        fewest_correct = fewest_wrong = None  # over the points scored so far (only while `bounded`)
        refined = []  # `refine_steps`: the weakest point at the target between two alpha_f of a row
        for alpha_r in config.alpha_r_grid:
            kept = {name: space.kept_on_forget(alpha_r) for name, space in spaces.items()}
            for alpha_f in config.alpha_f_grid:
                self.apply(modules, spaces, alpha_r, alpha_f, kept)
                point = {"alpha_r": alpha_r, "alpha_f": alpha_f}
                limit = None if fewest_correct is None else max(forget_limit, fewest_correct)
                correct = self.score_forget(point, forget_batches, limit)
                if bounded and correct is not None:
                    fewest_correct = correct if fewest_correct is None else min(fewest_correct, correct)
                if every_point or correct is not None and point["forget_accuracy"] <= target:
                    limit = None if fewest_wrong is None else fewest_wrong - 1
                    wrong = self.score_retain(point, retain_rows, retain_batches, head, limit)
                    if bounded and wrong is not None:
                        fewest_wrong = wrong if fewest_wrong is None else min(fewest_wrong, wrong)
                grid.append(point)
                progress.update()
            if config.refine_steps and config.alpha_score != "product":
                row = grid[-len(config.alpha_f_grid):]
                refined += self.refine(modules, spaces, row, kept, target, forget_batches, retain_rows, retain_batches,
                                       head)  # fmt: skip
        progress.close()
        grid += refined  # reported after the grid points
        if not any(point["forget_accuracy"] is not None and point["forget_accuracy"] <= target for point in grid):
            lowest = min(point["forget_accuracy"] for point in grid if point["forget_accuracy"] is not None)
            for point in grid:
                if point["forget_accuracy"] == lowest and "retain_accuracy" not in point:
                    self.apply(modules, spaces, point["alpha_r"], point["alpha_f"])
                    self.score_retain(point, retain_rows, retain_batches, head)
        self.report["retain_scored_points"] = sum("retain_accuracy" in point for point in grid)
        self.report["stopped_points"] = sum("stopped" in point for point in grid)
        for point in grid:
            point.setdefault("retain_accuracy", None)
            if head is not None:
                point.setdefault("retain_after_refit", None)
            point.setdefault("score", None)
            if self.original_retain_logits is not None:
                point.setdefault("retain_kl", None)
        best = best_grid_point(grid, config.alpha_score, target)
        self.report["alpha_grid"] = grid
        logger.info(
            f"alpha search: best alpha_r={best['alpha_r']}, alpha_f={best['alpha_f']} (held-out retain "
            f"{best['retain_accuracy']:.4f}, forget {best['forget_accuracy']:.4f})"
        )
        return best["alpha_r"], best["alpha_f"]

    def refine(self, modules, spaces, row, kept, target, forget_batches, retain_rows, retain_batches,
               head) -> list[dict]:  # fmt: skip
        """`refine_steps` bisections of log alpha_f between the last alpha_f of one alpha_r's grid `row` above the
        forget target and the first at it (`kept`: that alpha_r's `kept_on_forget`); the weakest point found at the
        target, scored on the retain rows, or nothing when the row does not cross the target."""
        row = sorted(row, key=lambda point: point["alpha_f"])
        crossing = next((index for index in range(1, len(row)) if row[index]["forget_accuracy"] <= target
                         and row[index - 1]["forget_accuracy"] > target), None)  # fmt: skip
        if crossing is None:
            return []
        alpha_r, low, high = row[0]["alpha_r"], row[crossing - 1]["alpha_f"], row[crossing]["alpha_f"]
        best = None
        for _ in range(self.config.refine_steps):
            middle = float(np.sqrt(low * high))
            self.apply(modules, spaces, alpha_r, middle, kept)
            forget = self.trainer.shard_accuracy(forget_batches)
            if forget <= target:
                high, best = middle, {"alpha_r": alpha_r, "alpha_f": middle, "forget_accuracy": forget}
            else:
                low = middle
        if best is None:
            return []
        self.apply(modules, spaces, alpha_r, best["alpha_f"], kept)
        self.score_retain(best, retain_rows, retain_batches, head)
        return [{**best, "refined": True}]


def best_grid_point(grid: list[dict], rule: str, forget_target: float) -> dict:
    """The grid point `rule` keeps (see `SVDProjectionConfig.alpha_score`); ties go to the earlier point. The retain
    accuracy compared is the one after the head refit where the grid has it (the state the method returns), the
    forget accuracy always the projection's own, before any refit. With "forget_first_kl" the retain rows rank the
    points by how little their predictions moved from the original's (`retain_kl`) instead of by accuracy."""

    def retain(point):
        if rule == "forget_first_kl":
            return -point["retain_kl"]  # the least moved retain predictions rank first
        after = point.get("retain_after_refit")
        value = point["retain_accuracy"] if after is None else after
        return -1.0 if value is None else value  # a retain pass stopped early lost more rows than a point before it

    if rule == "product":
        return max(grid, key=lambda point: point["score"])
    forgotten = [point for point in grid if point["forget_accuracy"] is not None
                 and point["forget_accuracy"] <= forget_target]  # fmt: skip
    if forgotten:
        return max(forgotten, key=retain)
    lowest = min(point["forget_accuracy"] for point in grid if point["forget_accuracy"] is not None)  # scored ones
    return max((point for point in grid if point["forget_accuracy"] == lowest), key=retain)


def cross_fitted_refit_accuracy(head: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor, steps: int,
                                learning_rate: float, weight_decay: float = 0.0,
                                keep_rows: list[int] | None = None) -> float | None:  # fmt: skip
    """The accuracy `head` reaches on rows it was not refitted on: a copy refitted (`models.refit_head`) on one half of
    the rows (every other row of each class) is scored on the other half, both ways; `head` itself is not touched.
    None under 2 rows."""
    by_class = torch.sort(labels, stable=True).indices
    halves = [by_class[0::2], by_class[1::2]]
    if min(len(half) for half in halves) == 0:
        return None
    correct = 0
    for fit, score in (halves, halves[::-1]):
        trial = deepcopy(head)
        refit_head(trial, features[fit], labels[fit], steps, learning_rate, weight_decay, keep_rows=keep_rows)
        with torch.no_grad():
            correct += int((trial(features[score].to(trial.weight.dtype)).argmax(-1) == labels[score]).sum())
    return correct / len(labels)



register_method(
    "svd_projection",
    SVDProjectionConfig,
    SVDProjection,
    description="Gradient-free: project every layer's weights off the forget-only input space (Deep Unlearning).",
    paper="https://arxiv.org/abs/2312.00761",
    citation='Kodge, Saha, Roy: "Deep Unlearning: Fast and Efficient Gradient-free Class Forgetting", TMLR 2024 (arXiv 2312.00761).',
)
