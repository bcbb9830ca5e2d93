"""TOFU forget quality (hf_unlearn): KS-test p-value between unlearned and retain models' forget truth ratios."""

import datasets
import evaluate

from hf_unlearn.benchmarks import metrics


_DESCRIPTION = """TOFU's forget quality, as hf_unlearn computes it: the p-value of the two-sample Kolmogorov-Smirnov
test between the per-question forget-set truth ratios of the unlearned model and of a retain model (trained
without the forget set). 1 means indistinguishable from the retain model."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: the unlearned model's per-question forget-set truth ratios.
    references: the retain model's truth ratios on the same questions.
Returns:
    forget_quality: the KS-test p-value.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ForgetQuality(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Maini et al., TOFU: A Task of Fictitious Unlearning for LLMs, COLM 2024.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"forget_quality": metrics.forget_quality(predictions, references)}
