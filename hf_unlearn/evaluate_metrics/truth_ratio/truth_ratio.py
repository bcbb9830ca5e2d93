"""TOFU truth ratio (hf_unlearn): ``TR = exp(avg_loss(correct) - mean_j avg_loss(perturbed_j))`` per question."""

import datasets
import evaluate

from hf_unlearn.benchmarks import metrics


_DESCRIPTION = """TOFU's truth ratio, as hf_unlearn computes it. Per question, TR = wrong / correct with
wrong = exp(-mean_j avg_loss(perturbed_j)) and correct = exp(-avg_loss(correct)), where avg_loss is the mean
cross-entropy of an answer's tokens (hf_unlearn's per-example records: `paraphrased_nll_mean` on forget/retain,
`nll_mean` on real authors/world facts, and `perturbed_nll_mean`)."""

_KWARGS_DESCRIPTION = """
Args:
    correct_nll_mean: per question, the mean token NLL of the correct (paraphrased, or true) answer.
    perturbed_nll_mean: per question, the mean token NLL of each perturbed answer (at least one).
    aggregation: "forget" -> mean(min(TR, 1/TR)) (1 when true and wrong answers are equally likely);
        "utility" -> mean(max(0, 1 - TR)) (retain, real authors, world facts; higher is better).
Returns:
    truth_ratio: the aggregated value; truth_ratios: the per-question TR values.
"""

AGGREGATIONS = {"forget": metrics.truth_ratio_forget_score, "utility": metrics.truth_ratio_utility_score}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TruthRatio(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Maini et al., TOFU: A Task of Fictitious Unlearning for LLMs, COLM 2024.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "correct_nll_mean": datasets.Value("float64"),
                    "perturbed_nll_mean": datasets.Sequence(datasets.Value("float64")),
                }
            ),
        )

    def _compute(self, correct_nll_mean, perturbed_nll_mean, aggregation="forget"):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}; got {aggregation!r}.")
        ratios = metrics.truth_ratio(correct_nll_mean, perturbed_nll_mean)
        return {"truth_ratio": AGGREGATIONS[aggregation](ratios), "truth_ratios": ratios.tolist()}
