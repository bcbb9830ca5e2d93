"""A causal LM with preset logits, so every evaluation number can be recomputed by hand in a test."""

from types import SimpleNamespace

import torch
from torch import nn


class BigramLM(nn.Module):
    """Logits at position t are row `input_ids[t]` of a fixed table: no context, no positions, no padding effects."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.table[input_ids])

    def generate(self, input_ids, attention_mask=None, max_new_tokens=1, eos_token_id=None, pad_token_id=0, **_):
        out = input_ids
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        for _ in range(max_new_tokens):
            following = self.table[out[:, -1]].argmax(dim=-1)
            following = torch.where(done, torch.full_like(following, pad_token_id), following)
            done |= following == eos_token_id
            out = torch.cat([out, following[:, None]], dim=1)
        return out


def random_table(vocab_size: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(vocab_size, vocab_size, generator=generator, dtype=torch.float64) * scale


def reference_answer_stats(table: torch.Tensor, example: dict, k: float = 0.4) -> dict:
    """Answer statistics of one tokenised example, computed token by token."""
    logp = torch.log_softmax(table.double(), dim=-1)
    ids, labels = example["input_ids"], example["labels"]
    positions = [t for t in range(len(ids) - 1) if labels[t + 1] != -100]
    token_logps = [logp[ids[t], labels[t + 1]].item() for t in positions]
    correct = [table[ids[t]].argmax().item() == labels[t + 1] for t in positions]
    n = len(token_logps)
    k_star = n
    while k_star > 0 and correct[k_star - 1]:
        k_star -= 1
    lowest = sorted(token_logps)[: max(1, int(k * n))]
    return {
        "nll_mean": -sum(token_logps) / n,
        "min_k": sum(lowest) / len(lowest),
        "extraction_strength": 1 - k_star / n,
    }


def reference_greedy(table: torch.Tensor, prompt: list[int], max_new_tokens: int, eos_token_id: int) -> list[int]:
    tokens, new = list(prompt), []
    for _ in range(max_new_tokens):
        following = table[tokens[-1]].argmax().item()
        if following == eos_token_id:
            break
        tokens.append(following)
        new.append(following)
    return new
