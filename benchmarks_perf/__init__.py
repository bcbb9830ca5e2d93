"""Speed and memory measurements behind `hf-unlearn bench` (targets live here, never in timed tests).

This package sits beside `hf_unlearn`, not inside it: it is not in the wheel, and nothing in the library imports it
(`hf_unlearn/cli/bench.py` loads it when the command runs, from a source checkout).
"""

from __future__ import annotations

import importlib
import json
import time


# name -> "module:function"; each function returns a JSON-serialisable dict. Ratios are `ratio.py` entries.
MEASUREMENTS = {
    "npo_cached_vs_graddiff": "benchmarks_perf.trainers:bench_npo_vs_graddiff",
    "zo_step_vs_forwards": "benchmarks_perf.optim:bench_zo_step_time",
    "zo_peak_memory": "benchmarks_perf.optim:bench_zo_peak_memory",
    "hybrid_vs_adam_wall": "benchmarks_perf.optim:bench_hybrid_wall_time",
    "tofu_eval_throughput": "benchmarks_perf.eval:bench_tofu_eval_throughput",
    "bf16_zo_trajectory": "benchmarks_perf.scale:bench_bf16_trajectory",
    "tofu_full_eval_2m": "benchmarks_perf.tofu_full_eval:bench_tofu_full_eval",
}
# Only with `hf-unlearn bench --scale` (minutes more): the 6M and ~100M shapes side by side.
SCALE_MEASUREMENTS = {"shapes_6m_100m": "benchmarks_perf.scale:bench_shapes_at_scale"}
# Only with `hf-unlearn bench --model NAME_OR_FOLDER` (or `--real`): a real model, see real.py.
REAL_MEASUREMENTS = {"real_model": "benchmarks_perf.real:bench_real_model"}


def all_measurements() -> dict[str, str]:
    return {**MEASUREMENTS, **SCALE_MEASUREMENTS, **REAL_MEASUREMENTS}


def run_measurements(names: list[str], settings: dict[str, dict] | None = None) -> dict:
    """Run the named measurements in order (``settings[name]``: keyword arguments), printing each result line."""
    results = {}
    for name in names:
        module, function = all_measurements()[name].split(":")
        start = time.perf_counter()
        results[name] = getattr(importlib.import_module(module), function)(**(settings or {}).get(name, {}))
        results[name]["bench_seconds"] = round(time.perf_counter() - start, 2)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    return results


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a measuring child process (``python -m benchmarks_perf...``): this checkout on its path,
    since the package is not installed."""
    import os
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def peak_rss_kb() -> int:
    """This process's peak resident set size (kB) since it started its program.

    ``VmHWM`` of ``/proc/self/status``, not ``getrusage``'s ``ru_maxrss``: Linux carries ``ru_maxrss`` over
    ``exec`` from the forking process, so a child started by a process holding a loaded model reports that
    process's peak, not its own. Elsewhere (no ``/proc``) ``ru_maxrss``, read in kB as Linux reports it.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
