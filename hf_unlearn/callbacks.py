"""Trainer callbacks: when things happen during a run (the work itself lives in plain modules)."""

from __future__ import annotations

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from hf_unlearn.optim.hybrid import HybridOptimizer, unwrap_optimizer, zo_optimizer_of


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


COUNTED = ("steps", "micro_batches", "forwards", "reference_forwards", "backwards")


class ComputeAccountingCallback(TrainerCallback):
    """Counts the forward and backward passes each optimizer step really ran, by phase (``fo`` or ``zo``).

    The counts come from hooks on the modules, not from formulas:

    - a forward is one call of the trained model that starts inside an optimizer step (a forward pre-hook on it);
      ``reference_forwards`` are the calls of ``reference_model`` (NPO's or RMU's frozen model), counted apart;
    - a backward is one trained-model forward whose graph a gradient flowed back through (a tensor hook on the
      output of the first module with trainable weights the forward runs), so a ``loss.backward()`` through a
      forget and a retain forward counts two backwards, as it costs two.

    Calls outside optimizer steps (evaluation, logging, the robustness checks) are not counted. A step's phase is
    the optimizer's at the step's end: ``zo`` when it is zeroth order (``adazo``, ``zo_*``, ``hybrid`` in its ZO
    phase), else ``fo``. Counts are per process (in data-parallel runs every process runs the same number of passes
    on its own batches). Under peft the reference is the trained model with its adapter disabled, so its forwards
    count as model forwards; under gradient checkpointing the layers recomputed during backward are not counted.
    """

    def __init__(self, reference_model=None):
        self.reference_model = reference_model
        self.totals = {phase: dict.fromkeys(COUNTED, 0) for phase in ("fo", "zo")}
        self.history: list[dict] = []  # one record per optimizer step: phase and its counts
        self._handles: list = []
        self._step: dict | None = None
        self._depth = {"model": 0, "reference": 0}
        self._forward_id = 0
        self._output_hooked = False
        self._backwarded: set[int] = set()

    @classmethod
    def for_trainer(cls, trainer) -> ComputeAccountingCallback:
        """A callback that also counts `trainer.ref_model`'s forwards, added to `trainer`."""
        callback = cls(reference_model=getattr(trainer, "ref_model", None))
        trainer.add_callback(callback)
        return callback

    # ---- hooks -------------------------------------------------------------------------------------------------

    def _attach(self, model) -> None:
        self._detach()
        self._handles.append(model.register_forward_pre_hook(self._enter("model")))
        self._handles.append(model.register_forward_hook(self._leave("model"), always_call=True))
        for module in model.modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                self._handles.append(module.register_forward_hook(self._hook_output))
        reference = self.reference_model
        if reference is not None and reference is not model:
            self._handles.append(reference.register_forward_pre_hook(self._enter("reference")))
            self._handles.append(reference.register_forward_hook(self._leave("reference"), always_call=True))

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _enter(self, which: str):
        def hook(module, args):
            if self._depth[which] == 0 and self._step is not None:
                self._step["forwards" if which == "model" else "reference_forwards"] += 1
                if which == "model":
                    self._forward_id += 1
                    self._output_hooked = False
            self._depth[which] += 1

        return hook

    def _leave(self, which: str):
        def hook(module, args, output):
            self._depth[which] -= 1

        return hook

    def _hook_output(self, module, args, output):
        if self._step is None or self._depth["model"] == 0 or self._output_hooked or not torch.is_grad_enabled():
            return
        tensor = next((t for t in _tensors(output) if t.requires_grad), None)
        if tensor is None:
            return
        self._output_hooked = True
        forward_id = self._forward_id
        tensor.register_hook(lambda grad: self._backwarded.add(forward_id))

    # ---- Trainer events ----------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("ComputeAccountingCallback was called without the model.")
        self._attach(model)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step = dict.fromkeys(COUNTED, 0)
        self._backwarded = set()

    def on_substep_end(self, args, state, control, **kwargs):
        if self._step is not None:
            self._step["micro_batches"] += 1

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if self._step is None:
            return
        step, self._step = self._step, None
        step["steps"] = 1
        step["micro_batches"] += 1  # the step's last micro-batch ends with the step, not with a substep
        step["backwards"] = len(self._backwarded)
        phase = "zo" if zo_optimizer_of(optimizer) is not None else "fo"
        for key in COUNTED:
            self.totals[phase][key] += step[key]
        self.history.append({"step": state.global_step, "phase": phase, **step})

    def on_train_end(self, args, state, control, **kwargs):
        self._detach()

    def to_dict(self) -> dict:
        """``{"per_process": True, "counted_by": ..., "fo": {<COUNTED>: n}, "zo": {<COUNTED>: n}}``."""
        return {"per_process": True, "counted_by": "module hooks", **{k: dict(v) for k, v in self.totals.items()}}


def _tensors(output):
    """The tensors in a module's output (a tensor, a tuple/list, or a dict-like ModelOutput)."""
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from _tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from _tensors(item)
