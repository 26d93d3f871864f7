"""How rows are read: model inputs as python lists (what `datasets` gives a dataset without a format) against numpy
arrays (what `UnlearningTrainer` reads them as since `data.numpy_model_inputs`), side by side in one process on
the tasks of `benchmarks/transfer.py`, with the library's defaults.

Per task, model and method: the method's own time (`unlearn_seconds`) and the measuring passes before and after
(`evaluation_seconds`) for both ways of reading, and whether every metric came out the same. The two ways alternate
(python lists first on even rows, numpy first on odd ones) so neither always runs warm, and each measures the
original itself (the in-process reuse of the original's measurement is cleared before every run).

    python benchmarks/decode.py --cache benchmarks/.cache --output benchmarks/results/decode_numpy.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from unittest import mock

from common import compared_values, write_table
from tasks import load_task
from transfer import original_model

import hf_unlearn.request
from hf_unlearn import UnlearnConfig, UnlearningTrainer
from hf_unlearn.measure_cache import _CACHE

WAYS = {"python lists": lambda dataset: dataset, "numpy": hf_unlearn.request.numpy_model_inputs}


def run(model, data, method: str, way: str) -> dict:
    _CACHE.clear()  # both ways measure the original: no reuse of the other's measurement
    args = UnlearnConfig(output_dir=tempfile.mkdtemp(), method=method, report_to="none", disable_tqdm=True, seed=0)
    with mock.patch.object(hf_unlearn.request, "numpy_model_inputs", WAYS[way]):
        trainer = UnlearningTrainer(model, args, train_dataset=data["train"], eval_dataset=data["test"],
                                    forget_classes=[3])  # fmt: skip
    metrics = trainer.unlearn().metrics
    return {
        "unlearn_seconds": metrics["unlearn_seconds"],
        "evaluation_seconds": metrics["evaluation_seconds"],
        "values": compared_values(metrics),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["shapes/vit", "shapes/resnet", "chirps/ast", "chirps/wav2vec2"])
    parser.add_argument("--methods", nargs="+", default=["gppu", "svd_projection"])
    parser.add_argument("--cache", default=None)
    parser.add_argument("--output", default="benchmarks/results/decode_numpy.md")
    options = parser.parse_args(argv)
    lines = [
        "| model | method | method (s): lists / numpy | evaluation (s): lists / numpy | evaluation / method: lists / "
        "numpy | same metrics |",
        "|---|---|---|---|---|---|",
    ]
    results = []
    for index, (name, method) in enumerate((name, method) for name in options.models for method in options.methods):
        task, architecture = name.split("/")
        data = load_task(task, architecture)
        model, _ = original_model(task, architecture, data, 0, Path(options.cache) if options.cache else None)
        order = list(WAYS) if index % 2 == 0 else list(WAYS)[::-1]
        measured = {way: run(model, data, method, way) for way in order}
        lists, arrays = measured["python lists"], measured["numpy"]
        same = lists["values"] == arrays["values"]
        lines.append(
            f"| {name} | {method} | {lists['unlearn_seconds']:.2f} / {arrays['unlearn_seconds']:.2f} | "
            f"{lists['evaluation_seconds']:.2f} / {arrays['evaluation_seconds']:.2f} | "
            f"{lists['evaluation_seconds'] / lists['unlearn_seconds']:.2f} / "
            f"{arrays['evaluation_seconds'] / arrays['unlearn_seconds']:.2f} | {'yes' if same else 'NO'} |"
        )
        print(lines[-1], flush=True)
        results.append({"model": name, "method": method, "order": order, **measured})
    setting = ("forget class 3, `UnlearnConfig(output_dir, method=m, seed=0)`; originals trained from scratch by "
               "`transfer.py` (cached). Same metrics: every float metric equal.")  # fmt: skip
    write_table(options.output, "Reading model inputs as python lists or numpy arrays", "decode.py",
                argv if argv is not None else sys.argv[1:], setting, "\n".join(lines), results)  # fmt: skip


if __name__ == "__main__":
    main()
