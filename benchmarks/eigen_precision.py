"""svd_projection's eigendecompositions in float32 against float64: time and what changes in the result.

    python benchmarks/eigen_precision.py --output benchmarks/results/eigen_precision.md

For each model, svd_projection runs twice on the same rows with fixed alphas (no grid search, no head refit, so the
projected weights are the whole result): `eigen_dtype="float64"` and `"float32"`. Reported: the eigendecomposition
stage's seconds for each, and the largest relative difference between the two runs' projected weights over all
layers, ||W32 - W64|| / ||W64 - W_original|| (the difference relative to what the projection changed), plus the two
runs' forget / retain accuracy where the model is trained.

Models: the digits ViT and ResNet (trained here; the ResNet's last 3x3 convs run at 1x1 spatial size, whose Gram
matrices are mostly exact zeros), and DeiT-small and ResNet-50 at their published sizes with random weights (random
inputs), as in `benchmarks/scale.py`.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile

import torch
from common import write_results
from scale import MODELS, random_rows

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.examples.digits import DEFAULT_TRAINING, digits_classifier, load_digits_dataset, train_classifier

FIXED = {"alpha_search": False, "head_refit_steps": 0, "alpha_r": 100.0, "alpha_f": 3.0}


def run(model, data, dtype, num_samples):
    args = UnlearnConfig(output_dir=tempfile.mkdtemp(), method="svd_projection", report_to="none", disable_tqdm=True,
                         eval_after_unlearn=data["measure"], eval_before_unlearn=False, per_device_eval_batch_size=16,
                         method_kwargs={**FIXED, "num_samples": num_samples, "eigen_dtype": dtype})  # fmt: skip
    trainer = UnlearningTrainer(model, args, train_dataset=data["train"], eval_dataset=data["test"],
                                forget_classes=[data["forget"]])  # fmt: skip
    return trainer.unlearn()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="benchmarks/results/eigen_precision.md")
    parser.add_argument("--models", nargs="+", default=["digits-vit", "digits-resnet", "deit-small", "resnet-50"])
    parser.add_argument("--rows", type=int, default=160, help="Random rows (10 classes) for the published-size models.")
    options = parser.parse_args(argv)
    lines = [
        "# svd_projection: eigendecompositions in float32 against float64", "",
        f"`python benchmarks/eigen_precision.py {' '.join(sys.argv[1:] if argv is None else argv)}` - "
        f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU. Fixed alphas "
        "(100, 3), no head refit.", "",
        "| model | eigendecompositions float64, s | float32, s | ratio | max relative weight difference | forget / retain "
        "float64 | forget / retain float32 |", "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    results = []
    for name in options.models:
        if name.startswith("digits-"):
            architecture = name.split("-")[1]
            digits = load_digits_dataset()
            model = train_classifier(digits_classifier(architecture), digits["train"], tempfile.mkdtemp(),
                                     disable_tqdm=True, **DEFAULT_TRAINING[architecture])  # fmt: skip
            data, num_samples = {**digits, "forget": 3, "measure": True}, 900
        else:
            build, input_name, shape = MODELS[name]
            model = build().eval()
            torch.manual_seed(0)
            train = random_rows(options.rows, input_name, shape, 0)
            data, num_samples = {"train": train, "test": train, "forget": 0, "measure": False}, options.rows
        original = {key: value.clone() for key, value in model.state_dict().items()}
        outputs = {dtype: run(model, data, dtype, num_samples) for dtype in ("float64", "float32")}
        weights = {dtype: output.model.state_dict() for dtype, output in outputs.items()}
        worst = 0.0
        for key, reference in weights["float64"].items():
            changed = (reference.float() - original[key].float()).norm()
            if reference.is_floating_point() and changed > 0:
                worst = max(worst, float((weights["float32"][key].float() - reference.float()).norm() / changed))
        seconds = {dtype: output.metrics["stage_seconds"]["eigendecompositions"] for dtype, output in outputs.items()}
        accuracy = {
            dtype: (f"{100 * output.metrics['forget_accuracy']:.1f} / {100 * output.metrics['retain_accuracy']:.1f}"
                    if data["measure"] else "-")
            for dtype, output in outputs.items()
        }  # fmt: skip
        line = (f"| {name} | {seconds['float64']:.2f} | {seconds['float32']:.2f} | "
                f"{seconds['float32'] / seconds['float64']:.2f} | {worst:.1e} | {accuracy['float64']} | "
                f"{accuracy['float32']} |")  # fmt: skip
        print(line, flush=True)
        lines.append(line)
        results.append({"model": name, "seconds": seconds, "max_relative_difference": worst, "accuracy": accuracy})
    write_results(options.output, "\n".join(lines) + "\n", results)


if __name__ == "__main__":
    main()
