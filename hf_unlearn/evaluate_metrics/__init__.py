"""Our TOFU and privacy metrics as ``evaluate`` modules, shipped inside the package and loaded from its folder.

``evaluate.load(hf_unlearn.evaluate_metrics.path("truth_ratio"))`` works offline: ``evaluate`` copies a local
script into its modules cache and imports it, without reaching the Hub. Each module calls the same function
the benchmarks do (:mod:`hf_unlearn.benchmarks.metrics`), so it returns our exact numbers:

* ``truth_ratio``: per-question ``TR = wrong / correct`` from mean answer NLLs, aggregated as on the forget set
  (``aggregation="forget"``) or on retain / real authors / world facts (``"utility"``);
* ``forget_quality``: the KS-test p-value between the unlearned and the retain model's forget-set truth ratios;
* ``mia_auc``: a membership-inference AUC from member-signed scores (``hf_unlearn.benchmarks.privacy``) and
  membership labels (1 forget, 0 holdout);
* ``privleak``: the same AUC and its privleak against the retain model's AUC (``reference_auc``).
"""

from __future__ import annotations

from pathlib import Path


MODULES = ("truth_ratio", "forget_quality", "mia_auc", "privleak")


def path(name: str) -> str:
    """The folder of module ``name``, for ``evaluate.load``."""
    if name not in MODULES:
        raise ValueError(f"Unknown hf_unlearn evaluate module {name!r}; choose one of {', '.join(MODULES)}.")
    return str(Path(__file__).resolve().parent / name)
