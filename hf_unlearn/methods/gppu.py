"""`gppu`: Graph-Propagated Projection Unlearning, class forgetting for vision and audio classifiers.

Source: Pathak & Das, arXiv 2604.13127 (April 2026), "GPPU". The paper was withdrawn
(its version 2 is a withdrawal notice) and no code exists; only its abstract and second-hand summaries are known. What
they state: class-level unlearning for CNNs, ViTs and audio transformers; a k-NN graph over features (k = 8); graph
propagation to find class-specific directions; projection of the representations onto their orthogonal complement;
targeted fine-tuning of the last layers with L = lambda_proj * L_proj + lambda_retain * L_retain (lambda_proj = 1.0,
lambda_retain = 0.5, lr 1e-5, weight decay 1e-2, 3 epochs); 10-20x faster than Fisher forgetting or gradient ascent.

Everything marked [R] below is OUR reconstruction from that description, not the paper's code:

1. Features h: the input of the classification head (the CLS / pooled token of a transformer, the pooled features of
   a CNN, Wav2Vec2's pooled projector output), for up to `num_forget_samples` forget rows and a class-balanced set of
   `num_retain_samples` retain rows, one forward pass in eval mode.
2. [R] A cosine k-NN graph (`num_neighbors`, k = 8) over the L2-normalised features of both sets together, found in
   row blocks (`knn_batch_size`) so 20k features never need a 20k x 20k matrix, symmetrised, with self-loops:
   A_hat = D^-1/2 (A + I) D^-1/2 (sparse).
3. [R] Personalised-PageRank smoothing of the raw features: H <- (1 - beta) A_hat H + beta H0, `propagation_steps`
   (T = 10) times with `teleport` beta = 0.1, so each feature moves towards its neighbourhood.
4. [R] One forget direction per forget class: the centroid of its propagated features minus the centroid of the
   propagated retain features (the part every class shares), by default whitened by the retain features' covariance,
   g_c = (Sigma_r + s I)^-1 (mu_c - mu_r) (`direction="whitened"`, shrinkage s = `whitening_shrinkage` times the
   mean retain variance): the direction that separates the forget class from the retained ones relative to how much
   the retained features vary along it, so removing it costs the retained classes least (the plain offset,
   "contrast", is the direction of largest retained spread on low-rank features: on a Wav2Vec2 of the tune tasks its
   removal took the sampled retain rows from 91 to 22 % and the head refit back to 64 % only; whitened, to 92 %;
   `benchmarks/results/ablation_gppu_whitened.md`). Orthonormalised over the forget classes: G (d x m).
5. [R] Hard projection folded into the head: W_head <- W_head (I - G G^T). With "contrast" directions the model
   usually forgets here already; a whitened direction removes less of what the forget rows share with retained ones,
   and the head refit (6a), where the forget class is never a target, completes the forgetting.
6. Targeted fine-tuning, head first:
   a. [R] The projected head is refitted with the retain cross-entropy on the retain features of step 1 (`head_steps`
      full-batch AdamW steps, `head_learning_rate`). The head's input does not depend on the head, so this is exact
      fine-tuning of the head, at the cost of a linear model and with no forward pass.
   b. The last `num_trainable_blocks` block(s) and everything after them (final norm, pooler, head), found from the
      module structure (the last `nn.ModuleList` of blocks; `trainable_modules` overrides), trained with
      lambda_proj * L_f + lambda_retain * CE(D_r) in the Trainer's loop (optimizer,
      scheduler, accelerator, progress bar) with its budget (`learning_rate`, `num_train_epochs` / `max_steps`,
      `weight_decay`), one epoch over at most `max_finetune_rows` retain rows (each paired with a forget row) by
      default. [R] L_f (`forget_objective`): by default ("relabel") the cross-entropy of the forget rows
      towards the model's own most likely retained class, so their features move where a retrained model puts an
      unseen class (its gap to retrain was the smallest on the tune tasks, `benchmarks/results/ablation_gppu.md`; the
      head-only edit left the forget rows far less certain than retrain does, which an MIA sees); with
      "projection", E_f[((h - mu_r) . G)^2] / sigma_r^2, centred on the retain centroid mu_r and scaled by the
      retain feature variance sigma_r^2. The head stays projected throughout (a parametrisation W (I - G G^T), folded in at the end);
      frozen modules run in eval mode (BatchNorm statistics untouched), and the forget batches leave the running
      statistics of the tail's BatchNorm layers alone too (`forget_updates_batchnorm`: a batch of one forgotten class
      would shift what every retained class is normalised with).
   [R] Stopping rule, checked every `check_steps` steps of 6b (and, with `forget_objective="projection"`, also
   before it: after 6a, or after 5 when `head_steps` is 0, so 6b may be skipped): the forget accuracy is at
   `UnlearnConfig.forget_accuracy_target` (0 when unset) and the retain accuracy is within `retain_tolerance` of the
   original's, both on the rows of step 1 (`sampled_accuracy` shows each stage, `finetune_steps` the steps run).
   The blocks before the fine-tuned ones are frozen, so what they compute for a row never changes: step 1's pass
   records the first fine-tuned block's input for the sampled rows, and every later pass runs only the tail on it:
   each check, and each training step of 6b, whose other rows get that input from the frozen blocks run on them
   alone (`replay_block_input`, `activations.BlockInputReplay`, which recognises a row by its exact model inputs;
   before fine-tuning, one replayed batch must give the head the input step 1 saw).
7. Requests compose: the trainer records forgotten classes in `model.config.unlearned_classes`, and a later request
   on that model keeps them out of its retain set, so forgetting class b after class a keeps a forgotten.

Several forget classes are removed at once (one direction each). Class-level only: `forget_indices` is refused.

Example:

```python
>>> args = UnlearnConfig(output_dir="out", method="gppu", learning_rate=1e-5, weight_decay=1e-2, num_train_epochs=3)
>>> result = UnlearningTrainer("MIT/ast-finetuned-speech-commands-v2", args, train_dataset=train,
...                            eval_dataset=test, forget_classes=["yes"]).unlearn()
>>> result.metrics["forget_accuracy"], result.metrics["retain_accuracy"]
```
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from torch import nn
from torch.nn.utils import parametrize
from transformers import TrainerCallback

from ..activations import (
    BlockInputReplay,
    batchnorm_statistics_kept,
    block_list_owners,
    capturing,
    collect_head_features,
    name_matches,
    pooled_rows,
)
from ..contract import PaperPreset, UnlearningMethod, training_loss
from ..data import PairedDataset, balanced_forget, subsample
from ..models import block_list_name, classification_head, model_tail, refit_head
from ..passes import one_row_inputs
from ..registry import register_method
from ..validation import check_pattern

logger = get_logger(__name__)
_plain_logger = logging.getLogger(__name__)  # for helpers that also run outside an accelerate run


FORGET_OBJECTIVES = ("projection", "relabel", "both")
DIRECTIONS = ("whitened", "contrast", "unique")


@dataclass
class GPPUConfig:
    #: Settings renamed, named in the error a config with the old name gets.
    RENAMED: ClassVar[dict[str, str]] = {"replay_checks": "replay_block_input"}

    num_forget_samples: int = field(
        default=500,
        metadata={"help": "Forget rows (random) whose features build the graph and the forget directions."},
    )
    num_retain_samples: int = field(
        default=1000,
        metadata={"help": "Retain rows (balanced over the retained classes) in the graph beside the forget rows."},
    )
    num_neighbors: int = field(default=8, metadata={"help": "k of the cosine k-NN graph (paper: 8)."})
    propagation_steps: int = field(default=10, metadata={"help": "T: personalised-PageRank smoothing steps [R]."})
    teleport: float = field(
        default=0.1, metadata={"help": "beta: share of each node's own feature kept at every propagation step [R]."}
    )
    knn_batch_size: int = field(
        default=1024,
        metadata={"help": "Rows of the similarity matrix computed at once (memory: knn_batch_size x graph size)."},
    )
    lambda_proj: float = field(
        default=1.0,
        metadata={"help": "Weight of the forget objective (paper: 1.0 for its projection penalty E_f[(h . G)^2])."},
    )
    lambda_retain: float = field(default=0.5, metadata={"help": "Weight of the retain cross-entropy (paper: 0.5)."})
    forget_objective: str = field(
        default="relabel",
        metadata={
            "help": "What the fine-tuning (6b) asks of the forget rows: 'projection' (the penalty on their features "
            "along the forget directions), 'relabel' (cross-entropy towards the model's own most likely retained "
            "class, so their features join retained classes as a retrained model's do [R]; the default: it came closest to "
            "retrain on the tune tasks, benchmarks/results/ablation_gppu.md) or 'both'. With "
            "'relabel' or 'both' the fine-tuning always runs (its stopping rule is checked from `check_steps` on)."
        },
    )
    direction: str = field(
        default="whitened",
        metadata={
            "help": "Forget directions (step 4) [R]: 'whitened' (default), each forget class's centroid minus the "
            "retain centroid, multiplied by the inverse of the (shrunk) retain feature covariance, so the direction "
            "removed is the one the retained classes vary least along; 'contrast', the plain centroid offset (the "
            "default before: on low-rank features it removes what the retained classes need, "
            "benchmarks/results/ablation_gppu_whitened.md); 'unique', the offset's part outside the span of the "
            "retained classes' own offsets (never better on the tune tasks, "
            "benchmarks/results/ablation_gppu_direction.md; where that part vanishes it falls back to 'contrast')."
        },
    )
    whitening_shrinkage: float = field(
        default=0.1,
        metadata={
            "help": "direction='whitened': s in (Sigma_r + s * mean variance * I)^-1, which keeps directions the "
            "retain rows never vary along from dominating (chosen on the tune tasks among 0.1 and 1, "
            "benchmarks/results/ablation_gppu_whitened.md)."
        },
    )
    head_steps: int = field(
        default=100,
        metadata={
            "help": "Full-batch AdamW steps refitting the projected head on the retain features already computed "
            "(no forward pass) [R]; 0 skips it."
        },
    )
    head_learning_rate: float = field(default=1e-2, metadata={"help": "Learning rate of that head refit."})
    finetune: bool = field(
        default=True,
        metadata={
            "help": "Fine-tune the last block(s) and the head in the Trainer's loop (UnlearnConfig's learning_rate, "
            "num_train_epochs / max_steps, weight_decay; paper: AdamW, 1e-5, 3 epochs, 1e-2) when the stopping rule "
            "does not hold yet; False: projection and head refit only."
        },
    )
    max_finetune_rows: int | None = field(
        default=2000,
        metadata={
            "help": "The fine-tuning's epoch covers at most this many retain rows (balanced over the retained classes, "
            "seeded), each paired with a forget row, so its cost stops growing with the dataset: the defaults were "
            "chosen on tasks of at most 1,800 retain rows (an epoch of about 60 steps), and with every row a 10,000-row "
            "dataset took 11x one forward pass (benchmarks/results/scale_growth_rows.md). None: every retain row."
        },
    )
    stop_when_recovered: bool = field(
        default=True,
        metadata={
            "help": "Skip or stop the fine-tuning once the forget accuracy is at `UnlearnConfig.forget_accuracy_target` "
            "(0 when unset) and the retain accuracy is within `retain_tolerance` of the original's, both on the "
            "sampled training rows [R]. False: always train for the full budget."
        },
    )
    num_trainable_blocks: int = field(
        default=1,
        metadata={
            "help": "How many of the last blocks (encoder layers, CNN stages) are fine-tuned with everything after "
            "them; 0: only what follows the blocks (final norm, pooler, head)."
        },
    )
    trainable_modules: str | list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules to fine-tune instead of the automatic choice: a regex matching whole names or a list "
            "of name suffixes (like peft's target_modules). The head is always trained."
        },
    )
    head_module: str | None = field(
        default=None,
        metadata={"help": "Name of the classification head Linear; None: the last Linear with num_labels outputs."},
    )
    replay_block_input: bool = field(
        default=True,
        metadata={
            "help": "Record the input of the first fine-tuned block for the sampled rows during step 1's pass, and run "
            "the later forward passes of 6b (its checks and training steps) through the fine-tuned tail alone, fed "
            "that input (`activations.BlockInputReplay`: the frozen blocks before it compute the same thing every "
            "time; a row is recognised by its exact model inputs, and a row not recorded gets its input from those "
            "blocks run on it alone). Checked before fine-tuning on one batch: the head must receive what it "
            "received in step 1; where it does not, every pass runs the whole model. Memory: that input for the "
            "sampled rows (ViT-base at 224: about 0.6 MB a row). False: every pass runs the whole model. With "
            "`gradient_checkpointing` only the checks are replayed (a block may run again in the backward pass). "
            "Measured in benchmarks/results/scale_gppu_replay_steps.md."
        },
    )
    forget_updates_batchnorm: bool = field(
        default=False,
        metadata={
            "help": "Let the forget batches of the fine-tuning move the running statistics of the tail's BatchNorm "
            "layers, as the retain batches do (the earlier behaviour). By default a forget batch is normalised "
            "with its own statistics but leaves the running ones alone: a batch of one forgotten class is not a "
            "sample of what the model will serve, and its statistics shifted what every retained class is "
            "normalised with at inference. On the tune tasks' ResNet (the one BatchNorm model) keeping them took the "
            "retain test accuracy from 97.0 to 97.5 % and the mean gap to retrain from 2.1 to 1.3 points over 6 "
            "runs (benchmarks/results/ablation_gppu_batchnorm.md); models without BatchNorm are unaffected."
        },
    )
    retain_tolerance: float = field(
        default=0.005,
        metadata={"help": "Retain accuracy drop (a fraction) the stopping rule accepts on the sampled rows."},
    )
    check_steps: int = field(
        default=10, metadata={"help": "How often (optimizer steps) the stopping rule is checked while fine-tuning."}
    )

    def __post_init__(self):
        for name in ('trainable_modules',):
            if isinstance(getattr(self, name), str):
                check_pattern(getattr(self, name), name)
        for name in ("num_forget_samples", "num_retain_samples", "num_neighbors", "knn_batch_size", "check_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)!r}.")
        if self.max_finetune_rows is not None and self.max_finetune_rows < 1:
            raise ValueError(f"`max_finetune_rows` must be >= 1 or None, got {self.max_finetune_rows!r}.")
        for name in ("propagation_steps", "num_trainable_blocks", "head_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)!r}.")
        if self.whitening_shrinkage <= 0:
            raise ValueError(f"`whitening_shrinkage` must be > 0, got {self.whitening_shrinkage!r}.")
        if self.head_learning_rate <= 0:
            raise ValueError(f"`head_learning_rate` must be > 0, got {self.head_learning_rate!r}.")
        if not 0.0 < self.teleport <= 1.0:
            raise ValueError(f"`teleport` must be in (0, 1] (1 = no propagation), got {self.teleport!r}.")
        if self.lambda_proj < 0 or self.lambda_retain < 0 or self.lambda_proj + self.lambda_retain == 0:
            raise ValueError(
                f"`lambda_proj` ({self.lambda_proj!r}) and `lambda_retain` ({self.lambda_retain!r}) must be >= 0 and "
                "not both 0."
            )
        if not 0.0 <= self.retain_tolerance <= 1.0:
            raise ValueError(f"`retain_tolerance` is a fraction in [0, 1], got {self.retain_tolerance!r}.")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"`direction` must be one of {DIRECTIONS}, got {self.direction!r}.")
        if self.forget_objective not in FORGET_OBJECTIVES:
            raise ValueError(f"`forget_objective` must be one of {FORGET_OBJECTIVES}, got {self.forget_objective!r}.")


# ------------------------------------------------------------------------------------------------ graph (steps 2-4)
def knn_graph(features: torch.Tensor, num_neighbors: int, batch_size: int = 1024) -> torch.Tensor:
    """A_hat = D^-1/2 (A + I) D^-1/2 (sparse COO, coalesced) of the symmetrised cosine k-NN graph of `features`
    (n x d), computed `batch_size` rows at a time (memory: batch_size x n similarities, then n x 2k edges)."""
    count = len(features)
    num_neighbors = min(num_neighbors, count - 1)
    unit = F.normalize(features.float(), dim=1)
    neighbors = []
    for start in range(0, count, batch_size):
        similarity = unit[start : start + batch_size] @ unit.T
        rows = torch.arange(len(similarity), device=features.device)
        similarity[rows, rows + start] = -float("inf")  # a node is not its own neighbour; self-loops come below
        neighbors.append(similarity.topk(num_neighbors, dim=1).indices if num_neighbors > 0 else similarity[:, :0])
    columns = torch.cat(neighbors).reshape(-1)
    rows = torch.arange(count, device=features.device).repeat_interleave(num_neighbors)
    nodes = torch.arange(count, device=features.device)
    edges = torch.stack([torch.cat([rows, columns, nodes]), torch.cat([columns, rows, nodes])])
    ones = torch.ones(edges.shape[1], device=features.device)
    adjacency = torch.sparse_coo_tensor(edges, ones, (count, count), check_invariants=False)  # indices in range
    edges = adjacency.coalesce().indices()  # a mutual pair is one edge: binary A
    ones = torch.ones(edges.shape[1], device=features.device)
    degree = torch.zeros(count, device=features.device).index_add_(0, edges[0], ones)
    values = ones / torch.sqrt(degree[edges[0]] * degree[edges[1]])
    return torch.sparse_coo_tensor(edges, values, (count, count), is_coalesced=True, check_invariants=False)


def propagate(a_hat: torch.Tensor, features: torch.Tensor, steps: int, teleport: float) -> torch.Tensor:
    """Personalised-PageRank smoothing: H <- (1 - teleport) A_hat H + teleport H0, `steps` times."""
    smoothed = features = features.float()
    for _ in range(steps):
        smoothed = (1.0 - teleport) * torch.sparse.mm(a_hat, smoothed) + teleport * features
    return smoothed


def forget_directions(
    features: torch.Tensor, labels: torch.Tensor, is_forget: torch.Tensor, config: GPPUConfig
) -> torch.Tensor:
    """G (d x m, orthonormal columns): per forget class, the centroid of its propagated features minus the centroid
    of the propagated retain features (with `direction="whitened"`, times the inverse of the shrunk covariance of the
    propagated retain features), orthonormalised over the classes. With `direction="unique"` each
    offset first loses its part in the span of the retained classes' own offsets, so removing G leaves every retained
    centroid where it was (up to a shift the head refit absorbs) [R]."""
    a_hat = knn_graph(features, config.num_neighbors, config.knn_batch_size)
    smoothed = propagate(a_hat, features, config.propagation_steps, config.teleport)
    retain_centroid = smoothed[~is_forget].mean(0)
    centroids = [smoothed[is_forget & (labels == c)].mean(0) for c in labels[is_forget].unique()]
    directions = (torch.stack(centroids) - retain_centroid).double()  # (m, d)
    if config.direction == "unique":
        offsets = torch.stack(
            [smoothed[~is_forget & (labels == c)].mean(0) for c in labels[~is_forget].unique()]
        ).double() - retain_centroid.double()
        retain_basis = _orthonormal_columns(offsets.T)
        unique = directions - (directions @ retain_basis) @ retain_basis.T
        if unique.norm() > 1e-3 * directions.norm():
            directions = unique
        else:
            _plain_logger.warning(
                "GPPU: the forget classes' centroids lie in the span of the retained classes' offsets; using the "
                "plain offsets (direction='contrast')."
            )
    if config.direction == "whitened":
        directions = whitened(directions, smoothed[~is_forget], config.whitening_shrinkage)
    return _orthonormal_columns(directions.T).to(features.dtype)


def whitened(offsets: torch.Tensor, retain_features: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """Rows (Sigma_r + s I)^-1 offset of `offsets` (m x d), in float64: Sigma_r the covariance of `retain_features`
    (n x d), s = `shrinkage` times its mean diagonal. Retain features that do not vary at all leave the offsets as
    they are (there is nothing to whiten by)."""
    retained = retain_features.double()
    centred = retained - retained.mean(0)
    covariance = centred.T @ centred / max(len(retained) - 1, 1)
    if not covariance.diagonal().mean() > 0:
        return offsets.double()
    shrink = shrinkage * covariance.diagonal().mean()
    eye = torch.eye(len(covariance), dtype=covariance.dtype, device=covariance.device)
    return torch.linalg.solve(covariance + shrink * eye, offsets.double().T).T


def _orthonormal_columns(matrix: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (columns) of the span of `matrix`'s columns; columns within 1e-6 of the largest singular
    value's scale of the others count once (two classes with the same direction give one)."""
    basis, singular_values, _ = torch.linalg.svd(matrix.double(), full_matrices=False)
    return basis[:, singular_values > singular_values.max() * 1e-6]


