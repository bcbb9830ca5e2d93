"""Every Trainer callback of hf_unlearn: *when* things happen during a run (the work lives in plain modules).

- :class:`HybridScheduleCallback`: switches the hybrid optimizer between its FO and ZO phases.
- :class:`PairingEpochCallback`: re-pairs forget and retain examples each epoch on every process.
- :class:`RobustnessCallback`: relearning and quantization attacks at train end (``hf_unlearn.attacks``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from hf_unlearn.attacks.robustness import (
    RESULTS_FORMAT,
    EvalFn,
    RobustnessConfig,
    benchmark_eval_fn,
    flat_logs,
    gathered_copy,
    is_zero3,
    rank_and_world,
    robustness_checks,
)
from hf_unlearn.optim.args import check_hybrid_max_steps
from hf_unlearn.optim.hybrid import HybridOptimizer, unwrap_optimizer


class HybridScheduleCallback(TrainerCallback, ExportableState):
    """Alternates the ``hybrid`` optimizer between ``fo_steps`` first-order and ``zo_steps`` zeroth-order steps.

    Phases start with FO and the run must end with a complete ZO phase: ``max_steps`` must be a multiple of
    ``fo_steps + zo_steps`` (the config checks it when ``max_steps`` is set; ``on_train_begin`` checks the number of
    steps the Trainer derived from epochs with the same rule; it is never silently adjusted). The phase
    of a step is a function of the global step alone, so a run resumed mid-phase continues the schedule exactly; the
    callback's settings travel in checkpoints (``ExportableState``). Each training log gets ``optim/phase`` (0 = FO,
    1 = ZO, the phase of the step just finished) and, after ZO steps, ``zo/projected_grad`` in place of ``grad_norm``.
    """

    def __init__(self, fo_steps: int = 20, zo_steps: int = 20):
        self.fo_steps = fo_steps
        self.zo_steps = zo_steps
        self.phase = "fo"

    @classmethod
    def from_args(cls, args) -> HybridScheduleCallback:
        """Built from the config's resolved schedule (``hybrid_fo_steps`` / ``hybrid_zo_steps``, validated there)."""
        return cls(*args.hybrid_schedule)

    @property
    def period(self) -> int:
        return self.fo_steps + self.zo_steps

    def phase_at(self, step: int) -> str:
        """Phase of the 0-based optimizer step ``step``."""
        return "fo" if step % self.period < self.fo_steps else "zo"

    def _hybrid(self, optimizer) -> HybridOptimizer:
        inner = unwrap_optimizer(optimizer)
        if not isinstance(inner, HybridOptimizer):
            raise ValueError(
                f"HybridScheduleCallback needs optimizer='hybrid', got {type(inner).__name__}; set optimizer=hybrid "
                "or drop the callback"
            )
        return inner

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self._hybrid(optimizer)
        check_hybrid_max_steps(state.max_steps, self.fo_steps, self.zo_steps)

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.phase = self.phase_at(state.global_step)
        self._hybrid(optimizer).phase = self.phase

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        extra = {"optim/phase": 0.0 if self.phase == "fo" else 1.0}
        zo = self._hybrid(optimizer).zo
        if self.phase == "zo" and zo.last_projected_grad is not None:
            extra["zo/projected_grad"] = zo.last_projected_grad
        logs.update(extra)
        # A ZO step has no gradients: the norm Trainer reports for it is a meaningless 0.
        stale = ["grad_norm"] if self.phase == "zo" else []
        for key in stale:
            logs.pop(key, None)
        # Trainer.log stored a copy of `logs` in log_history before calling on_log: keep the two consistent.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)
            for key in stale:
                state.log_history[-1].pop(key, None)

    def state(self) -> dict:
        return {
            "args": {"fo_steps": self.fo_steps, "zo_steps": self.zo_steps},
            "attributes": {"phase": self.phase},
        }


