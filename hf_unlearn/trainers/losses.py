"""Per-token and per-sequence answer statistics shared by the objectives, and the counts that normalise them.

Objectives return *sums* divided by a `SideCounts` taken over the whole gradient-accumulation window (and all
processes), so `batch 4 × 1` and `batch 2 × 2` accumulation give the same update even when answers differ in length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hf_unlearn.data import IGNORE_INDEX
from hf_unlearn.modeling import answer_token_nll


@dataclass
class SideCounts:
    """How many units one side (forget or retain) of a batch holds, for each way a loss can be averaged."""

    tokens: float  # answer tokens that are prediction targets (labels after the causal shift)
    sequences: float  # examples
    positions: float  # non-padding positions (activation losses such as RMU's)

    @classmethod
    def of(cls, batch: dict[str, torch.Tensor]) -> SideCounts:
        return cls(*(float(v) for v in cls.tensor_of(batch)))

    @staticmethod
    def tensor_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        return torch.stack([tokens, torch.tensor(batch["input_ids"].shape[0]), batch["attention_mask"].sum()]).double()


@dataclass
class BatchCounts:
    """Counts of both sides over a gradient-accumulation window; passed to `compute_loss` as `num_items_in_batch`."""

    forget: SideCounts
    retain: SideCounts | None

    @classmethod
    def of(cls, batch: dict) -> BatchCounts:
        retain = SideCounts.of(batch["retain"]) if "retain" in batch else None
        return cls(SideCounts.of(batch["forget"]), retain)


def sequence_log_prob(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B] log π(y|x): the summed log-probability of each answer."""
    return -answer_token_nll(model, batch).sum(-1)


def answer_lengths(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B] number of predicted answer tokens |y| per example."""
    return (batch["labels"][:, 1:] != IGNORE_INDEX).sum(-1)


def token_kl(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed KL(model ‖ reference) of the next-token distributions over the answer positions of `labels`."""
    mask = labels[:, 1:] != IGNORE_INDEX
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    ref_logp = F.log_softmax(ref_logits[:, :-1].float(), dim=-1)
    kl = (logp.exp() * (logp - ref_logp)).sum(-1)
    return (kl * mask).sum()
