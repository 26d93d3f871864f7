"""Training-loop throughput of the gradient methods against a plain `transformers.Trainer.train` (issue: performance
at real model sizes, item 5: overhead <= 15 %).

For each model (random weights and inputs, as `benchmarks/scale.py`: cost does not depend on the weights) the same
rows, batch size, optimizer and number of optimizer steps run through:

- `plain`: `transformers.Trainer(model, args, train_dataset=rows).train()` (the baseline);
- each gradient method through `UnlearningTrainer.unlearn()` with evaluation off (`eval_before_unlearn=False,
  eval_after_unlearn=False`), forgetting class 0.

Rows/s counts every row that goes through a training-mode forward pass (a forward pre-hook on the model, so a method
that takes a forget and a retain batch per step counts both), over the wall time of the training loop
(`on_train_begin` to `on_train_end`). `overhead` is 1 - method rows/s / plain rows/s: the cost per trained row of what
the method adds to the loop (its second forward and backward pass, guard checks, masked steps). `method (s)` is the
method's whole time (`unlearn_seconds`: with remain_geometry's Fisher passes before the loop), for reference.

    python benchmarks/throughput.py --models vit-tiny-32 deit-small --steps 30 8 --output benchmarks/results/throughput.md

Each (model, method) runs in a fresh process. `--processes 2` runs each one as 2 CPU processes of one thread each
under `torch.distributed.run` (gloo): the plain Trainer then trains with DistributedDataParallel and the methods
through their accelerator, and rows/s counts the rows of both processes.

    python benchmarks/throughput.py --models vit-tiny-32 --steps 30 --processes 2 --repeats 3 --output benchmarks/results/throughput_processes.md

Two runs of the same row differed by up to 20 % here; `--repeats N` runs every row N times, interleaved (all rows,
then all again), and the table gives each row's median rows/s with its range, the overhead from the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from common import measure_in_process, write_table
from scale import MODELS, random_rows
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_unlearn import UnlearnConfig, UnlearningTrainer

# row name -> (method, method_kwargs); "plain" is transformers.Trainer. remain_geometry's guard stops a run once the
# forget rows are forgotten and the retain rows recovered, which a random model's rows may already be: the
# `no-guard` row times its loop for the whole budget.
METHODS = {"plain": (None, None), "finetune": ("finetune", None), "gradient_ascent": ("gradient_ascent", None),
           "neggrad_plus": ("neggrad_plus", None), "random_label": ("random_label", None),
           "remain_geometry": ("remain_geometry", None),
           "remain_geometry/no-guard": ("remain_geometry", {"guard_samples": 0})}  # fmt: skip
CLASSES, BATCH = 10, 16


class LoopTimer(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds, self.steps = time.perf_counter() - self.start, state.global_step


def run_one(model_name: str, row: str, steps: int) -> dict:
    method, method_kwargs = METHODS[row]
    torch.manual_seed(0)
    build, input_name, shape = MODELS[model_name]
    model = build(CLASSES)
    # Retain rows for `steps` batches in one epoch (gradient_ascent's forget rows alone take several epochs).
    rows = random_rows(steps * BATCH * 2, CLASSES, input_name, shape, 0)
    trained_rows = [0]

    def count(module, args, kwargs):
        if module.training:
            inputs = kwargs.get(input_name, args[0] if args else None)
            trained_rows[0] += len(inputs)

    model.register_forward_pre_hook(count, with_kwargs=True)
    timer = LoopTimer()
    common = {"output_dir": tempfile.mkdtemp(), "max_steps": steps, "per_device_train_batch_size": BATCH,
              "learning_rate": 1e-5, "optim": "adamw_torch", "lr_scheduler_type": "constant", "report_to": "none",
              "disable_tqdm": True, "save_strategy": "no", "seed": 0, "dataloader_pin_memory": False}  # fmt: skip
    method_seconds = None
    if method is None:
        trainer = Trainer(model, TrainingArguments(**common), train_dataset=rows, callbacks=[timer])
        trainer.train()
    else:
        args = UnlearnConfig(**common, method=method, method_kwargs=method_kwargs, eval_before_unlearn=False,
                             eval_after_unlearn=False)  # fmt: skip
        trainer = UnlearningTrainer(model, args, train_dataset=rows, forget_classes=[0])
        trainer.add_callback(timer)
        method_seconds = trainer.unlearn().metrics["unlearn_seconds"]
    processes, seconds = 1, timer.seconds
    if torch.distributed.is_initialized():  # every process's rows; the loop lasts as long as its slowest process
        processes = torch.distributed.get_world_size()
        totals = torch.tensor([float(trained_rows[0]), seconds], dtype=torch.float64)
        torch.distributed.all_reduce(totals[:1])
        torch.distributed.all_reduce(totals[1:], op=torch.distributed.ReduceOp.MAX)
        trained_rows[0], seconds = int(totals[0]), float(totals[1])
    return {"model": model_name, "method": row, "steps": timer.steps, "trained_rows": trained_rows[0],
            "loop_seconds": seconds, "rows_per_second": trained_rows[0] / seconds, "method_seconds": method_seconds,
            "threads": torch.get_num_threads(), "processes": processes}  # fmt: skip


def table(results: list[dict]) -> str:
    """One line per (model, processes, method): the median over its repeats (rows/s with their range), the overhead
    from the medians."""
    runs = {}
    for r in results:
        runs.setdefault((r["model"], r["processes"], r["method"]), []).append(r)
    lines = ["| model | processes x threads | method | runs | steps | rows trained | loop (s) | rows/s: median (range) | "
             "overhead vs plain | method (s) |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def median(group, key):
        return float(np.median([r[key] for r in group]))

    for (model, processes, method), group in runs.items():
        speed, plain = median(group, "rows_per_second"), runs.get((model, processes, "plain"))
        overhead = f"{1 - speed / median(plain, 'rows_per_second'):+.1%}" if plain and method != "plain" else "-"
        seconds = [r["method_seconds"] for r in group if r["method_seconds"] is not None]
        rates = [r["rows_per_second"] for r in group]
        lines.append(f"| {model} | {processes} x {group[0]['threads']} | {method} | {len(group)} | {group[0]['steps']} "
                     f"| {group[0]['trained_rows']} | {median(group, 'loop_seconds'):.1f} | {speed:.1f} "
                     f"({min(rates):.1f}-{max(rates):.1f}) | {overhead} | "
                     f"{f'{np.median(seconds):.1f}' if seconds else '-'} |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["vit-tiny-32"])
    parser.add_argument("--steps", nargs="+", type=int, default=[30], help="optimizer steps, one per model")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--processes", type=int, choices=[1, 2], default=1)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each row, interleaved; the table gives medians")
    parser.add_argument("--output", default="benchmarks/results/throughput.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.one:
        model_name, method, steps = options.one.split(",")
        measured = run_one(model_name, method, int(steps))
        if int(os.environ.get("RANK", "0")) == 0:
            print("RESULT " + json.dumps(measured))
        return
    if len(options.steps) != len(options.models):
        parser.error(f"--steps takes one value per model ({len(options.models)}), got {options.steps}")
    results = []
    runs = [(model_name, steps, method) for model_name, steps in zip(options.models, options.steps, strict=True)
            for method in options.methods]  # fmt: skip
    # Repeats interleave (every row once, then again): a slow spell of the machine falls on every row alike.
    for model_name, steps, method in runs * options.repeats:
        command, env = [sys.executable, __file__, "--one", f"{model_name},{method},{steps}"], dict(os.environ)
        if options.processes == 2:
            command[1:1] = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
            env["OMP_NUM_THREADS"] = "1"
        measured = measure_in_process(command, f"{model_name} {method} x{options.processes}", env)
        if measured is not None:
            results.append(measured)
            print(json.dumps(measured), flush=True)
    setting = (
        f"random weights and inputs, {CLASSES} classes, class 0 forgotten, batch {BATCH}, AdamW 1e-5 constant, the "
        "same number of optimizer steps for every row of a model. Rows trained: rows through a training-mode forward "
        "pass."
    )
    write_table(options.output, "Training-loop throughput: gradient methods against a plain Trainer.train",
                "throughput.py", argv, setting, table(results), results)  # fmt: skip


if __name__ == "__main__":
    main()
