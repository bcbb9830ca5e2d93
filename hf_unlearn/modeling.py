"""Forward-pass helpers every floor shares: eval mode, the inputs a forward needs, and the answer-token NLL.

Objectives (`trainers/losses.py`), benchmark metrics (`benchmarks/metrics.py`) and the analysis tools all score
answers through :func:`token_nll`, so a loss and a metric can never disagree on which tokens count.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from hf_unlearn.data import IGNORE_INDEX


@contextmanager
def eval_mode(model, inference: bool = True, grad: bool = False) -> Iterator[None]:
    """Run in eval mode (no dropout), then give the model back in the mode it came in.

    Autograd: off under ``inference_mode`` by default; ``inference=False`` uses ``no_grad`` instead, for code that
    later feeds the tensors it produced into autograd (relearning, training callbacks); ``grad=True`` turns it on
    (and inference mode off, even inside a caller's), for gradients of a deterministic forward (GradNorm).
    """
    was_training = model.training
    model.eval()
    try:
        if grad:
            autograd = contextlib.ExitStack()
            autograd.enter_context(torch.inference_mode(False))
            autograd.enter_context(torch.enable_grad())
        else:
            autograd = torch.inference_mode() if inference else torch.no_grad()
        with autograd:
            yield
    finally:
        model.train(was_training)


def model_device(model) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Only what the forward needs: passing labels would make the model compute (and pay for) its own loss."""
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, T-1] negative log-likelihood of each next-token label (fp32), 0 where the label is `IGNORE_INDEX`."""
    shifted = labels[:, 1:]
    # cross_entropy avoids materialising a full log-softmax copy of the logits.
    nll = F.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), shifted.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return nll.view_as(shifted)


def answer_token_nll(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, T-1] per-token answer NLL of `model` on `batch` (prompt and padding positions are 0).

    The output head runs on the answer positions only (:func:`labelled_logits`): on a chat model with a large
    vocabulary and a long prompt, the head over every position is a large share of a step's time and its logits
    the largest activation. The values and gradients are those of the head over every position.
    """
    keep, targets = scored_positions(batch["labels"])
    logits = labelled_logits(model, keep, **model_inputs(batch))
    scored = keep[:, :-1]
    nll = F.cross_entropy(logits.float(), targets[scored], reduction="none")
    return torch.zeros(scored.shape, dtype=nll.dtype, device=nll.device).masked_scatter(scored, nll)


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, T-1] positions whose next-token label is scored."""
    return labels[:, 1:] != IGNORE_INDEX


def scored_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions whose next token is scored, ``[batch, seq]`` (the last column False), and the shifted labels."""
    mask = answer_mask(labels)
    return torch.cat([mask, mask.new_zeros(mask.shape[0], 1)], dim=1), labels[:, 1:]


def labelled_logits(model, keep: torch.Tensor, **inputs) -> torch.Tensor:
    """``[keep.sum(), vocab]`` logits at the True positions of ``keep``, in row-major order.

    ``logits_to_keep=<bool mask>`` makes the model run its output head on those positions only; a model whose
    forward has no such argument, or ignores it and returns every position, is gathered here (same values, more
    work).
    """
    if not _takes_logits_to_keep(model):
        return model(**inputs).logits[keep]
    logits = model(**inputs, logits_to_keep=keep).logits
    if logits.dim() == 3 and logits.shape[:2] == keep.shape:
        return logits[keep]
    if logits.dim() != 2 or logits.shape[0] != int(keep.sum()):
        raise ValueError(
            f"{type(model).__name__} returned logits of shape {tuple(logits.shape)} for a boolean logits_to_keep "
            f"{tuple(keep.shape)}: expected [{int(keep.sum())}, vocab] or every position."
        )
    return logits


def _takes_logits_to_keep(model) -> bool:
    """Whether the model under any DDP / DeepSpeed / PEFT wrapper names ``logits_to_keep`` in its forward."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            break
    return _forward_names_logits_to_keep(type(model))


@functools.cache
def _forward_names_logits_to_keep(model_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters
