"""The answer-NLL benchmark: mean labelled-token NLL per named dataset (forget, retain, ...).

The measurement for data that has no benchmark of its own (a user's JSON Lines corpora), and the fast offline check
behind `hf-unlearn attack --benchmark nll` and `hf-unlearn lmc`.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from hf_unlearn.benchmarks.base import Benchmark, BenchmarkResult
from hf_unlearn.data import DataCollatorForUnlearning
from hf_unlearn.modeling import eval_mode, labelled_logits, model_device, scored_positions


@torch.no_grad()
def mean_answer_loss(model, dataset, collator, batch_size: int = 16) -> float:
    """Mean over examples of the mean NLL of the labelled tokens (answer tokens for QA, all for text)."""
    device = model_device(model)
    values = []
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batch = {key: batch[key].to(device) for key in ("input_ids", "attention_mask", "labels")}
        keep, targets = scored_positions(batch["labels"])
        mask = keep[:, :-1]
        # The output head runs on the labelled positions only; the NLLs go back into their rows, so each row sums
        # the same values in the same order as over the full [batch, seq, vocab] logits.
        logits = labelled_logits(model, keep, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        nll = torch.zeros(mask.shape, device=device)
        nll[mask] = F.cross_entropy(logits.float(), targets[mask], reduction="none")
        values += (nll.sum(1) / mask.sum(1).clamp(min=1)).tolist()
    return sum(values) / len(values)


class NLLBenchmark(Benchmark):
    """``NLLBenchmark({"forget": ds, "retain": ds}).evaluate(model, tok)`` -> ``{"nll/forget": ..., ...}``.

    Args:
        datasets: name -> tokenised dataset (``QADataset`` or ``TextBlockDataset`` items).
        batch_size: sequences per forward.
    """

    name = "nll"

    def __init__(self, datasets: dict, batch_size: int = 16):
        if not datasets:
            raise ValueError("NLLBenchmark needs at least one dataset to score.")
        self.datasets, self.batch_size = datasets, batch_size

    def evaluate(self, model, tokenizer) -> BenchmarkResult:
        start = time.perf_counter()
        collator = DataCollatorForUnlearning(tokenizer)
        with eval_mode(model):
            metrics = {
                f"nll/{name}": mean_answer_loss(model, dataset, collator, self.batch_size)
                for name, dataset in self.datasets.items()
            }
        sizes = {name: len(dataset) for name, dataset in self.datasets.items()}
        return BenchmarkResult(self.name, metrics, num_examples=sizes, runtime_s=time.perf_counter() - start)
