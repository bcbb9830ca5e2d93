"""Relearning attack: fine-tune a copy of the unlearned model on a little forget data, then re-evaluate.

Protocols (``docs/definitions.md``): AdamW, lr 1e-5, cosine, batch 4. Each benchmark declares its preset (steps,
examples, how raw text is cut) in :mod:`hf_unlearn.benchmarks.registry`.

A list of step counts ``eval_at`` gives a relearning curve from *one* run: the schedule spans the largest
count and the model is evaluated when it passes each count (so an intermediate point is a checkpoint of the
long run, not a separate short run with its own cosine decay).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import get_scheduler

from hf_unlearn.benchmarks.base import MetricValues
from hf_unlearn.benchmarks.registry import RelearnPreset, relearn_preset_of
from hf_unlearn.data import DataCollatorForUnlearning, QADataset, QAFormat, TextBlockDataset
from hf_unlearn.modeling import eval_mode


# What a relearning curve and the robustness checks evaluate with: ``eval_fn(model, tokenizer) -> {metric: value}``
# (a MetricValues, to keep the reasons of metrics the benchmark could not compute).
EvalFn = Callable[[Any, Any], dict[str, float]]


@dataclass
class RelearnResult:
    """The relearned copy and its curve: one ``{"step", "train_loss", "metrics"}`` record per evaluated step."""

    model: Any
    curve: list[dict[str, Any]]
    losses: list[float]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: config, curve and per-step training losses (not the model)."""
        return {"config": self.config, "curve": self.curve, "losses": self.losses}


def get_preset(name: str) -> RelearnPreset:
    """The relearning preset the benchmark ``name`` declares (tofu, muse-books, muse-news, wmdp, ...)."""
    return relearn_preset_of(name)


def text_samples(texts: Sequence[str], tokenizer, max_length: int) -> list[dict[str, list[int]]]:
    """One fully labelled example per non-empty document, cut to its first `max_length` tokens."""
    examples = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length] if text else []
        if len(ids) >= 2:
            examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)})
    return examples


def relearn_dataset(
    data, tokenizer, preset: RelearnPreset | str | None = None, qa_format: QAFormat | None = None
) -> Dataset | list:
    """Tokenised relearning examples from a tokenised dataset, QA rows, or raw texts (formatted per `preset`).

    Accepted: a dataset/list of items with ``input_ids`` (used as is); rows with ``question``/``answer``
    (a ``datasets.Dataset`` or list of dicts), tokenised in ``qa_format``; rows with ``text``; a list of strings.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset or RelearnPreset(eval_at=())
    if data is None or len(data) == 0:
        raise ValueError(
            "No forget data available for relearning: pass the forget split (QA rows, texts or a tokenised dataset)."
        )
    first = data[0]
    if isinstance(first, dict) and "input_ids" in first:
        return data
    if isinstance(first, dict) and "question" in first:
        return QADataset(data, tokenizer, max_length=preset.max_length, qa_format=qa_format, source="relearning data")
    if isinstance(first, dict) and "text" in first:
        texts = [row["text"] for row in data]
    elif isinstance(first, str):
        texts = list(data)
    else:
        raise TypeError(
            f"Relearning data items must be tokenised dicts, QA rows, text rows or strings; got {type(first)}."
        )
    if preset.text_format == "samples":
        examples = text_samples(texts, tokenizer, preset.max_length)
        if not examples:
            raise ValueError("No forget data available for relearning: every text is shorter than 2 tokens.")
        return examples
    return TextBlockDataset(texts, tokenizer, block_size=preset.block_size, source="relearning text")


def _check_schedule(steps: int | None, eval_at: Sequence[int] | None) -> tuple[int, list[int]]:
    points = sorted({int(k) for k in (eval_at or [])})
    if steps is None:
        if not points:
            raise ValueError("Give the relearning length: steps=N or eval_at=[k1, k2, ...].")
        steps = points[-1]
    if steps < 1 or any(k < 0 or k > steps for k in points):
        raise ValueError(f"eval_at {points} must lie in [0, steps={steps}] and steps must be positive.")
    return steps, points or [steps]


def _subset(dataset, num_examples: int | None, generator: torch.Generator) -> list[int]:
    total = len(dataset)
    if num_examples is None:
        return list(range(total))
    if num_examples < 1:
        raise ValueError(f"num_examples must be positive, got {num_examples}.")
    if num_examples > total:
        raise ValueError(
            f"The relearning subset ({num_examples} examples) is larger than the forget data ({total}); "
            "lower num_examples or pass more forget data."
        )
    return torch.randperm(total, generator=generator)[:num_examples].tolist()


def _batches(indices: list[int], batch_size: int, steps: int, generator: torch.Generator):
    """`steps` batches drawn epoch by epoch, each epoch a fresh seeded permutation of the subset."""
    order: list[int] = []
    for _ in range(steps):
        batch = []
        while len(batch) < batch_size:
            if not order:
                order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
            batch.append(order.pop())
        yield batch


def evaluate_with(model, tokenizer, eval_fn: EvalFn | None) -> MetricValues:
    """``eval_fn``'s metrics of ``model`` in eval mode (with autograd, which some evaluators need), reasons kept."""
    if eval_fn is None:
        return MetricValues()
    with eval_mode(model, inference=False):
        return MetricValues(eval_fn(model, tokenizer))


