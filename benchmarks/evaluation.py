"""Where the original model is measured: before the method in a whole pass of its own, or after it in the unlearned
model's passes through the tail alone (`hf_unlearn.measure_cache`, for methods that name the modules they change:
gppu), side by side in one process on the tune tasks of `benchmarks/transfer.py`, with the library's defaults.

Per task and model: the method's own time (`unlearn_seconds`), the measuring passes before and after
(`evaluation_seconds`) both ways, and whether every metric of the original and of the unlearned model came out the
same. The two ways alternate (the whole original first on even rows) so neither always runs warm, and each measures
the original itself (the in-process reuse of the original's measurement is cleared before every run).

    python benchmarks/evaluation.py --cache benchmarks/.cache --output benchmarks/results/evaluation_original_after.md
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path
from unittest import mock

from common import compared_values, write_table
from tasks import load_task
from transfer import original_model

from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.contract import UnlearningMethod
from hf_unlearn.measure_cache import _CACHE
from hf_unlearn.methods import get_method

WAYS = ("original before, whole", "original after, through the tail")


def run(model, data, method: str, way: str, forget_class: int) -> dict:
    _CACHE.clear()  # both ways measure the original: no reuse of the other's measurement
    args = UnlearnConfig(output_dir=tempfile.mkdtemp(), method=method, report_to="none", disable_tqdm=True, seed=0)
    method_class = get_method(method).method_class
    # The first way: the method names no modules, so the original is measured before it, whole (as until stop 33).
    whole = mock.patch.object(method_class, "changed_modules", UnlearningMethod.changed_modules)
    with whole if way == WAYS[0] else contextlib.nullcontext():
        trainer = UnlearningTrainer(model, args, train_dataset=data["train"], eval_dataset=data["test"],
                                    forget_classes=[forget_class])  # fmt: skip
        result = trainer.unlearn()
    metrics = result.metrics

    return {
        "unlearn_seconds": metrics["unlearn_seconds"],
        "evaluation_seconds": metrics["evaluation_seconds"],
        "original_measured_from_block": metrics["original_measured_from_block"],
        "values": compared_values(metrics),
        "original_values": compared_values(result.original_metrics),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["shapes/vit", "shapes/resnet", "chirps/ast", "chirps/wav2vec2"])
    parser.add_argument("--methods", nargs="+", default=["gppu"])
    parser.add_argument("--classes", nargs="+", type=int, default=[3, 7])
    parser.add_argument("--cache", default=None)
    parser.add_argument("--output", default="benchmarks/results/evaluation_original_after.md")
    options = parser.parse_args(argv)
    lines = [
        "| model | class | method | method (s): before / after | evaluation (s): before / after | evaluation / method: "
        "before / after | original measured from | same metrics |",
        "|---|---|---|---|---|---|---|---|",
    ]
    results = []
    runs = [(name, method, c) for name in options.models for method in options.methods for c in options.classes]
    for index, (name, method, forget_class) in enumerate(runs):
        task, architecture = name.split("/")
        data = load_task(task, architecture)
        model, _ = original_model(task, architecture, data, 0, Path(options.cache) if options.cache else None)
        order = list(WAYS) if index % 2 == 0 else list(WAYS)[::-1]
        measured = {way: run(model, data, method, way, forget_class) for way in order}
        before, after = measured[WAYS[0]], measured[WAYS[1]]
        same = before["values"] == after["values"] and before["original_values"] == after["original_values"]
        lines.append(
            f"| {name} | {forget_class} | {method} | {before['unlearn_seconds']:.2f} / {after['unlearn_seconds']:.2f} | "
            f"{before['evaluation_seconds']:.2f} / {after['evaluation_seconds']:.2f} | "
            f"{before['evaluation_seconds'] / before['unlearn_seconds']:.2f} / "
            f"{after['evaluation_seconds'] / after['unlearn_seconds']:.2f} | "
            f"{after['original_measured_from_block'] or 'whole'} | {'yes' if same else 'NO'} |"
        )
        print(lines[-1], flush=True)
        results.append({"model": name, "class": forget_class, "method": method, "order": order, **measured})
    setting = ("`UnlearnConfig(output_dir, method=m, seed=0)`; originals trained from scratch by `transfer.py` "
               "(cached). Same metrics: every float metric of the original and of the unlearned model equal both "
               "ways.")  # fmt: skip
    write_table(options.output, "Measuring the original before the method, or after it through the tail",
                "evaluation.py", argv if argv is not None else sys.argv[1:], setting, "\n".join(lines), results)


if __name__ == "__main__":
    main()
