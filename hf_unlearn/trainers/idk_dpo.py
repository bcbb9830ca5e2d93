"""IdkDPO: DPO with an "I don't know"-style answer preferred over the forget answer (TOFU's IDK + DPO)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hf_unlearn.configs import UnlearnConfig, check_positive
from hf_unlearn.paper import Paper
from hf_unlearn.trainers.base import UnlearnTrainer
from hf_unlearn.trainers.losses import sequence_log_prob
from hf_unlearn.trainers.refusals import RefusalBatches, check_idk_answers, default_idk_answers


@dataclass
class IdkDPOConfig(UnlearnConfig):
    """IdkDPO hyperparameters: DPO β and the refusal answers used as the preferred side."""

    beta: float = field(default=0.1, metadata={"help": "DPO inverse temperature β; must be > 0."})
    idk_answers: list[str] = field(
        default_factory=default_idk_answers,
        metadata={
            "help": "Preferred answers for forget questions; one is drawn per example from (seed, index). Default: "
            "the list shipped in hf_unlearn/trainers/idk_answers.txt."
        },
    )

    def __post_init__(self):
        check_positive("beta", self.beta)
        check_idk_answers(self.idk_answers)
        super().__post_init__()


class IdkDPOTrainer(UnlearnTrainer):
    """Loss = −mean log σ(β·[(log π_θ(idk) − log π_ref(idk)) − (log π_θ(y) − log π_ref(y))]) on forget questions.

    The preferred answer keeps the forget example's prompt tokens (those before its labels) and replaces its
    answer by a refusal (`hf_unlearn.trainers.refusals`).
    """

    _name = "idk_dpo"
    _paper = Paper(
        title="TOFU: A Task of Fictitious Unlearning for LLMs",
        authors="Maini, Pratyush and Feng, Zhili and Schwarzschild, Avi and Lipton, Zachary C. and Kolter, J. Zico",
        year=2024,
        arxiv="2401.06121",
        key="maini2024tofu",
    )
    config_class = IdkDPOConfig

    @classmethod
    def needs_reference(cls, args) -> bool:
        return True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.refusals = RefusalBatches(self.processing_class, self.args.idk_answers, self.args.seed, self._name)

    def preferred_batch(self, forget) -> dict[str, torch.Tensor]:
        """The forget prompts, each followed by its drawn refusal answer (right-padded)."""
        return self.refusals.batch(forget)

    def forget_loss(self, model, forget, counts):
        preferred = self.preferred_batch(forget)
        chosen, rejected = sequence_log_prob(model, preferred), sequence_log_prob(model, forget)
        with torch.no_grad(), self.reference(model) as ref:
            ref_chosen, ref_rejected = sequence_log_prob(ref, preferred), sequence_log_prob(ref, forget)
        margin = (chosen - ref_chosen) - (rejected - ref_rejected)
        return -F.logsigmoid(self.args.beta * margin).sum() / counts.sequences
