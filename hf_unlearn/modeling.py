"""Forward-pass helpers every floor shares: eval mode, the inputs a forward needs, and the answer-token NLL.

Objectives (`trainers/losses.py`), benchmark metrics (`benchmarks/metrics.py`) and the analysis tools all score
answers through :func:`token_nll`, so a loss and a metric can never disagree on which tokens count.
"""

from __future__ import annotations

import contextlib
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
    """[B, T-1] per-token answer NLL of `model` on `batch` (prompt and padding positions are 0)."""
    return token_nll(model(**model_inputs(batch)).logits, batch["labels"])


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, T-1] positions whose next-token label is scored."""
    return labels[:, 1:] != IGNORE_INDEX
