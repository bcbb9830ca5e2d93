"""Speed and memory measurements behind `hf-unlearn bench` (targets live here, never in timed tests)."""

from __future__ import annotations

import importlib
import json
import time


# name -> "module:function"; each function takes no required argument and returns a JSON-serialisable dict.
MEASUREMENTS = {
    "npo_cached_vs_graddiff": "hf_unlearn.perf.trainers:bench_npo_vs_graddiff",
    "zo_step_vs_forwards": "hf_unlearn.perf.optim:bench_zo_step_time",
    "zo_peak_memory": "hf_unlearn.perf.optim:bench_zo_peak_memory",
    "hybrid_vs_adam_wall": "hf_unlearn.perf.optim:bench_hybrid_wall_time",
    "tofu_eval_throughput": "hf_unlearn.perf.eval:bench_tofu_eval_throughput",
    "bf16_zo_trajectory": "hf_unlearn.perf.scale:bench_bf16_trajectory",
    "tofu_full_eval_2m": "hf_unlearn.perf.tofu_full_eval:bench_tofu_full_eval",
}
# Only with `hf-unlearn bench --scale` (minutes more): the 6M and ~100M shapes side by side.
SCALE_MEASUREMENTS = {"shapes_6m_100m": "hf_unlearn.perf.scale:bench_shapes_at_scale"}
# Only with `hf-unlearn bench --real`: the fetched SmolLM2-135M-Instruct (`hf-unlearn models fetch`).
REAL_MEASUREMENTS = {"real_model_costs": "hf_unlearn.perf.real:bench_real_model_costs"}


def run_measurements(names: list[str]) -> dict:
    """Run the named measurements in order, printing each result line as it comes."""
    results = {}
    for name in names:
        module, function = {**MEASUREMENTS, **SCALE_MEASUREMENTS, **REAL_MEASUREMENTS}[name].split(":")
        start = time.perf_counter()
        results[name] = getattr(importlib.import_module(module), function)()
        results[name]["bench_seconds"] = round(time.perf_counter() - start, 2)
        print(f"{name}: {json.dumps(results[name])}")
    return results
