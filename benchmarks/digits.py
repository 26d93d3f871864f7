"""Digits benchmark: in one run, train the original model, run `retrain` and every other method on the same task,
and write a markdown table (forget/retain accuracy, both MIAs, seconds, time as a fraction of retrain, mean gap to
retrain) to a results file.

    python benchmarks/digits.py --output benchmarks/results/digits.md [--architectures vit resnet] [--forget-class 3]

Budgets: `retrain` uses the original model's recipe (hf_unlearn.examples.digits.DEFAULT_TRAINING); the other methods use
hf_unlearn.examples.digits.unlearn_budgets(), chosen once on seed 0 and kept fixed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time

import torch
from common import write_results

from hf_unlearn import available_methods, get_method
from hf_unlearn.examples.digits import (
    DEFAULT_TRAINING,
    digits_classifier,
    load_digits_dataset,
    train_classifier,
    unlearn_budgets,
    unlearn_digits,
)
from hf_unlearn.metrics import gap_to_reference

COLUMNS = [
    ("forget_accuracy", "forget acc (test)"),
    ("retain_accuracy", "retain acc (test)"),
    ("forget_train_accuracy", "forget acc (train)"),
    ("retain_train_accuracy", "retain acc (train)"),
    ("mia_entropy", "MIA entropy"),
    ("mia_efficacy", "MIA efficacy"),
]


def compare_methods(
    model, data, recipe, forget_class, seed, methods, label="", processing_class=None, budgets=None,
    forget_indices=None, **common,
):  # fmt: skip
    """`retrain` (with the original's `recipe`) and each of `methods` on `model`, in one run; rows keyed by method,
    with the gap to retrain. `methods` are names (budget from `budgets`) or `{row: (method, budget)}`. Forgets class
    `forget_class`, or the training rows `forget_indices` when given. Works for any dataset with `train` / `test`
    splits (raw columns with `processing_class`); `common` are UnlearnConfig fields for every run."""
    workdir = tempfile.mkdtemp(prefix="bench_")
    if not isinstance(methods, dict):
        budgets = unlearn_budgets() if budgets is None else budgets
        methods = {method: (method, budgets[method]) for method in methods}
    forget_classes = None if forget_indices is not None else [forget_class]

    def run_method(name, method, budget):
        return unlearn_digits(
            model, data, method, forget_classes, f"{workdir}/{name}", seed, processing_class,
            forget_indices=forget_indices, disable_tqdm=True, **budget, **common,
        )  # fmt: skip

    _, retrained = run_method("retrain", "retrain", recipe)
    rows = {"original": dict(retrained.original_metrics, unlearn_seconds=None), "retrain": retrained.metrics}
    for name, (method, budget) in methods.items():
        _, result = run_method(name.replace(" ", "_"), method, budget)
        # Both runs scored the same rows, so the gaps come from the metrics already measured.
        result.metrics.update(gap_to_reference(result.metrics, retrained.metrics))
        rows[name] = result.metrics
        forget = result.metrics["forget_accuracy"]  # None for rows (sample-level): their training rows' accuracy
        forget_text = f"{forget:.3f}" if forget is not None else f"{result.metrics['forget_train_accuracy']:.3f} (train)"
        print(
            f"  {label} {name}: forget {forget_text} "
            f"retain {result.metrics['retain_accuracy']:.3f} in {result.metrics['unlearn_seconds']:.2f} s",
            flush=True,
        )
    return rows


def benchmark_architecture(architecture, data, forget_class, seed, methods):
    recipe = DEFAULT_TRAINING[architecture]
    start = time.perf_counter()
    model = train_classifier(
        digits_classifier(architecture, seed=seed),
        data["train"],
        tempfile.mkdtemp(prefix=f"original_{architecture}_"),
        seed=seed,
        disable_tqdm=True,
        **recipe,
    )
    train_seconds = time.perf_counter() - start
    rows = compare_methods(model, data, recipe, forget_class, seed, methods, label=architecture)
    return {"train_seconds": train_seconds, "rows": rows}


def markdown_table(architecture, result, forget_name):
    rows = result["rows"]
    retrain_seconds = rows["retrain"]["unlearn_seconds"]
    header = ["method"] + [title for _, title in COLUMNS] + ["seconds", "time / retrain", "mean gap to retrain"]
    lines = [
        f"### {architecture}, forget class {forget_name!r}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for method, metrics in rows.items():
        values = [f"{100 * metrics[key]:.1f} %" if metrics.get(key) is not None else "-" for key, _ in COLUMNS]
        seconds = metrics.get("unlearn_seconds")
        if seconds is None:
            timing = [f"({result['train_seconds']:.1f} training)", "-"]
        else:
            timing = [f"{seconds:.2f}", f"{100 * seconds / retrain_seconds:.1f} %"]
        gap = metrics.get("mean_gap")
        gap_text = f"{100 * gap:.2f}" if gap is not None else ("0 (reference)" if method == "retrain" else "-")
        lines.append("| " + " | ".join([method] + values + timing + [gap_text]) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="benchmarks/results/digits.md")
    parser.add_argument("--architectures", nargs="+", default=["vit", "resnet"])
    parser.add_argument("--forget-class", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method but retrain")
    options = parser.parse_args(argv)
    methods = options.methods or [m for m in available_methods()
                                   if m != "retrain" and "classifier" in get_method(m).method_class.model_kinds]
    unknown = [m for m in methods if m not in unlearn_budgets()]
    if unknown:
        parser.error(f"no digits budget for {unknown}; add its recipe to hf_unlearn.examples.digits.BUDGET_RECIPES")

    data = load_digits_dataset(seed=options.seed)
    forget_name = data["train"].features["label"].names[options.forget_class]
    results, sections = {}, []
    for architecture in options.architectures:
        print(f"Benchmarking {architecture}", flush=True)
        results[architecture] = benchmark_architecture(architecture, data, options.forget_class, options.seed, methods)
        sections.append(markdown_table(architecture, results[architecture], forget_name))

    command = "python benchmarks/digits.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join(
        [
            "# Digits benchmark",
            "",
            f"Command: `{command}`  ",
            f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, CPU. Seed {options.seed}. Accuracies on the digits test split (360 images) "
            "unless marked train; MIA rates on the forget training rows. Time = `unlearn_seconds` (the method "
            "only, not the evaluation), measured in this run.",
            "",
            "Budgets: " + json.dumps(unlearn_budgets()),
            "",
            *[section + "\n" for section in sections],
        ]
    )
    write_results(options.output, text, results)


if __name__ == "__main__":
    main()
