"""SimNPO (Fan et al. 2024): reference-free NPO on length-normalised log-likelihoods, with a margin."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F

from hf_unlearn.configs import UnlearnConfig, check_positive
from hf_unlearn.paper import Paper
from hf_unlearn.trainers.base import UnlearnTrainer
from hf_unlearn.trainers.losses import answer_lengths, sequence_log_prob


@dataclass
class SimNPOConfig(UnlearnConfig):
    """SimNPO hyperparameters; the paper's ranges are β 2.5–4.5 and margin γ 0–0.125."""

    beta: float = field(default=2.5, metadata={"help": "SimNPO inverse temperature β; must be > 0."})
    margin: float = field(
        default=0.0, metadata={"help": "SimNPO's reward margin (γ in the paper; not the forget weight `gamma`)."}
    )

    def __post_init__(self):
        check_positive("beta", self.beta)
        super().__post_init__()


class SimNPOTrainer(UnlearnTrainer):
    """Loss = −(2/β)·mean log σ(−β·log π_θ(y|x)/|y| − margin) on forget answers, + α·retain."""

    _name = "simnpo"
    _paper = Paper(
        title="Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning",
        authors="Fan, Chongyu and Liu, Jiancheng and Lin, Licong and Jia, Jinghan and Zhang, Ruiqi and Mei, Song and "
        "Liu, Sijia",
        year=2024,
        arxiv="2410.07163",
        key="fan2024simplicity",
    )
    config_class = SimNPOConfig

    def forget_loss(self, model, forget, counts):
        mean_log_prob = sequence_log_prob(model, forget) / answer_lengths(forget).clamp(min=1)
        beta = self.args.beta
        return -(2 / beta) * F.logsigmoid(-beta * mean_log_prob - self.args.margin).sum() / counts.sequences
