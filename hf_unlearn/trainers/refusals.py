"""Refusal answers ("I don't know"-style) put in place of forget answers, shared by IdkDPO and IdkNLL.

The default list ships with the package (`idk_answers.txt`, one answer per line, written for hf_unlearn). Each forget
example draws one answer from `(seed, index)`, so the draw is the same on every process and in every epoch.
"""

from __future__ import annotations

import random
from importlib import resources

import torch

from hf_unlearn.data import IGNORE_INDEX, pad_batch


IDK_ANSWERS_FILE = "idk_answers.txt"


def default_idk_answers() -> list[str]:
    """The shipped refusal answers, in file order."""
    text = resources.files("hf_unlearn.trainers").joinpath(IDK_ANSWERS_FILE).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def check_idk_answers(answers) -> None:
    if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise ValueError("idk_answers must be a non-empty list of non-empty strings.")


class RefusalBatches:
    """Builds, from a forget batch, the same prompts each followed by its drawn refusal (right-padded).

    As in `tokenize_qa`'s joint tokenisation, the refusal follows the prompt text directly: it starts with a space
    unless the prompt's tokens already end in whitespace (TOFU's `Answer: ` on a tokenizer that keeps a word's
    trailing space) or the tokenizer has a chat template.
    """

    def __init__(self, tokenizer, answers: list[str], seed: int, method: str):
        if tokenizer is None:
            raise ValueError(f"{method} needs processing_class (the tokenizer) to tokenise the idk_answers.")
        chat = bool(getattr(tokenizer, "chat_template", None))

        def tokenised(space: str) -> list[list[int]]:
            return [
                tokenizer(space + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                for answer in answers
            ]

        self.ids = tokenised("" if chat else " ")
        self.ids_after_space = tokenised("")
        self.seed, self.decode, self.pad_token_id = seed, tokenizer.decode, tokenizer.pad_token_id

    def choice(self, index: int) -> int:
        return random.Random(f"{self.seed}-{index}").randrange(len(self.ids))

    def batch(self, forget: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rows = []
        for ids, mask, labels, index in zip(
            forget["input_ids"].tolist(), forget["attention_mask"].tolist(), forget["labels"].tolist(), forget["index"]
        ):
            kept = [(t, lab) for t, m, lab in zip(ids, mask, labels) if m]
            prompt_len = next((i for i, (_, lab) in enumerate(kept) if lab != IGNORE_INDEX), len(kept))
            prompt = [t for t, _ in kept[:prompt_len]]
            after_space = prompt and self.decode(prompt[-1:])[-1:].isspace()
            answer = (self.ids_after_space if after_space else self.ids)[self.choice(int(index))]
            rows.append(
                {
                    "input_ids": prompt + answer,
                    "attention_mask": [1] * (len(prompt) + len(answer)),
                    "labels": [IGNORE_INDEX] * len(prompt) + answer,
                }
            )
        return {k: v.to(forget["input_ids"].device) for k, v in pad_batch(rows, self.pad_token_id).items()}
