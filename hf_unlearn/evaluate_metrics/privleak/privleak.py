"""PrivLeak (hf_unlearn): a membership-inference AUC relative to the retain model's AUC for the same attack."""

import datasets
import evaluate

from hf_unlearn.benchmarks import metrics
from hf_unlearn.benchmarks.privacy import split_by_membership


_DESCRIPTION = """PrivLeak (MUSE), as hf_unlearn computes it: ((1 - AUC) - (1 - AUC_ref)) / (1 - AUC_ref) * 100,
with AUC the probability that a forget example outscores a holdout one under the attack's member-signed scores and
AUC_ref the retain model's AUC for the same attack. About 0 for a model as private as retraining, -100 when the
forget set is recognised perfectly, positive when unlearning overshoots."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per-example attack scores, higher = more likely a member.
    references: 1 for a forget (member) example, 0 for a holdout one.
    reference_auc: the retain model's AUC for the same attack, in [0, 1).
Returns:
    auc: the AUC; privleak: the privleak value.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Privleak(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Shi et al., MUSE: Machine Unlearning Six-Way Evaluation for Language Models, 2024.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references, reference_auc=None):
        if reference_auc is None:
            raise ValueError("privleak needs reference_auc=<the retain model's AUC for the same attack>.")
        members, nonmembers = split_by_membership(predictions, references)
        value = metrics.auc(members, nonmembers)
        return {"auc": value, "privleak": metrics.privleak(value, reference_auc)}
