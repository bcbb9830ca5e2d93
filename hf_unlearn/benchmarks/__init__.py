"""Benchmarks (TOFU, MUSE, WMDP) and their metrics: `benchmarks.get("tofu").evaluate(model, tokenizer)`."""

from hf_unlearn.benchmarks.base import Benchmark, BenchmarkResult, available, get, register


__all__ = ["Benchmark", "BenchmarkResult", "available", "get", "register"]
