"""UNDIAL (Dong et al. 2024): self-distillation onto the original model's next-token distribution with the true
token's logit lowered by β."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hf_unlearn.configs import UnlearnConfig, check_positive
from hf_unlearn.modeling import answer_mask, model_inputs
from hf_unlearn.paper import Paper
from hf_unlearn.trainers.base import UnlearnTrainer


@dataclass
class UNDIALConfig(UnlearnConfig):
    """UNDIAL hyperparameters; defaults follow open-unlearning's `configs/trainer/UNDIAL.yaml` (β 10, no retain)."""

    beta: float = field(
        default=10.0,
        metadata={"help": "How far the teacher's logit of the true token is lowered (β; typically 3, 10 or 30); > 0."},
    )
    alpha: float = field(
        default=0.0,
        metadata={"help": "Weight of the retain loss (α); 0 (the paper's setting) trains on the forget set alone."},
    )

    def __post_init__(self):
        check_positive("beta", self.beta)
        super().__post_init__()


class UNDIALTrainer(UnlearnTrainer):
    """Forget loss = mean over answer tokens of CE(student, softmax(teacher − β·onehot(label))), + α·retain.

    The teacher is the frozen model before unlearning (a reloaded copy, or the base model with the adapter disabled
    under peft), run on the same forget batch every step.
    """

    _name = "undial"
    _paper = Paper(
        title="UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large Language Models",
        authors="Dong, Yijiang River and Lin, Hongzhou and Belkin, Mikhail and Huerta, Ramon and Vuli{\\'c}, Ivan",
        year=2024,
        arxiv="2402.10052",
        key="dong2024undial",
    )
    config_class = UNDIALConfig

    @classmethod
    def needs_reference(cls, args) -> bool:
        return True  # the teacher

    def forget_loss(self, model, forget, counts):
        mask = answer_mask(forget["labels"])
        targets = forget["labels"][:, 1:][mask]
        student = model(**model_inputs(forget)).logits[:, :-1][mask].float()
        with torch.no_grad(), self.reference(model) as ref:
            teacher = ref(**model_inputs(forget)).logits[:, :-1][mask].float()
            teacher[torch.arange(len(targets), device=teacher.device), targets] -= self.args.beta
            soft_labels = teacher.softmax(-1)
        return F.cross_entropy(student, soft_labels, reduction="sum") / counts.tokens
