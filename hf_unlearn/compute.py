"""Compute accounting: the forward and backward passes each optimizer step really ran, and a budget on them.

- :class:`ComputeAccountingCallback`: counts forward and backward passes per phase (FO / ZO) for the report.
- :class:`ComputeBudgetCallback`: stops training once those passes reach a budget (compute-matched sweeps).
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from hf_unlearn.optim.hybrid import zo_optimizer_of


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


def passes(counts: dict) -> int:
    """Model passes of a compute record (one phase's counts): forwards, reference forwards and backwards, each one."""
    return int(counts.get("forwards", 0) + counts.get("reference_forwards", 0) + counts.get("backwards", 0))


class ComputeBudgetCallback(TrainerCallback):
    """Stops training after the optimizer step at which the passes `accounting` counted reach `budget`.

    A pass is one forward, reference forward or backward (:func:`passes`), so runs with different optimizers can be
    stopped at equal compute: a ZO step costs forwards only, a first-order step forwards and backwards. The step
    that crosses the budget finishes (a step is never cut in half); `accounting` must be added to the trainer
    before this callback, so its counts include the step just ended.
    """

    def __init__(self, accounting: ComputeAccountingCallback, budget: int):
        if budget < 1:
            raise ValueError(f"compute_budget={budget} must be >= 1 model pass")
        self.accounting, self.budget = accounting, budget

    def spent(self) -> int:
        return sum(passes(counts) for counts in self.accounting.totals.values())

    def on_step_end(self, args, state, control, **kwargs):
        if self.spent() >= self.budget:
            control.should_training_stop = True


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
