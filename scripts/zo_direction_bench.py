"""ZO step against two forwards, per direction variant, on a ~100M Llama built from a config and on SmolLM2-135M.

    nice -n 19 python scripts/zo_direction_bench.py [--model PATH] [--rounds 5] [--out result.json]

Each round times two no-grad forwards on the batch, then one ZO-SGD step (q = 1, central differences, the restore
folded into the update: what ZerothOrderMixin runs) for each variant in ``--full``, one after the other on the same
model; a variant's ratio in a round is its step over that round's two forwards. Every variant's sweeps are also
timed alone (the same step with a loss that costs nothing: what a step adds to its two forwards), and its derived
ratio is (two forwards + sweeps) / two forwards in the same round. Reported: the median and min-max over rounds.
One thread (the machine is shared).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from hf_unlearn.optim import build_optimizer
from hf_unlearn.optim.zo import derive_seed, projected_gradients


VARIANTS = {
    "sphere (default, 4 generations)": {"zo_direction": "sphere"},
    "gaussian (3 generations)": {"zo_direction": "gaussian"},
    "rademacher (3 cheap generations)": {"zo_direction": "rademacher"},
    "sphere + zo_cache_directions": {"zo_direction": "sphere", "zo_cache_directions": True},
    "rademacher + zo_cache_directions": {"zo_direction": "rademacher", "zo_cache_directions": True},
}


def config_model_100m() -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
        vocab_size=16000, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def zo_step(model, optimizer, batch, step: int, loss_fn=None) -> None:
    seeds = [derive_seed(0, step, i) for i in range(optimizer.settings.num_directions)]
    loss_fn = loss_fn or (lambda: model(**batch).loss)
    projected, _ = projected_gradients(optimizer, loss_fn, seeds, defer_restore=True)
    for seed, c in zip(seeds, (projected / len(seeds)).tolist()):
        optimizer.record(seed, c)
    optimizer.step()


CLOCK = time.perf_counter


def timed(fn) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="a local model folder; default: the ~100M config model")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--out", default=None)
    parser.add_argument("--full", default="0,2,4", help="indices of VARIANTS measured as whole steps")
    parser.add_argument(
        "--cpu_time", action="store_true",
        help="time with the process's CPU time (one thread: what it computed, not how long it waited for a core; "
        "for a machine whose load would otherwise swamp the figures)",
    )  # fmt: skip
    parser.add_argument(
        "--forward_batch_size", type=int, default=None,
        help="time the forwards on this many sequences and scale to --batch_size (linear in the rows)",
    )  # fmt: skip
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(1)
    load_at_start = os.getloadavg()
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    else:
        model = config_model_100m()
    params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.seq_len), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    optimizers = {name: build_optimizer(model, optimizer="zo_sgd", learning_rate=1e-9, **fields)
                  for name, fields in VARIANTS.items()}  # fmt: skip
    steps = iter(range(10**9))

    rows = args.forward_batch_size or args.batch_size
    forward_batch = {k: v[:rows] for k, v in batch.items()}
    forward_scale = args.batch_size / rows

    def two_forwards():
        with torch.no_grad():
            model(**forward_batch)
            model(**forward_batch)

    def step_of(name):
        with torch.no_grad():
            zo_step(model, optimizers[name], batch, next(steps))

    def sweeps_of(name):  # the same step with a free loss: what the step costs beyond its forwards
        with torch.no_grad():
            zo_step(model, optimizers[name], batch, next(steps), loss_fn=lambda: torch.zeros((), dtype=torch.float64))

    full = [list(VARIANTS)[int(i)] for i in args.full.split(",") if i]
    two_forwards()
    for name in VARIANTS:
        sweeps_of(name)  # warm-up: allocator, kernels
    rounds = []
    for r in range(args.rounds):
        row = {"two_forwards_s": timed(two_forwards) * forward_scale}
        for name in VARIANTS:
            if name in full:
                row[name] = timed(functools.partial(step_of, name))
            row[f"{name} sweeps_s"] = timed(functools.partial(sweeps_of, name))
        rounds.append(row)
        print(json.dumps({"round": r, **row}), flush=True)
    result = {
        "model": args.model or "llama config 768x12, vocab 16000, untied",
        "parameters": params,
        "shape": f"{args.batch_size} x {args.seq_len} tokens",
        "threads": 1,
        "clock": "process CPU time" if args.cpu_time else "wall",
        "forwards_timed_on": f"{rows} x {args.seq_len} tokens, scaled x{forward_scale:g}",
        "rounds": args.rounds,
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": os.getloadavg(),
        "two_forwards_s_median": statistics.median(r["two_forwards_s"] for r in rounds),
        "variants": {},
    }
    for name in VARIANTS:
        sweeps = [r[f"{name} sweeps_s"] for r in rounds]
        derived = [(r["two_forwards_s"] + r[f"{name} sweeps_s"]) / r["two_forwards_s"] for r in rounds]
        entry = {
            "sweeps_s_median": statistics.median(sweeps),
            "sweeps_ns_per_weight": statistics.median(sweeps) / params * 1e9,
            "derived_ratio_median": statistics.median(derived),
            "derived_ratio_min": min(derived),
            "derived_ratio_max": max(derived),
        }
        if name in full:
            ratios = [r[name] / r["two_forwards_s"] for r in rounds]
            entry.update(
                zo_step_s_median=statistics.median(r[name] for r in rounds),
                ratio_median=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
            )  # fmt: skip
        result["variants"][name] = entry
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
