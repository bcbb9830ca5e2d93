"""The real model's costs: SmolLM2-135M-Instruct's forward per token and the peak memory of an NPO step.

Needs the fetched model (`hf-unlearn models fetch smollm2-135m-instruct`). Tokens are random ids (the cost of a
forward does not depend on them); every token of an example is labelled, so the answer length is the block length.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch


REAL_MODEL = "smollm2-135m-instruct"


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}: peak memory needs Linux.")


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def _blocks(count: int, seq_len: int, vocab: int, seed: int) -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, vocab, (count, seq_len), generator=generator).tolist()
    return [{"input_ids": row, "attention_mask": [1] * seq_len, "labels": row} for row in ids]


def bench_real_model_costs(batch_size: int = 8, seq_len: int = 128, forwards: int = 3, steps: int = 2) -> dict:
    """Forward seconds per token (median of `forwards`, no grad) and the peak RSS of NPO + AdamW steps above the RSS
    with the model loaded, at `batch_size` × `seq_len` tokens for the forget side and as many for the retain side."""
    from hf_unlearn.data import ForgetRetainDataset
    from hf_unlearn.loading import load_model, load_tokenizer
    from hf_unlearn.packaged_models import resolve_packaged_model
    from hf_unlearn.trainers import get_method

    folder = resolve_packaged_model(REAL_MODEL)
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    batch = torch.tensor([b["input_ids"] for b in _blocks(batch_size, seq_len, vocab, seed=0)])
    times = []
    with torch.no_grad():
        model(input_ids=batch)  # allocator warm-up
        for _ in range(forwards):
            start = time.perf_counter()
            model(input_ids=batch)
            times.append(time.perf_counter() - start)
    forward_s = statistics.median(times)

    forget = _blocks(batch_size * steps, seq_len, vocab, seed=1)
    retain = _blocks(batch_size * steps, seq_len, vocab, seed=2)
    trainer_cls = get_method("npo")
    with tempfile.TemporaryDirectory() as out:
        args = trainer_cls.config_class(
            output_dir=out, report_to="none", save_strategy="no", per_device_train_batch_size=batch_size,
            max_steps=steps, learning_rate=1e-5, logging_steps=steps, disable_tqdm=True, use_cpu=True,
            optimizer="adamw", seed=0,
        )  # fmt: skip
        trainer = trainer_cls(
            model, args, train_dataset=ForgetRetainDataset(forget, retain, seed=0), processing_class=tokenizer
        )
        weights_kb = _rss_kb("VmRSS")
        _reset_peak_rss()
        start = time.perf_counter()
        trainer.train()
        step_s = (time.perf_counter() - start) / steps
        peak_kb = _rss_kb("VmHWM")
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "model": REAL_MODEL,
        "parameters": parameters,
        "shape": f"{batch_size} x {seq_len} tokens (forget; NPO steps add as many retain tokens)",
        "threads": torch.get_num_threads(),
        "forward_s": round(forward_s, 3),
        "forward_ms_per_token": round(1000 * forward_s / (batch_size * seq_len), 3),
        "npo_adamw_step_s": round(step_s, 2),
        "npo_step_peak_above_loaded_mb": round((peak_kb - weights_kb) / 1024, 1),
        "loaded_rss_mb": round(weights_kb / 1024, 1),
        "fp32_weights_mb": round(4 * parameters / 2**20, 1),
        "method": "median wall time of no-grad forwards; peak RSS (VmHWM, reset before training) above the RSS "
        "with the model loaded, over the NPO + AdamW steps (cached reference pass, AdamW state, activations)",
    }
