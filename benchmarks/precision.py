"""Half-precision models, as transformers 5 loads a float16 or bfloat16 checkpoint (`from_pretrained(dtype="auto")`):
each method with its defaults on the same trained model in float32, float16 and bfloat16.

A tiny ViT and a tiny ResNet are trained from scratch in the run on scikit-learn's digits at 32x32 (grey copied to
RGB), in float32; then each copy is cast (`model.to(dtype)`) and gppu, svd_projection, remain_geometry and neggrad_plus
forget class 3 with `UnlearnConfig(output_dir, method=m, seed=0)` and nothing else. The table gives forget / retain
test accuracy (measured in the model's own precision), the run's check, and the dtypes the returned model holds, or
the error a run raised. `hf_unlearn.precision` is what makes the half-precision rows run; before it, the float16 and
bfloat16 ResNet raised on their first batch and the float16 ViT's gradient methods ended with non-finite weights.

    python benchmarks/precision.py --output benchmarks/results/precision.md
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from architectures import TRANSFORMER, data

METHODS = ("gppu", "svd_projection", "remain_geometry", "neggrad_plus")
DTYPES = ("float32", "float16", "bfloat16")
FORGET_CLASS = 3


def build(architecture: str):
    from transformers import AutoConfig, AutoModelForImageClassification

    fields = {
        "vit": {**TRANSFORMER, "image_size": 32, "patch_size": 4},
        "resnet": {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1]},
    }[architecture]  # fmt: skip
    config = AutoConfig.for_model(architecture, **fields, num_channels=3, num_labels=10)
    return AutoModelForImageClassification.from_config(config)


def splits() -> dict:
    """Digits at 32x32, grey copied to RGB: `architectures.py`'s image data."""
    import datasets

    column, raw = data("vit")
    return {split: datasets.Dataset.from_dict({column: x, "label": y.tolist()}).with_format("torch")
            for split, (x, y) in raw.items()}  # fmt: skip


def run(architecture: str, data: dict, workdir: str) -> list[dict]:
    import torch
    from transformers import Trainer, TrainingArguments

    from hf_unlearn import UnlearnConfig, UnlearningTrainer

    torch.manual_seed(0)
    model = build(architecture)
    recipe = TrainingArguments(os.path.join(workdir, "original"), num_train_epochs=8, learning_rate=1e-3,
                               per_device_train_batch_size=32, report_to="none", disable_tqdm=True, save_strategy="no",
                               seed=0)  # fmt: skip
    Trainer(model=model, args=recipe, train_dataset=data["train"]).train()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    rows = []
    for dtype in DTYPES:
        for method in METHODS:
            model.float().load_state_dict(state)  # float32 first: loading into half-precision tensors rounds
            copy = model.to(getattr(torch, dtype))
            args = UnlearnConfig(output_dir=os.path.join(workdir, dtype, method), method=method, seed=0,
                                 disable_tqdm=True, report_to="none")  # fmt: skip
            row = {"architecture": architecture, "dtype": dtype, "method": method}
            started = time.perf_counter()
            try:
                output = UnlearningTrainer(copy, args, train_dataset=data["train"], eval_dataset=data["test"],
                                           forget_classes=[FORGET_CLASS]).unlearn()  # fmt: skip
                row.update(forget=output.metrics["forget_accuracy"], retain=output.metrics["retain_accuracy"],
                           original_retain=output.original_metrics["retain_accuracy"], forgotten=output.forgotten,
                           dtypes=sorted({str(p.dtype).removeprefix("torch.") for p in output.model.parameters()}))  # fmt: skip
            except Exception as error:  # noqa: BLE001 - what a user would get is the result
                row["error"] = f"{type(error).__name__}: {error}"[:200]
            row["seconds"] = time.perf_counter() - started
            rows.append(row)
            print(row, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | dtype | method | forget / retain (original retain) | check | returned dtypes | s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if "error" in r:
            cells = f"**error**: {r['error'][:150]} | - | - | {r['seconds']:.1f}"
        else:
            check = "forgotten" if r["forgotten"] else "**failed**"
            cells = (f"{100 * r['forget']:.1f} / {100 * r['retain']:.1f} ({100 * r['original_retain']:.1f}) | {check} | "
                     f"{', '.join(r['dtypes'])} | {r['seconds']:.1f}")  # fmt: skip
        lines.append(f"| {r['architecture']} | {r['dtype']} | {r['method']} | {cells} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architectures", nargs="+", choices=["vit", "resnet"], default=["vit", "resnet"])
    parser.add_argument("--output", default="benchmarks/results/precision.md")
    options = parser.parse_args(argv)
    from common import write_table
    from transformers import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    data = splits()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for architecture in options.architectures:
            rows += run(architecture, data, os.path.join(workdir, architecture))
    setting = (f"tiny configs trained from scratch in float32 (8 epochs, AdamW 1e-3), cast to each dtype, then each "
               f"method with its defaults forgetting class {FORGET_CLASS} of 10; test accuracy in %, measured in the "
               "model's own precision.")  # fmt: skip
    write_table(options.output, "Half-precision models, library defaults", "precision.py", argv, setting, table(rows),
                rows)  # fmt: skip


if __name__ == "__main__":
    main()
