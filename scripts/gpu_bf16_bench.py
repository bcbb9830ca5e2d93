"""GPU figures for the README's performance section: a ~1B Llama built from a config, bf16 over fp32 masters.

Run on one CUDA GPU (about 6 minutes on an H100; nothing is downloaded):

    PYTHONPATH=. python scripts/gpu_bf16_bench.py --output gpu_bench.json

Measures, for the same model, batch and seeds:
- ZO step / two forwards (bf16 weights over fp32 masters, ``zo_master_weights``);
- ZO peak memory / inference peak (``torch.cuda.max_memory_allocated``);
- hybrid (n AdamW + n AdaZO steps) / 2n AdamW steps, wall time (fp32 weights, bf16 autocast);
- NPO tokens/s: fp32 weights and compute versus bf16 autocast over fp32 weights (the masters);
- TOFU evaluation examples/s (``hf_unlearn.bench_eval``, tiny model: the metric pipeline's overhead on GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks_perf.optim import _zo_step, random_batch
from benchmarks_perf.scale import _npo_step
from hf_unlearn.optim import build_optimizer


# TinyLlama-1.1B's shape
CONFIG = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
          "num_key_value_heads": 4, "vocab_size": 32000, "tie_word_embeddings": False}  # fmt: skip


def model_1b(dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**CONFIG)).to(device="cuda", dtype=dtype).eval()


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def on_cuda(batch: dict) -> dict:
    return {k: v.cuda() for k, v in batch.items()}


def zo_figures(batch, repeats: int) -> dict:
    model = model_1b(torch.bfloat16)
    zo = build_optimizer(model, optimizer="zo_sgd", learning_rate=1e-7, zo_master_weights=True)
    steps = iter(range(10**9))

    def two_forwards():
        with torch.no_grad():
            model(**batch)
            model(**batch)

    two_forwards()
    _zo_step(model, zo, batch, next(steps))
    forwards = timed(two_forwards, repeats)
    zo_step = timed(lambda: _zo_step(model, zo, batch, next(steps)), repeats)
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        model(**batch)
    inference_peak = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    _zo_step(model, zo, batch, next(steps))
    zo_peak = torch.cuda.max_memory_allocated()
    return {
        "zo_step_s": zo_step,
        "two_forwards_s": forwards,
        "zo_step_over_two_forwards": zo_step / forwards,
        "zo_peak_gb": zo_peak / 2**30,
        "inference_peak_gb": inference_peak / 2**30,
        "zo_peak_over_inference_peak": zo_peak / inference_peak,
        "note": "both peaks include the bf16 weights; the ZO peak also the fp32 masters (4 bytes per weight)",
    }


def hybrid_figures(batch, n: int) -> dict:
    def fo_step(model, optimizer):
        model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def adam_run():
        model = model_1b(torch.float32)
        optimizer = build_optimizer(model, optimizer="adamw", learning_rate=1e-5)
        for _ in range(2 * n):
            fo_step(model, optimizer)

    def hybrid_run():
        model = model_1b(torch.float32)
        hybrid = build_optimizer(model, optimizer="hybrid", learning_rate=1e-5, hybrid_fo_steps=n)
        for _ in range(n):
            fo_step(model, hybrid)
        hybrid.begin_step(n)
        model.eval()
        for step in range(n):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _zo_step(model, hybrid.zo, batch, step)

    adam, hybrid = timed(adam_run, 1), timed(hybrid_run, 1)
    return {"hybrid_s": hybrid, "adam_s": adam, "hybrid_over_adam": hybrid / adam, "n": n}


def _npo_step_time(forget, retain, autocast: bool, repeats: int) -> float:
    model = model_1b(torch.float32)
    adam = build_optimizer(model, optimizer="adamw", learning_rate=1e-6)
    ref = torch.zeros(len(forget["input_ids"]), device="cuda")  # cached reference log-likelihoods

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            _npo_step(model, adam, forget, retain, ref)

    step()
    return timed(step, repeats)


def npo_figures(batch_size: int, seq_len: int, repeats: int) -> dict:
    forget = on_cuda(random_batch(batch_size, seq_len, CONFIG["vocab_size"], seed=1))
    retain = on_cuda(random_batch(batch_size, seq_len, CONFIG["vocab_size"], seed=2))
    results = {}
    for name, autocast in (("fp32", False), ("bf16_autocast_over_fp32", True)):
        results[f"{name}_tokens_per_s"] = 2 * batch_size * seq_len / _npo_step_time(forget, retain, autocast, repeats)
        torch.cuda.empty_cache()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="gpu_bench.json")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hybrid_n", type=int, default=5)
    args = parser.parse_args()
    batch = on_cuda(random_batch(args.batch_size, args.seq_len, CONFIG["vocab_size"]))
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "config": CONFIG}
    report["zo"] = zo_figures(batch, args.repeats)
    torch.cuda.empty_cache()
    report["hybrid"] = hybrid_figures(batch, args.hybrid_n)
    torch.cuda.empty_cache()
    report["npo"] = npo_figures(args.batch_size // 2, args.seq_len, args.repeats)
    from hf_unlearn.bench_eval import bench_tofu_eval_throughput

    report["tofu_eval"] = bench_tofu_eval_throughput()
    print(json.dumps(report, indent=1))
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
