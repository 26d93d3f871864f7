"""svd_projection's eigendecompositions: which routine, for the layer shapes of published models (CPU, float32).

    python benchmarks/eigen_routines.py --output benchmarks/results/eigen_routines.md

Two questions of issue 20 ("the cheapest correct routine, batch layers of one shape"):

1. Batching: one `torch.linalg.eigh` call on a stack of the Gram matrices of every layer of one shape, against one
   call per layer (ViT-base has 60 layers with 768 inputs and 12 with 3,072).
2. From the rows (`keep_rows`): for a layer with n < d input rows, `row_eigen` (a QR of the n x d rows and an n x n
   `eigh`) against `eigh` of the d x d Gram matrix, in time and in how far the projection matrix M = U diag(lambda)
   U^T (alpha = 100) of each is from float64 `eigh`'s, relative to its norm.

Synthetic inputs with a decaying spectrum (columns scaled from 1 to 1e-3), as layer inputs have; the timings are the
best of 2 runs after a warm-up.
"""

from __future__ import annotations

import argparse
import platform

import torch
from common import best_of, write_results

from hf_unlearn.methods.svd_projection import row_eigen, scaled_importance

BATCHES = [(768, 12), (3072, 4)]  # (d, layers of that shape)
ROWS = [(985, 3072), (2254, 4608), (2300, 6144), (250, 6144), (414, 2048)]  # (n, d): 64-row runs of scale.py


def inputs(n: int, d: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=generator) * torch.logspace(0, -3, d)


def projector(values: torch.Tensor, vectors: torch.Tensor, alpha: float = 100.0) -> torch.Tensor:
    values = values.double().clamp_min(0)
    scaled = scaled_importance(values / values.sum(), alpha)
    return (vectors.double() * scaled) @ vectors.double().T


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="benchmarks/results/eigen_routines.md")
    options = parser.parse_args(argv)
    batched = []
    for size, layers in BATCHES:
        grams = torch.stack([(lambda x: x.T @ x)(inputs(2 * size, size, seed)) for seed in range(layers)])
        loop = best_of(lambda grams=grams: [torch.linalg.eigh(gram) for gram in grams])
        stacked = best_of(lambda grams=grams: torch.linalg.eigh(grams))
        batched.append({"d": size, "layers": layers, "one_call_per_layer_s": loop, "one_batched_call_s": stacked})
    rows = []
    for n, size in ROWS:
        x = inputs(n, size, 0)
        gram = x.T @ x
        exact = projector(*torch.linalg.eigh(gram.double()))
        gram_seconds = best_of(lambda gram=gram: torch.linalg.eigh(gram))
        row_seconds = best_of(lambda x=x: row_eigen(x.unsqueeze(0), torch.float32))
        values, vectors = row_eigen(x.unsqueeze(0), torch.float32)
        from_rows = projector(values[0], vectors[0])
        from_gram = projector(*torch.linalg.eigh(gram))
        rows.append({"n": n, "d": size, "gram_eigh_s": gram_seconds, "row_eigen_s": row_seconds,
                     "gram_eigh_error": float((from_gram - exact).norm() / exact.norm()),
                     "row_eigen_error": float((from_rows - exact).norm() / exact.norm())})  # fmt: skip
    lines = [
        "# svd_projection's eigendecompositions: batching and the row route (CPU, float32)",
        "",
        f"`python benchmarks/eigen_routines.py --output {options.output}` on {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; best of 2 after a warm-up.",
        "",
        "| d | layers | one eigh call per layer (s) | one batched call (s) |",
        "|---|---|---|---|",
        *(f"| {r['d']} | {r['layers']} | {r['one_call_per_layer_s']:.2f} | {r['one_batched_call_s']:.2f} |"
          for r in batched),
        "",
        "| n rows | d | eigh of the d x d Gram (s) | row_eigen: QR + n x n eigh (s) | error of M, Gram eigh | error of M, "
        "row_eigen |",
        "|---|---|---|---|---|---|",
        *(f"| {r['n']} | {r['d']} | {r['gram_eigh_s']:.2f} | {r['row_eigen_s']:.2f} | {r['gram_eigh_error']:.1e} | "
          f"{r['row_eigen_error']:.1e} |" for r in rows),
        "",
        "Error of M: ||M - M_float64|| / ||M_float64||, M = U diag(lambda(alpha = 100)) U^T, against float64 `eigh` of "
        "the same Gram matrix.",
        "",
    ]  # fmt: skip
    write_results(options.output, "\n".join(lines), {"batched": batched, "rows": rows})


if __name__ == "__main__":
    main()
