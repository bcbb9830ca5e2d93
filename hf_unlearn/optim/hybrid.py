"""One optimizer object for the FO-ZO hybrid: a first-order and a zeroth-order optimizer over the same weights."""

from __future__ import annotations

from typing import NamedTuple

from torch.optim import Optimizer

from .chain import find_in_chain, optimizer_chain
from .zo import ZerothOrderOptimizer


PHASES = ("fo", "zo")


class HybridSchedule(NamedTuple):
    """``fo_steps`` first-order steps, then ``zo_steps`` zeroth-order ones, repeated; FO first."""

    fo_steps: int = 20
    zo_steps: int = 20

    @property
    def period(self) -> int:
        return self.fo_steps + self.zo_steps

    def phase_at(self, step: int) -> str:
        """Phase of the 0-based optimizer step ``step``: a function of the step alone, so resuming continues it."""
        return "fo" if step % self.period < self.fo_steps else "zo"


class HybridOptimizer(Optimizer):
    """Dispatches :meth:`step` to ``fo`` or ``zo`` according to its own :class:`HybridSchedule`.

    The schedule belongs to the optimizer: :meth:`begin_step` (``HybridScheduleCallback`` calls it with the global
    step) sets :attr:`phase` from it; nothing else sets the phase. Both optimizers keep their state across phases.
    ``param_groups`` *are* the first-order optimizer's groups, so an lr scheduler built on this object drives both:
    the ZO learning rate is the FO one times ``zo_lr_scale``, refreshed before every ZO step. ``state_dict()`` holds
    the phase and both optimizers' states.
    """

    def __init__(
        self,
        fo: Optimizer,
        zo: ZerothOrderOptimizer,
        zo_lr_scale: float = 1.0,
        schedule: tuple[int, int] = (20, 20),
    ):
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
        self.schedule = HybridSchedule(*schedule)
        self._phase = self.schedule.phase_at(0)

    @property
    def phase(self) -> str:
        """``"fo"`` or ``"zo"``: the phase of the step begun last."""
        return self._phase

    def begin_step(self, global_step: int) -> str:
        """Enter the phase of the 0-based optimizer step ``global_step``; returns it."""
        self._phase = self.schedule.phase_at(global_step)
        return self._phase

    @property
    def zo_phase(self) -> ZerothOrderOptimizer | None:
        """The ZO optimizer while in a ZO phase, else None."""
        return self.zo if self._phase == "zo" else None

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
        if state_dict["phase"] not in PHASES:
            raise ValueError(f"not a HybridOptimizer state dict: phase {state_dict['phase']!r}")
        self._phase = state_dict["phase"]


def unwrap_optimizer(optimizer) -> Optimizer:
    """The innermost optimizer under accelerate / DeepSpeed wrappers, stopping at a hybrid or ZO optimizer."""
    found = find_in_chain(optimizer, lambda o: isinstance(o, (HybridOptimizer, ZerothOrderOptimizer)))
    if found is not None:
        return found
    *_, innermost = optimizer_chain(optimizer)
    return innermost


def zo_optimizer_of(optimizer) -> ZerothOrderOptimizer | None:
    """The ZO optimizer that a ZO step records into, if this (wrapped) optimizer is ZO or a hybrid in a ZO phase."""
    inner = unwrap_optimizer(optimizer)
    if isinstance(inner, ZerothOrderOptimizer):
        return inner
    return inner.zo_phase if isinstance(inner, HybridOptimizer) else None


__all__ = ["PHASES", "HybridOptimizer", "HybridSchedule", "unwrap_optimizer", "zo_optimizer_of"]
