"""``SmoothingMixin``: the extra forward/backward passes of SAM and FO-RS in any ``transformers.Trainer`` subclass.

What is smoothed (``smoothing_scope``): ``forget`` (default, the paper's setting) perturbs only the forget term
``γ·forget`` and takes the retain term's gradient at ``w``; ``loss`` smooths the whole training loss. A trainer whose
loss has no separate retain term (``alpha = 0``, or any non-unlearning Trainer, TRL's included) smooths its whole
loss either way: there it is the forget term. Trainers expose the split through :meth:`SmoothingMixin.loss_terms`.

Gradient accumulation and data parallelism are exact: the update equals the one on the whole global batch, however
it is split over micro-batches and processes.

- FO-RS: every micro-batch of an optimizer step, on every process, uses the *same* K perturbations (seeds from
  ``fo_rs_seed`` or ``seed``, the global step and the sample index). Gradients are linear in the loss, so the sum
  of the per-micro-batch gradients at ``w + σε_k`` is the global batch's gradient there. Cost per micro-batch: K
  forward/backward passes of the smoothed term (plus one of the retain term at ``w`` when it is separate).
- SAM: the ascent direction is the gradient of the smoothed term over the *whole* accumulated, all-reduced batch,
  as in the standard formulation. The micro-batches of the window are kept (their tensors only); the usual passes
  accumulate the gradient at ``w``, and at the window's last micro-batch (when DDP has all-reduced it, so every
  replica perturbs identically) the weights move to ``w + ρg/‖g‖`` and every kept micro-batch runs once more.
  Cost per micro-batch: 2 forward/backward passes (3 with a separate retain term: the forget term's gradient at
  ``w`` is recomputed, and the window's full gradient is kept in a buffer the size of the trainable weights).

Only the last backward of a window synchronises gradients under DDP; the others run under ``no_sync``.
DeepSpeed and FSDP are refused (their engines own backward and shard the weights a perturbation must move).
"""

from __future__ import annotations

import contextlib
import functools

import torch

from hf_unlearn.optim.smoothing import FORS, SAM, SmoothingOptimizer, smoothing_optimizer_of
from hf_unlearn.trainers.step import TrainingStepMixin


class SmoothingMixin(TrainingStepMixin):
    """Put before the Trainer class (and before ``ZerothOrderMixin``): ``class T(SmoothingMixin, SomeTrainer)``.

    The step is chosen once, when the optimizer is created (``TrainingStepMixin``). When the optimizer is ``sam`` or
    ``fo_rs`` each micro-batch runs the passes described in the module docstring through the Trainer's own step (so
    its loss normalisation and backward apply) and, at the last micro-batch of the window, hands the smoothed
    gradient to the optimizer. The returned (logged) loss is the loss at ``w`` for SAM; for FO-RS the
    smoothed term is its mean over the K perturbed points.
    """

    def select_training_step(self, optimizer):
        smoothing = smoothing_optimizer_of(optimizer)
        if smoothing is None:
            return super().select_training_step(optimizer)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                f"optimizer={smoothing.name!r} is not supported under DeepSpeed or FSDP; use one process or DDP"
            )
        split = getattr(self.args, "smoothing_scope", "forget") == "forget" and self.loss_terms(1.0, 1.0) is not None
        if isinstance(smoothing, SAM):
            return functools.partial(self._sam_training_step, smoothing, split=split)
        if isinstance(smoothing, FORS):
            return functools.partial(self._fo_rs_training_step, smoothing, split=split)
        raise TypeError(f"SmoothingMixin does not know the passes of {type(smoothing).__name__}")

    # ---- hooks a trainer may override ----------------------------------------------------------------------------

    def loss_terms(self, forget: float, other: float):
        """Context in which ``compute_loss`` returns ``forget``·(forget term) + ``other``·(the other terms).

        ``None`` (this default) when the loss has no separate forget term; ``UnlearnTrainer`` implements it.
        """
        return None

    def extra_pass(self):
        """Context of the forwards that are not part of the step's reported loss (SAM's recomputations).

        Trainers that record something per forward (``UnlearnTrainer`` logs its loss parts) turn it off here.
        """
        return contextlib.nullcontext()

    # ---- the passes ----------------------------------------------------------------------------------------------

    def _backward_sync(self, model, last: bool):
        # Inside a window every backward but the very last accumulates locally, as the Trainer's own loop does.
        syncs = last and self.accelerator.sync_gradients
        return contextlib.nullcontext() if syncs else self.accelerator.no_sync(model)

    def _pass(self, model, inputs, num_items_in_batch, last: bool, terms=None):
        with self._backward_sync(model, last), terms if terms is not None else contextlib.nullcontext():
            return self.first_order_step(model, inputs, num_items_in_batch)

    def _fo_rs_training_step(self, fo_rs: FORS, model, inputs, num_items_in_batch, split: bool):
        seeds = fo_rs.sample_seeds(self.state.global_step)
        k_count = len(seeds)
        loss = 0.0
        for k, seed in enumerate(seeds):
            fo_rs.perturb_(seed)
            try:
                # split: the forget term weighted 1/K, so the samples add up to their mean; whole loss: averaged below
                terms = self.loss_terms(1.0 / k_count, 0.0) if split else None
                step_loss = self._pass(
                    model, inputs, num_items_in_batch, last=not split and k == k_count - 1, terms=terms
                )
                loss = loss + (step_loss if split else step_loss / k_count)
            finally:
                fo_rs.restore_()
        if split:
            loss = loss + self._pass(model, inputs, num_items_in_batch, last=True, terms=self.loss_terms(0.0, 1.0))
        if self.accelerator.sync_gradients:
            if not split:
                fo_rs.average_()
            fo_rs.noise.release()
            fo_rs.mark_ready()
        return loss

    def _sam_training_step(self, sam: SAM, model, inputs, num_items_in_batch, split: bool):
        step, window = getattr(self, "_sam_window", (None, None))
        if step != self.state.global_step:  # a new window (also after an interrupted one)
            window = []
            self._sam_window = (self.state.global_step, window)
        loss = self.first_order_step(model, inputs, num_items_in_batch)
        window.append(inputs)
        if not self.accelerator.sync_gradients:
            return loss
        # .grad is the window's gradient at w, all-reduced under DDP: the same ascent on every replica
        del self._sam_window

        def rerun(terms_of):
            for i, kept in enumerate(window):
                self._pass(model, kept, num_items_in_batch, last=i == len(window) - 1, terms=terms_of())

        with self.extra_pass():
            full = None
            if split:
                # keep the full gradient, recompute the forget term's alone for the direction, leave the rest
                full = [None if p.grad is None else p.grad.detach().clone() for p in sam.params]
                sam.zero_grad()
                rerun(lambda: self.loss_terms(1.0, 0.0))
            sam.ascend_()
            if split:
                with torch.no_grad():
                    for p, total in zip(sam.params, full):
                        if total is None:
                            continue
                        if p.grad is None:
                            p.grad = total
                        else:
                            p.grad.neg_().add_(total)  # full - forget = the retain term's gradient at w
            else:
                sam.zero_grad()
            try:
                rerun(lambda: self.loss_terms(1.0, 0.0) if split else None)
            finally:
                sam.restore_()
        sam.mark_ready()
        return loss


__all__ = ["SmoothingMixin", "SmoothingOptimizer"]