class PairingEpochCallback(TrainerCallback):
    """Re-pair forget and retain examples at each epoch on every process.

    accelerate forwards `set_epoch` to the dataset only when its sampler has none, which is not the case under
    DDP: without this callback a multi-process run would keep epoch 0's pairing while a single process reshuffles.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is fractional after a mid-epoch resume; the small offset absorbs float error at boundaries.
        self.dataset.set_epoch(math.floor(state.epoch + 1e-9))


class RobustnessCallback(TrainerCallback):
    """Relearning and quantization attacks on the model being trained, at train end (and optionally at evaluation).

    Args:
        config: what to run (:class:`RobustnessConfig`).
        eval_fn: ``eval_fn(model, tokenizer) -> {metric: value}``; or give `benchmark` instead.
        benchmark: a benchmark name (built with `benchmark_settings`) or ``Benchmark`` instance to evaluate with.
        relearn_data: forget data for relearning (anything ``relearn`` accepts); default: the ``forget`` side
            of the trainer's ``ForgetRetainDataset``.
        tokenizer: default: the trainer's ``processing_class``.
        original_model: the model before unlearning, to report the fraction of quantization codes unlearning
            changed.
    """

    def __init__(
        self,
        config: RobustnessConfig | None = None,
        eval_fn: EvalFn | None = None,
        benchmark=None,
        benchmark_settings: dict[str, Any] | None = None,
        relearn_data=None,
        tokenizer=None,
        original_model=None,
    ):
        if eval_fn is None and benchmark is None:
            raise ValueError("RobustnessCallback needs eval_fn=... or benchmark=... (e.g. 'tofu') to measure with.")
        self.config = config or RobustnessConfig()
        self.eval_fn = eval_fn or benchmark_eval_fn(benchmark, **(benchmark_settings or {}))
        self.relearn_data, self.tokenizer, self.original_model = relearn_data, tokenizer, original_model
        self.runs: list[dict[str, Any]] = []

    def _resolve_data(self, train_dataloader) -> None:
        if self.relearn_data is not None or not self.config.relearn_steps:
            return
        dataset = getattr(train_dataloader, "dataset", None)
        forget = getattr(dataset, "forget", None)
        if forget is None or len(forget) == 0:
            raise ValueError(
                "RobustnessCallback: no forget data available for relearning; pass relearn_data=... or train on "
                "a ForgetRetainDataset (or set relearn_steps=[] to skip relearning)."
            )
        self.relearn_data = forget

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self._resolve_data(train_dataloader)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if self.config.at_eval:
            self._run("evaluate", args, state, model, **kwargs)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._run("train_end", args, state, model, **kwargs)

    def _run(self, trigger, args, state, model, processing_class=None, train_dataloader=None, **_):
        if model is None:
            raise ValueError("RobustnessCallback was called without the model.")
        tokenizer = self.tokenizer or processing_class
        if tokenizer is None:
            raise ValueError(
                "RobustnessCallback needs a tokenizer: pass tokenizer=... or processing_class to the Trainer."
            )
        self._resolve_data(train_dataloader)
        target = gathered_copy(model) if is_zero3(model) else model
        results = robustness_checks(
            target, tokenizer, self.eval_fn, self.relearn_data, self.config, self.original_model
        )
        results["zero3_gathered"] = target is not model
        record = {"trigger": trigger, "global_step": state.global_step, **results}
        self.runs.append(record)
        state.log_history.append({**flat_logs(results), "step": state.global_step})
        rank, world_size = rank_and_world()
        if rank == 0:
            path = Path(args.output_dir) / self.config.results_file
            path.parent.mkdir(parents=True, exist_ok=True)
            document = {"format": RESULTS_FORMAT, "config": asdict(self.config), "runs": self.runs}
            path.write_text(json.dumps(document, indent=2) + "\n")
        if world_size > 1:
            torch.distributed.barrier()  # no rank moves on (or exits) before the file is written
