"""CE-U (Yang 2025): cross-entropy against the model's own (detached) next-token distribution with the true token
removed, so the true token's probability is pushed to zero while the rest keeps its shape."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hf_unlearn.configs import UnlearnConfig
from hf_unlearn.data import IGNORE_INDEX
from hf_unlearn.modeling import answer_mask, model_inputs
from hf_unlearn.paper import Paper
from hf_unlearn.trainers.base import UnlearnTrainer


@dataclass
class CEUConfig(UnlearnConfig):
    """CE-U hyperparameters; defaults follow open-unlearning's `src/trainer/unlearn/ceu.py` (forget term only)."""

    ignore_first_n_answer_tokens: int = field(
        default=1,
        metadata={
            "help": "Predicted answer tokens left out at the start of each forget answer (a footnote in the paper's "
            "training settings; 1 there); 0 scores every answer token."
        },
    )
    alpha: float = field(
        default=0.0,
        metadata={"help": "Weight of the retain loss (α); 0 (the paper's setting) trains on the forget set alone."},
    )

    def __post_init__(self):
        n = self.ignore_first_n_answer_tokens
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"ignore_first_n_answer_tokens must be an integer >= 0, got {n!r}; e.g. 1.")
        super().__post_init__()


def without_first_answer_tokens(batch: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """`batch` with the labels of the first `n` predicted answer tokens of each example set to IGNORE_INDEX."""
    if n == 0:
        return batch
    predicted = batch["labels"][:, 1:] != IGNORE_INDEX
    first = predicted & (predicted.cumsum(-1) <= n)
    labels = batch["labels"].clone()
    labels[:, 1:] = labels[:, 1:].masked_fill(first, IGNORE_INDEX)
    return {**batch, "labels": labels}


class CEUTrainer(UnlearnTrainer):
    """Forget loss = mean over scored answer tokens of CE(logits, softmax(sg(logits) with the true token at −∞)).

    The scored tokens are the answer tokens after the first `ignore_first_n_answer_tokens` of each example; the
    mean divides by their number over the whole accumulation window (the counts see the same trimmed labels).
    """

    _name = "ce_u"
    _paper = Paper(
        title="CE-U: Cross Entropy Unlearning",
        authors="Yang, Bo",
        year=2025,
        arxiv="2503.01224",
        key="yang2025ceu",
    )
    config_class = CEUConfig

    def scored(self, forget: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return without_first_answer_tokens(forget, self.args.ignore_first_n_answer_tokens)

    def _window_counts(self, batch_samples, device):
        # The window's token count must be taken over the tokens the loss scores, not over every answer token.
        return super()._window_counts([{**b, "forget": self.scored(b["forget"])} for b in batch_samples], device)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        if "forget" in inputs:
            inputs = {**inputs, "forget": self.scored(inputs["forget"])}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def forget_loss(self, model, forget, counts):
        mask = answer_mask(forget["labels"])
        targets = forget["labels"][:, 1:][mask]
        logits = model(**model_inputs(forget)).logits[:, :-1][mask].float()
        others = logits.detach().clone()
        others[torch.arange(len(targets), device=others.device), targets] = float("-inf")
        # a window whose answers are all shorter than n scores nothing: its sum is 0, and so is its loss
        return F.cross_entropy(logits, others.softmax(-1), reduction="sum") / (counts.tokens or 1.0)
