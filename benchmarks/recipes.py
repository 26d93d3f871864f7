"""The digits recipes' numbers as ranges over seeds: each seed prepares its own original models (data split and
initialisation follow the seed, as `python -m hf_unlearn.examples.digits --seed N` does) and runs every digits classifier recipe
through `hf-unlearn unlearn` with that seed. `recipes/README.md` quotes the ranges this writes.

    python benchmarks/recipes.py --output benchmarks/results/recipes.md [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from hf_unlearn.cli import main as hf_unlearn
from hf_unlearn.examples.digits import prepare_digits

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "digits"
# recipe -> the prepared architecture it reads
CLASSIFIER_RECIPES = {
    "vit_gppu": "vit",
    "vit_remain_geometry": "vit",
    "vit_neggrad_plus": "vit",
    "vit_retrain": "vit",
    "resnet_svd_projection": "resnet",
}


def run(seeds: list[int], workdir: Path) -> dict:
    rows = {name: [] for name in CLASSIFIER_RECIPES}
    for seed in seeds:
        prepared = {arch: prepare_digits(str(workdir / f"seed{seed}-{arch}"), arch, seed) for arch in ("vit", "resnet")}
        for name, arch in CLASSIFIER_RECIPES.items():
            folder = Path(prepared[arch]["model"]).parent
            files = {split: str(folder / f"{split}.parquet") for split in ("train", "test")}
            output = workdir / f"seed{seed}-{name}"
            start = time.perf_counter()
            status = hf_unlearn(["unlearn", "--config", str(RECIPES / f"{name}.yaml"), "--model_name_or_path",
                                 prepared[arch]["model"], "--data_files", json.dumps(files), "--output_dir", str(output),
                                 "--seed", str(seed), "--disable_tqdm", "true"])  # fmt: skip
            results = json.loads((output / "unlearning_results.json").read_text())
            metrics, original = results["metrics"], results["original_metrics"]
            rows[name].append({
                "seed": seed, "status": status, "forget": metrics["forget_accuracy"],
                "retain": metrics["retain_accuracy"], "original_retain": original.get("retain_accuracy"),
                "seconds": metrics["unlearn_seconds"], "job_seconds": time.perf_counter() - start,
            })  # fmt: skip
    return rows


def percent_range(values) -> str:
    low, high = 100 * min(values), 100 * max(values)
    return f"{low:.1f} %" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}-{high:.1f} %"


def write(rows: dict, seeds: list[int], output: Path, seconds: float) -> None:
    lines = [
        "# Digits recipes over seeds",
        "",
        f"`python benchmarks/recipes.py --output {output} --seeds {' '.join(map(str, seeds))}` ({seconds:.0f} s; "
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}). Each seed prepares its "
        "own original model (data split and initialisation) and runs the recipe with that seed.",
        "",
        "| recipe | forget accuracy | retain accuracy | original retain accuracy | method seconds | check passed |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in rows.items():
        lines.append(
            f"| `digits/{name}.yaml` | {percent_range([r['forget'] for r in runs])} | "
            f"{percent_range([r['retain'] for r in runs])} | {percent_range([r['original_retain'] for r in runs])} | "
            f"{min(r['seconds'] for r in runs):.2f}-{max(r['seconds'] for r in runs):.2f} | "
            f"{sum(r['status'] == 0 for r in runs)} of {len(runs)} |"
        )
    output.write_text("\n".join(lines) + "\n")
    output.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/recipes.md"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    options = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hf_unlearn_recipes_") as workdir:
        rows = run(options.seeds, Path(workdir))
    write(rows, options.seeds, options.output, time.perf_counter() - start)
    print(options.output.read_text())


if __name__ == "__main__":
    main()
