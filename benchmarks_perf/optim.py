"""Speed and memory of the zeroth-order engine and the hybrid (benchmarks, not tests; wired into `hf-unlearn bench`).

Each function returns a dict with the measured numbers, the ratio the issue sets a target for, and the setup.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks_perf import peak_rss_kb, subprocess_env
from benchmarks_perf.ratio import compare, timed
from hf_unlearn.optim import build_optimizer
from hf_unlearn.optim.zo import derive_seed, projected_gradients


@contextlib.contextmanager
def _threads(threads: int | None):
    """Run with ``threads`` intra-op threads (None: leave as is), restored afterwards.

    One thread by default: on a shared CPU, every multi-threaded op pays for waking descheduled threads, which
    inflates the many small per-tensor sweeps of ZO far more than the large matmuls of a forward.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def bench_model(hidden: int = 256, layers: int = 4, vocab: int = 4096, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised Llama of about 7M parameters (no weight tying), fp32, eval mode."""
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=vocab,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def random_batch(batch_size: int, seq_len: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _zo_step(model, optimizer, batch, step: int) -> None:
    """One q-direction ZO step exactly as ZerothOrderMixin runs it, without the Trainer around it."""
    seeds = [derive_seed(0, step, i) for i in range(optimizer.settings.num_directions)]
    projected, _ = projected_gradients(optimizer, lambda: model(**batch).loss, seeds, defer_restore=True)
    for seed, c in zip(seeds, (projected / len(seeds)).tolist()):
        optimizer.record(seed, c)
    optimizer.step()


def bench_zo_step_time(
    batch_size: int = 16, seq_len: int = 256, repeats: int = 5, direction: str = "sphere", threads: int | None = 1
) -> dict:
    """Wall time of one ZO-SGD step (q = 1, central differences) over two no-grad forwards on the same batch.

    The step's extra cost is regenerating z, independent of the batch: four sweeps (sphere norm, +μz, −2μz, then the
    restore folded into the update), so the ratio falls towards 1 as the batch grows.
    """
    with _threads(threads) as used:
        return _zo_step_time(batch_size, seq_len, repeats, direction, used)


def _zo_step_time(batch_size, seq_len, repeats, direction, threads, clock="cpu") -> dict:
    model = bench_model()
    batch = random_batch(batch_size, seq_len, model.config.vocab_size)
    optimizer = build_optimizer(model, optimizer="zo_sgd", learning_rate=1e-6, zo_direction=direction)
    step = iter(range(10**9))

    def two_forwards():
        with torch.no_grad():
            model(**batch)
            model(**batch)

    # alternating after a warm-up (allocator, kernels), so that load from other processes hits both sides alike
    return compare(
        "zo_step", timed(lambda: _zo_step(model, optimizer, batch, next(step)), clock),
        "two_forwards", timed(two_forwards, clock), 1.03, repeats, 1, clock=clock,
        setup=_setup(model, batch_size, seq_len, direction=direction, threads=threads),
    )  # fmt: skip


MODES = ("inference", "zo_sgd")


def bench_zo_peak_memory(batch_size: int = 8, seq_len: int = 256, steps: int = 3, repeats: int = 5) -> dict:
    """Peak memory of a ZO-SGD phase over the peak of inference (no-grad forwards with the loss) on the same batch.

    Measured as peak resident set size (``VmHWM``) of a fresh process, minus its RSS just before
    the model is built: weights, activations and temporaries, not the interpreter. Each side runs in its own process
    because RSS peaks cannot be reset and freed memory is not always returned to the OS; the processes alternate.
    """
    peak = {mode: (lambda m=mode: _peak_in_subprocess(m, batch_size, seq_len, steps) / 1024) for mode in MODES}
    return compare(
        "zo_sgd", peak["zo_sgd"], "inference", peak["inference"], 1.05, repeats, 0, unit="mb",
        method="peak RSS (VmHWM) of a fresh process above its RSS before the model is built",
        setup=_setup(bench_model(), batch_size, seq_len, steps=steps),
    )  # fmt: skip


def bench_hybrid_wall_time(
    n: int = 20, batch_size: int = 8, seq_len: int = 256, threads: int | None = 1, repeats: int = 5
) -> dict:
    """Time of a hybrid period (n AdamW steps then n AdaZO steps) over 2n AdamW steps, same model and data."""
    with _threads(threads) as used:
        return _hybrid_wall_time(n, batch_size, seq_len, used, repeats)


def _hybrid_wall_time(n, batch_size, seq_len, threads, repeats, clock="cpu") -> dict:
    batch = random_batch(batch_size, seq_len, bench_model().config.vocab_size)

    def fo_step(model, optimizer):
        model.train()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def adam_run():
        model = bench_model()
        optimizer = build_optimizer(model, optimizer="adamw", learning_rate=1e-4)
        for _ in range(2 * n):
            fo_step(model, optimizer)

    def hybrid_run():
        model = bench_model()
        hybrid = build_optimizer(model, optimizer="hybrid", learning_rate=1e-4, hybrid_fo_steps=n)
        for _ in range(n):
            fo_step(model, hybrid)
        hybrid.begin_step(n)
        model.eval()
        for step in range(n, 2 * n):
            _zo_step(model, hybrid.zo, batch, step)

    return compare(
        "hybrid_run", timed(hybrid_run, clock), "adamw_run", timed(adam_run, clock), 0.90, repeats, 1, clock=clock,
        setup=_setup(bench_model(), batch_size, seq_len, n=n, threads=threads),
    )  # fmt: skip


def _setup(model, batch_size, seq_len, **extra) -> dict:
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "batch_size": batch_size, "seq_len": seq_len, **extra}


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _peak_in_subprocess(mode: str, batch_size: int, seq_len: int, steps: int) -> int:
    sizes = [str(batch_size), str(seq_len), str(steps)]
    command = [sys.executable, "-m", "benchmarks_perf.optim", "memory", mode, *sizes]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=subprocess_env()).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_kb"]


def _memory_child(mode: str, batch_size: int, seq_len: int, steps: int) -> None:
    torch.set_num_threads(1)
    vocab = 4096
    batch = random_batch(batch_size, seq_len, vocab)
    base = _rss_kb()
    model = bench_model(vocab=vocab)
    if mode == "inference":
        with torch.no_grad():
            for _ in range(steps):
                model(**batch)
    else:
        optimizer = build_optimizer(model, optimizer="zo_sgd", learning_rate=1e-6)
        for step in range(steps):
            _zo_step(model, optimizer, batch, step)
    peak = peak_rss_kb()
    print(json.dumps({"peak_kb": peak - base}))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "memory":
        _memory_child(sys.argv[2], *map(int, sys.argv[3:]))
    else:
        benches = (bench_zo_step_time, bench_zo_peak_memory, bench_hybrid_wall_time)
        print(json.dumps({f.__name__: f() for f in benches}, indent=1))
