"""Pure metric functions for unlearning benchmarks (no model, no I/O).

Every likelihood-based number comes from one place, :func:`answer_token_stats`, which turns the logits
of one batched forward into per-example answer statistics (NLL sum/mean, token count, Min-K% score,
extraction strength), so probability, truth ratio and membership scores never need a second pass.

Conventions (the whole list: ``docs/definitions.md``):

* "answer tokens" are the positions whose label is not ``-100`` (the answer plus the closing EOS);
  logits at position ``t`` predict the label at ``t + 1`` (the usual causal shift).
* ``prob = exp(-mean token CE)``: the length-normalised probability.
* truth ratio ``TR = wrong / correct`` with ``wrong = exp(-mean_j avg_loss(perturbed_j))`` (geometric
  mean of the perturbed answers' normalised probabilities) and ``correct = prob(paraphrased or true)``.
* Min-K% membership score: the mean of the ``max(1, floor(k * n))`` smallest answer-token log-probs;
  higher means "more likely a training member". ``at_least_one=False`` takes ``floor(k * n)`` as the MUSE
  code does, so a text with ``floor(k * n) = 0`` (fewer than 3 scored tokens at k = 0.4) scores NaN.
* AUC: probability that a forget (member) example scores higher than a holdout one, ties count 1/2.
  A model that still remembers the forget set has AUC near 1.
* privleak: ``((1 - AUC) - (1 - AUC_ref)) / (1 - AUC_ref) * 100``. Remembering gives a negative value
  (-100 at AUC = 1 against 0.5), over-unlearning a positive one, a retrained model about 0 (MUSE's sign).
* extraction strength: see :func:`extraction_strength_from_predictions`; exact memorization: the share of answer
  tokens whose argmax prediction given the true prefix is the true token.
* Min-K%++ (behind ``vocab_stats=True``): per answer token ``z = (log p(y_t) - mu_t) / sigma_t`` with ``mu_t`` and
  ``sigma_t^2`` the mean and variance of ``log p`` under the model's own next-token distribution at that position
  (variance floored at 1e-6); the score is the mean of the ``max(1, floor(k * n))`` lowest ``z``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from hf_unlearn.modeling import answer_mask, token_nll


MIN_K_FRACTION = 0.4


@dataclass
class AnswerStats:
    """Per-example answer statistics from one forward pass; every field is a 1-D tensor of length batch."""

    nll_sum: torch.Tensor
    nll_mean: torch.Tensor
    num_tokens: torch.Tensor
    min_k: torch.Tensor
    extraction_strength: torch.Tensor
    exact_memorization: torch.Tensor
    min_k_plus_plus: torch.Tensor | None = None

    def to_lists(self) -> dict[str, list]:
        """Plain Python lists, keyed by field name (for JSON and for gathering across ranks)."""
        return {
            name: getattr(self, name).tolist() for name in self.__dataclass_fields__ if getattr(self, name) is not None
        }


def shifted_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next label token and the mask of answer positions.

    Args:
        logits: ``[batch, seq, vocab]`` model outputs.
        labels: ``[batch, seq]`` token ids, ``-100`` where the token is not scored.

    Returns:
        ``(logprobs, mask)``, both ``[batch, seq - 1]``; ``logprobs`` is 0 where ``mask`` is False.
    """
    mask = answer_mask(labels)
    return -token_nll(logits, labels) * mask, mask


def min_k_scores(
    logprobs: torch.Tensor, mask: torch.Tensor, k: float = MIN_K_FRACTION, at_least_one: bool = True
) -> torch.Tensor:
    """Min-K% membership score per row: mean of the ``m`` lowest log-probs of the row's ``n`` scored tokens.

    ``m = max(1, floor(k*n))`` by default; ``at_least_one=False`` uses ``m = floor(k*n)`` (the MUSE code's
    ``int(k * n)``), so rows with ``m = 0`` get NaN. Rows without any scored token get NaN either way, and so do rows
    with a non-finite scored log-prob (a diverged model): sorting would otherwise hide a NaN behind the others.
    """
    if not 0.0 < k <= 1.0:
        raise ValueError(f"Min-K% fraction k must be in (0, 1], got {k}.")
    counts = mask.sum(dim=1)
    padded = torch.where(mask, logprobs.double(), torch.full_like(logprobs, math.inf, dtype=torch.float64))
    ordered, _ = padded.sort(dim=1)
    num_k = min_k_count(counts, k, at_least_one)
    ordered = torch.where(torch.isinf(ordered), torch.zeros_like(ordered), ordered)
    cumulative = ordered.cumsum(dim=1)
    last = (num_k.clamp(min=1) - 1).clamp(max=max(ordered.size(1) - 1, 0))
    picked = cumulative.gather(1, last.unsqueeze(1)).squeeze(1)
    scores = picked / num_k.clamp(min=1)
    finite_rows = (torch.isfinite(logprobs) | ~mask).all(dim=1)
    return torch.where((num_k > 0) & finite_rows, scores, torch.full_like(scores, math.nan))


