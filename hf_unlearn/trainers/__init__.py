"""Unlearning objectives as `transformers.Trainer` subclasses, registered by name (one line each)."""

from __future__ import annotations

from hf_unlearn.trainers.base import UnlearnTrainer
from hf_unlearn.trainers.grad_ascent import GradAscentConfig, GradAscentTrainer
from hf_unlearn.trainers.grad_diff import GradDiffConfig, GradDiffTrainer
from hf_unlearn.trainers.idk_dpo import IdkDPOConfig, IdkDPOTrainer
from hf_unlearn.trainers.npo import NPOConfig, NPOTrainer
from hf_unlearn.trainers.rmu import RMUConfig, RMUTrainer
from hf_unlearn.trainers.simnpo import SimNPOConfig, SimNPOTrainer


METHODS: dict[str, type[UnlearnTrainer]] = {
    GradAscentTrainer._name: GradAscentTrainer,
    GradDiffTrainer._name: GradDiffTrainer,
    NPOTrainer._name: NPOTrainer,
    SimNPOTrainer._name: SimNPOTrainer,
    RMUTrainer._name: RMUTrainer,
    IdkDPOTrainer._name: IdkDPOTrainer,
}


def get_method(name: str) -> type[UnlearnTrainer]:
    """The trainer class registered as `name`; its config dataclass is `get_method(name).config_class`."""
    key = name.strip().lower().replace("-", "_")
    if key not in METHODS:
        raise ValueError(f"Unknown unlearning method {name!r}; known methods: {', '.join(METHODS)}.")
    return METHODS[key]


__all__ = [
    "METHODS",
    "get_method",
    "UnlearnTrainer",
    "GradAscentConfig",
    "GradAscentTrainer",
    "GradDiffConfig",
    "GradDiffTrainer",
    "IdkDPOConfig",
    "IdkDPOTrainer",
    "NPOConfig",
    "NPOTrainer",
    "RMUConfig",
    "RMUTrainer",
    "SimNPOConfig",
    "SimNPOTrainer",
]
