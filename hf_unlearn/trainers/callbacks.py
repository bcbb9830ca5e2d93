"""The trainers' own callbacks: *when* a training mechanic runs (the work lives in the trainers and optimizers).

- :class:`HybridScheduleCallback`: switches the hybrid optimizer between its FO and ZO phases.
- :class:`PairingEpochCallback`: re-pairs forget and retain examples each epoch on every process.
- :class:`DivergenceGuardCallback`: stops training before a step with a non-finite (or runaway) loss or gradient
  updates the weights.

The robustness checks' callback lives with the attacks (:mod:`hf_unlearn.attacks.callback`), compute accounting in
:mod:`hf_unlearn.compute` and the command line's log printers in :mod:`hf_unlearn.cli.logs`: importing a trainer
imports none of them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import TrainerCallback

from hf_unlearn.optim.args import check_hybrid_max_steps
from hf_unlearn.optim.hybrid import HybridOptimizer, unwrap_optimizer, zo_optimizer_of


class HybridScheduleCallback(TrainerCallback):
    """Tells the ``hybrid`` optimizer which step begins; the optimizer's own schedule picks the phase.

    The schedule (``hybrid_fo_steps`` FO steps, then ``hybrid_zo_steps`` ZO steps, FO first) belongs to
    :class:`~hf_unlearn.optim.hybrid.HybridOptimizer`. The run must end with a complete ZO phase: ``on_train_begin``
    checks the number of steps the Trainer derived (``max_steps`` set is checked by the config already); it is never
    silently adjusted. The phase of a step is a function of the global step alone, so a resumed run continues the
    schedule exactly. Each training log gets ``optim/phase`` (0 = FO, 1 = ZO, the phase of the step just finished)
    and, after ZO steps, ``zo/projected_grad`` in place of ``grad_norm``.
    """

    def __init__(self):
        self.hybrid: HybridOptimizer | None = None

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        inner = unwrap_optimizer(optimizer)
        if not isinstance(inner, HybridOptimizer):
            raise ValueError(
                f"HybridScheduleCallback needs optimizer='hybrid', got {type(inner).__name__}; set optimizer=hybrid "
                "or drop the callback"
            )
        self.hybrid = inner
        check_hybrid_max_steps(state.max_steps, *inner.schedule)

    def on_step_begin(self, args, state, control, **kwargs):
        self.hybrid.begin_step(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or self.hybrid is None:
            return
        phase = self.hybrid.phase
        extra = {"optim/phase": 0.0 if phase == "fo" else 1.0}
        zo = self.hybrid.zo
        if phase == "zo" and zo.last_projected_grad is not None:
            extra["zo/projected_grad"] = zo.last_projected_grad
        logs.update(extra)
        # A ZO step has no gradients: the norm Trainer reports for it is a meaningless 0.
        stale = ["grad_norm"] if phase == "zo" else []
        for key in stale:
            logs.pop(key, None)
        # Trainer.log stored a copy of `logs` in log_history before calling on_log: keep the two consistent.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)
            for key in stale:
                state.log_history[-1].pop(key, None)


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


def trainable_weight_norm(model) -> float:
    """The L2 norm of the trainable weights, accumulated in float64 (weights of 1e28 do not overflow it; a non-finite
    weight makes it non-finite). Under ZeRO-3 each process holds a shard: the squares are summed over processes."""
    tensors = [getattr(p, "ds_tensor", p).detach() for p in model.parameters() if p.requires_grad]
    if not tensors:
        return 0.0
    square = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64) for t in tensors]).square().sum()
    sharded = any(hasattr(p, "ds_tensor") for p in model.parameters())
    if sharded and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(square)
    return math.sqrt(square.item()) if math.isfinite(square.item()) else square.item()


class TrainingDiverged(RuntimeError):
    """Training stopped by :class:`DivergenceGuardCallback`; `record` is what the report keeps of the stop."""

    def __init__(self, record: dict[str, Any]):
        self.record = record
        super().__init__(record["message"])


class DivergenceGuardCallback(TrainerCallback):
    """Stop a run at the first step whose loss, gradient norm or ZO projected gradient is not finite, or whose
    forget loss passes ``max_forget_loss`` in absolute value (gradient ascent's collapse), before the optimizer
    applies that step.

    The trainer hands each forward's loss and parts to :meth:`observe` (non-finite values stop at once); gradients
    and the forget-loss bound (its largest magnitude over all processes) are checked in ``on_pre_optimizer_step``.
    A failed check raises :class:`TrainingDiverged` (one message naming the step, the value and the likely cause),
    so the step's update never reaches the weights, no checkpoint of it is written, and the caller decides what to
    keep (the pipeline keeps the report and saves no final model).

    The weights themselves are checked after every step (``on_step_end``, before a checkpoint or the final model is
    saved): they must be finite, and the step may not change the L2 norm of the trainable weights by more than
    ``max_update_ratio`` times that norm (a lower bound of the update's size; see
    ``UnlearnConfig.divergence_max_update_ratio``). This is what catches the last step's update, which no loss
    follows. The weights training starts from are checked too, those of a resumed checkpoint included.
    """

    def __init__(self, max_forget_loss: float | None = None, max_update_ratio: float | None = 1.0):
        self.max_forget_loss = max_forget_loss
        self.max_update_ratio = max_update_ratio
        self._worst_forget = 0.0  # the forget loss of largest magnitude in this optimizer step
        self._weight_norm: float | None = None  # of the trainable weights, after the last step checked

    @classmethod
    def from_args(cls, args) -> DivergenceGuardCallback:
        return cls(
            max_forget_loss=args.divergence_max_forget_loss,
            max_update_ratio=getattr(args, "divergence_max_update_ratio", 1.0),
        )

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """The weights training starts from are finite: after a resume, the checkpoint's (whose last update no loss
        has checked yet; the first loss after the resume is observed like every other)."""
        self._weight_norm = None
        if model is None:
            return
        norm = trainable_weight_norm(model)
        if not math.isfinite(norm):
            where = f"loaded from the checkpoint of step {state.global_step}" if state.global_step else "given"
            self._stop(args, state.global_step, "weight_norm", norm, f"non-finite weights {where}")
        self._weight_norm = norm

    def on_step_end(self, args, state, control, model=None, **kwargs):
        """Check the weights each step wrote, before they are saved: the last step's update is followed by no loss
        that would show it, and a checkpoint must never hold weights no check has seen."""
        if model is None:
            return
        step, norm, before = state.global_step, trainable_weight_norm(model), self._weight_norm
        if not math.isfinite(norm):
            self._stop(args, step, "weight_norm", norm, "non-finite weights after the update")
        ratio = self.max_update_ratio
        if ratio is not None and before and abs(norm - before) > ratio * before:
            self._stop(
                args, step, "weight_norm", norm,
                f"the update moved the trainable weights' norm from {before:.6g} by {abs(norm - before) / before:.3g} "
                f"times its size, past divergence_max_update_ratio={ratio:g}",
            )  # fmt: skip
        self._weight_norm = norm

    def observe(self, step: int, loss: torch.Tensor | None, parts: dict[str, list] | None, args=None) -> None:
        """Check one forward's loss and its parts (``loss/forget``, ...) as soon as they exist, before any update.

        Called by the trainer after each `training_step`, also when that step raised (a ZO optimizer refusing a
        non-finite projected gradient): the guard's message then replaces the optimizer's.
        """
        values = {"loss": [loss]} if loss is not None else {}
        values.update(parts or {})
        for name, items in values.items():
            if not items:
                continue
            value = torch.stack([v.detach().float().reshape(-1)[0] for v in items]).cpu()
            if not torch.isfinite(value).all():
                self._stop(args, step, name, value[~torch.isfinite(value)][0].item(), "a non-finite loss")
            if name == "loss/forget" and self.max_forget_loss is not None:
                worst = value[value.abs().argmax()].item()
                if abs(worst) > abs(self._worst_forget):
                    self._worst_forget = worst

    def on_step_begin(self, args, state, control, **kwargs):
        self._worst_forget = 0.0

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step + 1
        if self.max_forget_loss is not None:
            # Checked here, across processes, so that every process stops at the same step (a rank-local stop
            # would leave the others waiting in the next collective).
            worst = torch.tensor([abs(self._worst_forget), self._worst_forget], dtype=torch.float64)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                gathered = [torch.zeros_like(worst) for _ in range(torch.distributed.get_world_size())]
                torch.distributed.all_gather(gathered, worst.to(args.device) if args.device.type != "cpu" else worst)
                worst = max((g.cpu() for g in gathered), key=lambda g: g[0].item())
            if worst[0].item() > self.max_forget_loss:
                self._stop(
                    args, step, "loss/forget", worst[1].item(),
                    f"past divergence_max_forget_loss={self.max_forget_loss}, the sign of a collapsing model; "
                    "raise the bound if this loss is expected",
                )  # fmt: skip
        self._worst_forget = 0.0
        zo = zo_optimizer_of(optimizer) if optimizer is not None else None
        projected = zo.last_projected_grad if zo is not None and zo.pending_records else None
        if projected is not None and not math.isfinite(float(projected)):
            self._stop(args, step, "zo/projected_grad", float(projected), "a non-finite zeroth-order gradient")
        if model is not None:
            norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
            if norms:
                grad_norm = torch.linalg.vector_norm(torch.stack([n.cpu() for n in norms])).item()
                if not math.isfinite(grad_norm):
                    self._stop(args, step, "grad_norm", grad_norm, "a non-finite gradient")

    def _stop(self, args, step: int, name: str, value: float, what: str) -> None:
        lr = getattr(args, "learning_rate", None)
        rate = f" (learning_rate={lr:g})" if lr is not None else ""
        message = (
            f"training diverged at step {step}: {name} = {value:.6g} ({what}); the likely cause is a learning rate "
            f"too high for this method{rate}: lower it (or set divergence_guard=false to train on regardless)"
        )
        raise TrainingDiverged({"step": step, "quantity": name, "value": str(value), "message": message})