class RemoveDirections(nn.Module):
    """Weight parametrisation W -> W (I - G G^T): the layer ignores the span of G in its input, whatever W learns."""

    def __init__(self, directions: torch.Tensor):
        super().__init__()
        self.register_buffer("directions", directions)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        directions = self.directions.to(weight.dtype)
        return weight - (weight @ directions) @ directions.T


#: The settings the GPPU abstract states (no dataset-specific values are known): AdamW at 1e-5 with weight decay
#: 1e-2 for 3 epochs, lambda_proj = 1.0 and lambda_retain = 0.5 on the projection penalty, k = 8; the plain centroid
#: offset (step 4) and no head refit (6a), both hf-unlearn's additions; the epochs cover every training row (the
#: `max_finetune_rows` cap is hf-unlearn's).
PAPER_PRESETS = (
    PaperPreset(
        "any", "classifier",
        training={"optim": "adamw_torch", "learning_rate": 1e-5, "weight_decay": 1e-2, "num_train_epochs": 3},
        method={"forget_objective": "projection", "direction": "contrast", "head_steps": 0, "lambda_proj": 1.0,
                "lambda_retain": 0.5, "num_neighbors": 8, "max_finetune_rows": None},
        source="Pathak & Das 2026 (abstract; the paper was withdrawn): AdamW lr 1e-5, weight decay 1e-2, 3 epochs "
        "over the training rows, lambda_proj = 1.0, lambda_retain = 0.5, k = 8; steps the abstract does not give stay "
        "hf-unlearn's reconstruction",
    ),
)  # fmt: skip


