"""What the benchmark scripts share: peak resident memory of a call (Linux `/proc`), one measurement in a fresh
process, and writing the results."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def with_peak_memory(function, *args, **kwargs):
    """`(result, seconds, peak extra resident bytes)` of `function(*args, **kwargs)`, sampled every 2 ms."""
    baseline, peak, running = resident_bytes(), [0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    try:
        result = function(*args, **kwargs)
    finally:
        seconds = time.perf_counter() - start
        running[0] = False
        sampler.join()
    return result, seconds, max(0, max(peak[0], resident_bytes()) - baseline)


def best_of(function, repeats: int = 2) -> float:
    """The shortest of `repeats` timed calls of `function`, after one untimed warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def write_results(output: str, text: str, data) -> None:
    """The markdown report at `output` and the raw numbers beside it (same name, `.json`); prints the report."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    print(text)


def measure_in_process(command: list[str], label: str, env: dict | None = None) -> dict | None:
    """Run a script's internal `--one` measurement as `command` (a fresh process, or a process group under
    `torch.distributed.run`) and return the JSON of its `RESULT ` line; on failure print `label` with the error's
    tail and return None."""
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    found = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode or not found:
        print(f"{label}: failed\n{completed.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(found[0][len("RESULT ") :])


def compared_values(metrics: dict) -> dict:
    """The float metrics of a run that two ways of running it must agree on (timings left out)."""
    return {key: value for key, value in metrics.items()
            if isinstance(value, float) and "seconds" not in key and not key.startswith("time")}  # fmt: skip


def write_table(output: str, title: str, script: str, argv, setting: str, table: str, results: list) -> None:
    """The report of a measuring script: title, the command line that made it, the machine and `setting`, the table;
    the raw results beside it (`write_results`)."""
    import torch

    command = f"python benchmarks/{script} {' '.join(argv if argv is not None else sys.argv[1:])}"
    header = f"`{command}` on {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
    write_results(output, "\n".join([f"# {title}", "", header + setting, "", table, ""]), results)
    print(f"written {output}")
