"""The paper's smoothness baselines: SAM and first-order randomized smoothing (FO-RS) around any first-order step.

Both replace the gradient a first-order optimizer steps with by a gradient taken at perturbed weights:

- SAM (sharpness-aware minimisation): ``g_SAM = ∇f(w + ρ·g/‖g‖)`` with ``g = ∇f(w)`` over all trainable weights.
- FO-RS: ``g_RS = (1/K) Σ_k ∇f(w + σ·ε_k)``, ``ε_k ~ N(0, I)`` drawn from seeds, so every process draws the same.

The extra forward/backward passes need the loss, which an optimizer does not have. Two ways to run them:

- in a Trainer with ``SmoothingMixin`` (every hf_unlearn trainer has it), which runs the passes in its
  ``training_step`` and calls :meth:`SmoothingOptimizer.mark_ready` before the Trainer's ``optimizer.step()``;
- by hand, ``optimizer.step(closure)`` with a closure that computes the loss at the current weights and calls
  ``backward()`` (``step`` zeroes the gradients before each call and restores the weights afterwards).

A plain ``step()`` without either raises: stepping the base optimizer with the unsmoothed gradient would silently
be another optimizer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim import Optimizer

from .chain import find_in_chain
from .zo import SeededDirections, ZerothOrderOptimizer, derive_seed


_HALF = (torch.float16, torch.bfloat16)


class SmoothingOptimizer(Optimizer):
    """Base class of :class:`SAM` and :class:`FORS`: a first-order ``base`` optimizer stepped with a smoothed gradient.

    ``param_groups`` and ``state`` *are* the base optimizer's, so lr schedulers and gradient clipping act on it.
    Perturbations are undone by copying saved weights back (bit-exact; memory: one copy of the trainable weights).
    """

    name = "smoothing"

    def __init__(self, base: Optimizer):
        if isinstance(base, (ZerothOrderOptimizer, SmoothingOptimizer)):
            raise TypeError(f"{self.name} wraps a first-order optimizer, got {type(base).__name__}")
        params = [p for g in base.param_groups for p in g["params"]]
        super().__init__(params, {})
        self.param_groups = base.param_groups
        self.state = base.state
        self.base = base
        self.params = [p for p in params if p.requires_grad]
        self._saved: list[torch.Tensor] | None = None
        self._ready = False
        self._manual_steps = 0

    # ---- perturbation --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _save(self) -> None:
        if self._saved is not None:
            raise RuntimeError(f"{self.name}: the weights are already perturbed; call restore_() first")
        self._saved = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def restore_(self) -> None:
        """Copy back the weights saved before the current perturbation."""
        if self._saved is None:
            raise RuntimeError(f"{self.name}: restore_() without a perturbation")
        for p, saved in zip(self.params, self._saved):
            p.copy_(saved)
        self._saved = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    # ---- stepping ------------------------------------------------------------------------------------------------

    def mark_ready(self) -> None:
        """The ``.grad`` fields now hold the smoothed gradient: the next :meth:`step` may apply it."""
        if self._saved is not None:
            raise RuntimeError(f"{self.name}: mark_ready() while the weights are still perturbed")
        self._ready = True

    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        if closure is not None:
            with torch.enable_grad():
                loss = self._smoothed_gradient(closure, self._manual_steps)
            self._manual_steps += 1
            self._ready = True
        elif not self._ready:
            raise RuntimeError(
                f"optimizer={self.name!r} needs extra forward/backward passes before each step: train with a Trainer "
                "that has hf_unlearn's SmoothingMixin (every hf_unlearn trainer does), or call step(closure) with a "
                "closure that computes the loss at the current weights and calls backward()"
            )
        else:
            loss = None
        self._ready = False
        self.base.step()
        return loss

    def _smoothed_gradient(self, closure: Callable[[], torch.Tensor], step: int) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict(), "manual_steps": self._manual_steps, **self._settings()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "base" not in state_dict:
            raise KeyError(f"not a {type(self).__name__} state dict: missing 'base'")
        self.base.load_state_dict(state_dict["base"])
        self.param_groups = self.base.param_groups
        self.state = self.base.state
        self._manual_steps = state_dict.get("manual_steps", 0)

    def _settings(self) -> dict:
        return {}


class SAM(SmoothingOptimizer):
    """Sharpness-aware minimisation (Foret et al., ICLR 2021) around ``base``.

    ``e = ρ·g/‖g‖₂`` with ``g`` the gradient at ``w`` over all trainable weights (``e = 0`` when ``g = 0``); the base
    optimizer steps from ``w`` with the gradient taken at ``w + e``.
    """

    name = "sam"

    def __init__(self, base: Optimizer, rho: float = 0.01):
        if not rho > 0:
            raise ValueError(f"sam_rho must be > 0, got {rho}")
        super().__init__(base)
        self.rho = rho

    @torch.no_grad()
    def ascend_(self) -> float:
        """Save ``w`` and move to ``w + ρ·g/‖g‖`` using the current ``.grad``; return ‖g‖ (missing grads count 0)."""
        # half-precision gradients are summed in double; the others as they are
        norms = [torch.linalg.vector_norm(p.grad.double() if p.grad.dtype in _HALF else p.grad).double()
                 for p in self.params if p.grad is not None]  # fmt: skip
        norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
        self._save()
        if norm > 0:
            for p in self.params:
                if p.grad is not None:
                    p.add_(p.grad, alpha=self.rho / norm)
        return norm

    def _smoothed_gradient(self, closure, step):
        self.zero_grad()
        loss = closure()
        self.ascend_()
        self.zero_grad()
        closure()
        self.restore_()
        return loss

    def _settings(self) -> dict:
        return {"rho": self.rho}


class FORS(SmoothingOptimizer):
    """First-order randomized smoothing around ``base``: the gradient averaged over ``num_samples`` Gaussian points.

    Sample ``k`` of step ``t`` is ``ε = N(0, I)`` from the seed ``derive_seed(seed, t, k)`` (one private generator
    per tensor, see :class:`~hf_unlearn.optim.zo.SeededDirections`): identical on every process and reproducible.
    """

    name = "fo_rs"

    def __init__(self, base: Optimizer, sigma: float = 1e-4, num_samples: int = 3, seed: int = 0):
        if not sigma > 0:
            raise ValueError(f"fo_rs_sigma must be > 0, got {sigma}")
        if not (isinstance(num_samples, int) and num_samples >= 1):
            raise ValueError(f"fo_rs_samples must be an integer >= 1, got {num_samples!r}")
        super().__init__(base)
        self.sigma, self.num_samples, self.seed = sigma, num_samples, seed
        self.noise = SeededDirections(self.params, "gaussian")

    def sample_seeds(self, step: int) -> list[int]:
        """The seeds of the ``num_samples`` perturbations of step ``step``."""
        return [derive_seed(self.seed, step, k) for k in range(self.num_samples)]

    @torch.no_grad()
    def perturb_(self, sample_seed: int) -> None:
        """Save ``w`` and move to ``w + σ·ε(sample_seed)``."""
        self._save()
        self.noise.perturb_(sample_seed, self.sigma)

    @torch.no_grad()
    def average_(self) -> None:
        """Divide the gradients summed over the samples by their number."""
        for p in self.params:
            if p.grad is not None:
                p.grad.div_(self.num_samples)

    def _smoothed_gradient(self, closure, step):
        self.zero_grad()
        losses = []
        for seed in self.sample_seeds(step):
            self.perturb_(seed)
            losses.append(closure().detach())
            self.restore_()
        self.average_()
        self.noise.release()
        return torch.stack(losses).mean()

    def _settings(self) -> dict:
        return {"sigma": self.sigma, "num_samples": self.num_samples, "seed": self.seed}


def smoothing_optimizer_of(optimizer) -> SmoothingOptimizer | None:
    """The :class:`SmoothingOptimizer` under accelerate's wrapper, if the (wrapped) optimizer is one."""
    return find_in_chain(optimizer, lambda link: isinstance(link, SmoothingOptimizer))


__all__ = ["FORS", "SAM", "SmoothingOptimizer", "smoothing_optimizer_of"]
