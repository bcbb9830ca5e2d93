"""A tiny Llama that memorised a small synthetic benchmark, then forgot one author by gradient ascent.

Plain torch steps (no Trainer), cached once per test session; callers get deep copies.
"""

import copy
import hashlib
from functools import lru_cache

import torch

from hf_unlearn.benchmarks.synthetic import make_synthetic_tofu
from hf_unlearn.data import DataCollatorForUnlearning, QADataset
from hf_unlearn.tiny import build_tiny_model, train_tokenizer
from tests.helpers import mean_answer_nll


def full_batch_steps(model, dataset, collator, steps: int, lr: float, ascent: bool = False) -> None:
    """`steps` full-batch Adam steps on the answer NLL (negated for gradient ascent)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    batch = collator([dataset[i] for i in range(len(dataset))])
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        (-loss if ascent else loss).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@lru_cache(maxsize=1)
def _build():
    splits = make_synthetic_tofu(num_authors=6, qa_per_author=8, seed=0)
    tokenizer = train_tokenizer([r["question"] + " " + r["answer"] for r in splits["full"]], vocab_size=300)
    collator = DataCollatorForUnlearning(tokenizer)
    full, forget = QADataset(splits["full"], tokenizer), QADataset(splits["forget10"], tokenizer)
    torch.manual_seed(0)
    model = build_tiny_model(tokenizer, seed=0)
    full_batch_steps(model, full, collator, steps=60, lr=3e-3)
    original = copy.deepcopy(model)
    full_batch_steps(model, forget, collator, steps=8, lr=1e-3, ascent=True)
    return original, model, tokenizer, splits, forget, collator


def tiny_unlearned():
    """(original, unlearned, tokenizer, splits, forget QADataset, collator); the models are fresh copies."""
    original, model, tokenizer, splits, forget, collator = _build()
    return copy.deepcopy(original), copy.deepcopy(model), tokenizer, splits, forget, collator


def forget_nll(model, forget, collator) -> float:
    return mean_answer_nll(model, forget)


def state_hash(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
