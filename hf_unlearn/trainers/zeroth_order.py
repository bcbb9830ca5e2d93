"""``ZerothOrderMixin``: zeroth-order training steps for any ``transformers.Trainer`` subclass (TRL's included).

Gradient accumulation and data parallelism: every micro-batch of an optimizer step, on every process, uses the
*same* seeds (derived from ``zo_seed`` or ``seed``, the global step and the direction index). Each micro-batch's
projected gradient is normalised like the Trainer normalises a loss (divided by the number of accumulation steps
unless ``compute_loss`` already scales for them), the sum over micro-batches is recorded, and across processes it is
averaged with one scalar all-reduce. Because ``c`` is linear in the loss, the update equals the ZO estimate on the
whole global batch along those directions: results do not depend on how the batch is split over micro-batches or
processes, exactly as for a first-order step.
"""

from __future__ import annotations

import functools

import torch

from hf_unlearn.modeling import eval_mode
from hf_unlearn.optim.hybrid import HybridOptimizer, unwrap_optimizer
from hf_unlearn.optim.zero import attach_zero_masters, zo_step_under_deepspeed
from hf_unlearn.optim.zo import ZerothOrderOptimizer, derive_seed, projected_gradients
from hf_unlearn.trainers.step import TrainingStepMixin


class ZerothOrderMixin(TrainingStepMixin):
    """Put before the Trainer class: ``class ZOTrainer(ZerothOrderMixin, SomeTrainer)``.

    The step is chosen once, when the optimizer is created (``TrainingStepMixin``). When the optimizer (``adazo``,
    ``zo_adam``, ``zo_sgd``, or ``hybrid`` in a ZO phase of its own schedule) is zeroth order, the step runs the
    seeded ±μ forwards through ``self.compute_loss`` with no autograd and the model in eval mode (no dropout),
    records the projected gradients into the optimizer for its ``step()``, and returns the loss for logging; no
    ``.grad`` and no activation graph is created. Otherwise it is the Trainer's own step. fp16 loss scaling is
    rejected at config time (nothing to scale). Under DeepSpeed ZeRO (fp32 at stages 0-3, bf16 at stages 2-3) each
    rank perturbs and updates its partition of DeepSpeed's fp32 masters, and the update is applied at the end of the
    accumulation window (see ``hf_unlearn.optim.zero``).

    The forwards run through ``self.compute_loss`` on the model the Trainer passes in, which accelerate has wrapped
    in the mixed-precision autocast (``bf16=True`` with fp32 weights): ZO and FO steps see the same forward.
    On the last micro-batch of an accumulation window the last perturbation is left for the optimizer step to undo
    in its update sweep (``projected_gradients(defer_restore=True)``, the same result bit for bit).
    """

    def select_training_step(self, optimizer):
        inner = unwrap_optimizer(optimizer)
        if isinstance(inner, ZerothOrderOptimizer):
            return functools.partial(self.zeroth_order_step, inner, inner)
        if isinstance(inner, HybridOptimizer):
            return functools.partial(self._hybrid_step, inner)
        return super().select_training_step(optimizer)

    def _hybrid_step(self, hybrid: HybridOptimizer, model, inputs, num_items_in_batch):
        if hybrid.phase == "zo":
            return self.zeroth_order_step(hybrid.zo, hybrid, model, inputs, num_items_in_batch)
        return self.first_order_step(model, inputs, num_items_in_batch)

    def zeroth_order_step(self, zo: ZerothOrderOptimizer, stepped, model, inputs, num_items_in_batch=None):
        """One micro-batch's ±μ forwards, recorded into ``zo``; ``stepped`` is the optimizer the Trainer steps (``zo``
        itself or the hybrid around it)."""
        inputs = self._prepare_inputs(inputs)
        settings = zo.settings
        run_seed = self.args.seed if settings.seed is None else settings.seed
        seeds = [derive_seed(run_seed, self.state.global_step, i) for i in range(settings.num_directions)]

        def loss_fn() -> torch.Tensor:
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
            return loss.mean() if self.args.n_gpu > 1 else loss

        if self.is_deepspeed_enabled:
            attach_zero_masters(zo, self.optimizer)
        # the optimizer step follows this micro-batch directly (DDP's scalar all-reduce touches no weight)
        defer = bool(self.accelerator.sync_gradients)
        with eval_mode(model, inference=False):
            projected, loss = projected_gradients(zo, loss_fn, seeds, defer_restore=defer)

        if not self._zo_loss_is_scaled_for_ga(num_items_in_batch):
            projected = projected / self.current_gradient_accumulation_steps
            loss = loss / self.current_gradient_accumulation_steps
        if self.accelerator.num_processes > 1:
            projected = self.accelerator.reduce(projected.to(self.args.device), reduction="mean").cpu()
        projected = projected / settings.num_directions
        for seed, c in zip(seeds, projected.tolist()):
            zo.record(seed, c)
        zo.last_projected_grad = sum(zo.pending_records.values())
        if self.is_deepspeed_enabled and self.accelerator.sync_gradients:
            # DeepSpeed steps its optimizer only from backward, which ZO never calls: apply the update here.
            zo_step_under_deepspeed(stepped, zo, self.optimizer, self.lr_scheduler)
        return loss.to(device=self.args.device, dtype=torch.float32)

    def _zo_loss_is_scaled_for_ga(self, num_items_in_batch) -> bool:
        # The Trainer's own rule (training_step), so ZO and FO steps normalise accumulated micro-batches alike.
        declared = getattr(self, "loss_is_scaled_for_ga", None)
        if declared is not None:
            return declared
        if self.compute_loss_func is not None:
            return True
        return bool(self.model_accepts_loss_kwargs and num_items_in_batch is not None)
