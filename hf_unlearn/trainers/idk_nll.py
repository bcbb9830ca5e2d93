"""IdkNLL: learn an "I don't know"-style answer to each forget question (TOFU's IDK baseline), plus retain."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from hf_unlearn.configs import UnlearnConfig
from hf_unlearn.paper import Paper
from hf_unlearn.trainers.base import UnlearnTrainer
from hf_unlearn.trainers.losses import BatchCounts, SideCounts, answer_token_nll
from hf_unlearn.trainers.refusals import RefusalBatches, check_idk_answers, default_idk_answers


@dataclass
class IdkNLLConfig(UnlearnConfig):
    """IdkNLL's own field: the refusal answers that replace the forget answers."""

    idk_answers: list[str] = field(
        default_factory=default_idk_answers,
        metadata={
            "help": "Answers trained on in place of the forget answers; one is drawn per example from (seed, index). "
            "Default: the list shipped in hf_unlearn/trainers/idk_answers.txt."
        },
    )

    def __post_init__(self):
        check_idk_answers(self.idk_answers)
        super().__post_init__()


class IdkNLLTrainer(UnlearnTrainer):
    """Loss = γ·mean NLL of the drawn refusal's tokens after each forget prompt + α·retain.

    The forget example keeps its prompt tokens and its answer is replaced by the refusal drawn from (seed, index), as
    in IdkDPO's preferred side; the mean is over refusal tokens (eos included) of the accumulation window.
    """

    _name = "idk_nll"
    _paper = Paper(
        title="TOFU: A Task of Fictitious Unlearning for LLMs",
        authors="Maini, Pratyush and Feng, Zhili and Schwarzschild, Avi and Lipton, Zachary C. and Kolter, J. Zico",
        year=2024,
        arxiv="2401.06121",
        key="maini2024tofu",
    )
    config_class = IdkNLLConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.refusals = RefusalBatches(self.processing_class, self.args.idk_answers, self.args.seed, self._name)

    def refusal_tokens(self, batches: list[dict]) -> float:
        """Refusal answer tokens (the prediction targets) of these unlearning batches' forget sides."""
        return sum(SideCounts.of(self.refusals.batch(b["forget"])).tokens for b in batches)

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """The window's forget token count is that of the refusals trained on, not of the answers they replace."""
        batch_samples, counts = super().get_batch_samples(epoch_iterator, num_batches, device)
        if isinstance(counts, BatchCounts):
            total = torch.tensor([self.refusal_tokens(batch_samples)], dtype=torch.float64, device=device)
            tokens = self.accelerator.gather(total).sum().item() / self.accelerator.num_processes
            counts = dataclasses.replace(counts, forget=dataclasses.replace(counts.forget, tokens=tokens))
        return batch_samples, counts

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        if "forget" in inputs and not isinstance(num_items_in_batch, BatchCounts) and not self.is_in_train:
            counts = BatchCounts.of(inputs)  # a direct call: this batch is the whole window
            num_items_in_batch = dataclasses.replace(
                counts, forget=dataclasses.replace(counts.forget, tokens=self.refusal_tokens([inputs]))
            )
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def forget_loss(self, model, forget, counts):
        return answer_token_nll(model, self.refusals.batch(forget)).sum() / counts.tokens
