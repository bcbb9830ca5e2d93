"""Tiny model, random-token data and a Trainer with the ZO mixin, shared by the optimizer tests and scripts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from hf_unlearn.optim import OptimizerArguments, OptimizerFactoryMixin
from hf_unlearn.trainers.zeroth_order import ZerothOrderMixin


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    config = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 128,
    }
    config.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**config))


class RandomTokens(torch.utils.data.Dataset):
    """``n`` fixed random sequences of ``length`` tokens, labels = inputs (every token counts)."""

    def __init__(self, n: int = 16, length: int = 12, vocab_size: int = 128, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab_size, (n, length), generator=gen)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


@dataclass
class OptimTrainingArguments(TrainingArguments, OptimizerArguments):
    """TrainingArguments plus the optimizer fields, as ``UnlearnConfig`` combines them."""


class ZOTrainer(ZerothOrderMixin, OptimizerFactoryMixin, Trainer):
    """A plain Trainer with the ZO mixin and the optimizer factory."""


def training_args(output_dir, **overrides) -> OptimTrainingArguments:
    values = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 4,
        "max_steps": 4,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "report_to": "none",
        "use_cpu": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        "dataloader_num_workers": 0,
    }
    values.update(overrides)
    return OptimTrainingArguments(**values)


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


FORGET_SIZE = 4


def _qa_rows():
    from hf_unlearn.benchmarks.synthetic import make_synthetic_tofu

    rows = make_synthetic_tofu(num_authors=4, qa_per_author=4)["full"]
    return {"forget": rows[-FORGET_SIZE:], "retain": rows[:-FORGET_SIZE]}


def save_npo_model(path) -> str:
    """A tiny llama and its tokenizer saved to ``path`` (NPO reloads its frozen reference from there)."""
    from hf_unlearn.tiny import build_tiny_model, train_tokenizer

    rows = _qa_rows()
    tokenizer = train_tokenizer([r["question"] + " " + r["answer"] for r in rows["forget"] + rows["retain"]], 300)
    build_tiny_model(tokenizer, "llama").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def npo_dataset(model_path):
    """Forget/retain pairs of the synthetic QA set, tokenised with the saved tokenizer."""
    from transformers import AutoTokenizer

    from hf_unlearn.data import ForgetRetainDataset, QADataset

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = _qa_rows()
    return ForgetRetainDataset(QADataset(rows["forget"], tokenizer), QADataset(rows["retain"], tokenizer), seed=0)
