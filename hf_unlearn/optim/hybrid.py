"""One optimizer object for the FO-ZO hybrid: a first-order and a zeroth-order optimizer over the same weights."""

from __future__ import annotations

from torch.optim import Optimizer

from .zo import ZerothOrderOptimizer


PHASES = ("fo", "zo")


class HybridOptimizer(Optimizer):
    """Dispatches :meth:`step` to ``fo`` or ``zo`` according to :attr:`phase` (set by ``HybridScheduleCallback``).

    Both optimizers keep their state across phases. ``param_groups`` *are* the first-order optimizer's groups, so
    an lr scheduler built on this object drives both: the ZO learning rate is the FO one times ``zo_lr_scale``,
    refreshed before every ZO step. ``state_dict()`` holds the phase and both optimizers' states.
    """

    def __init__(self, fo: Optimizer, zo: ZerothOrderOptimizer, zo_lr_scale: float = 1.0, phase: str = "fo"):
        if not isinstance(zo, ZerothOrderOptimizer):
            raise TypeError(f"zo must be a ZerothOrderOptimizer, got {type(zo).__name__}")
        if isinstance(fo, ZerothOrderOptimizer):
            raise TypeError("fo must be a first-order optimizer, got a ZerothOrderOptimizer")
        fo_params = [p for g in fo.param_groups for p in g["params"]]
        zo_params = [p for g in zo.param_groups for p in g["params"]]
        if len(fo_params) != len(zo_params) or any(a is not b for a, b in zip(fo_params, zo_params)):
            raise ValueError("the FO and ZO optimizers of a hybrid must hold the same parameters in the same groups")
        if zo_lr_scale <= 0:
            raise ValueError(f"zo_lr_scale must be > 0, got {zo_lr_scale}")
        # torch's base __init__ sets up hooks and bookkeeping; its own group copies are then replaced by fo's.
        super().__init__(fo_params, {})
        self.param_groups = fo.param_groups
        # Wrappers (DeepSpeed ZeRO) that re-point param_groups also read `state`: it must be the FO state alongside.
        self.state = fo.state
        self.fo, self.zo = fo, zo
        self.zo_lr_scale = zo_lr_scale
        self.phase = phase

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        if value not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {value!r}")
        self._phase = value

    def step(self, closure=None):
        if self._phase == "fo":
            return self.fo.step(closure)
        for fo_group, zo_group in zip(self.param_groups, self.zo.param_groups):
            zo_group["lr"] = fo_group["lr"] * self.zo_lr_scale
        return self.zo.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.fo.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {
            "phase": self._phase,
            "zo_lr_scale": self.zo_lr_scale,
            "fo": self.fo.state_dict(),
            "zo": self.zo.state_dict(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        missing = {"phase", "fo", "zo"} - set(state_dict)
        if missing:
            raise KeyError(f"not a HybridOptimizer state dict: missing {sorted(missing)}")
        self.fo.load_state_dict(state_dict["fo"])
        self.zo.load_state_dict(state_dict["zo"])
        self.param_groups = self.fo.param_groups
        self.state = self.fo.state
        self.zo_lr_scale = state_dict.get("zo_lr_scale", self.zo_lr_scale)
        self.phase = state_dict["phase"]


def unwrap_optimizer(optimizer) -> Optimizer:
    """The innermost optimizer under accelerate / DeepSpeed wrappers (they expose it as ``.optimizer``)."""
    seen = set()
    while not isinstance(optimizer, (HybridOptimizer, ZerothOrderOptimizer)) and hasattr(optimizer, "optimizer"):
        if id(optimizer) in seen:
            break
        seen.add(id(optimizer))
        optimizer = optimizer.optimizer
    return optimizer


def zo_optimizer_of(optimizer) -> ZerothOrderOptimizer | None:
    """The ZO optimizer that a ZO step should record into, if this (wrapped) optimizer is in a ZO phase."""
    inner = unwrap_optimizer(optimizer)
    if isinstance(inner, ZerothOrderOptimizer):
        return inner
    if isinstance(inner, HybridOptimizer) and inner.phase == "zo":
        return inner.zo
    return None


__all__ = ["PHASES", "HybridOptimizer", "unwrap_optimizer", "zo_optimizer_of"]