def relearn(
    model,
    data,
    tokenizer,
    steps: int | None = None,
    lr: float = 1e-5,
    batch_size: int = 4,
    scheduler: str = "cosine",
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    num_examples: int | None = None,
    seed: int = 0,
    eval_fn: EvalFn | None = None,
    eval_at: Sequence[int] | None = None,
    preset: str | None = None,
    qa_format: QAFormat | None = None,
) -> RelearnResult:
    """Fine-tune a deep copy of `model` on (a seeded subset of) forget `data` with AdamW; the caller's model is kept.

    Args:
        data: forget data in any form :func:`relearn_dataset` accepts.
        steps: optimizer steps (default: the largest of `eval_at`).
        num_examples: relearn on this many examples drawn with `seed` (default: all of `data`).
        eval_fn: ``eval_fn(model, tokenizer) -> {metric: value}``, run at each step count in `eval_at`
            (0 evaluates the unlearned model itself).
        preset: ``tofu`` | ``muse-books`` | ``muse-news`` | ``wmdp``: supplies `eval_at`, `num_examples`
            and how raw text is cut, where those are not given.
        qa_format: how QA rows are tokenised (the format the model was fine-tuned in).
    Returns:
        A :class:`RelearnResult` with the relearned copy and one curve record per `eval_at` step.
    """
    chosen = get_preset(preset) if preset else None
    if chosen is not None:
        eval_at = chosen.eval_at if eval_at is None and steps is None else eval_at
        num_examples = chosen.num_examples if num_examples is None else num_examples
    steps, points = _check_schedule(steps, eval_at)
    dataset = relearn_dataset(data, tokenizer, chosen, qa_format)
    generator = torch.Generator().manual_seed(seed)
    indices = _subset(dataset, num_examples, generator)
    collator = DataCollatorForUnlearning(tokenizer)

    student = copy.deepcopy(model)
    if any(p.dtype in (torch.float16, torch.bfloat16) for p in student.parameters() if p.requires_grad):
        warnings.warn(
            "Relearning updates half-precision weights directly; at lr 1e-5 many updates round away. "
            "Load the model in float32 for a faithful attack.",
            stacklevel=2,
        )
    trainable = [p for p in student.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("The model has no trainable parameters to relearn.")
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    schedule = get_scheduler(scheduler, optimizer, num_warmup_steps=warmup_steps, num_training_steps=steps)
    device = next(student.parameters()).device

    curve, losses = [], []
    if 0 in points:
        curve.append({"step": 0, "train_loss": None, "metrics": evaluate_with(student, tokenizer, eval_fn)})
    student.train()
    for step, batch_indices in enumerate(_batches(indices, batch_size, steps, generator), start=1):
        batch = {k: v.to(device) for k, v in collator([dataset[i] for i in batch_indices]).items() if k != "index"}
        loss = student(**batch).loss
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"Relearning loss became {loss.item()} at step {step}; lower lr.")
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step in points:
            metrics = evaluate_with(student, tokenizer, eval_fn)
            curve.append({"step": step, "train_loss": losses[-1], "metrics": metrics})
    student.eval()
    config = {
        "steps": steps,
        "eval_at": points,
        "lr": lr,
        "batch_size": batch_size,
        "scheduler": scheduler,
        "warmup_steps": warmup_steps,
        "weight_decay": weight_decay,
        "num_examples": len(indices),
        "seed": seed,
        "preset": preset,
        **({"preset_settings": asdict(chosen)} if chosen else {}),
    }
    return RelearnResult(model=student, curve=curve, losses=losses, config=config)
