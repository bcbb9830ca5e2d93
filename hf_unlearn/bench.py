"""`hf-unlearn bench`: speed and memory measurements, written as JSON (targets live here, never in timed tests)."""

from __future__ import annotations

import importlib
import json
import platform
import time
from pathlib import Path

import torch


# name -> "module:function"; each function takes no required argument and returns a JSON-serialisable dict.
BENCHMARKS = {
    "npo_cached_vs_graddiff": "hf_unlearn.bench_trainers:bench_npo_vs_graddiff",
    "zo_step_vs_forwards": "hf_unlearn.bench_optim:bench_zo_step_time",
    "zo_peak_memory": "hf_unlearn.bench_optim:bench_zo_peak_memory",
    "hybrid_vs_adam_wall": "hf_unlearn.bench_optim:bench_hybrid_wall_time",
    "tofu_eval_throughput": "hf_unlearn.bench_eval:bench_tofu_eval_throughput",
    "tofu_full_eval_2m": "hf_unlearn.perf_eval:bench_tofu_full_eval",
}


def add_arguments(parser):
    parser.add_argument("--output", default="bench.json", help="JSON file the measurements are written to.")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="Run only these entries (default: all).")


def run_benchmarks(names: list[str]) -> dict:
    results = {}
    for name in names:
        module, function = BENCHMARKS[name].split(":")
        start = time.perf_counter()
        results[name] = getattr(importlib.import_module(module), function)()
        results[name]["bench_seconds"] = round(time.perf_counter() - start, 2)
        print(f"{name}: {json.dumps(results[name])}")
    return results


def main(args):
    names = args.only or list(BENCHMARKS)
    report = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
        },
        "results": run_benchmarks(names),
    }
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"Wrote {args.output}")
