"""Gradient ascent: maximise the answer NLL of the forget set."""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_unlearn.configs import UnlearnConfig
from hf_unlearn.paper import Paper
from hf_unlearn.trainers.grad_diff import GradDiffTrainer


@dataclass
class GradAscentConfig(UnlearnConfig):
    """Gradient ascent has no retain term; use `grad_diff` for one."""

    alpha: float = field(default=0.0, metadata={"help": "Must be 0: gradient ascent has no retain term."})

    def __post_init__(self):
        if self.alpha != 0:
            raise ValueError(
                f"alpha must be 0 for grad_ascent (it has no retain term), got {self.alpha}; use grad_diff."
            )
        super().__post_init__()


class GradAscentTrainer(GradDiffTrainer):
    """Loss = −mean token NLL of the forget answers: GradDiff's forget term, without its retain term (alpha = 0)."""

    _name = "grad_ascent"
    _paper = Paper(
        title="Knowledge Unlearning for Mitigating Privacy Risks in Language Models",
        authors="Jang, Joel and Yoon, Dongkeun and Yang, Sohee and Cha, Sungmin and Lee, Moontae and "
        "Logeswaran, Lajanugen and Seo, Minjoon",
        year=2023,
        arxiv="2210.01504",
        key="jang2023knowledge",
    )
    config_class = GradAscentConfig
