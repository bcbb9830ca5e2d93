"""Figures at two model sizes (6M and ~100M parameters, Llama shapes built from a config) and ZO in bf16.

- :func:`bench_shapes`: for each shape, at one thread: ZO step / two forwards, NPO tokens/s, ZO tokens/s, and the
  resident memory of each phase of a hybrid run (AdamW + AdaZO), measured side by side in one process.
- :func:`bench_bf16_trajectory`: how far ZO runs on bf16 weights drift from the fp32 run, per precision mode.

Benchmarks, not tests: wired into ``hf-unlearn bench`` (the 100M shape only with ``--scale``).
"""

from __future__ import annotations

import math
import statistics
import threading
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks_perf import subprocess_env
from benchmarks_perf.optim import _threads, _zo_step, random_batch
from benchmarks_perf.ratio import alternate, ratio_entry, timed
from hf_unlearn.optim import build_optimizer
from hf_unlearn.optim.zo import derive_seed, projected_gradients


# name -> (LlamaConfig fields, batch size, sequence length). The 100M shape has GPT-2-small-like width and depth.
SHAPES = {
    "6M": ({"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8,
            "num_key_value_heads": 4, "vocab_size": 4096}, 16, 256),
    "100M": ({"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
              "num_key_value_heads": 4, "vocab_size": 16000}, 4, 256),
}  # fmt: skip
# The 100M shape runs 1024 tokens per step, not 4096, to keep `hf-unlearn bench --scale` to minutes on one thread.
# The ZO step's extra cost (regenerating z) grows with the parameters, a forward's with parameters x tokens: the
# ratio at the same tokens per step is about the same at both sizes, and it falls as tokens per step grow.