def min_k_count(num_tokens: torch.Tensor, k: float = MIN_K_FRACTION, at_least_one: bool = True) -> torch.Tensor:
    """How many of ``num_tokens`` scored tokens Min-K% averages: ``floor(k*n)``, raised to 1 if ``at_least_one``.

    ``at_least_one`` never raises a row without tokens above 0.
    """
    floor = torch.floor(num_tokens.double() * k).long()
    return torch.where(num_tokens > 0, floor.clamp(min=1), floor) if at_least_one else floor


def extraction_strength_from_predictions(
    predictions: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Extraction strength per row from teacher-forced greedy predictions.

    For an answer ``y_1..y_n``, let ``k*`` be the smallest ``k`` in ``0..n`` such that greedy decoding from
    ``prompt + y_1..y_k`` reproduces ``y_{k+1}..y_n`` exactly. Then ``ES = 1 - k*/n``: 1 when the answer is
    produced from the prompt alone, 0 when even the last token is not predicted. Greedy decoding reproduces the
    suffix exactly iff the argmax next-token prediction, given the true prefix, equals the true token at every
    suffix position, so ``k*`` is one past the last mispredicted answer position in a single teacher-forced
    pass (ties in the argmax resolve to the lowest token id, as in ``torch.argmax``).

    Args:
        predictions: ``[batch, seq - 1]`` argmax ids at the shifted positions.
        labels: ``[batch, seq - 1]`` shifted labels.
        mask: ``[batch, seq - 1]`` answer positions.
    """
    counts = mask.sum(dim=1)
    position_in_answer = mask.long().cumsum(dim=1)  # 1-based index of each answer token
    mismatch = (predictions != labels) & mask
    k_star = (position_in_answer * mismatch).amax(dim=1) if mismatch.numel() else torch.zeros_like(counts)
    strength = 1.0 - k_star.double() / counts.clamp(min=1).double()
    return torch.where(counts > 0, strength, torch.full_like(strength, math.nan))


def exact_memorization_from_predictions(
    predictions: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Share of each row's answer tokens whose teacher-forced argmax prediction is the true token (NaN: no token).

    Arguments as in :func:`extraction_strength_from_predictions`.
    """
    counts = mask.sum(dim=1)
    hits = ((predictions == labels) & mask).sum(dim=1).double()
    share = hits / counts.clamp(min=1).double()
    return torch.where(counts > 0, share, torch.full_like(share, math.nan))


def vocab_z_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-K%++'s per-token z-scores ``[batch, seq - 1]`` (0 off the answer) and the answer mask.

    ``z = (log p(y) - mu) / sqrt(max(var, 1e-6))`` with ``mu = sum_v p_v log p_v`` and
    ``var = sum_v p_v (log p_v)^2 - mu^2``, both under the model's distribution at that position.
    """
    mask = answer_mask(labels)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    probs = logp.exp()
    mean = (probs * logp).sum(dim=-1)
    # sum p (log p - mu)^2 equals sum p (log p)^2 - mu^2 without the float32 cancellation of the latter.
    variance = (probs * (logp - mean.unsqueeze(-1)).square()).sum(dim=-1)
    target = logp.gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    z = (target.double() - mean.double()) / variance.double().clamp(min=1e-6).sqrt()
    return torch.where(mask, z, torch.zeros_like(z)), mask


def labelled_token_values(
    logits: torch.Tensor, targets: torch.Tensor, vocab_stats: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token values at labelled positions only: ``(log p(target), argmax prediction, Min-K%++ z or None)``.

    Args:
        logits: ``[n, vocab]`` logits of the ``n`` positions whose next token is labelled (any row order).
        targets: ``[n]`` the labelled next tokens.

    Each row is computed on its own (the same arithmetic as over a ``[batch, seq, vocab]`` tensor), so gathering the
    labelled positions first changes no value while sparing the prompt and padding positions the vocabulary work.
    """
    logits = logits.float()
    predictions = logits.argmax(dim=-1)
    if not vocab_stats:
        return -F.cross_entropy(logits, targets, reduction="none"), predictions, None
    logp = torch.log_softmax(logits, dim=-1)  # cross_entropy's own log-softmax: the same values, computed once
    logprobs = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    probs = logp.exp()
    mean = (probs * logp).sum(dim=-1)
    # sum p (log p - mu)^2 equals sum p (log p)^2 - mu^2 without the float32 cancellation of the latter.
    variance = (probs * (logp - mean.unsqueeze(-1)).square()).sum(dim=-1)
    z = (logprobs.double() - mean.double()) / variance.double().clamp(min=1e-6).sqrt()
    return logprobs, predictions, z


def packed_answer_stats(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    k: float = MIN_K_FRACTION,
    min_k_at_least_one: bool = True,
    vocab_stats: bool = False,
) -> AnswerStats:
    """:func:`answer_token_stats` from the logits of the labelled positions alone.

    Args:
        logits: ``[mask.sum(), vocab]``, the logits at the True positions of ``mask`` in row-major order (what
            ``model(..., logits_to_keep=<bool mask>)`` returns).
        targets: ``[batch, positions]`` the token each position predicts (any value where ``mask`` is False).
        mask: ``[batch, positions]`` positions whose next token is labelled.
    """
    if logits.dim() != 2 or logits.shape[0] != int(mask.sum()) or targets.shape != mask.shape:
        raise ValueError(
            f"Expected logits [{int(mask.sum())}, vocab] for a mask of {int(mask.sum())} labelled positions and "
            f"targets shaped like the mask {tuple(mask.shape)}; got {tuple(logits.shape)} and {tuple(targets.shape)}."
        )
    values, predicted, z = labelled_token_values(logits, targets[mask], vocab_stats)
    logprobs = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    logprobs[mask] = values
    predictions = torch.full(mask.shape, -1, dtype=predicted.dtype, device=predicted.device)
    predictions[mask] = predicted
    counts = mask.sum(dim=1)
    nll_sum = -logprobs.double().sum(dim=1)
    nll_mean = torch.where(counts > 0, nll_sum / counts.clamp(min=1), torch.full_like(nll_sum, math.nan))
    min_k_plus_plus = None
    if vocab_stats:
        z_scores = torch.zeros(mask.shape, dtype=z.dtype, device=z.device)
        z_scores[mask] = z
        min_k_plus_plus = min_k_scores(z_scores, mask, k, min_k_at_least_one)
    return AnswerStats(
        nll_sum=nll_sum,
        nll_mean=nll_mean,
        num_tokens=counts,
        min_k=min_k_scores(logprobs, mask, k, min_k_at_least_one),
        extraction_strength=extraction_strength_from_predictions(predictions, targets, mask),
        exact_memorization=exact_memorization_from_predictions(predictions, targets, mask),
        min_k_plus_plus=min_k_plus_plus,
    )


def answer_token_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    k: float = MIN_K_FRACTION,
    min_k_at_least_one: bool = True,
    vocab_stats: bool = False,
) -> AnswerStats:
    """All per-example likelihood statistics of the answer tokens, from one batch of logits.

    ``nll_sum`` is the summed token cross-entropy, ``nll_mean`` its mean over the ``num_tokens`` answer
    tokens (NaN when there are none), ``min_k`` the Min-K% score (``k``; ``min_k_at_least_one`` as
    ``at_least_one`` in :func:`min_k_scores`), ``extraction_strength`` as defined in
    :func:`extraction_strength_from_predictions` and ``exact_memorization`` in
    :func:`exact_memorization_from_predictions`. ``vocab_stats`` adds ``min_k_plus_plus`` (Min-K%++, same ``k``),
    which reads the whole next-token distribution at each answer position, hence opt-in. Only the labelled
    positions are read (:func:`packed_answer_stats`).
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"Expected logits [batch, seq, vocab] and labels [batch, seq]; got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}."
        )
    mask = answer_mask(labels)
    return packed_answer_stats(logits[:, :-1][mask], labels[:, 1:], mask, k, min_k_at_least_one, vocab_stats)


def probability(nll_mean: Sequence[float] | np.ndarray) -> np.ndarray:
    """Length-normalised probability ``exp(-mean token CE)``, elementwise."""
    return np.exp(-np.asarray(nll_mean, dtype=np.float64))


def normalised_probability(true_nll_mean: Sequence[float], wrong_nll_mean: Sequence[Sequence[float]]) -> np.ndarray:
    """``p_true / (p_true + sum_j p_wrong_j)`` per question, with ``p = exp(-mean token CE)``.

    Args:
        true_nll_mean: ``[n]`` mean CE of the true answer.
        wrong_nll_mean: ``[n, m]`` mean CE of the ``m`` wrong options.
    """
    p_true = probability(true_nll_mean)
    p_wrong = probability(wrong_nll_mean)
    if p_wrong.ndim != 2 or p_wrong.shape[0] != p_true.shape[0]:
        raise ValueError(f"wrong_nll_mean must be [n, m] with n = {p_true.shape[0]}; got shape {p_wrong.shape}.")
    return p_true / (p_true + p_wrong.sum(axis=1))


def truth_ratio(correct_nll_mean: Sequence[float], perturbed_nll_mean: Sequence[Sequence[float]]) -> np.ndarray:
    """Per-question truth ratio ``TR = wrong / correct``.

    ``wrong = exp(-mean_j avg_loss(perturbed_j))`` (the geometric mean of the perturbed answers' normalised
    probabilities), ``correct = exp(-avg_loss(correct))``; computed in log space as
    ``exp(avg_loss(correct) - mean_j avg_loss(perturbed_j))``.
    """
    correct = np.asarray(correct_nll_mean, dtype=np.float64)
    perturbed = np.asarray(perturbed_nll_mean, dtype=np.float64)
    if perturbed.ndim != 2 or perturbed.shape[0] != correct.shape[0] or perturbed.shape[1] == 0:
        raise ValueError(
            f"perturbed_nll_mean must be [n, m>=1] with n = {correct.shape[0]}; got shape {perturbed.shape}."
        )
    return np.exp(correct - perturbed.mean(axis=1))


def truth_ratio_forget_score(ratios: Sequence[float]) -> float:
    """Forget-set aggregation ``mean(min(TR, 1/TR))``: 1 when true and wrong answers are equally likely."""
    tr = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.minimum(tr, 1.0 / tr)))


def truth_ratio_utility_score(ratios: Sequence[float]) -> float:
    """Aggregation for retain / real authors / world facts: ``mean(max(0, 1 - TR))``; higher is better."""
    tr = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.maximum(0.0, 1.0 - tr)))


def forget_quality(unlearned_ratios: Sequence[float], retain_model_ratios: Sequence[float]) -> float:
    """p-value of the two-sample KS test between forget-set truth ratios of the unlearned and retain models.

    KS is invariant to the monotone map TR -> 1/TR, so the TR direction does not matter.
    """
    return float(stats.ks_2samp(np.asarray(unlearned_ratios), np.asarray(retain_model_ratios)).pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean of non-negative values; 0 if any value is 0 (as TOFU's model utility)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0 or np.any(np.isnan(array)) or np.any(array < 0):
        raise ValueError(f"Harmonic mean needs non-negative, non-NaN values; got {list(values)}.")
    if np.any(array == 0):
        return 0.0
    return float(array.size / np.sum(1.0 / array))


def auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """ROC AUC of separating members (positives) from non-members by score (higher = member).

    Rank-based (Mann-Whitney U / (n_pos * n_neg)) with average ranks, so each tie counts 1/2.
    """
    pos = np.asarray(member_scores, dtype=np.float64)
    neg = np.asarray(nonmember_scores, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUC needs at least one member and one non-member score.")
    if np.any(np.isnan(pos)) or np.any(np.isnan(neg)):
        raise ValueError("AUC got NaN scores (an example without answer tokens?).")
    ranks = stats.rankdata(np.concatenate([pos, neg]))
    u_statistic = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u_statistic / (pos.size * neg.size))


def privleak(auc_value: float, reference_auc: float = 0.5) -> float:
    """``((1 - AUC) - (1 - AUC_ref)) / (1 - AUC_ref) * 100``; ``AUC_ref`` is the retain model's AUC.

    Both AUCs in this module's convention (forget scored against holdout); the MUSE code's AUC is ``1 - AUC``.
    """
    if reference_auc >= 1.0:
        raise ValueError(f"Reference AUC must be < 1 (privleak divides by 1 - AUC_ref); got {reference_auc}.")
    return ((1.0 - auc_value) - (1.0 - reference_auc)) / (1.0 - reference_auc) * 100.0


def rouge_l(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True) -> dict[str, list]:
    """ROUGE-L recall and F1 per pair, computed by ``rouge_score`` (``RougeScorer(["rougeL"])``)."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions for {len(references)} references.")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    recall, f1 = [], []
    for prediction, reference in zip(predictions, references):
        score = scorer.score(reference, prediction)["rougeL"]
        recall.append(score.recall)
        f1.append(score.fmeasure)
    return {"recall": recall, "f1": f1}


def nanmean(values: Sequence[float]) -> float:
    """Mean ignoring NaN; NaN for an empty or all-NaN input (without numpy's warning)."""
    array = np.asarray(values, dtype=np.float64)
    finite = array[~np.isnan(array)]
    return float(finite.mean()) if finite.size else math.nan
