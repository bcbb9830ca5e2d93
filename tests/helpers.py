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
