"""svd_projection benchmark: in one run, per model and forget class, the original model, `retrain` and
`svd_projection` (forget/retain test accuracy, seconds, time as a fraction of retrain), then the cost of the
statistics pass as the number of samples grows (peak extra resident memory and seconds).

    python benchmarks/svd_projection.py --output benchmarks/results/svd_projection.md \
        [--audio-dir ../shared/data/spoken_digits]

Vision: digits with the small ViT and ResNet of `hf_unlearn.examples.digits`, forget classes 3 and 7 separately.
Audio (when `--audio-dir` exists): spoken digits with the small AST of `hf_unlearn.examples.spoken_digits`, forget class 3.
Budgets: `retrain` uses each original model's recipe; `svd_projection` uses unlearn_budgets()["svd_projection"].
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch
from common import with_peak_memory, write_results

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.activations import collect_input_grams, find_target_modules
from hf_unlearn.examples.digits import (
    DEFAULT_TRAINING,
    digits_classifier,
    load_digits_dataset,
    train_classifier,
    training_arguments,
    unlearn_budgets,
    unlearn_digits,
)

DEFAULT_AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "spoken_digits"


def compare(name, model, data, recipe, forget_classes, seed):
    """retrain and svd_projection on `model` for each forget class; one row per (model, class)."""
    rows = []
    workdir = tempfile.mkdtemp(prefix=f"svd_{name}_")
    for forget_class in forget_classes:
        runs = {"retrain": recipe, "svd_projection": unlearn_budgets()["svd_projection"]}
        (_, retrained), (_, projected) = (
            unlearn_digits(
                model, data, method, [forget_class], f"{workdir}/{method}", seed, disable_tqdm=True, **budget
            )
            for method, budget in runs.items()
        )
        original = retrained.original_metrics
        row = {
            "model": name,
            "forget_class": data["train"].features["label"].names[forget_class],
            "original_forget": original["forget_accuracy"],
            "original_retain": original["retain_accuracy"],
            "retrain_forget": retrained.metrics["forget_accuracy"],
            "retrain_retain": retrained.metrics["retain_accuracy"],
            "retrain_seconds": retrained.metrics["unlearn_seconds"],
            "svd_forget": projected.metrics["forget_accuracy"],
            "svd_retain": projected.metrics["retain_accuracy"],
            "svd_seconds": projected.metrics["unlearn_seconds"],
            "alpha": (projected.metrics["alpha_r"], projected.metrics["alpha_f"]),
            "alpha_grid": projected.metrics["alpha_grid"],
        }
        row["meets_targets"] = (
            row["svd_forget"] <= 0.01
            and row["svd_retain"] >= row["original_retain"] - 0.02
            and row["svd_seconds"] <= 0.05 * row["retrain_seconds"]
        )
        rows.append(row)
        print(
            f"  {name} forget {row['forget_class']}: svd forget {row['svd_forget']:.3f} retain {row['svd_retain']:.3f} "
            f"(original {row['original_retain']:.3f}) {row['svd_seconds']:.2f} s vs retrain {row['retrain_seconds']:.2f} s",
            flush=True,
        )
    return rows


def statistics_cost(model, data, sizes, seed):
    """Peak extra resident memory and seconds of one statistics pass over `size` rows (the train set repeated)."""
    import datasets

    args = UnlearnConfig(
        **training_arguments(tempfile.mkdtemp(), seed=seed, disable_tqdm=True), method="svd_projection"
    )
    trainer = UnlearningTrainer(model, args, train_dataset=data["train"], eval_dataset=data["test"], forget_classes=[3])
    modules = find_target_modules(trainer.model)
    rows = []
    for size in sizes:
        repeats = -(-size // len(data["train"]))
        dataset = datasets.concatenate_datasets([data["train"]] * repeats).select(range(size))
        statistics, seconds, peak_bytes = with_peak_memory(collect_input_grams, trainer, dataset, modules)
        gram_bytes = sum(gram.numel() * gram.element_size() for gram in statistics.grams.values())
        rows.append(
            {
                "samples": size,
                "seconds": seconds,
                "peak_extra_mib": peak_bytes / 2**20,
                "gram_kib": gram_bytes / 1024,
            }
        )
        print(
            f"  statistics over {size} samples: {seconds:.2f} s, peak +{rows[-1]['peak_extra_mib']:.1f} MiB", flush=True
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="benchmarks/results/svd_projection.md")
    parser.add_argument("--forget-classes", type=int, nargs="+", default=[3, 7])
    parser.add_argument("--audio-dir", default=str(DEFAULT_AUDIO_DIR))
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000, 4000, 16000])
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)

    data = load_digits_dataset(seed=options.seed)
    rows, models = [], {}
    for architecture in ("vit", "resnet"):
        print(f"Training {architecture}", flush=True)
        models[architecture] = train_classifier(
            digits_classifier(architecture, seed=options.seed), data["train"], tempfile.mkdtemp(), seed=options.seed,
            disable_tqdm=True, **DEFAULT_TRAINING[architecture],
        )  # fmt: skip
        rows += compare(
            architecture,
            models[architecture],
            data,
            DEFAULT_TRAINING[architecture],
            options.forget_classes,
            options.seed,
        )
    if Path(options.audio_dir).is_dir():
        from hf_unlearn.examples import spoken_digits

        print("Training ast", flush=True)
        audio = spoken_digits.load_spoken_digits(options.audio_dir)
        ast = train_classifier(
            spoken_digits.ast_classifier(audio["train"].features["label"].names, seed=options.seed), audio["train"],
            tempfile.mkdtemp(), seed=options.seed, disable_tqdm=True, **spoken_digits.DEFAULT_TRAINING,
        )  # fmt: skip
        rows += compare("ast (spoken digits)", ast, audio, spoken_digits.DEFAULT_TRAINING, [3], options.seed)
    cost = statistics_cost(models["vit"], data, options.sizes, options.seed)

    percent = lambda value: f"{100 * value:.1f}"  # noqa: E731
    command = "python benchmarks/svd_projection.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# svd_projection benchmark",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, CPU. "
        f"Seed {options.seed}. Test-split accuracies (%); time = `unlearn_seconds` of each method, same run.  ",
        "Targets: forget <= 1 %, retain within 2 points of the original, time <= 5 % of retrain.  ",
        "Budget: " + json.dumps(unlearn_budgets()["svd_projection"]),
        "",
        "| model | forget class | original forget / retain | retrain forget / retain | retrain s | svd forget / retain | svd s | svd / retrain time | chosen (alpha_r, alpha_f) | targets met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['forget_class']} | {percent(row['original_forget'])} / {percent(row['original_retain'])} "
            f"| {percent(row['retrain_forget'])} / {percent(row['retrain_retain'])} | {row['retrain_seconds']:.2f} "
            f"| {percent(row['svd_forget'])} / {percent(row['svd_retain'])} | {row['svd_seconds']:.2f} "
            f"| {percent(row['svd_seconds'] / row['retrain_seconds'])} % | {row['alpha']} | {'yes' if row['meets_targets'] else 'no'} |"
        )
    lines += [
        "",
        "## Statistics pass vs number of samples (ViT, all 14 layers)",
        "",
        "| samples | seconds | seconds per 1k samples | peak extra resident memory (MiB) | Gram matrices (KiB) |",
        "|---|---|---|---|---|",
    ]
    for row in cost:
        lines.append(
            f"| {row['samples']} | {row['seconds']:.2f} | {1000 * row['seconds'] / row['samples']:.2f} "
            f"| {row['peak_extra_mib']:.1f} | {row['gram_kib']:.0f} |"
        )
    write_results(options.output, "\n".join(lines) + "\n", {"rows": rows, "statistics": cost})


if __name__ == "__main__":
    main()
