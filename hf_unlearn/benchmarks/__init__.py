"""Benchmarks (TOFU, MUSE, WMDP) and their metrics: `benchmarks.get("tofu").evaluate(model, tokenizer)`.

Importing this package imports neither torch nor a benchmark: the registry loads a benchmark's module when it is
built.
"""

from __future__ import annotations

from pathlib import Path

from hf_unlearn.benchmarks.base import Benchmark, BenchmarkResult
from hf_unlearn.benchmarks.registry import available, get, register


def evaluate_model(
    model,
    tokenizer,
    benchmark: str | Benchmark,
    output_dir: str | Path | None = None,
    model_name: str | None = None,
    **settings,
) -> BenchmarkResult:
    """Evaluate an in-memory model; the main process writes the per-example JSON when ``output_dir`` is given."""
    from hf_unlearn.benchmarks.sharding import process_info

    evaluator = get(benchmark, **settings) if isinstance(benchmark, str) else benchmark
    result = evaluator.evaluate(model, tokenizer)
    if output_dir is not None and process_info()[0] == 0:
        result.save_per_example(output_dir, model_name=model_name)
    return result


__all__ = ["Benchmark", "BenchmarkResult", "available", "evaluate_model", "get", "register"]
