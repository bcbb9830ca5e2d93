"""Membership-inference attacks on forget vs holdout examples, each reported as an AUC and a privleak.

Every attack turns one example into a score signed so that *higher means "more likely a training member"*, and
:func:`hf_unlearn.benchmarks.metrics.auc` gives the probability that a forget example outscores a holdout one
(ties 1/2). open-unlearning signs its scores like a loss and labels holdout 1, forget 0 in ``roc_auc_score``
(``src/evals/metrics/mia/utils.py::mia_auc``): the same number. A model that still remembers the forget set has
AUC near 1; privleak compares it with the retain model's AUC for the same attack (:func:`metrics.privleak`).

Attacks (``docs/definitions.md`` has the formulas and where we differ from open-unlearning):

* ``loss``: minus the mean answer NLL.
* ``zlib``: minus the mean answer NLL divided by the zlib-compressed length (bytes) of the answer's text.
* ``min_k``: Min-K% (k = 0.4), the score the default evaluation already reports.
* ``min_k_plus_plus``: Min-K%++ (k = 0.4) over vocabulary z-scores.
* ``gradnorm``: minus the mean, over parameter tensors, of the p-norm (p = 2) of the gradient of the example's
  mean answer NLL, one example at a time.
* ``reference``: minus (mean answer NLL of the model - that of a reference model); the retain model on TOFU/MUSE.

The first four come from the statistics of the benchmark's one scoring pass; GradNorm needs a backward per example
and Reference the reference model's losses (computed with the retain model's other statistics, and cached).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import torch

from hf_unlearn.benchmarks import metrics
from hf_unlearn.modeling import eval_mode, model_device, token_nll


ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "gradnorm", "reference")
GRADNORM_P = 2.0


def zlib_length(text: str) -> int:
    """Bytes of the UTF-8 text after ``zlib.compress`` at the default level (zlib's "entropy" of the text)."""
    return len(zlib.compress(text.encode("utf-8")))


def labelled_text(tokenizer, input_ids: Sequence[int], labels: Sequence[int]) -> str:
    """The text of the scored tokens (labels not -100), decoded without special tokens."""
    return tokenizer.decode([t for t, label in zip(input_ids, labels) if label != -100], skip_special_tokens=True)


def gradient_norm(
    model,
    input_ids: Sequence[int],
    labels: Sequence[int],
    p: float = GRADNORM_P,
    windows: Sequence[tuple[int, int, int]] | None = None,
) -> float:
    """GradNorm of one example: mean over the trainable parameter tensors of ``||d mean answer NLL / d W||_p``.

    ``windows`` (``(start, end, first_scored)`` as :func:`hf_unlearn.benchmarks.muse.context_windows` gives for a
    text longer than the model's context) reads the sequence window by window and adds up each window's share of
    the gradient of the mean over all scored tokens. The gradient comes from ``torch.autograd.grad``, so the
    ``.grad`` buffers of the model (an optimizer's pending step during training) are left untouched, and it works
    inside ``no_grad`` / ``inference_mode`` (evaluation callbacks hold them). The model runs in eval mode: dropout
    would make the score random.
    """
    params = [param for param in model.parameters() if param.requires_grad]
    if not params:
        raise ValueError("GradNorm needs trainable parameters; the model has none (all requires_grad=False).")
    if any(hasattr(param, "ds_id") for param in params):
        raise ValueError(
            "GradNorm cannot read the gradients of ZeRO-3-partitioned parameters; run the privacy suite "
            "(privacy=True / --privacy) on the saved model, outside ZeRO-3."
        )
    device = model_device(model)
    pieces = []
    for start, end, first_scored in windows or [(0, len(input_ids), 0)]:
        piece = list(labels[start:end])
        piece[: max(first_scored - start, 0)] = [-100] * max(first_scored - start, 0)
        pieces.append((list(input_ids[start:end]), piece))
    total = sum(sum(label != -100 for label in piece[1:]) for _, piece in pieces)
    if total == 0:
        return math.nan
    summed: list[torch.Tensor | None] = [None] * len(params)
    # Tensors made under the caller's inference_mode could not enter autograd: grad=True makes them in normal mode.
    with eval_mode(model, grad=True):
        for ids, piece in pieces:
            target = torch.tensor([piece], device=device)
            if not (target[:, 1:] != -100).any():
                continue
            nll = token_nll(model(input_ids=torch.tensor([ids], device=device)).logits, target)
            grads = torch.autograd.grad(nll.sum() / total, params, allow_unused=True)
            summed = [g if s is None else (s if g is None else s + g) for s, g in zip(summed, grads)]
    norms = [grad.detach().double().norm(p=p) for grad in summed if grad is not None]
    return float(torch.stack(norms).mean())


def member_scores(records: Sequence[dict[str, Any]], attack: str) -> list[float]:
    """Per-example scores of ``attack`` (higher = member) from the records the benchmark wrote.

    Needs ``nll_mean`` (loss, zlib, reference), ``zlib_length``, ``min_k``, ``min_k_plus_plus``, ``gradnorm`` or
    ``reference_nll_mean`` in each record, as the attack requires; NaN where a value is missing.
    """

    def value(record, key):
        found = record.get(key)
        return math.nan if found is None else float(found)

    if attack == "loss":
        return [-value(r, "nll_mean") for r in records]
    if attack == "zlib":
        return [-value(r, "nll_mean") / value(r, "zlib_length") for r in records]
    if attack in ("min_k", "min_k_plus_plus"):
        return [value(r, attack) for r in records]
    if attack == "gradnorm":
        return [-value(r, "gradnorm") for r in records]
    if attack == "reference":
        return [value(r, "reference_nll_mean") - value(r, "nll_mean") for r in records]
    raise ValueError(f"Unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}.")


def split_by_membership(scores: Sequence[float], labels: Sequence[int]) -> tuple[list[float], list[float]]:
    """``(forget scores, holdout scores)`` from scores and membership labels (1 forget, 0 holdout)."""
    found = set(labels)
    if not found <= {0, 1}:
        raise ValueError(f"Membership labels must be 1 (forget) or 0 (holdout); got {sorted(found)}.")
    if len(scores) != len(labels):
        raise ValueError(f"Got {len(scores)} scores for {len(labels)} labels.")
    members = [score for score, label in zip(scores, labels) if label == 1]
    return members, [score for score, label in zip(scores, labels) if label == 0]


def attack_auc(
    forget: Sequence[dict[str, Any]], holdout: Sequence[dict[str, Any]], attack: str
) -> tuple[float | None, str | None]:
    """``(AUC, None)`` of ``attack`` on forget vs holdout records, or ``(None, why it is undefined)``."""
    forget_scores, holdout_scores = member_scores(forget, attack), member_scores(holdout, attack)
    undefined = sum(not math.isfinite(s) for s in forget_scores + holdout_scores)
    if undefined:
        total = len(forget_scores) + len(holdout_scores)
        return None, f"{undefined} of {total} forget/holdout examples have no finite {attack} score"
    return metrics.auc(forget_scores, holdout_scores), None


def privacy_metrics(
    forget: Sequence[dict[str, Any]],
    holdout: Sequence[dict[str, Any]],
    reference_aucs: dict[str, float | None] | None,
    reference_reason: str | None,
    attacks: Sequence[str] = ATTACKS,
) -> tuple[dict[str, float | None], dict[str, str]]:
    """``mia_<attack>_auc`` and ``privleak_<attack>`` for each attack, and the reasons for those unavailable.

    ``reference_aucs``: the retain model's AUC per attack (``None``: no retain statistics, ``reference_reason``
    says why). The ``min_k`` pair is left out: the default evaluation reports it as ``mia_min_k_auc`` / ``privleak``.
    """
    values: dict[str, float | None] = {}
    unavailable: dict[str, str] = {}
    for attack in attacks:
        if attack == "min_k":
            continue
        auc_key, leak_key = f"mia_{attack}_auc", f"privleak_{attack}"
        value, reason = attack_auc(forget, holdout, attack)
        if attack == "reference" and reference_aucs is None:
            reason = f"the reference attack needs the retain model's losses: {reference_reason}"
            value = None
        values[auc_key], values[leak_key] = value, None
        if value is None:
            unavailable[auc_key] = unavailable[leak_key] = reason
            continue
        reference = (reference_aucs or {}).get(attack)
        if reference_aucs is None:
            unavailable[leak_key] = f"no retain-model AUC to compare with: {reference_reason}"
        elif reference is None:
            unavailable[leak_key] = f"the retain model's {attack} AUC is unavailable"
        elif reference >= 1.0:
            unavailable[leak_key] = f"the retain model's {attack} AUC is 1; privleak divides by 1 - AUC_ref"
        else:
            values[leak_key] = metrics.privleak(value, reference)
    return values, unavailable


def reference_aucs(
    forget: Sequence[dict[str, Any]], holdout: Sequence[dict[str, Any]], attacks: Sequence[str] = ATTACKS
) -> dict[str, float | None]:
    """The retain model's own AUC per attack (records of the retain model; its Reference attack is against itself,
    so every score is 0 and the AUC 1/2)."""
    own = (
        [{**r, "reference_nll_mean": r.get("nll_mean")} for r in forget],
        [{**r, "reference_nll_mean": r.get("nll_mean")} for r in holdout],
    )
    return {attack: attack_auc(*own, attack)[0] for attack in attacks}
