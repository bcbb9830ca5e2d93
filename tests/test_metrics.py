import math

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from scipy import stats

from hf_unlearn.benchmarks import metrics


def logits_from_probs(rows):
    """Logits whose softmax is exactly the given per-position distributions."""
    return torch.log(torch.tensor(rows, dtype=torch.float64))


@pytest.fixture
def batch():
    # Three sequences of 4 tokens over a vocabulary of 3; position t predicts the label at t + 1.
    logits = torch.stack(
        [
            logits_from_probs([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3]]),
            logits_from_probs([[1 / 3, 1 / 3, 1 / 3], [0.1, 0.2, 0.7], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]),
            logits_from_probs([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [1 / 3, 1 / 3, 1 / 3]]),
        ]
    )
    labels = torch.tensor([[-100, 1, 2, 0], [-100, -100, 2, -100], [-100, 1, 1, 1]])
    return logits, labels


def test_answer_token_stats_match_hand_computed_values(batch):
    logits, labels = batch
    result = metrics.answer_token_stats(logits, labels)
    expected_sum = [
        -(math.log(0.5) + math.log(0.8) + math.log(0.25)),
        -math.log(0.7),
        -(math.log(0.3) + math.log(0.8) + math.log(0.7)),
    ]
    assert result.num_tokens.tolist() == [3, 1, 3]
    np.testing.assert_allclose(result.nll_sum.numpy(), expected_sum, atol=1e-9)
    np.testing.assert_allclose(result.nll_mean.numpy(), np.array(expected_sum) / [3, 1, 3], atol=1e-9)
    # floor(0.4 * 3) = 1 and max(1, floor(0.4 * 1)) = 1: the single lowest log-prob.
    np.testing.assert_allclose(result.min_k.numpy(), [math.log(0.25), math.log(0.7), math.log(0.3)], atol=1e-9)
    # Row 0: last token mispredicted (argmax 2, label 0) -> k* = 3 -> 0. Row 1: all right -> 1.
    # Row 2: only the first answer token wrong -> k* = 1 -> 1 - 1/3.
    np.testing.assert_allclose(result.extraction_strength.numpy(), [0.0, 1.0, 2 / 3], atol=1e-12)
    np.testing.assert_allclose(metrics.probability(result.nll_mean.numpy())[1], 0.7, atol=1e-9)
    # Exact memorization: argmax == label at 2 of 3, 1 of 1 and 2 of 3 answer positions.
    np.testing.assert_allclose(result.exact_memorization.numpy(), [2 / 3, 1.0, 2 / 3], atol=1e-12)
    assert result.min_k_plus_plus is None  # opt-in: it reads the whole distribution


def test_min_k_plus_plus_z_scores_by_hand(batch):
    logits, labels = batch
    result = metrics.answer_token_stats(logits, labels, vocab_stats=True)

    def z(probs, target):  # (log p(y) - E[log p]) / std(log p) under the position's own distribution
        logp = np.log(probs)
        mean = np.sum(probs * logp)
        return (logp[target] - mean) / math.sqrt(np.sum(probs * logp**2) - mean**2)

    uniform = [1 / 3, 1 / 3, 1 / 3]
    row0 = [z(np.array([0.2, 0.5, 0.3]), 1), z(np.array([0.1, 0.1, 0.8]), 2), z(np.array([0.25, 0.25, 0.5]), 0)]
    row2 = [z(np.array([0.6, 0.3, 0.1]), 1), z(np.array([0.1, 0.8, 0.1]), 1), z(np.array([0.2, 0.7, 0.1]), 1)]
    # Row 1's only position predicts from [0.1, 0.2, 0.7]; a uniform position has variance 0 -> floored at 1e-6.
    row1 = [z(np.array([0.1, 0.2, 0.7]), 2)]
    np.testing.assert_allclose(result.min_k_plus_plus.numpy(), [min(row0), row1[0], min(row2)], rtol=1e-5)
    flat = metrics.vocab_z_scores(torch.log(torch.tensor([[uniform, uniform]])), torch.tensor([[0, 1]]))[0]
    assert flat.item() == 0.0


def test_min_k_uses_floor_of_fraction_and_ignores_padding():
    logprobs = torch.tensor([[-1.0, -5.0, -2.0, -4.0, -3.0, 0.0], [-1.0, -2.0, 0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True] * 5 + [False], [True, True, False, False, False, False]])
    # Row 0: floor(0.4 * 5) = 2 lowest of {-1,-5,-2,-4,-3} -> mean(-5, -4); row 1: max(1, 0) = 1 -> -2.
    scores = metrics.min_k_scores(logprobs, mask, k=0.4)
    np.testing.assert_allclose(scores.numpy(), [-4.5, -2.0])
    assert metrics.min_k_scores(logprobs, mask, k=1.0)[0].item() == pytest.approx(-3.0)


