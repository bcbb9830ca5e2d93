"""Unlearning objectives as `transformers.Trainer` subclasses, registered by name (one line each)."""

from __future__ import annotations

from hf_unlearn.paper import Paper
from hf_unlearn.trainers.altpo import AltPOConfig, AltPOTrainer
from hf_unlearn.trainers.base import UnlearnTrainer
from hf_unlearn.trainers.ce_u import CEUConfig, CEUTrainer
from hf_unlearn.trainers.grad_ascent import GradAscentConfig, GradAscentTrainer
from hf_unlearn.trainers.grad_diff import GradDiffConfig, GradDiffTrainer
from hf_unlearn.trainers.idk_dpo import IdkDPOConfig, IdkDPOTrainer
from hf_unlearn.trainers.idk_nll import IdkNLLConfig, IdkNLLTrainer
from hf_unlearn.trainers.npo import NPOConfig, NPOTrainer
from hf_unlearn.trainers.pdu import PDUConfig, PDUTrainer
from hf_unlearn.trainers.rmu import RMUConfig, RMUTrainer
from hf_unlearn.trainers.satimp import SatImpConfig, SatImpTrainer
from hf_unlearn.trainers.simnpo import SimNPOConfig, SimNPOTrainer
from hf_unlearn.trainers.undial import UNDIALConfig, UNDIALTrainer
from hf_unlearn.trainers.wga import WGAConfig, WGATrainer


# One line per method: its trainer class (which names its config class, its `_name` and its `_paper`).
METHODS: dict[str, type[UnlearnTrainer]] = {
    cls._name: cls
    for cls in (
        GradAscentTrainer,
        GradDiffTrainer,
        NPOTrainer,
        SimNPOTrainer,
        RMUTrainer,
        IdkDPOTrainer,
        UNDIALTrainer,
        CEUTrainer,
        SatImpTrainer,
        WGATrainer,
        PDUTrainer,
        IdkNLLTrainer,
        AltPOTrainer,
    )
}


def method_names() -> list[str]:
    """Registered method names, in registry order (help texts and errors are generated from these)."""
    return list(METHODS)


def get_method(name: str) -> type[UnlearnTrainer]:
    """The trainer class registered as `name`; its config dataclass is `get_method(name).config_class`."""
    key = name.strip().lower().replace("-", "_")
    if key not in METHODS:
        raise ValueError(f"Unknown unlearning method {name!r}; known methods: {', '.join(METHODS)}.")
    return METHODS[key]


__all__ = [
    "METHODS",
    "get_method",
    "method_names",
    "Paper",
    "UnlearnTrainer",
    "CEUConfig",
    "CEUTrainer",
    "AltPOConfig",
    "AltPOTrainer",
    "GradAscentConfig",
    "GradAscentTrainer",
    "GradDiffConfig",
    "GradDiffTrainer",
    "IdkDPOConfig",
    "IdkDPOTrainer",
    "IdkNLLConfig",
    "IdkNLLTrainer",
    "NPOConfig",
    "NPOTrainer",
    "PDUConfig",
    "PDUTrainer",
    "RMUConfig",
    "RMUTrainer",
    "SatImpConfig",
    "SatImpTrainer",
    "SimNPOConfig",
    "SimNPOTrainer",
    "UNDIALConfig",
    "UNDIALTrainer",
    "WGAConfig",
    "WGATrainer",
]
