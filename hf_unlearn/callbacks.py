"""Trainer callbacks: when things happen during a run (the work itself lives in plain modules)."""

from __future__ import annotations

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from hf_unlearn.optim.hybrid import HybridOptimizer, unwrap_optimizer


class HybridScheduleCallback(TrainerCallback, ExportableState):
    """Alternates the ``hybrid`` optimizer between ``fo_steps`` first-order and ``zo_steps`` zeroth-order steps.

    Phases start with FO and the run must end with a complete ZO phase: ``max_steps`` must be a multiple of
    ``fo_steps + zo_steps`` (checked at ``on_train_begin``; it is validated, never silently adjusted). The phase
    of a step is a function of the global step alone, so a run resumed mid-phase continues the schedule exactly; the
    callback's settings travel in checkpoints (``ExportableState``). Each training log gets ``optim/phase`` (0 = FO,
    1 = ZO, the phase of the step just finished) and, after ZO steps, ``zo/projected_grad`` in place of ``grad_norm``.
    """

    def __init__(self, fo_steps: int = 20, zo_steps: int | None = None):
        zo_steps = fo_steps if zo_steps is None else zo_steps
        if not (isinstance(fo_steps, int) and fo_steps >= 1):
            raise ValueError(f"hybrid_fo_steps={fo_steps!r} must be an integer >= 1")
        if not (isinstance(zo_steps, int) and zo_steps >= 0):
            raise ValueError(f"hybrid_zo_steps={zo_steps!r} must be an integer >= 0")
        self.fo_steps = fo_steps
        self.zo_steps = zo_steps
        self.phase = "fo"

    @classmethod
    def from_args(cls, args) -> HybridScheduleCallback:
        """Built from the config's ``hybrid_fo_steps`` / ``hybrid_zo_steps``."""
        return cls(args.hybrid_fo_steps, getattr(args, "hybrid_zo_steps", None))

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
        if self.zo_steps and state.max_steps % self.period:
            period = self.period
            suggestion = max(period, round(state.max_steps / period) * period)
            raise ValueError(
                f"max_steps={state.max_steps} must be a multiple of hybrid_fo_steps + hybrid_zo_steps = {period} so "
                f"the run ends with a ZO phase; use max_steps={suggestion}"
            )

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
