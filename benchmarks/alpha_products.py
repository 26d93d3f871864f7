"""svd_projection's alpha search: the products each grid point costs, before and after regrouping them (CPU, float32).

    python benchmarks/alpha_products.py --output benchmarks/results/alpha_products.md

For every alpha_r the search forms W (I - M_r) U_f for every layer, and for every (alpha_r, alpha_f) the weight
W - W (I - M_r) U_f diag(lambda_f) U_f^T. Formed as written, W (I - M_r) costs an out x d x d product per alpha_r.
`LayerProjection` regroups it as W U_f - (W U_r) diag(lambda_r) (U_r^T U_f), with W U_f and U_r^T U_f formed once:
out x k_r x k_f per alpha_r, where k_f (the forget space's columns) is below d whenever the forget rows are few
(`keep_rows`). This benchmark times both on the layer shapes of the 64-row runs of `scale.py`
(`results/scale_svd_rows.md`): ViT-base's 6 projected layers of a block (12 blocks) and ResNet-50's last-stage
bottleneck convs (3 blocks), with k_r and k_f the eigenspace sizes those runs have. A whole 5 x 5 grid is 5 alpha_r
and 25 weights. It also checks that both give the same weights (relative difference).

The old form is written out here as the reference (it is what `LayerProjection.kept_on_forget` computed until this
change). Timings are the best of 2 runs after a warm-up.
"""

from __future__ import annotations

import argparse
import platform

import torch
from common import best_of, write_results

from hf_unlearn.methods.svd_projection import LayerProjection, eigen_space, scaled_importance

ALPHA_R = [10.0, 30.0, 100.0, 300.0, 1000.0]
ALPHA_F = [1.0, 3.0, 10.0, 30.0, 100.0]
#: (model, layer, out, d, forget rows (None: more than d / 2, so the full Gram eigenspace), layers of that shape)
LAYERS = [
    ("vit-base", "query / key / value / attention output", 768, 768, None, 48),
    ("vit-base", "intermediate (fc1)", 3072, 768, None, 12),
    ("vit-base", "output (fc2)", 768, 3072, 1182, 12),
    ("resnet-50", "layer4 conv1 (1x1)", 512, 2048, 294, 3),
    ("resnet-50", "layer4 conv2 (3x3)", 512, 4608, 294, 3),
    ("resnet-50", "layer4 conv3 (1x1)", 2048, 512, None, 3),
]


def spaces(size: int, forget_rows: int | None, seed: int):
    """Retain from a full-rank Gram matrix; forget from `forget_rows` kept rows (k_f = rows) or a Gram matrix."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.logspace(0, -3, size)
    retain_rows = torch.randn(2 * size, size, generator=generator) * scale
    retain = eigen_space((retain_rows.T @ retain_rows).unsqueeze(0), torch.float32)
    forget_rows_ = torch.randn(forget_rows or 2 * size, size, generator=generator) * scale
    if forget_rows:
        forget = eigen_space(forget_rows_.unsqueeze(0), torch.float32, rows=True)
    else:
        forget = eigen_space((forget_rows_.T @ forget_rows_).unsqueeze(0), torch.float32)
    return retain, forget


def old_kept_on_forget(blocks, blocks_on_retain, retain, forget, alpha_r):
    """The form before the regrouping: W (I - M_r), then times U_f."""
    (importance, retain_vectors), (_, forget_vectors) = retain, forget
    scaled = blocks_on_retain * scaled_importance(importance, alpha_r).unsqueeze(-2)
    return (blocks - scaled @ retain_vectors.transpose(-1, -2)) @ forget_vectors


def measure(index: int, model: str, layer: str, out: int, size: int, forget_rows: int | None, count: int) -> dict:
    """Both forms on one layer shape: one alpha_r, a whole grid, and the weights they give."""
    retain, forget = spaces(size, forget_rows, index)
    weight = torch.randn(out, size, generator=torch.Generator().manual_seed(100 + index))
    projection = LayerProjection(weight, retain, forget)
    blocks = weight.reshape(1, out, size)
    blocks_on_retain = blocks @ retain[1]

    def old(alpha_r):
        return old_kept_on_forget(blocks, blocks_on_retain, retain, forget, alpha_r)

    def grid(kept_on_forget):
        for alpha_r in ALPHA_R:
            kept = kept_on_forget(alpha_r)
            for alpha_f in ALPHA_F:
                projection.weight_for(kept, alpha_f)

    old_kept, new_kept = best_of(lambda: old(100.0)), best_of(lambda: projection.kept_on_forget(100.0))
    old_grid, new_grid = best_of(lambda: grid(old), 1), best_of(lambda: grid(projection.kept_on_forget), 1)
    old_weight = projection.weight_for(old(100.0), 10.0)
    new_weight = projection.weight_for(projection.kept_on_forget(100.0), 10.0)
    difference = float((new_weight - old_weight).norm() / (old_weight - weight).norm())
    return {"model": model, "layer": layer, "out": out, "d": size, "k_f": forget[1].shape[-1], "layers": count,
            "old_kept_s": old_kept, "new_kept_s": new_kept, "old_grid_s": old_grid, "new_grid_s": new_grid,
            "relative_difference": difference}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="benchmarks/results/alpha_products.md")
    options = parser.parse_args(argv)
    results = [measure(index, *layer) for index, layer in enumerate(LAYERS)]
    totals = {}
    for row in results:
        total = totals.setdefault(row["model"], {"old": 0.0, "new": 0.0})
        total["old"] += row["old_grid_s"] * row["layers"]
        total["new"] += row["new_grid_s"] * row["layers"]
    lines = [
        "# svd_projection's alpha search: the products of a grid, before and after regrouping (CPU, float32)",
        "",
        f"`python benchmarks/alpha_products.py --output {options.output}` on {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; best of 2 after a warm-up (one alpha_r), "
        "one run after a warm-up (a whole grid). Both forms in the same process.",
        "",
        "| model | layer | out x d | k_f | layers | W (I - M_r) U_f, one alpha_r: as written (s) | regrouped (s) | "
        "5 x 5 grid, one layer: as written (s) | regrouped (s) | weight difference |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {r['model']} | {r['layer']} | {r['out']} x {r['d']} | {r['k_f']} | {r['layers']} | {r['old_kept_s']:.3f} "
          f"| {r['new_kept_s']:.3f} | {r['old_grid_s']:.2f} | {r['new_grid_s']:.2f} | {r['relative_difference']:.1e} |"
          for r in results),
        "",
        "| model (the layers above) | 5 x 5 grid, every layer: as written (s) | regrouped (s) | ratio |",
        "|---|---|---|---|",
        *(f"| {model} | {total['old']:.1f} | {total['new']:.1f} | {total['old'] / total['new']:.2f}x |"
          for model, total in totals.items()),
        "",
        "Weight difference: ||W_regrouped - W_as_written|| / ||W_as_written - W|| at alpha_r = 100, alpha_f = 10 (relative "
        "to what the projection changes).",
        "",
    ]  # fmt: skip
    write_results(options.output, "\n".join(lines), results)


if __name__ == "__main__":
    main()