class GPPU(UnlearningMethod):
    paper_presets = PAPER_PRESETS
    class_level_only = True
    supports_peft = False  # its fine-tuning is already restricted to the tail it chooses
    supports_sharding = False  # it projects the head's whole weight
    edits_head = True  # its projection and refit rewrite the head
    stops_at_forget_target = False  # its own rule: forget target reached and retain accuracy recovered
    # The tail fine-tuning's budget (6b), when it runs: the paper's AdamW and weight decay, one epoch at 1e-4.
    training_defaults = {"optim": "adamw_torch", "learning_rate": 1e-4, "num_train_epochs": 1, "weight_decay": 0.01,
                         "per_device_train_batch_size": 32, "lr_scheduler_type": "linear", "warmup_steps": 0}  # fmt: skip
    #: The replay of the first fine-tuned block's input (`replay_block_input`), until `take_block_inputs` hands it
    #: over; `replay_checked`: whether it reproduced the head's input (checked when the fine-tuning starts).
    replay: BlockInputReplay | None = None
    replay_checked = False
    _tail: tuple[list[str], list[str]] | None = None  # `tail()`, found once

    @classmethod
    def check_settings(cls, config, args, model) -> None:
        classification_head(model, config.head_module)
        if getattr(args, "n_gpu", 0) > 1:
            raise ValueError(
                f"gppu runs with several GPUs in one process ({args.n_gpu}, nn.DataParallel): its hooks (frozen modules "
                "in eval mode, the head's captured input, the block replay) act on the model, not on DataParallel's "
                "per-GPU replicas, so the forget and retain passes would run differently. Run one process per GPU "
                "(`accelerate launch`, see recipes/) or make one GPU visible (CUDA_VISIBLE_DEVICES=0)."
            )

    def run(self) -> None:
        trainer, config = self.trainer, self.config
        self.head_name, self.head = classification_head(trainer.model, config.head_module)
        seed = trainer.args.seed

        # Step 1: features feeding the head, one pass over the sampled rows.
        forget_rows = subsample(np.arange(len(trainer.forget_view)), config.num_forget_samples, seed,
                                balanced_forget(trainer.forget_labels))  # fmt: skip
        retain_labels = trainer.retain_labels
        retain_rows = subsample(np.arange(len(retain_labels)), config.num_retain_samples, seed, retain_labels)
        self.sampled_rows = {
            "forget": trainer.forget_view.select(forget_rows),
            "retain": trainer.retain_view.select(retain_rows),
        }
        self.replay = self.block_input_replay()
        with self.stage("features"):
            sampled = {split: self.collect_features(split, rows) for split, rows in self.sampled_rows.items()}
        self.original_accuracy = {split: _accuracy(part.logits, part.labels) for split, part in sampled.items()}
        stages = {"original": self.original_accuracy}

        # Steps 2-4: graph, propagation, forget directions.
        features = torch.cat([sampled["forget"].features, sampled["retain"].features])
        labels = torch.cat([sampled["forget"].labels, sampled["retain"].labels])
        is_forget = torch.arange(len(features), device=features.device) < len(sampled["forget"].features)
        with self.stage("graph"):
            self.directions = forget_directions(features, labels, is_forget, config)
        retain_features = self.retain_features = sampled["retain"].features
        self.retain_centroid = retain_features.mean(0)
        self.retain_variance = (retain_features - self.retain_centroid).pow(2).sum(-1).mean().clamp_min(1e-12)

        # Step 5: hard projection of the head. Steps 5 and 6a change the head only, so their effect on the sampled
        # rows comes from the features already computed, without a forward pass.
        with self.stage("projection"), torch.no_grad():
            self.head.weight.copy_(RemoveDirections(self.directions)(self.head.weight))
        stages["projection"] = self.head_accuracy(sampled)
        if config.head_steps:
            with self.stage("head_refit"):
                self.refit_head(retain_features, sampled["retain"].labels)
            stages["head_refit"] = self.head_accuracy(sampled)
        self.report.update(
            head_module=self.head_name,
            forget_directions=int(self.directions.shape[1]),
            graph_nodes=len(features),
            sampled_accuracy=stages,
            finetune_steps=0,
        )
        relabel = config.forget_objective != "projection"
        if config.finetune and (relabel or not (config.stop_when_recovered and self.recovered(stages[list(stages)[-1]]))):
            with self.stage("finetune"):
                kept = self.finetune()
            # The checks already scored the weights the fine-tuning kept; a run that checked nothing is scored here.
            stages["finetune"] = kept if kept is not None else self.measure_sampled_rows()
        names = {"projection": "head projection", "head_refit": "head refit", "finetune": "tail fine-tuning"}
        self.report["stages_run"] = [names[stage] for stage in stages if stage in names]
        if self.report.get("finetune_steps"):
            self.report["stages_run"][-1] += f" ({self.report['finetune_steps']} steps)"

    def changed_modules(self) -> list[str]:
        """The head, and the tail the fine-tuning (6b) trains when it may run: the original model is then measured
        after the run through the tail alone (`hf_unlearn.measure_cache`)."""
        head_name, _ = classification_head(self.trainer.model, self.config.head_module)
        return list(dict.fromkeys([*self.tail()[1], head_name])) if self.config.finetune else [head_name]

    def take_block_inputs(self) -> BlockInputReplay | None:
        """The first fine-tuned block's input recorded in step 1, when the fine-tuning checked that it reproduces the
        head's input (None otherwise): the blocks before it are frozen, so it is the unlearned model's too."""
        replay, self.replay = self.replay, None
        return replay if self.replay_checked else None

    def tail(self) -> tuple[list[str], list[str]]:
        """`(block_names, tail_module_names)` that 6b fine-tunes (`models.model_tail`, or `trainable_modules`),
        found once."""
        if self._tail is None:
            trainer, config, model = self.trainer, self.config, self.trainer.model
            if config.trainable_modules is not None:
                pattern = config.trainable_modules
                modules = [name for name, _ in model.named_modules() if name and name_matches(name, pattern)]
                if not modules:
                    raise ValueError(
                        f"`trainable_modules={config.trainable_modules!r}` matches no module of {type(model).__name__}."
                    )
                self._tail = (modules, modules)
            else:
                self._tail = model_tail(model, one_row_inputs(trainer, trainer.retain_view), config.num_trainable_blocks)
        return self._tail

    def block_input_replay(self) -> BlockInputReplay | None:
        """The replay of the first fine-tuned block's input (`replay_block_input`), when 6b will run on the automatic
        tail and that tail starts with a block."""
        config = self.config
        if not (config.finetune and config.replay_block_input and config.trainable_modules is None):
            return None
        blocks, _ = self.tail()
        return BlockInputReplay(self.trainer.model, blocks[0]) if blocks else None

    def collect_features(self, split: str, rows):
        """Step 1's pass over one split of the sampled rows; it also records the replayed block's input."""
        trainer, replay, description = self.trainer, self.replay, f"Features ({split})"
        if replay is None:
            return collect_head_features(trainer, rows, self.head, description)
        with replay.recording():
            return collect_head_features(trainer, rows, self.head, description)

    def head_accuracy(self, sampled: dict) -> dict:
        with torch.no_grad():
            return {
                split: _accuracy(self.head(part.features.to(self.head.weight.dtype)), part.labels)
                for split, part in sampled.items()
            }

    @property
    def target_forget_accuracy(self) -> float:
        return self.trainer.args.forget_accuracy_target or 0.0

    def recovered(self, accuracy: dict) -> bool:
        """The stopping rule [R]: forget accuracy at its target and retain accuracy within `retain_tolerance` of the
        original's, on the sampled rows."""
        return (
            accuracy["forget"] <= self.target_forget_accuracy
            and accuracy["retain"] >= self.original_accuracy["retain"] - self.config.retain_tolerance
        )

    # ----------------------------------------------------------------------------------------------- step 6
    def refit_head(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """6a [R]: the head, projected, refitted with the retain cross-entropy on the retain features already
        computed (`models.refit_head`: full batch AdamW, `head_steps` steps); the projection penalty is constant
        here."""
        refit_head(self.head, features, labels, self.config.head_steps, self.config.head_learning_rate,
                   self.trainer.args.weight_decay, transform=RemoveDirections(self.directions.float()))  # fmt: skip

    def finetune(self) -> dict | None:
        """6b: the last block(s) and everything after them, in the Trainer's loop, with the head kept projected. The
        tail's weights (and buffers) at the best check are the ones kept (`RecoveryCallback`). Returns the sampled
        rows' accuracy of the weights kept, as a check measured it (None when no check ran)."""
        trainer, config = self.trainer, self.config
        model = trainer.model
        blocks, trainable = self.tail()
        replay = self.replay
        if replay is not None:
            retain = trainer.shard_batches(self.sampled_rows["retain"], "Checking the replayed block input")
            local = replay.matches(retain, self.head, self.retain_features)  # on this process's first batch
            self.replay_checked = True
            failed = torch.tensor([0.0 if local else 1.0], device=trainer.args.device)
            if trainer.accelerator.reduce(failed, reduction="sum").item():  # every process replays, or none
                logger.info(f"GPPU: replaying the input of '{blocks[0]}' does not reproduce the head's input; the "
                            "fine-tuning runs the whole model.")  # fmt: skip
                replay = self.replay = None
        self.report["replay_block"] = blocks[0] if replay is not None else None
        self.report["replay_mb"] = round(replay.nbytes / 2**20, 1) if replay is not None else 0.0
        trainable_parameters = {
            id(parameter)
            for name in trainable + [self.head_name]
            for parameter in model.get_submodule(name).parameters()
        }
        flags = {parameter: parameter.requires_grad for parameter in model.parameters()}
        callback = RecoveryCallback(self, [model.get_submodule(name) for name in trainable + [self.head_name]])
        trainer.add_callback(callback)
        # Frozen modules run as at inference (no dropout, BatchNorm on and not updating its running statistics),
        # like the pass that computed the directions; the Trainer sets train mode before every step, so a hook
        # restores this right before each forward. So do the modules that hold the blocks, for their own flag alone
        # (`activations.block_list_owners`): in training mode Wav2Vec2 and HuBERT skip blocks, frozen ones included
        # (LayerDrop), and mask what reaches them (SpecAugment).
        # A module without parameters (dropout, an activation) trains only inside a trained module: a Wav2Vec2
        # encoder's own dropout, before its first (frozen) block, stays as at inference.
        trained = blocks + trainable + [self.head_name]
        frozen = {}
        for name, module in model.named_modules():
            parameters = [id(parameter) for parameter in module.parameters()]
            if parameters and not any(parameter in trainable_parameters for parameter in parameters) or (
                    not parameters and not any(name == t or name.startswith(t + ".") for t in trained)):  # fmt: skip
                frozen[name] = module
        outermost_frozen = [module for name, module in frozen.items() if name.rpartition(".")[0] not in frozen]
        # (whatever is trained: with the stable layer norm of wav2vec2-large / HuBERT-large the encoder holds a tail
        # module, and with `trainable_modules` or no trained block the tail names no block)
        list_name = block_list_name(model, one_row_inputs(trainer, trainer.retain_view))
        owners = block_list_owners(model, list_name) if list_name else []

        def frozen_to_eval(module, args):
            for frozen_module in outermost_frozen:
                frozen_module.train(False)
            for owner in owners:
                owner.training = False

        keep_frozen_in_eval = model.register_forward_pre_hook(frozen_to_eval)
        parametrize.register_parametrization(self.head, "weight", RemoveDirections(self.directions))
        try:
            for parameter in model.parameters():
                parameter.requires_grad_(id(parameter) in trainable_parameters)
            self.report.update(
                trained_blocks=blocks,
                trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
            )
            rows = subsample(np.arange(len(trainer.retain_labels)), config.max_finetune_rows, trainer.args.seed,
                             trainer.retain_labels)  # fmt: skip
            retain = trainer.retain_view if len(rows) == len(trainer.retain_labels) else trainer.retain_view.select(rows)
            # With gradient checkpointing a block may run again in the backward pass, outside the replayed pass.
            steps_replayed = replay is not None and not trainer.args.gradient_checkpointing
            if steps_replayed:
                replay.replayed_rows = replay.computed_rows = 0
            with replay.replaying() if steps_replayed else contextlib.nullcontext():
                trainer.train_with(PairedDataset(retain, trainer.forget_view, seed=trainer.args.seed))
        finally:
            keep_frozen_in_eval.remove()
            parametrize.remove_parametrizations(self.head, "weight", leave_parametrized=True)
            for parameter, flag in flags.items():
                parameter.requires_grad_(flag)
            trainer.remove_callback(callback)
        self.report["finetune_steps"] = trainer.state.global_step
        self.report["finetune_kept_step"] = callback.best_step
        if steps_replayed:  # rows of the training steps' forward passes (all processes), by how they ran
            counts = torch.tensor([replay.replayed_rows, replay.computed_rows], device=trainer.args.device)
            replayed, computed = trainer.accelerator.reduce(counts, reduction="sum").tolist()
            self.report["finetune_rows"] = {"replayed": int(replayed), "computed": int(computed)}
        return callback.kept_accuracy

    def compute_loss(self, model, inputs, num_items_in_batch=None):
        """lambda_proj * L_f + lambda_retain * CE(retain batch), L_f by `forget_objective` [R]: "relabel", the forget
        batch's cross-entropy towards each row's own most likely retained class; "projection", E_f[((h - mu_r) .
        G)^2] / sigma_r^2, centred on the retain centroid mu_r (forcing forget features to 0 along G would set them
        apart from every retained class there) and divided by the retain feature variance sigma_r^2, so lambda_proj
        is scale-free; "both", their sum."""
        forget_inputs = {name: value for name, value in inputs["forget"].items() if name != "labels"}
        kept = batchnorm_statistics_kept(model, keep=not self.config.forget_updates_batchnorm)
        with capturing(self.head) as captured, kept:
            logits = model(**forget_inputs).logits.float()
        forget_loss = 0.0
        if self.config.forget_objective in ("projection", "both"):
            features = pooled_rows(captured.value).float() - self.retain_centroid.to(captured.value.device)
            directions = self.directions.to(features.device)
            forget_loss = (features @ directions).pow(2).sum(-1).mean() / self.retain_variance.to(features.device)
        if self.config.forget_objective in ("relabel", "both"):
            retained = torch.full_like(logits[0], -float("inf"))
            retained[self.trainer.retained_classes] = 0.0
            targets = (logits.detach() + retained).argmax(-1)  # the model's own most likely retained class [R]
            forget_loss = forget_loss + F.cross_entropy(logits, targets)
        retain_loss = training_loss(model, inputs["retain"])
        return self.config.lambda_proj * forget_loss + self.config.lambda_retain * retain_loss

    def measure_sampled_rows(self) -> dict:
        """The sampled rows' accuracy, through the tail alone while the block input is replayed."""
        trainer, replay, accuracy = self.trainer, self.replay, {}
        for split, rows in self.sampled_rows.items():
            batches = trainer.shard_batches(rows, f"Checking {split} rows")
            if replay is None:
                accuracy[split] = trainer.shard_accuracy(batches)
            else:
                counts = replay.replayed_rows, replay.computed_rows
                with replay.replaying():
                    accuracy[split] = trainer.shard_accuracy(batches)
                replay.replayed_rows, replay.computed_rows = counts  # the training steps' counts (`finetune`)
        return accuracy


class RecoveryCallback(TrainerCallback):
    """Checks the sampled rows every `check_steps` of GPPU's fine-tuning [R]: it stops once `GPPU.recovered` holds
    (with `stop_when_recovered`), and at the end puts back the tail's weights of the best check, the one with the
    best retain accuracy among those at the forget target. Fine-tuning for a whole epoch can cost a weak model retain
    accuracy (measured on a Wav2Vec2 of the tune tasks, `benchmarks/results/ablation_gppu.md`); the weights before
    fine-tuning are not a candidate, since the sampled retain rows always favour the head-only edit, which leaves the
    forget rows far less certain than a retrained model does."""

    def __init__(self, method: GPPU, modules: list[nn.Module]):
        self.method, self.modules = method, modules
        self.best_step, self.best_accuracy, self.snapshot = None, None, None
        # The accuracy of the weights the model holds at the end: the latest check's, or the best one's once restored.
        self.kept_accuracy = None

    def consider(self, step: int, accuracy: dict) -> None:
        self.kept_accuracy = accuracy
        if accuracy["forget"] > self.method.target_forget_accuracy:
            return
        if self.best_accuracy is None or accuracy["retain"] > self.best_accuracy["retain"]:
            self.best_step, self.best_accuracy = step, accuracy
            self.snapshot = [tensor.detach().clone() for tensor in self.state()]

    def state(self) -> list[torch.Tensor]:
        """The trained parameters and the buffers of the trained modules (BatchNorm running statistics)."""
        return [*self.parameters, *(buffer for module in self.modules for buffer in module.buffers())]

    def on_train_begin(self, args, state, control, **kwargs):
        # Taken here, not in __init__: the head's weight is parametrised (a new Parameter holder) just before training.
        self.parameters = [parameter for parameter in self.method.trainer.model.parameters() if parameter.requires_grad]

    def on_step_end(self, args, state, control, **kwargs):
        method = self.method
        if state.global_step % method.config.check_steps:
            return control
        accuracy = method.measure_sampled_rows()
        self.consider(state.global_step, accuracy)
        # Every `report_to` integration sees the checks beside the loop's loss.
        method.trainer.log({f"check/{part}_accuracy": value for part, value in accuracy.items() if value is not None})
        if method.config.stop_when_recovered and method.recovered(accuracy):
            logger.info(f"GPPU: forget target reached and retain accuracy recovered at step {state.global_step}.")
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if state.global_step % self.method.config.check_steps:  # the last steps since the last check
            self.consider(state.global_step, self.method.measure_sampled_rows())
        if self.snapshot is not None and self.best_step != state.global_step:
            with torch.no_grad():
                for tensor, saved in zip(self.state(), self.snapshot, strict=True):
                    tensor.copy_(saved)
            self.kept_accuracy = self.best_accuracy
            logger.info(f"GPPU: kept the tail's weights of step {self.best_step} (best on the sampled rows).")
        self.snapshot = None
        return control


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean()) if len(labels) else 0.0


register_method(
    "gppu",
    GPPUConfig,
    GPPU,
    description="Graph-propagated forget directions projected out of the head, then targeted fine-tuning of the "
    "last blocks (GPPU; steps marked [R] are our reconstruction of a withdrawn paper).",
    paper="https://arxiv.org/abs/2604.13127",
    citation="Pathak, Das: graph-propagated projection unlearning (GPPU), arXiv 2604.13127 (April 2026; withdrawn).",
    limitations="The GPPU paper was withdrawn and published no code: the k-NN graph, the propagation, the forget directions, the head projection, the head refit and the stopping rule are hf-unlearn's reconstruction from its abstract (steps marked [R] in `hf_unlearn/methods/gppu.py`).",
)