def test_example_without_answer_tokens_gives_nan():
    logits = torch.zeros(1, 3, 4)
    labels = torch.full((1, 3), -100)
    result = metrics.answer_token_stats(logits, labels)
    assert result.num_tokens.item() == 0
    assert math.isnan(result.nll_mean.item()) and math.isnan(result.min_k.item())
    assert math.isnan(result.extraction_strength.item())


def test_normalised_probability():
    # p_true = 0.5, wrong = 0.25 + 0.25 -> 0.5; p_true = 0.2, wrong = 0.2 + 0.4 -> 0.25.
    value = metrics.normalised_probability(
        [math.log(2), -math.log(0.2)], [[math.log(4), math.log(4)], [-math.log(0.2), -math.log(0.4)]]
    )
    np.testing.assert_allclose(value, [0.5, 0.25])


def test_truth_ratio_and_both_aggregations():
    ratios = metrics.truth_ratio([1.0, 2.0], [[2.0, 3.0], [1.0, 1.0]])
    np.testing.assert_allclose(ratios, [math.exp(-1.5), math.e])
    # Same thing from probabilities: geometric mean of wrong probs over the correct prob.
    wrong = math.sqrt(math.exp(-2.0) * math.exp(-3.0))
    assert ratios[0] == pytest.approx(wrong / math.exp(-1.0))
    assert metrics.truth_ratio_forget_score(ratios) == pytest.approx((math.exp(-1.5) + math.exp(-1.0)) / 2)
    assert metrics.truth_ratio_utility_score(ratios) == pytest.approx((1 - math.exp(-1.5) + 0.0) / 2)


def test_truth_ratio_rejects_missing_perturbed_answers():
    with pytest.raises(ValueError, match="perturbed_nll_mean"):
        metrics.truth_ratio([1.0], np.zeros((1, 0)))


def test_forget_quality_is_scipy_ks_pvalue():
    # Fully separated samples of 3: D = 1, exact two-sided p = 2 / C(6, 3) = 0.1.
    assert metrics.forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=40), rng.normal(0.5, 1.0, size=35)
    assert metrics.forget_quality(a, b) == pytest.approx(stats.ks_2samp(a, b).pvalue, rel=1e-12)
    # Invariant to TR -> 1/TR on positive values.
    a, b = np.exp(a), np.exp(b)
    assert metrics.forget_quality(1 / a, 1 / b) == pytest.approx(metrics.forget_quality(a, b), rel=1e-12)


def test_harmonic_mean():
    assert metrics.harmonic_mean([1.0, 2.0, 4.0]) == pytest.approx(12 / 7)
    assert metrics.harmonic_mean([0.5] * 9) == pytest.approx(0.5)
    assert metrics.harmonic_mean([0.3, 0.0, 0.9]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        metrics.harmonic_mean([0.5, float("nan")])


def test_auc_rank_based_with_ties():
    # Pairs won by members: 3 + 3 + (0 + 0.5 + 1) = 7.5 of 9.
    assert metrics.auc([0.9, 0.8, 0.4], [0.5, 0.4, 0.1]) == pytest.approx(7.5 / 9)
    assert metrics.auc([1.0, 2.0], [1.0, 2.0]) == pytest.approx(0.5)
    assert metrics.auc([3.0], [1.0, 2.0]) == 1.0


def test_privleak_formula_with_reference_auc():
    assert metrics.privleak(1.0) == pytest.approx(-100.0)
    assert metrics.privleak(0.5) == pytest.approx(0.0)
    assert metrics.privleak(0.0) == pytest.approx(100.0)
    # ((1 - 5/6) - (1 - 0.6)) / (1 - 0.6) * 100
    assert metrics.privleak(5 / 6, reference_auc=0.6) == pytest.approx((1 / 6 - 0.4) / 0.4 * 100)
    assert metrics.privleak(0.6, reference_auc=0.6) == pytest.approx(0.0)


def test_rouge_l_recall_and_f1_match_rouge_score():
    predictions = ["the cat sat on the mat", "running dogs", "nothing in common"]
    references = ["the cat is on the mat", "run dog quickly", "an answer"]
    scores = metrics.rouge_l(predictions, references)
    # LCS "the cat on the mat" = 5 of 6 tokens each side; with stemming "run dog" covers 2 of 3 reference tokens.
    np.testing.assert_allclose(scores["recall"], [5 / 6, 2 / 3, 0.0])
    np.testing.assert_allclose(scores["f1"], [5 / 6, 2 * (2 / 3 * 1.0) / (2 / 3 + 1.0), 0.0])
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for prediction, reference, recall in zip(predictions, references, scores["recall"]):
        assert recall == scorer.score(reference, prediction)["rougeL"].recall
    unstemmed = metrics.rouge_l(predictions, references, use_stemmer=False)
    assert unstemmed["recall"][1] == 0.0
