"""SophiaG as used for unlearning in SOUL (EMNLP 2024): a clipped, diagonally preconditioned sign update."""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class SophiaG(Optimizer):
    """Second-order optimizer of the paper's grade hierarchy.

    Per step, with ``g`` the gradient::

        m ← β1·m + (1−β1)·g
        h ← β2·h + (1−β2)·g⊙g            # diagonal curvature proxy (Gauss-Newton-Bartlett with the true labels)
        θ ← θ·(1 − lr·wd)
        θ ← θ − lr·sign(m)·min(|m| / (ρ·b·h + 1e-15), 1)

    ``b`` (``batch_tokens``) is the reference implementation's batch-token constant; it rescales ``ρ``.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.04,
        weight_decay: float = 0.1,
        batch_tokens: int = 5120,
    ):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        if batch_tokens <= 0:
            raise ValueError(f"batch_tokens must be > 0, got {batch_tokens}")
        defaults = {"lr": lr, "betas": tuple(betas), "rho": rho, "weight_decay": weight_decay}
        defaults["batch_tokens"] = batch_tokens
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["hessian"] = torch.zeros_like(p)
                m, h = state["exp_avg"], state["hessian"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                h.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                ratio = (m.abs() / (group["rho"] * group["batch_tokens"] * h + 1e-15)).clamp_(max=1)
                p.addcmul_(m.sign(), ratio, value=-lr)
        return loss
