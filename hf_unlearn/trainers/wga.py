"""WGA, weighted gradient ascent (Wang et al. 2025): gradient ascent with each answer token weighted by p^β, its own
(detached) probability, so tokens already unlearned stop pulling."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hf_unlearn.configs import UnlearnConfig, check_non_negative
from hf_unlearn.paper import Paper
from hf_unlearn.trainers.base import UnlearnTrainer
from hf_unlearn.trainers.losses import answer_token_nll


@dataclass
class WGAConfig(UnlearnConfig):
    """WGA hyperparameters; defaults follow open-unlearning's `configs/trainer/WGA.yaml` (β 1, γ 1, α 1)."""

    beta: float = field(
        default=1.0, metadata={"help": "Exponent β of the confidence weight p^β; 0 is plain gradient ascent."}
    )

    def __post_init__(self):
        check_non_negative("beta", self.beta)
        super().__post_init__()


class WGATrainer(UnlearnTrainer):
    """Forget loss = −mean over answer tokens of p^β·NLL, p = exp(−NLL) detached; + α·retain."""

    _name = "wga"
    _paper = Paper(
        title="Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond",
        authors="Wang, Qizhou and Zhou, Jin Peng and Zhou, Zhanke and Shin, Saebyeol and Han, Bo and "
        "Weinberger, Kilian Q.",
        year=2025,
        arxiv="2502.19301",
        key="wang2025rethinking",
    )
    config_class = WGAConfig

    def forget_loss(self, model, forget, counts):
        nll = answer_token_nll(model, forget)  # 0 off the answer, where the weighted term is 0 too
        weight = torch.exp(-nll.detach()) ** self.args.beta
        return -(weight * nll).sum() / counts.tokens