def shape_model(name: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised Llama of the named shape (no weight tying), eval mode."""
    torch.manual_seed(seed)
    config = LlamaConfig(**SHAPES[name][0], tie_word_embeddings=False)
    return LlamaForCausalLM(config).to(dtype).eval()


class _RSSSampler:
    """Peak resident set size over a code block, sampled from /proc every few milliseconds in a thread.

    ``getrusage`` peaks cannot be reset between the phases of one run; sampling can miss a peak shorter than the
    interval, which the per-step sizes here (hundreds of milliseconds) make unlikely.
    """

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss_bytes() -> int:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self):
        self.peak = self.rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_bytes())


def _npo_step(model, optimizer, forget, retain, ref_log_probs, beta: float = 0.1) -> None:
    """One NPO + retain-NLL step with cached reference log-likelihoods (the library's default)."""
    model.train()
    logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), forget["labels"][:, 1:].flatten(), reduction="none")
    log_ratio = -nll.view(len(logits), -1).sum(-1) - ref_log_probs
    npo = -(2 / beta) * F.logsigmoid(-beta * log_ratio).mean()
    retain_loss = model(**retain).loss
    (npo + retain_loss).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _timed(fn, repeats: int) -> float:
    """Median process CPU time of ``fn``: at one thread, unlike wall time, it barely moves when other processes
    share the CPU (they still share its caches and memory bandwidth)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


SHAPE_TARGETS = {"6M": 1.03, "100M": 1.02}  # ZO step / two forwards


def _shape_figures(shape: str, repeats: int, phase_steps: int) -> dict:
    config, batch_size, seq_len = SHAPES[shape]
    vocab = config["vocab_size"]
    batch = random_batch(batch_size, seq_len, vocab, seed=0)
    tokens = batch_size * seq_len
    model = shape_model(shape)
    params = sum(p.numel() for p in model.parameters())

    # ZO step against two no-grad forwards, interleaved so that load from other processes hits both alike
    zo = build_optimizer(model, optimizer="zo_sgd", learning_rate=1e-7)
    steps = iter(range(10**9))

    def two_forwards():
        with torch.no_grad():
            model(**batch)
            model(**batch)

    def unfolded_step(step):  # restoring in its own sweep before the update, as before the fold
        seeds = [derive_seed(0, step, 0)]
        projected, _ = projected_gradients(zo, lambda: model(**batch).loss, seeds, defer_restore=False)
        zo.record(seeds[0], float(projected[0]))
        zo.step()

    clock = "cpu"
    values = alternate(
        {
            "two_forwards": timed(two_forwards, clock),
            "zo_step": timed(lambda: _zo_step(model, zo, batch, next(steps)), clock),
            "unfolded_zo_step": timed(lambda: unfolded_step(next(steps)), clock),
        },
        repeats,
        warmup=1,
    )
    two_f, zo_s = statistics.median(values["two_forwards"]), statistics.median(values["zo_step"])
    zo_ratio, unfolded_ratio = (
        ratio_entry(name, values[name], "two_forwards", values["two_forwards"], SHAPE_TARGETS.get(shape), clock=clock)
        for name in ("zo_step", "unfolded_zo_step")
    )

    # NPO (forget + retain batches of half the size each, so a step sees the same number of tokens)
    half = max(1, batch_size // 2)
    forget, retain = random_batch(half, seq_len, vocab, seed=1), random_batch(half, seq_len, vocab, seed=2)
    with torch.no_grad():
        logits = model(input_ids=forget["input_ids"]).logits[:, :-1].float()
        ref = -F.cross_entropy(logits.flatten(0, 1), forget["labels"][:, 1:].flatten(), reduction="none")
        ref = ref.view(half, -1).sum(-1)
    adam = build_optimizer(model, optimizer="adamw", learning_rate=1e-6)
    _npo_step(model, adam, forget, retain, ref)
    npo_s = _timed(lambda: _npo_step(model, adam, forget, retain, ref), repeats)
    adam = model = None  # free before the memory run

    memory = _memory_in_subprocess(shape, phase_steps)
    return {
        "parameters": params,
        "tokens_per_step": tokens,
        "zo_step_s": zo_s,
        "two_forwards_s": two_f,
        "zo_step_over_two_forwards": zo_ratio,
        "unfolded_zo_step_over_two_forwards": unfolded_ratio,
        "zo_tokens_per_s": tokens / zo_s,
        "npo_step_s": npo_s,
        "npo_tokens_per_s": 2 * half * seq_len / npo_s,
        "hybrid_memory": memory,
    }


def _memory_in_subprocess(name: str, steps: int) -> dict:
    """:func:`_hybrid_phase_memory` in a fresh process: RSS in a process that already ran other work includes
    memory its allocator kept."""
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "benchmarks_perf.scale", "memory", name, str(steps)]
    # tensors above 128 KiB mmap'd and unmapped when freed: RSS then follows live memory, not what malloc keeps
    env = subprocess_env(MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def _hybrid_phase_memory(name: str, steps: int) -> dict:
    """Peak resident memory (above the RSS before the model exists) of each phase of a hybrid AdamW/AdaZO run."""
    torch.set_num_threads(1)
    config, batch_size, seq_len = SHAPES[name]
    batch = random_batch(batch_size, seq_len, config["vocab_size"], seed=0)
    base = _RSSSampler.rss_bytes()
    model = shape_model(name)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    hybrid = build_optimizer(model, optimizer="hybrid", learning_rate=1e-6, hybrid_fo_steps=steps)
    phases = {}
    for period in range(2):  # the second period shows both optimizers' states resident
        hybrid.begin_step(2 * period * steps)
        model.train()
        resident = _trimmed_rss() - base
        with _RSSSampler() as fo:
            for _ in range(steps):
                model(**batch).loss.backward()
                hybrid.step()
                hybrid.zero_grad(set_to_none=True)
        phases[f"fo_{period + 1}"] = {"resident_at_start_mb": resident / 2**20, "peak_mb": (fo.peak - base) / 2**20}
        hybrid.begin_step((2 * period + 1) * steps)
        model.eval()
        resident = _trimmed_rss() - base
        with _RSSSampler() as zo:
            for step in range(steps):
                _zo_step(model, hybrid.zo, batch, period * steps + step)
        phases[f"zo_{period + 1}"] = {"resident_at_start_mb": resident / 2**20, "peak_mb": (zo.peak - base) / 2**20}
    adam_state = sum(
        t.numel() * t.element_size() for s in hybrid.fo.state.values() for t in s.values() if torch.is_tensor(t)
    )
    zo_state = sum(
        t.numel() * t.element_size() for s in hybrid.zo.state.values() for t in s.values() if torch.is_tensor(t)
    )
    mb = 2**20
    return {
        "weights_mb": weights / mb,
        "adam_state_mb": adam_state / mb,
        "adazo_state_mb": zo_state / mb,
        "phases": phases,
        "note": "AdamW's moments stay allocated through ZO phases (and AdaZO's through FO phases from the first ZO "
        "phase on): ZO peaks include them. RSS above the process's RSS before the model was built, in a fresh "
        "process, large blocks unmapped when freed; resident_at_start after returning freed memory (malloc_trim).",
    }


def _state_bytes(optimizer) -> int:
    states = optimizer.state.values()
    return sum(t.numel() * t.element_size() for state in states for t in state.values() if torch.is_tensor(t))


def _trimmed_rss() -> int:
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _RSSSampler.rss_bytes()


def bench_shapes(shapes: tuple[str, ...] = ("6M",), repeats: int = 3, phase_steps: int = 2, threads: int = 1) -> dict:
    """The figures of :func:`_shape_figures` for each shape, in one process, one after the other."""
    with _threads(threads) as used:
        results = {name: _shape_figures(name, repeats, phase_steps) for name in shapes}
    return {"shapes": results, "threads": used, "repeats": repeats}


def bench_shapes_at_scale() -> dict:
    """:func:`bench_shapes` for the 6M and the ~100M shapes side by side (about ten minutes on one CPU thread)."""
    return bench_shapes(("6M", "100M"), repeats=5, phase_steps=2)


# ---- bf16 trajectories -------------------------------------------------------------------------------------------

TRAJECTORY_MODES = {
    "fp32": (torch.float32, {}),
    "bf16": (torch.bfloat16, {}),
    "bf16_stochastic_rounding": (torch.bfloat16, {"zo_stochastic_rounding": True}),
    "bf16_stochastic_rounding_exact_restore": (torch.bfloat16,
                                               {"zo_stochastic_rounding": True, "zo_exact_restore": True}),
    "bf16_master_weights": (torch.bfloat16, {"zo_master_weights": True}),
}  # fmt: skip


def zo_trajectory(mode: str, steps: int, optimizer: str = "adazo", lr: float = 1e-5, seed: int = 0) -> dict:
    """``steps`` ZO steps on a small Llama from bf16-representable initial weights; final weights and losses."""
    dtype, fields = TRAJECTORY_MODES[mode]
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(config).to(torch.bfloat16).to(dtype).eval()  # the same start for every mode
    start = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    zo = build_optimizer(model, optimizer=optimizer, learning_rate=lr, zo_mu=1e-3, **fields)
    batch = random_batch(8, 32, config.vocab_size, seed=seed)
    losses = []
    for step in range(steps):
        _zo_step(model, zo, batch, step)
        with torch.no_grad():
            losses.append(float(model(**batch).loss))
    return {"start": start, "end": {n: p.detach().float() for n, p in model.named_parameters()}, "losses": losses}


def bench_bf16_trajectory(steps: int = 100, optimizer: str = "adazo", lr: float = 1e-5) -> dict:
    """Distance of each bf16 mode's ZO trajectory from the fp32 one after ``steps`` steps.

    ``relative_weight_error``: ‖θ_mode − θ_fp32‖ / ‖θ_fp32 − θ_0‖ at the end (1.0 = as far off as the whole fp32
    displacement); ``displacement_ratio``: ‖θ_mode − θ_0‖ / ‖θ_fp32 − θ_0‖ (how much of the movement survived).
    Differences also come from bf16 forwards (the projected gradients differ), which no mode removes.
    """
    runs = {mode: zo_trajectory(mode, steps, optimizer, lr) for mode in TRAJECTORY_MODES}
    ref = runs["fp32"]

    def norm(a, b):
        return math.sqrt(sum(float((a[n] - b[n]).double().pow(2).sum()) for n in a))

    moved = norm(ref["end"], ref["start"])
    results = {}
    for mode, run in runs.items():
        results[mode] = {
            "relative_weight_error": norm(run["end"], ref["end"]) / moved,
            "displacement_ratio": norm(run["end"], run["start"]) / moved,
            "final_loss": run["losses"][-1],
            "max_loss_gap": max(abs(a - b) for a, b in zip(run["losses"], ref["losses"])),
        }
    return {"steps": steps, "optimizer": optimizer, "lr": lr, "mu": 1e-3, "fp32_displacement": moved, "modes": results}


if __name__ == "__main__":
    import json
    import sys

    if len(sys.argv) == 4 and sys.argv[1] == "memory":
        print(json.dumps(_hybrid_phase_memory(sys.argv[2], int(sys.argv[3]))))
