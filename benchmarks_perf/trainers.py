"""Step-time benchmark: NPO with cached reference log-likelihoods against GradDiff on the same model and batch.

With the reference cached, an NPO step runs the same forwards and backward as a GradDiff step (forget + retain),
so the ratio should be ~1 (target ≤ 1.05); an online reference would add a forward per step.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch
from transformers import TrainerCallback

from benchmarks_perf.ratio import alternate, ratio_entry
from hf_unlearn.benchmarks.synthetic import make_synthetic_tofu
from hf_unlearn.data import ForgetRetainDataset, QADataset
from hf_unlearn.tiny import build_tiny_model, train_tokenizer


class StepTimer(TrainerCallback):
    """Process CPU time of each optimizer step (forward, backward, update): unlike wall time, it barely moves
    when other processes share the CPU."""

    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.process_time() - self._start)


RUNS = {"grad_diff": ("grad_diff", {}), "npo": ("npo", {}), "npo_online": ("npo", {"ref_log_probs": "online"})}


def _median_step_time(run: str, model_dir: str, data, tokenizer, steps: int, warmup: int, batch_size: int) -> float:
    from hf_unlearn.trainers import get_method

    method, overrides = RUNS[run]
    trainer_cls = get_method(method)
    with tempfile.TemporaryDirectory() as out:
        args = trainer_cls.config_class(
            output_dir=out,
            report_to="none",
            save_strategy="no",
            per_device_train_batch_size=batch_size,
            max_steps=steps + warmup,
            learning_rate=1e-5,
            logging_steps=steps + warmup,
            disable_tqdm=True,
            dataloader_drop_last=True,  # a short last batch would make step times bimodal
            seed=0,
            **overrides,
        )
        timer = StepTimer()
        trainer = trainer_cls(model_dir, args, train_dataset=data, processing_class=tokenizer, callbacks=[timer])
        trainer.train()
    # The warm-up steps include NPO's one-off reference pass over the forget set and allocator warm-up.
    return statistics.median(timer.times[warmup:])


def bench_npo_vs_graddiff(
    steps: int = 12,
    warmup: int = 3,
    rounds: int = 5,
    batch_size: int = 8,
    hidden_size: int = 256,
    num_layers: int = 4,
    threads: int | None = 1,
) -> dict[str, float]:
    """Median step time of NPO (cached reference) and GradDiff on one tiny-ish llama and one batch size.

    The runs alternate for `rounds` rounds (each round's value: the run's median step time after `warmup` steps),
    so load from other processes on a shared CPU hits every method alike. Times are process CPU seconds per step.

    Returns two ratio entries (``ratio.py``): NPO over GradDiff (goal 1.05) and, for comparison, NPO with a reference
    forward every step over GradDiff.
    `threads` sets torch's CPU threads for the run and restores them after (one thread avoids oversubscription on a
    shared CPU; None keeps the current setting).
    """
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench(steps, warmup, rounds, batch_size, hidden_size, num_layers)
    finally:
        torch.set_num_threads(previous_threads)


def _bench(steps: int, warmup: int, rounds: int, batch_size: int, hidden_size: int, num_layers: int) -> dict:
    rows = make_synthetic_tofu(num_authors=20, qa_per_author=10)
    texts = [r["question"] + " " + r["answer"] for r in rows["full"]]
    tokenizer = train_tokenizer(texts, vocab_size=1024)
    forget = QADataset(rows["forget10"], tokenizer)
    retain = QADataset(rows["retain90"], tokenizer)
    data = ForgetRetainDataset(forget, retain, seed=0)
    overrides = {"hidden_size": hidden_size, "intermediate_size": 4 * hidden_size, "num_hidden_layers": num_layers}
    with tempfile.TemporaryDirectory() as model_dir:
        build_tiny_model(tokenizer, "llama", **overrides).save_pretrained(model_dir)
        torch.manual_seed(0)
        # one round = one run of each method, in order; a round's value is the run's median step time
        sides = {
            method: (lambda m=method: _median_step_time(m, model_dir, data, tokenizer, steps, warmup, batch_size))
            for method in RUNS
        }
        times = alternate(sides, repeats=rounds, warmup=0)
    return {
        "npo_vs_grad_diff": ratio_entry("npo", times["npo"], "grad_diff", times["grad_diff"], 1.05, clock="cpu"),
        "npo_online_vs_grad_diff": ratio_entry(
            "npo_online", times["npo_online"], "grad_diff", times["grad_diff"], None, clock="cpu"
        ),
    }


if __name__ == "__main__":
    print(bench_npo_vs_graddiff())
