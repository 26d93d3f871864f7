"""Cost of the projection methods at real model sizes (issue: performance at real model sizes).

Each architecture is built from its transformers config at the published size with random weights (cost does not
depend on the weights): ViT-base/16 at 224, DeiT-small/16 at 224, ResNet-50 at 224, AST-base on 1024 x 128 log-mel
frames, Wav2Vec2-base on 1 s of 16 kHz audio. The data are random inputs of 10 classes (class 0 is forgotten). For each
model and method, in one process (so the peak memory is this run's):

- `forward`: one forward pass over the rows the method may read (its forget and retain views), timed in the same
  process: the physical floor of these methods;
- the method's stages (`stage_seconds` of the run: statistics / eigendecompositions / alpha search / projection /
  head refit for svd_projection; features / graph / projection / head refit / fine-tuning for gppu), their sum
  (`unlearn_seconds`) and its ratio to the forward pass;
- `evaluation_seconds`: the default measuring passes before and after (original and unlearned model), and its
  ratio to the method's own time;
- the process's peak resident memory, and the method's own: the peak resident memory while the method runs above
  the resident memory when it starts (sampled every 2 ms from /proc/self/statm, after handing the C heap's free
  memory back), which leaves out the benchmark's rows in memory and the measuring passes before and after.

    python benchmarks/scale.py --output benchmarks/results/scale.md [--models vit-base deit-small] [--rows 128 512]

How the cost grows: `--rows` (training rows), `--classes` with `--forget` (how many of them are forgotten) and
`--processes` (1: one process with torch's default threads; 2: `torch.distributed.run` with 2 CPU processes of one
thread each, gloo). `vit-tiny-32` (a ViT of 5.4M parameters on 32 x 32 images) keeps the sweeps to 10k rows short:

    python benchmarks/scale.py --models vit-tiny-32 --rows 300 1000 3000 10000 --output benchmarks/results/scale_growth_rows.md

`--methods gppu gppu-no-replay` sets gppu beside itself with `replay_block_input=False` (every check and training
step of its fine-tuning through the whole model), side by side in one run:

    python benchmarks/scale.py --models vit-tiny-32 --rows 3000 10000 --methods gppu gppu-no-replay --output benchmarks/results/scale_gppu_replay_growth.md

`--methods gppu gppu-original-first` sets the evaluation with the original measured through gppu's tail after the
method (the default) beside the original measured whole before it.

Each measurement runs in a fresh process (group). CPU threads: what torch uses by default on the machine.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import resource
import sys
import tempfile
import time

import datasets
import numpy as np
import torch
from common import measure_in_process, with_peak_memory, write_table
from transformers import (
    ASTConfig,
    ASTForAudioClassification,
    DeiTConfig,
    DeiTForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    Wav2Vec2Config,
    Wav2Vec2ForSequenceClassification,
)

from hf_unlearn import UnlearnConfig, UnlearningTrainer

#: name -> (build from the number of labels, input name, one row's input shape)
MODELS = {
    "vit-base": (lambda n: ViTForImageClassification(ViTConfig(num_labels=n)), "pixel_values", (3, 224, 224)),
    "deit-small": (
        lambda n: DeiTForImageClassification(DeiTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                                        intermediate_size=1536, num_labels=n)),  # fmt: skip
        "pixel_values",
        (3, 224, 224),
    ),
    "resnet-50": (
        lambda n: ResNetForImageClassification(ResNetConfig(num_labels=n)),  # ResNetConfig() is ResNet-50
        "pixel_values",
        (3, 224, 224),
    ),
    "ast-base": (lambda n: ASTForAudioClassification(ASTConfig(num_labels=n)), "input_values", (1024, 128)),
    "wav2vec2-base": (
        lambda n: Wav2Vec2ForSequenceClassification(Wav2Vec2Config(num_labels=n)),
        "input_values",
        (16000,),
    ),
    # Not a published size: a small ViT for the growth sweeps (rows to 10k, classes to 200).
    "vit-tiny-32": (
        lambda n: ViTForImageClassification(ViTConfig(image_size=32, patch_size=4, hidden_size=192,
                                                      num_hidden_layers=12, num_attention_heads=3,
                                                      intermediate_size=768, num_labels=n)),  # fmt: skip
        "pixel_values",
        (3, 32, 32),
    ),
}
METHODS = {  # name in the table: (method, method_kwargs)
    # The statistics and the alpha grid read at most the rows given; a 2 x 2 grid keeps the search visible.
    "svd_projection": ("svd_projection", {"alpha_r_grid": [30.0, 100.0], "alpha_f_grid": [3.0, 10.0]}),
    # Its defaults as they are, the 5 x 5 alpha grid included; with random weights a grid point's accuracies say
    # little, so how many passes stop early here is not what a trained model gives.
    "svd_projection-defaults": ("svd_projection", {}),
    "gppu": ("gppu", {}),
    # gppu's checks and training steps through the whole model (`replay_block_input=False`; the same decisions and
    # weights to rounding, tests/test_gppu.py). Called "gppu-whole-checks" while the replay served the checks alone.
    "gppu-no-replay": ("gppu", {"replay_block_input": False}),
    # gppu with its original measured before it, in a pass of its own through the whole model, as every method's was
    # until stop 33 (now the original is measured after gppu, through the tail alone, in the unlearned model's passes).
    "gppu-original-first": ("gppu", {}),
    # svd_projection's token layers from every token of every sample (`max_token_rows=None`, the default until stop
    # 31) and from at most 10,000 token rows per pass (the default since, after the official code).
    "svd_projection-every-token": ("svd_projection", {"alpha_r_grid": [30.0, 100.0], "alpha_f_grid": [3.0, 10.0],
                                                      "max_token_rows": None}),
    "svd_projection-token-cap": ("svd_projection", {"alpha_r_grid": [30.0, 100.0], "alpha_f_grid": [3.0, 10.0],
                                                    "max_token_rows": 10_000}),
    # Every layer decomposed from its d x d Gram matrix (`keep_rows=0`, the only way until stop 37), against
    # "svd_projection", where a layer with at most d / 2 input rows is decomposed from the rows (QR, n x n eigh).
    "svd_projection-gram": ("svd_projection", {"alpha_r_grid": [30.0, 100.0], "alpha_f_grid": [3.0, 10.0],
                                               "keep_rows": 0.0}),
}


def random_rows(rows: int, classes: int, input_name: str, shape: tuple, seed: int) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % classes
    inputs = rng.standard_normal((rows, *shape), dtype=np.float32)
    feature = {1: datasets.Sequence(datasets.Value("float32")), 2: datasets.Array2D(shape, "float32"),
               3: datasets.Array3D(shape, "float32")}[len(shape)]  # fmt: skip
    features = datasets.Features({input_name: feature, "label": datasets.ClassLabel(num_classes=classes)})
    return datasets.Dataset.from_dict({input_name: list(inputs), "label": labels}, features=features)


def run_one(model_name: str, method: str, rows: int, batch: int, classes: int = 10, forget: int = 1) -> dict:
    """One measurement (in this process; under `torch.distributed.run`, process 0's view of a shared run)."""
    torch.manual_seed(0)
    build, input_name, shape = MODELS[model_name]
    model = build(classes).eval()
    test_rows = max(rows // 4, classes)
    train, test = random_rows(rows, classes, input_name, shape, 0), random_rows(test_rows, classes, input_name, shape, 1)
    forget_classes = list(range(forget))
    forget_rows = int(np.isin(np.arange(rows) % classes, forget_classes).sum())
    args = UnlearnConfig(
        output_dir=tempfile.mkdtemp(), method=METHODS[method][0], method_kwargs=METHODS[method][1], report_to="none",
        disable_tqdm=True, per_device_eval_batch_size=batch, per_device_train_batch_size=batch, seed=0,
        max_retain_samples=rows - forget_rows, dataloader_pin_memory=False,
    )  # fmt: skip
    trainer = UnlearningTrainer(model, args, train_dataset=train, eval_dataset=test, forget_classes=forget_classes)
    if method.endswith("-original-first"):  # the method names no modules: its original is measured before it, whole
        trainer.method.changed_modules = lambda: None
    read = len(trainer.forget_view) + len(trainer.retain_view)
    trainer.predict_logits(trainer.forget_view.select(range(1)))  # warm-up, untimed (the method's passes follow others)
    start = time.perf_counter()
    trainer.predict_logits(trainer.forget_view)
    trainer.predict_logits(trainer.retain_view)
    forward = time.perf_counter() - start
    method_memory = {}
    run_method = trainer.method.run

    def run_and_sample():  # the method's own memory: what it holds above the process's memory when it starts
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # the C heap's free memory back first: the start counts what is live
        _, _, method_memory["bytes"] = with_peak_memory(run_method)

    trainer.method.run = run_and_sample
    result = trainer.unlearn()
    metrics = result.metrics
    return {
        "model": model_name,
        "method": method,
        "rows": rows,
        "classes": classes,
        "forget_classes": forget,
        "processes": trainer.accelerator.num_processes,
        "threads": torch.get_num_threads(),
        "rows_read": read,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "forward_seconds": forward,
        "unlearn_seconds": metrics["unlearn_seconds"],
        "stage_seconds": metrics.get("stage_seconds", {}),
        "evaluation_seconds": metrics["evaluation_seconds"],
        "original_measured_from_block": metrics.get("original_measured_from_block"),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "method_rss_gb": method_memory["bytes"] / 2**30,
        "forget_accuracy": metrics.get("forget_accuracy"),
        "finetune_rows": metrics.get("finetune_rows"),  # gppu: its training steps' rows, replayed or computed
    }


def table(results: list[dict]) -> str:
    lines = [
        "| model | params (M) | method | classes (forgotten) | processes x threads | rows read | forward (s) "
        "| method (s) | x forward | stages (s) | evaluation (s) | evaluation / method | peak RSS (GB) | method's own "
        "memory (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in r["stage_seconds"].items())
        if r.get("finetune_rows"):  # gppu's training rows by how their frozen blocks ran
            stages += f" (training rows: {r['finetune_rows']['replayed']} replayed, {r['finetune_rows']['computed']} computed)"
        own = f"{r['method_rss_gb']:.2f}" if "method_rss_gb" in r else "-"  # not measured before this column
        evaluation = f"{r['evaluation_seconds']:.1f}"
        if r.get("original_measured_from_block"):  # the original measured through its tail in the unlearned passes
            evaluation += f" (original from {r['original_measured_from_block']})"
        lines.append(
            f"| {r['model']} | {r['parameters_m']:.1f} | {r['method']} | {r.get('classes', 10)} "
            f"({r.get('forget_classes', 1)}) | {r.get('processes', 1)} x {r.get('threads', '-')} | {r['rows_read']} "
            f"| {r['forward_seconds']:.1f} | {r['unlearn_seconds']:.1f} | {r['unlearn_seconds'] / r['forward_seconds']:.2f} "
            f"| {stages} | {evaluation} | {r['evaluation_seconds'] / r['unlearn_seconds']:.2f} "
            f"| {r['peak_rss_gb']:.2f} | {own} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(set(MODELS) - {"vit-tiny-32"}))
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["gppu", "svd_projection"])
    parser.add_argument("--rows", nargs="+", type=int, default=[128], help="training rows")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--forget", nargs="+", type=int, default=[1], help="how many classes are forgotten")
    parser.add_argument("--processes", nargs="+", type=int, choices=[1, 2], default=[1])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--output", default="benchmarks/results/scale.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one measurement, print it as JSON
    options = parser.parse_args(argv)
    if options.one:
        model_name, method, rows, forget = options.one.split(",")
        measured = run_one(model_name, method, int(rows), options.batch, options.classes, int(forget))
        if int(os.environ.get("RANK", "0")) == 0:
            print("RESULT " + json.dumps(measured))
        return
    results, failed = [], []
    grid = itertools.product(options.processes, options.forget, options.rows, options.models, options.methods)
    for processes, forget, rows, model_name, method in grid:
        one = [__file__, "--one", f"{model_name},{method},{rows},{forget}", "--batch", str(options.batch),
               "--classes", str(options.classes)]  # fmt: skip
        command, env = [sys.executable, *one], dict(os.environ)
        if processes == 2:
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                       "29531", *one]  # fmt: skip
            env["OMP_NUM_THREADS"] = "1"
        label = f"{model_name} {method} {rows} {forget} x{processes}"
        measured = measure_in_process(command, label, env)
        if measured is not None:
            results.append(measured)
            print(table(results[-1:]).splitlines()[-1], flush=True)
        else:
            failed.append(label)
    setting = (
        f"random weights and inputs, {options.classes} classes, the first `forget` of them forgotten; default "
        "evaluation (original and unlearned, eval split a quarter of the rows). `x forward`: the method's time over "
        "one forward pass over the rows it may read, measured in the same process (group). Peak RSS: process 0's."
    )
    failures = f"\n\nFailed runs (their error is in the run's output): {', '.join(failed)}" if failed else ""
    write_table(options.output, "Projection methods at real model sizes (CPU)", "scale.py", argv, setting,
                table(results) + failures, results + [{"failed": label} for label in failed])  # fmt: skip


if __name__ == "__main__":
    main()
