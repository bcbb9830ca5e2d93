"""Gradient difference: ascend on the forget answers, descend on the retain answers (NLL or KL retain)."""

from __future__ import annotations

from dataclasses import dataclass

from hf_unlearn.configs import UnlearnConfig
from hf_unlearn.paper import Paper
from hf_unlearn.trainers.base import UnlearnTrainer
from hf_unlearn.trainers.losses import answer_token_nll


@dataclass
class GradDiffConfig(UnlearnConfig):
    """GradDiff uses the shared fields only: `gamma`, `alpha` and `retain_loss` ('nll' or 'kl')."""


class GradDiffTrainer(UnlearnTrainer):
    """Loss = −γ·CE(forget) + α·retain, retain = CE(retain) or KL(model ‖ reference) on retain answers."""

    _name = "grad_diff"
    _paper = Paper(
        title="Continual Learning and Private Unlearning",
        authors="Liu, Bo and Liu, Qiang and Stone, Peter",
        year=2022,
        arxiv="2203.12817",
        key="liu2022continual",
    )
    config_class = GradDiffConfig

    def forget_loss(self, model, forget, counts):
        return -answer_token_nll(model, forget).sum() / counts.tokens
