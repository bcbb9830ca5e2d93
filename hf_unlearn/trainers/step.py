"""``TrainingStepMixin``: the one ``training_step`` of the trainers, with its strategy chosen once per optimizer.

The strategy (first order, zeroth order, smoothing, or the hybrid's FO/ZO switch) follows from the optimizer's type,
which never changes during training: it is chosen when the optimizer is created (``create_optimizer``, which the
Trainer calls however the optimizer came to be, DeepSpeed's set-up included), not rediscovered on every
micro-batch. ``ZerothOrderMixin`` and ``SmoothingMixin`` extend :meth:`select_training_step`.
"""

from __future__ import annotations

from collections.abc import Callable


class TrainingStepMixin:
    """Owns ``training_step``; put before the Trainer class (the ZO and smoothing mixins derive from it)."""

    _training_step_fn: Callable | None = None

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        self._training_step_fn = self.select_training_step(optimizer)
        return optimizer

    def select_training_step(self, optimizer) -> Callable:
        """The step function ``(model, inputs, num_items_in_batch) -> loss`` for this (unwrapped) optimizer."""
        return self.first_order_step

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._training_step_fn is None:  # an optimizer set on the trainer by hand, without create_optimizer
            self._training_step_fn = self.select_training_step(self.optimizer)
        return self._training_step_fn(model, inputs, num_items_in_batch)

    def first_order_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer's own forward/backward step."""
        return super().training_step(model, inputs, num_items_in_batch)
