"""Variants of one method's settings on the tune tasks of `benchmarks/transfer.py`, each beside its retrain (the
measured ablations behind the defaults; validation tasks are never used here).

    python benchmarks/ablation.py --method svd_projection --cache benchmarks/.cache \\
        --variant defaults '{}' --variant 'no attention' '{"method_kwargs": {"exclude_modules": ".*attention.*"}}' \\
        --output benchmarks/results/ablation_svd_projection.md

Each variant is a JSON object of `UnlearnConfig` fields (`method_kwargs` for the method's own settings).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import write_results
from transfer import percent, retrain_metrics, tune_model

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.metrics import gap_to_reference


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True)
    parser.add_argument("--models", nargs="*", default=["shapes/vit", "shapes/resnet", "chirps/ast", "chirps/wav2vec2"])
    parser.add_argument("--classes", nargs="*", type=int, default=[3, 7])
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True)
    parser.add_argument("--seed", type=int, default=0, help="Each variant's `UnlearnConfig.seed` (the originals and "
                        "retrains are seed 0's). Ablation files before stop 39 ran at TrainingArguments' 42.")
    parser.add_argument("--cache", default=None)
    parser.add_argument("--output", default=None)
    options = parser.parse_args(argv)
    cache = Path(options.cache) if options.cache else None
    lines = [f"# {options.method}: ablation on the tune tasks", "",
             f"`python benchmarks/ablation.py {' '.join(sys.argv[1:] if argv is None else argv)}` (variants at seed "
             f"{options.seed}; a time ratio marked * is against a retrain timed in an earlier process, `--cache`)", "",
             "| model | class | variant | forget | retain (original) | MIA (retrain) | probe (retrain) | mean gap | "
             "time / retrain |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    results = []
    for name in options.models:
        task, architecture = name.split("/")
        data, model = tune_model(name, cache, "ablations choose settings")
        for forget_class in options.classes:
            reference = retrain_metrics(task, architecture, model, data, forget_class, 0, cache)
            original, retrain = reference["original"], reference["retrain"]
            for variant, fields in options.variant:
                args = UnlearnConfig(output_dir=tempfile.mkdtemp(), method=options.method, report_to="none",
                                     disable_tqdm=True, eval_before_unlearn=False,
                                     **{"seed": options.seed, **json.loads(fields)})  # fmt: skip
                result = UnlearningTrainer(model, args, train_dataset=data["train"], eval_dataset=data["test"],
                                           forget_classes=[forget_class]).unlearn()  # fmt: skip
                m = result.metrics
                gap = gap_to_reference(m, retrain)["mean_gap"]
                line = (f"| {name} | {forget_class} | {variant} | {percent(m['forget_accuracy'])} | "
                        f"{percent(m['retain_accuracy'])} ({percent(original['retain_accuracy'])}) | "
                        f"{percent(m['mia_entropy'])} ({percent(retrain['mia_entropy'])}) | "
                        f"{percent(m.get('feature_probe'))} ({percent(retrain.get('feature_probe'))}) | "
                        f"{100 * gap:.1f} | {m['unlearn_seconds'] / retrain['unlearn_seconds']:.3f}"
                        f"{'*' if reference.get('cached') else ''} |")  # fmt: skip
                print(line, flush=True)
                lines.append(line)
                results.append({"model": name, "class": forget_class, "variant": variant, "fields": fields,
                                "metrics": m, "retrain": retrain, "original": original})  # fmt: skip
    if options.output:
        write_results(options.output, "\n".join(lines) + "\n", results)


if __name__ == "__main__":
    main()
