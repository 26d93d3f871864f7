"""What the benchmark scripts share: peak resident memory of a call (Linux `/proc`) and writing the results."""

from __future__ import annotations

import json
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


def write_results(output: str, text: str, data) -> None:
    """The markdown report at `output` and the raw numbers beside it (same name, `.json`); prints the report."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    print(text)
