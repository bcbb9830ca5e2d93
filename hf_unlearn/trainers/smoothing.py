"""``SmoothingMixin``: the extra forward/backward passes of SAM and FO-RS in any ``transformers.Trainer`` subclass.

Gradient accumulation and data parallelism are exact: the update equals the one on the whole global batch, however
it is split over micro-batches and processes.

- FO-RS: every micro-batch of an optimizer step, on every process, uses the *same* K perturbations (seeds from
  ``fo_rs_seed`` or ``seed``, the global step and the sample index). Gradients are linear in the loss, so the sum
  of the per-micro-batch gradients at ``w + σε_k`` is the global batch's gradient there. Cost: K forward/backward
  passes per micro-batch.
- SAM: the ascent direction is the gradient of the *whole* accumulated, all-reduced batch, as in the standard
  formulation. The micro-batches of the window are kept (their tensors only), the usual passes accumulate ``g``,
  and at the window's last micro-batch (when DDP has all-reduced ``g``, so every replica perturbs identically) the
  weights move to ``w + ρg/‖g‖`` and every kept micro-batch runs once more. Cost: 2 forward/backward passes per
  micro-batch, plus the micro-batches of one window held in memory.

Only the last backward of a window synchronises gradients under DDP; the others run under ``no_sync``.
DeepSpeed and FSDP are refused (their engines own backward and shard the weights a perturbation must move).
"""

from __future__ import annotations

import contextlib

import torch

from hf_unlearn.optim.smoothing import FORS, SAM, SmoothingOptimizer, smoothing_optimizer_of


class SmoothingMixin:
    """Put before the Trainer class (and before ``ZerothOrderMixin``): ``class T(SmoothingMixin, SomeTrainer)``.

    Overrides only ``training_step``. When the optimizer is ``sam`` or ``fo_rs`` each call runs the passes described
    in the module docstring through ``super().training_step`` (so the Trainer's own loss normalisation and backward
    apply) and, at the last micro-batch of the window, hands the smoothed gradient to the optimizer; otherwise it
    defers to ``super().training_step``. The returned (logged) loss is the loss at ``w`` for SAM and the mean loss
    over the K perturbed points for FO-RS.
    """

    def training_step(self, model, inputs, num_items_in_batch=None):
        smoothing = smoothing_optimizer_of(self.optimizer)
        if smoothing is None:
            return super().training_step(model, inputs, num_items_in_batch)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                f"optimizer={smoothing.name!r} is not supported under DeepSpeed or FSDP; use one process or DDP"
            )
        if isinstance(smoothing, SAM):
            return self._sam_training_step(smoothing, model, inputs, num_items_in_batch)
        if isinstance(smoothing, FORS):
            return self._fo_rs_training_step(smoothing, model, inputs, num_items_in_batch)
        raise TypeError(f"SmoothingMixin does not know the passes of {type(smoothing).__name__}")

    def extra_pass(self):
        """Context of the forwards that are not the step's reported loss (SAM's perturbed passes).

        Trainers that record something per forward (``UnlearnTrainer`` logs its loss parts) turn it off here.
        """
        return contextlib.nullcontext()

    def _backward_sync(self, model, last: bool):
        # Inside a window every backward but the very last accumulates locally, as the Trainer's own loop does.
        syncs = last and self.accelerator.sync_gradients
        return contextlib.nullcontext() if syncs else self.accelerator.no_sync(model)

    def _fo_rs_training_step(self, fo_rs: FORS, model, inputs, num_items_in_batch):
        run_seed = getattr(self.args, "fo_rs_seed", None)
        fo_rs.seed = self.args.seed if run_seed is None else run_seed
        seeds = fo_rs.sample_seeds(self.state.global_step)
        losses = []
        for k, seed in enumerate(seeds):
            fo_rs.perturb_(seed)
            try:
                with self._backward_sync(model, last=k == len(seeds) - 1):
                    losses.append(super().training_step(model, inputs, num_items_in_batch))
            finally:
                fo_rs.restore_()
        if self.accelerator.sync_gradients:
            fo_rs.average_()
            fo_rs.noise.release()
            fo_rs.mark_ready()
        return torch.stack(losses).mean()

    def _sam_training_step(self, sam: SAM, model, inputs, num_items_in_batch):
        step, window = getattr(self, "_sam_window", (None, None))
        if step != self.state.global_step:  # a new window (also after an interrupted one)
            window = []
            self._sam_window = (self.state.global_step, window)
        loss = super().training_step(model, inputs, num_items_in_batch)
        window.append(inputs)
        if not self.accelerator.sync_gradients:
            return loss
        # .grad is now the window's gradient at w, all-reduced under DDP: the same ascent on every replica
        del self._sam_window
        sam.ascend_()
        sam.zero_grad()
        try:
            with self.extra_pass():
                for i, kept in enumerate(window):
                    with self._backward_sync(model, last=i == len(window) - 1):
                        super().training_step(model, kept, num_items_in_batch)
        finally:
            sam.restore_()
        sam.mark_ready()
        return loss


__all__ = ["SmoothingMixin", "SmoothingOptimizer"]
