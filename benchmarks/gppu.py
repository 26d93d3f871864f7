"""gppu benchmark: in one run per model, the original model, `retrain`, `gppu` and the baselines (`finetune`,
`gradient_ascent`, `neggrad_plus`, `random_label`, plus `svd_projection`) forgetting class 3, with forget/retain test
accuracy, both MIAs, seconds and time as a fraction of retrain; then the cost of GPPU's k-NN graph and propagation as
the number of feature vectors grows to 20,000 (ViT-Base width, 768).

    python benchmarks/gppu.py --output benchmarks/results/gppu.md [--audio-dir ../shared/data/spoken_digits]

Models: the small digits ViT and ResNet of `hf_unlearn.examples.digits`; the small AST of `hf_unlearn.examples.spoken_digits` on spoken
digits (when `--audio-dir` exists). Budgets: `retrain` uses each original model's recipe, every other method its
`hf_unlearn.examples.digits.unlearn_budgets()` entry (chosen on digits, used unchanged on audio).
Targets (the gppu issue): forget test accuracy <= 1 %, retain test accuracy within 1 point of the original, time <= 10 %
of retrain.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import with_peak_memory, write_results
from digits import compare_methods, markdown_table

from hf_unlearn.examples.digits import (
    DEFAULT_TRAINING,
    digits_classifier,
    load_digits_dataset,
    train_classifier,
    unlearn_budgets,
)
from hf_unlearn.methods.gppu import knn_graph, propagate

DEFAULT_AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "spoken_digits"
METHODS = ["gppu", "finetune", "gradient_ascent", "neggrad_plus", "random_label", "svd_projection"]
FORGET_TARGET = 0.01


def meets_targets(metrics, original, retrain_seconds) -> dict:
    return {
        "forget": metrics["forget_accuracy"] <= FORGET_TARGET,
        "retain": metrics["retain_accuracy"] >= original["retain_accuracy"] - 0.01,
        "time": metrics["unlearn_seconds"] <= 0.10 * retrain_seconds,
    }


def graph_cost(sizes, width, seed):
    """Seconds and peak extra resident memory of the k-NN graph plus 10 propagation steps on random features."""
    rows = []
    for size in sizes:
        features = torch.randn(size, width, generator=torch.Generator().manual_seed(seed))

        def graph_and_propagation(features=features):
            a_hat = knn_graph(features, 8, batch_size=1024)
            return a_hat, propagate(a_hat, features, steps=10, teleport=0.1)

        (a_hat, _), seconds, peak = with_peak_memory(graph_and_propagation)
        rows.append(
            {
                "vectors": size,
                "width": width,
                "seconds": seconds,
                "peak_extra_mib": peak / 2**20,
                "edges": int(a_hat._nnz()),
                "dense_similarity_mib": size * size * 4 / 2**20,
                "features_mib": size * width * 4 / 2**20,
            }
        )
        print(f"  graph over {size} x {width}: {seconds:.2f} s, peak +{peak / 2**20:.0f} MiB", flush=True)
    return rows


def percent(value):
    return "-" if value is None else f"{100 * value:.1f} %"


def section(name, result):
    """The table of every method (as in the digits benchmark), which methods reach retrain's forget accuracy and at
    what time, GPPU's stages and its targets."""
    rows, original = result["rows"], result["rows"]["original"]
    retrain_seconds = rows["retrain"]["unlearn_seconds"]
    lines = [markdown_table(name, result, "three")]
    reached = [
        f"{method} ({metrics['unlearn_seconds']:.2f} s, {100 * metrics['unlearn_seconds'] / retrain_seconds:.1f} % of "
        f"retrain; retain {percent(metrics['retain_accuracy'])})"
        for method, metrics in rows.items()
        if method not in ("original", "retrain") and metrics["forget_accuracy"] <= FORGET_TARGET
    ]
    lines += ["", f"Reach forget accuracy <= 1 % (as retrain): {', '.join(reached) or 'none'}.  "]
    stages = rows["gppu"]["sampled_accuracy"]
    lines += [
        "GPPU stages on its sampled training rows (forget / retain accuracy): "
        + ", ".join(
            f"{stage} {percent(value['forget'])} / {percent(value['retain'])}" for stage, value in stages.items()
        )
        + f"; block fine-tuning steps: {rows['gppu']['finetune_steps']}.  ",
    ]
    targets = meets_targets(rows["gppu"], original, retrain_seconds)
    lines.append(
        "GPPU targets: "
        + ", ".join(f"{target} {'met' if met else 'NOT met'}" for target, met in targets.items())
        + f" (forget {percent(rows['gppu']['forget_accuracy'])}, retain {percent(rows['gppu']['retain_accuracy'])} vs "
        f"original {percent(original['retain_accuracy'])}, time {100 * rows['gppu']['unlearn_seconds'] / retrain_seconds:.1f} %)."
    )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="benchmarks/results/gppu.md")
    parser.add_argument("--audio-dir", default=str(DEFAULT_AUDIO_DIR))
    parser.add_argument("--graph-sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)

    tasks = []
    digits = load_digits_dataset(seed=options.seed)
    for architecture in ("vit", "resnet"):
        tasks.append(
            (
                f"digits {architecture}",
                digits_classifier(architecture, seed=options.seed),
                digits,
                DEFAULT_TRAINING[architecture],
            )
        )
    if Path(options.audio_dir).is_dir():
        from hf_unlearn.examples import spoken_digits

        audio = spoken_digits.load_spoken_digits(options.audio_dir)
        names = audio["train"].features["label"].names
        tasks.append(
            (
                "spoken digits ast",
                spoken_digits.ast_classifier(names, seed=options.seed),
                audio,
                spoken_digits.DEFAULT_TRAINING,
            )
        )

    results = {}
    for name, model, data, recipe in tasks:
        print(f"Training {name}", flush=True)
        start = time.perf_counter()
        model = train_classifier(
            model, data["train"], tempfile.mkdtemp(), seed=options.seed, disable_tqdm=True, **recipe
        )
        train_seconds = time.perf_counter() - start
        rows = compare_methods(model, data, recipe, 3, options.seed, METHODS, label=name)
        results[name] = {"train_seconds": train_seconds, "rows": rows}
    print("Graph cost", flush=True)
    cost = graph_cost(options.graph_sizes, 768, options.seed)

    command = "python benchmarks/gppu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# gppu benchmark",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, CPU. "
        f"Seed {options.seed}. Test-split accuracies; MIA rates on the forget training rows; time = `unlearn_seconds` "
        "(the method alone), every method measured in the same run as its retrain.  ",
        "Targets: forget <= 1 %, retain within 1 point of the original, time <= 10 % of retrain.  ",
        "Budgets: " + json.dumps({method: unlearn_budgets()[method] for method in METHODS}),
        "",
    ]
    for name, result in results.items():
        lines += [section(name, result), ""]
    lines += [
        "## k-NN graph + 10 propagation steps vs number of feature vectors (width 768, k = 8, 1,024-row blocks)",
        "",
        "| vectors | seconds | peak extra resident memory (MiB) | features (MiB) | a dense similarity matrix would be (MiB) | graph edges |",
        "|---|---|---|---|---|---|",
    ]
    for row in cost:
        lines.append(
            f"| {row['vectors']} | {row['seconds']:.2f} | {row['peak_extra_mib']:.0f} | {row['features_mib']:.0f} "
            f"| {row['dense_similarity_mib']:.0f} | {row['edges']} |"
        )
    write_results(options.output, "\n".join(lines) + "\n", {"results": results, "graph_cost": cost})


if __name__ == "__main__":
    main()
