"""Compressed first-order optimizers: the update direction goes through an N-bit quantizer ``Q(m; N)``.

The paper's intra-order grade: ``θ ← θ − η·Q(m_t; N)`` is a *lower-grade* optimizer than the full update.
``Q(m; 1) = sign(m)`` gives signSGD (on the gradient) and signAdam (on Adam's direction, whose sign is the
sign of the momentum, i.e. Signum).
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


def quantize_direction(direction: torch.Tensor, bits: int) -> torch.Tensor:
    """N-bit symmetric quantizer ``Q(m; N)`` of an update direction (a new tensor).

    ``bits == 1`` is ``sign(m)`` (unit magnitude, as in signSGD). For ``bits >= 2`` the tensor is scaled by its
    absolute maximum ``s`` and rounded to the ``2·L + 1`` levels ``s·k/L``, ``L = 2**(bits-1) - 1`` (absmax int-N
    rounding; 2 bits is ternary {-s, 0, s}), so the update keeps the direction's scale.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if bits == 1:
        return torch.sign(direction)
    levels = 2 ** (bits - 1) - 1
    scale = direction.abs().max()
    if scale == 0:
        return torch.zeros_like(direction)
    return torch.round(direction / scale * levels) * (scale / levels)


class SignSGD(Optimizer):
    """signSGD: ``θ ← θ(1 − lr·wd) − lr·sign(g)`` (decoupled weight decay)."""

    def __init__(self, params, lr: float = 1e-4, weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = _run_closure(closure)
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(torch.sign(p.grad), alpha=-lr)
        return loss


class QAdam(Optimizer):
    """AdamW whose preconditioned direction ``m̂/(√v̂ + eps)`` goes through ``Q(·; bits)`` before the step.

    ``θ ← θ(1 − lr·wd) − lr·Q(m̂/(√v̂ + eps); bits)``. With ``bits = 1`` this is signAdam, since the sign of Adam's
    direction is the sign of its momentum.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        bits: int = 8,
    ):
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(
            params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "bits": bits}
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = _run_closure(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = (v / (1 - beta2**t)).sqrt_().add_(group["eps"])
                direction = (m / (1 - beta1**t)).div_(denom)
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(quantize_direction(direction, group["bits"]), alpha=-group["lr"])
        return loss


class SignAdam(Optimizer):
    """signAdam (Signum): ``m ← β1·m + (1−β1)·g; θ ← θ(1 − lr·wd) − lr·sign(m)``.

    Equal to ``QAdam(bits=1)`` with the same β1, without holding Adam's second moment.
    """

    def __init__(self, params, lr: float = 1e-4, beta1: float = 0.9, weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= beta1 < 1:
            raise ValueError(f"beta1 must be in [0, 1), got {beta1}")
        super().__init__(params, {"lr": lr, "beta1": beta1, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = _run_closure(closure)
        for group in self.param_groups:
            lr, wd, beta1 = group["lr"], group["weight_decay"], group["beta1"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(torch.sign(m), alpha=-lr)
        return loss


def _run_closure(closure):
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


__all__ = ["QAdam", "SignAdam", "SignSGD", "quantize_direction"]
