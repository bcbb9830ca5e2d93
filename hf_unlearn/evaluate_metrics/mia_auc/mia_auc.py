"""Membership-inference AUC (hf_unlearn): probability that a forget example outscores a holdout one."""

import datasets
import evaluate

from hf_unlearn.benchmarks import metrics
from hf_unlearn.benchmarks.privacy import split_by_membership


_DESCRIPTION = """The AUC of a membership-inference attack, as hf_unlearn computes it: the probability that a
forget (member) example scores higher than a holdout (non-member) one, ties counting 1/2. Scores are signed so
that higher means "more likely a member" (hf_unlearn.benchmarks.privacy.member_scores gives them for LOSS, zlib,
Min-K%, Min-K%++, GradNorm and Reference from hf_unlearn's per-example records). It equals open-unlearning's
mia_auc (roc_auc_score with forget labelled 0, holdout 1 and loss-signed scores)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per-example attack scores, higher = more likely a member.
    references: 1 for a forget (member) example, 0 for a holdout one.
Returns:
    auc: the AUC; 1 when the attack recognises every forget example.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MiaAuc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references):
        return {"auc": metrics.auc(*split_by_membership(predictions, references))}
