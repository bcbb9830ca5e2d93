"""SatImp (Yang et al. 2025): gradient ascent with each answer token weighted by p^β1·(1−p)^β2 of its own
(detached) probability p, combining the saturation (p^β1) and importance ((1−p)^β2) criteria."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hf_unlearn.configs import UnlearnConfig, check_non_negative
from hf_unlearn.paper import Paper
from hf_unlearn.trainers.base import UnlearnTrainer
from hf_unlearn.trainers.losses import answer_token_nll


@dataclass
class SatImpConfig(UnlearnConfig):
    """SatImp hyperparameters: β1 5, β2 1 (open-unlearning's `configs/trainer/SatImp.yaml`); forget weight 1 and
    retain weight 0.1, the `satimp_gd` setting of the authors' code (tmlr-group/SatImp, `coeff: 0.1`)."""

    beta1: float = field(default=5.0, metadata={"help": "Exponent β1 of the saturation weight p^β1; must be >= 0."})
    beta2: float = field(
        default=1.0, metadata={"help": "Exponent β2 of the importance weight (1−p)^β2; must be >= 0."}
    )
    alpha: float = field(
        default=0.1,
        metadata={
            "help": "Weight of the retain loss (α); the authors' code uses 0.1 with weight 1 on the forget term "
            "(open-unlearning's YAML swaps the two: gamma 0.1, alpha 1)."
        },
    )

    def __post_init__(self):
        check_non_negative("beta1", self.beta1)
        check_non_negative("beta2", self.beta2)
        super().__post_init__()


class SatImpTrainer(UnlearnTrainer):
    """Forget loss = −mean over answer tokens of p^β1·(1−p)^β2·NLL, p = exp(−NLL) detached; + α·retain."""

    _name = "satimp"
    _paper = Paper(
        title="Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning",
        authors="Yang, Puning and Wang, Qizhou and Huang, Zhuo and Liu, Tongliang and Zhang, Chengqi and Han, Bo",
        year=2025,
        arxiv="2505.11953",
        key="yang2025exploring",
    )
    config_class = SatImpConfig

    def forget_loss(self, model, forget, counts):
        nll = answer_token_nll(model, forget)  # 0 off the answer, where the weighted term is 0 too
        p = torch.exp(-nll.detach())
        weight = p**self.args.beta1 * (1 - p) ** self.args.beta2
        return -(weight * nll).sum() / counts.tokens
