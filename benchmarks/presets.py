"""Reproduction check: each paper method with its paper's settings (`UnlearnConfig(preset="paper")`) beside the
library's defaults, on the digits-scale version of the paper's experiment, retrain measured in the same run.

    python benchmarks/presets.py --output benchmarks/results/presets.md

Experiments (sklearn digits, a small ViT and a small ResNet trained from scratch here, seed 0):
- svd_projection (Kodge et al.: one class of CIFAR-10): class 3, preset "cifar10" (S = 900, fixed alphas (100, 3),
  no search, no head refit, the official conv crop) against the defaults (alpha grid on held-out rows, head refit).
- remain_geometry (Huang et al.: random 10 % of CIFAR-10): a random 10 % of the training rows, preset "cifar10"
  (SGD 0.01, momentum 0.9, cosine, T = 1500, batch 128, K = 5, alpha = 25, no guard) against the defaults.
- gppu (Pathak & Das, abstract only): class 3, preset "any" (AdamW 1e-5, 3 epochs, the projection penalty) against
  the defaults.
The diffusion presets (DDPM, DiT) are not in this check: training the digits DDPM is its own benchmark
(`benchmarks/diffusion.py`).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time

import numpy as np
import torch
from common import write_results

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.examples.digits import DEFAULT_TRAINING, digits_classifier, load_digits_dataset, train_classifier
from hf_unlearn.metrics import gap_to_reference

EXPERIMENTS = {
    "svd_projection": {"request": "class", "preset_dataset": "cifar10"},
    "remain_geometry": {"request": "rows", "preset_dataset": "cifar10"},
    "gppu": {"request": "class", "preset_dataset": "any"},
}


def unlearn(model, data, method, request, seed, **fields):
    args = UnlearnConfig(output_dir=tempfile.mkdtemp(prefix="preset_"), method=method, seed=seed, report_to="none",
                         disable_tqdm=True, **fields)  # fmt: skip
    trainer = UnlearningTrainer(model, args, train_dataset=data["train"], eval_dataset=data["test"], **request)
    return trainer.unlearn()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="benchmarks/results/presets.md")
    parser.add_argument("--architectures", nargs="+", default=["vit", "resnet"])
    parser.add_argument("--methods", nargs="+", default=list(EXPERIMENTS))
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    data = load_digits_dataset(seed=options.seed)
    rng = np.random.default_rng(options.seed)
    rows = np.sort(rng.choice(len(data["train"]), len(data["train"]) // 10, replace=False)).tolist()
    requests = {"class": {"forget_classes": [3]}, "rows": {"forget_indices": rows}}
    lines = [
        "# Paper presets beside the library's defaults (digits)", "",
        f"`python benchmarks/presets.py {' '.join(sys.argv[1:] if argv is None else argv)}` - seed {options.seed}, "
        f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads. Test accuracy (forget "
        "/ retain; for random rows the forget training rows' accuracy), entropy MIA in %, mean gap to retrain in "
        "points, the method's seconds and as a fraction of the retrain's (measured in this run).", "",
        "| model | method | request | settings | forget | retain | MIA (retrain) | mean gap | seconds (/ retrain) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    results = []
    for architecture in options.architectures:
        recipe = DEFAULT_TRAINING[architecture]
        model = train_classifier(digits_classifier(architecture, seed=options.seed), data["train"],
                                 tempfile.mkdtemp(prefix="original_"), seed=options.seed, disable_tqdm=True,
                                 **recipe)  # fmt: skip
        retrains = {}
        for kind, request in requests.items():
            budget = {"num_train_epochs": recipe["epochs"], "learning_rate": recipe["learning_rate"],
                      "per_device_train_batch_size": 32, "weight_decay": 0.01, "lr_scheduler_type": "cosine",
                      "warmup_steps": 0}  # fmt: skip
            retrains[kind] = unlearn(model, data, "retrain", request, options.seed, **budget).metrics
        for method in options.methods:
            experiment = EXPERIMENTS[method]
            request, retrain = requests[experiment["request"]], retrains[experiment["request"]]
            for settings, fields in (("defaults", {}),
                                     (f"preset paper / {experiment['preset_dataset']}",
                                      {"preset": "paper", "preset_dataset": experiment["preset_dataset"]})):  # fmt: skip
                start = time.perf_counter()
                metrics = unlearn(model, data, method, request, options.seed, **fields).metrics
                metrics["wall_seconds"] = time.perf_counter() - start
                gap = gap_to_reference(metrics, retrain)["mean_gap"]
                forget_key = "forget_accuracy" if experiment["request"] == "class" else "forget_train_accuracy"
                line = (f"| {architecture} | {method} | {experiment['request']} | {settings} | "
                        f"{100 * metrics[forget_key]:.1f} | {100 * metrics['retain_accuracy']:.1f} | "
                        f"{100 * metrics['mia_entropy']:.1f} ({100 * retrain['mia_entropy']:.1f}) | {100 * gap:.1f} | "
                        f"{metrics['unlearn_seconds']:.2f} ({metrics['unlearn_seconds'] / retrain['unlearn_seconds']:.3f}) |")  # fmt: skip
                print(line, flush=True)
                lines.append(line)
                results.append({"architecture": architecture, "method": method, "settings": settings,
                                "metrics": metrics, "retrain": retrain})  # fmt: skip
    write_results(options.output, "\n".join(lines) + "\n", results)


if __name__ == "__main__":
    main()
