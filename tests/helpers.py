"""Shared fixtures' building blocks: a tokenizer trained on the synthetic benchmark's text."""

from functools import lru_cache

from hf_unlearn.benchmarks.synthetic import make_synthetic_tofu
from hf_unlearn.tiny import train_tokenizer


@lru_cache(maxsize=1)
def synthetic_splits():
    return make_synthetic_tofu(num_authors=10, qa_per_author=4, seed=0)


@lru_cache(maxsize=1)
def synthetic_tokenizer():
    rows = synthetic_splits()
    texts = [r["question"] + " " + r["answer"] for name in ("full", "holdout10") for r in rows[name]]
    return train_tokenizer(texts, vocab_size=400)


def mean_answer_nll(model, dataset) -> float:
    """Reference: mean over examples of the mean labelled-token NLL, one unpadded example at a time."""
    import torch

    values = []
    with torch.no_grad():
        for example in dataset:
            ids = torch.tensor([example["input_ids"]])
            labels = torch.tensor(example["labels"][1:])
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
            mask = labels != -100
            values.append(-log_probs[mask.nonzero()[:, 0], labels[mask]].mean().item())
    return sum(values) / len(values)
