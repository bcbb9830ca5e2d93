"""IdkDPO: DPO with an "I don't know"-style answer preferred over the forget answer (TOFU's IDK + DPO)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hf_unlearn.configs import UnlearnConfig, check_positive
from hf_unlearn.data import IGNORE_INDEX, pad_batch
from hf_unlearn.trainers.base import Paper, UnlearnTrainer
from hf_unlearn.trainers.losses import sequence_log_prob


DEFAULT_IDK_ANSWERS = [
    "I don't know.",
    "I'm not sure.",
    "I have no information about that.",
    "I can't answer that.",
    "That is not something I know.",
    "I'm afraid I don't have that information.",
    "I could not tell you.",
    "I have no idea.",
]


@dataclass
class IdkDPOConfig(UnlearnConfig):
    """IdkDPO hyperparameters: DPO β and the refusal answers used as the preferred side."""

    beta: float = field(default=0.1, metadata={"help": "DPO inverse temperature β; must be > 0."})
    idk_answers: list[str] = field(
        default_factory=lambda: list(DEFAULT_IDK_ANSWERS),
        metadata={"help": "Preferred answers for forget questions; one is drawn per example from (seed, index)."},
    )

    def __post_init__(self):
        check_positive("beta", self.beta)
        if not self.idk_answers or not all(isinstance(a, str) and a.strip() for a in self.idk_answers):
            raise ValueError("idk_answers must be a non-empty list of non-empty strings.")
        super().__post_init__()


class IdkDPOTrainer(UnlearnTrainer):
    """Loss = −mean log σ(β·[(log π_θ(idk) − log π_ref(idk)) − (log π_θ(y) − log π_ref(y))]) on forget questions.

    The preferred answer keeps the forget example's prompt tokens (those before its labels) and replaces its
    answer by a refusal. As in `tokenize_qa`'s joint tokenisation, the refusal follows the prompt text directly:
    it starts with a space unless the prompt's tokens already end in whitespace (TOFU's `Answer: ` on a tokenizer
    that keeps a word's trailing space) or the tokenizer has a chat template.
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
        tokenizer = self.processing_class
        if tokenizer is None:
            raise ValueError("idk_dpo needs processing_class (the tokenizer) to tokenise the idk_answers.")
        chat = bool(getattr(tokenizer, "chat_template", None))

        def refusals(space: str) -> list[list[int]]:
            return [
                tokenizer(space + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                for answer in self.args.idk_answers
            ]

        self.idk_ids = refusals("" if chat else " ")
        self.idk_ids_after_space = refusals("")
        self.decode = tokenizer.decode
        self.pad_token_id = tokenizer.pad_token_id

    def idk_choice(self, index: int) -> int:
        return random.Random(f"{self.args.seed}-{index}").randrange(len(self.idk_ids))

    def preferred_batch(self, forget) -> dict[str, torch.Tensor]:
        """The forget prompts, each followed by its drawn refusal answer (right-padded)."""
        rows = []
        for ids, mask, labels, index in zip(
            forget["input_ids"].tolist(), forget["attention_mask"].tolist(), forget["labels"].tolist(), forget["index"]
        ):
            kept = [(t, lab) for t, m, lab in zip(ids, mask, labels) if m]
            prompt_len = next((i for i, (_, lab) in enumerate(kept) if lab != IGNORE_INDEX), len(kept))
            prompt = [t for t, _ in kept[:prompt_len]]
            after_space = prompt and self.decode(prompt[-1:])[-1:].isspace()
            answer = (self.idk_ids_after_space if after_space else self.idk_ids)[self.idk_choice(int(index))]
            rows.append(
                {
                    "input_ids": prompt + answer,
                    "attention_mask": [1] * (len(prompt) + len(answer)),
                    "labels": [IGNORE_INDEX] * len(prompt) + answer,
                }
            )
        return {k: v.to(forget["input_ids"].device) for k, v in pad_batch(rows, self.pad_token_id).items()}

    def forget_loss(self, model, forget, counts):
        preferred = self.preferred_batch(forget)
        chosen, rejected = sequence_log_prob(model, preferred), sequence_log_prob(model, forget)
        with torch.no_grad(), self.reference(model) as ref:
            ref_chosen, ref_rejected = sequence_log_prob(ref, preferred), sequence_log_prob(ref, forget)
        margin = (chosen - ref_chosen) - (rejected - ref_rejected)
        return -F.logsigmoid(self.args.beta * margin).sum() / counts.sequences
