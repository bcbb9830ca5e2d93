"""Evaluation throughput of the whole TOFU metric set on a tiny model (an entry of `hf-unlearn bench`)."""

from __future__ import annotations

import tempfile
import time

import torch


def bench_tofu_eval_throughput(
    num_authors: int = 20,
    qa_per_author: int = 10,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    arch: str = "llama",
    seed: int = 0,
) -> dict:
    """Examples per second of `TofuBenchmark.evaluate` (every TOFU metric, forget quality included).

    Builds the synthetic benchmark, a tokenizer and two tiny models (evaluated and retain) on the spot. The retain
    statistics are computed first and timed apart; the timed call then evaluates all five sets: one scoring pass
    per set over every answer variant and one greedy generation per set (``max_new_tokens``).
    """
    from hf_unlearn.benchmarks.synthetic import make_synthetic_tofu, write_synthetic_tofu
    from hf_unlearn.benchmarks.tofu import TofuBenchmark
    from hf_unlearn.tiny import build_tiny_model, train_tokenizer

    splits = make_synthetic_tofu(num_authors=num_authors, qa_per_author=qa_per_author, seed=seed)
    texts = [r["question"] + " " + r["answer"] for name in ("full", "holdout10") for r in splits[name]]
    tokenizer = train_tokenizer(texts, vocab_size=512)
    model = build_tiny_model(tokenizer, arch=arch, seed=seed)
    retain_model = build_tiny_model(tokenizer, arch=arch, seed=seed + 1)
    with tempfile.TemporaryDirectory() as data_dir:
        write_synthetic_tofu(data_dir, num_authors=num_authors, qa_per_author=qa_per_author, seed=seed)
        settings = {
            "data_dir": data_dir,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "show_progress": False,
        }
        start = time.perf_counter()
        reference = TofuBenchmark(**settings).retain_statistics(retain_model, tokenizer)
        retain_seconds = time.perf_counter() - start
        benchmark = TofuBenchmark(**settings, retain_stats=reference)
        start = time.perf_counter()
        result = benchmark.evaluate(model, tokenizer)
        seconds = time.perf_counter() - start
    examples = sum(result.num_examples.values())
    return {
        "examples": examples,
        "examples_per_set": result.num_examples,
        "seconds": round(seconds, 3),
        "examples_per_second": round(examples / seconds, 2),
        "retain_statistics_seconds": round(retain_seconds, 3),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "arch": arch,
        "threads": torch.get_num_threads(),
        "forget_quality": result.metrics["forget_quality"],
    }


if __name__ == "__main__":
    print(bench_tofu_eval_throughput())
