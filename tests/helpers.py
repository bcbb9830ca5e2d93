"""Shared fixtures' building blocks: one thread, the synthetic benchmark's tokenizer, a memorising tiny model."""

from contextlib import contextmanager
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


@contextmanager
def one_thread():
    """Tiny models run ~10x faster on one intra-op thread than on two contended ones; restore the count after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def memorise(model, tokenizer, rows, steps: int = 100, lr: float = 1e-2, max_loss: float = 0.01):
    """Full-batch AdamW on the answer NLL of `rows` until the model reproduces them (mean answer NLL < max_loss)."""
    import torch

    from hf_unlearn.data import DataCollatorForUnlearning, QADataset

    data = QADataset(rows, tokenizer)
    batch = DataCollatorForUnlearning(tokenizer)([data[i] for i in range(len(data))])
    model.train()
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < max_loss, f"the tiny model did not memorise its rows (loss {loss.item():.4f})"
    return model.eval()


def memorised_model():
    """(model, tokenizer): a tiny Llama that memorised the 10-author synthetic benchmark's `full` split."""
    from hf_unlearn.tiny import build_tiny_model

    tokenizer = synthetic_tokenizer()
    with one_thread():
        model = memorise(build_tiny_model(tokenizer, "llama"), tokenizer, synthetic_splits()["full"], steps=150)
    return model, tokenizer


def load_script(name: str):
    """The module ``scripts/<name>.py`` of this checkout (the scripts folder is not a package), loaded by path."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
