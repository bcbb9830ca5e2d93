"""The model card (the output folder's README.md), built from an `UnlearnReport` with huggingface_hub's card API.

Hub metadata: ``base_model``, ``library_name: hf_unlearn``, tags (``unlearning``, ``hf_unlearn``, the method, the
optimizer), ``datasets`` and a ``model-index`` holding the benchmark metrics after training and the robustness
results of the report's last attack run (``metric.config`` says which: ``after_training``, ``relearn_<steps>``,
or the quantization kind). Unavailable metrics are left out of the metadata (the Hub takes numbers only) and
listed with their reason in the body.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hf_unlearn.io import atomic_write_text
from hf_unlearn.optim.papers import optimizer_papers
from hf_unlearn.report import (
    AFTER,
    EVAL_PLOT,
    LOSS_PLOT,
    RECIPE_FILE,
    RELEARN_PLOT,
    AttackRun,
    Metrics,
    UnlearnReport,
    public_name,
    public_text,
)
from hf_unlearn.report_render import (
    answers_section,
    benchmark_table,
    compute_table,
    evaluation_section,
    robustness_table,
    schedule_text,
    table,
)


CARD_FILE = "README.md"
TASK = {"task_type": "text-generation", "task_name": "Machine unlearning"}
# Where each benchmark's data lives on the Hub (the card's `datasets` and the model-index's dataset type).
HUB_DATASETS = {
    "tofu": "locuslab/TOFU",
    "tofu-legacy": "locuslab/TOFU",
    "muse": "muse-bench/MUSE-News",
    "muse-news": "muse-bench/MUSE-News",
    "muse-books": "muse-bench/MUSE-Books",
    "wmdp": "cais/wmdp",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_datasets(benchmark: str | None, data_dir: str | None = None) -> list[str]:
    """The Hub dataset a benchmark trained or evaluated on; none for local copies or synthetic data."""
    if data_dir or benchmark not in HUB_DATASETS:
        return []
    return [HUB_DATASETS[benchmark]]


def card_datasets(report: UnlearnReport) -> list[str]:
    """The card's ``datasets`` metadata: Hub dataset ids only. The report's Hub ids, else the Hub dataset of its
    benchmark when it read no local copy (:func:`hub_datasets`); local folders and synthetic data name none."""
    hub = [d for d in report.datasets if is_hub_id(d)]
    local = [d for d in report.datasets if not is_hub_id(d)]
    return hub or hub_datasets(report.benchmark, local[0] if local else None)


def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` reads as ``owner/name`` on the Hub (and is not a local folder)."""
    return bool(name) and bool(_HUB_ID.match(name)) and not Path(name).exists()


def card_evaluation(report: UnlearnReport) -> tuple[str, Metrics] | None:
    """The evaluation the card reports: after training, or the only one there is."""
    if AFTER in report.evaluations:
        return AFTER, report.evaluations[AFTER]
    if len(report.evaluations) == 1:
        return next(iter(report.evaluations.items()))
    return None


def card_attack_run(report: UnlearnReport) -> AttackRun | None:
    """The robustness checks the card reports: the last run (at the end of training)."""
    return report.attacks[-1] if report.attacks else None


def eval_results(report: UnlearnReport) -> list[EvalResult]:
    """The model-index entries: each available metric, tagged by stage in ``metric_config``."""
    hub = card_datasets(report)
    dataset = hub[0] if hub else (report.benchmark or "unknown")
    base = {**TASK, "dataset_type": dataset, "dataset_name": report.benchmark or dataset}

    def entries(stage: str, metrics: Metrics, description: str) -> list[EvalResult]:
        split = metrics.settings.get("forget_split")
        return [
            EvalResult(
                **base,
                dataset_split=split,
                metric_type=name,
                metric_value=value,
                metric_config=stage,
                metric_name=f"{name} ({description})",
            )  # fmt: skip
            for name, value in metrics.values.items()
            if value is not None
        ]

    results = []
    evaluation = card_evaluation(report)
    if evaluation is not None:
        label, metrics = evaluation
        results += entries(label, metrics, label.replace("_", " "))
    run = card_attack_run(report)
    if run is not None:
        for point in run.relearn:
            results += entries(f"relearn_{point.step}", point.metrics, f"after relearning {point.step} steps")
        for attack in run.quantization:
            results += entries(attack.kind, attack.metrics, f"after {attack.kind} quantization")
            if attack.codes_changed_fraction is not None:
                name = f"{attack.kind} codes changed by unlearning"
                results.append(
                    EvalResult(
                        **base, metric_type="codes_changed_fraction", metric_value=attack.codes_changed_fraction,
                        metric_config=attack.kind, metric_name=name,
                    )
                )  # fmt: skip
    return results


def card_data(report: UnlearnReport) -> ModelCardData:
    tags = ["unlearning", "hf_unlearn", *(t for t in (report.method, report.optimizer) if t)]
    results = eval_results(report)
    return ModelCardData(
        base_model=report.base_model if is_hub_id(report.base_model) else None,
        library_name="hf_unlearn",
        tags=list(dict.fromkeys(tags)),
        datasets=card_datasets(report) or None,
        model_name=report.hub_model_id or _title(report),
        eval_results=results or None,
    )


def _title(report: UnlearnReport) -> str:
    base = Path(report.base_model).name if report.base_model else "model"
    return f"{base} unlearned with {' + '.join(x for x in (report.method, report.optimizer) if x) or 'hf_unlearn'}"


def _optimizer_papers(report: UnlearnReport) -> list[dict]:
    cited = {p.get("arxiv_id") for p in report.papers}
    return [p for p in optimizer_papers(report.optimizer, report.config) if p["arxiv_id"] not in cited]


def _paper_lines(papers: list[dict]) -> list[str]:
    lines = []
    for paper in papers:
        arxiv_id = paper.get("arxiv_id")
        text = paper.get("title") or paper.get("citation") or arxiv_id
        if arxiv_id:
            text = text.replace(f" ({arxiv_id})", "")  # the link below says it
            text += f" ([arXiv:{arxiv_id}](https://arxiv.org/abs/{arxiv_id}))"
        lines.append(f"- {text}")
    return lines


def card_body(report: UnlearnReport) -> str:
    base = report.base_model
    base_text = (
        f"[{base}](https://huggingface.co/{base})"
        if is_hub_id(base)
        else f"`{public_name(base)}`"
        if base
        else "a model"
    )
    lines = [
        f"# {report.hub_model_id or _title(report)}",
        "",
        f"{base_text} after unlearning with **{report.method or 'n/a'}** and the **{report.optimizer or 'n/a'}** "
        "optimizer, trained and evaluated with hf_unlearn.",
        "",
        "## Method",
        "",
        *(_paper_lines(report.papers) or ["- (no paper recorded for this method)"]),
        "",
        "## Optimizer schedule",
        "",
        schedule_text(report),
        "",
        *(
            ["The optimizer comes from:", "", *_paper_lines(_optimizer_papers(report)), ""]
            if _optimizer_papers(report)
            else []
        ),  # fmt: skip
        "## Benchmark results",
        "",
    ]
    evaluation = card_evaluation(report)
    if evaluation is None:
        lines.append("No evaluation was run.")
    else:
        lines.append(benchmark_table(report))
    run = card_attack_run(report)
    lines += ["", "## Robustness", ""]
    if run is None:
        lines.append("No relearning or quantization attack was run.")
    else:
        lines += [
            f"Forget metrics ({public_text(run.label)}) after relearning on the forget set and after "
            "weight quantization; the last column is the share of quantization codes that unlearning changed "
            "(quantization can only restore knowledge where codes snap back to the original model's).",
            "",
            robustness_table(run),
        ]
    if report.answers:
        lines += [
            "", "## Sample answers", "",
            "Greedy answers to the first forget and retain questions, before and after unlearning (and after "
            "relearning on the forget set, when that attack ran).", "", answers_section(report),
        ]  # fmt: skip
    lines += ["", "## Compute", "", compute_table(report.compute)]
    if report.training_log:
        lines += ["", "## Training", "", f"![training losses]({LOSS_PLOT})"]
    if any(r.relearn for r in report.attacks):
        lines += ["", f"![relearning curves]({RELEARN_PLOT})"]
    if report.evaluation_curve:
        lines += [
            "",
            "## Evaluation during training",
            "",
            evaluation_section(report),
            "",
            f"![evaluations]({EVAL_PLOT})",
        ]
    lines += ["", "## How to reproduce", ""]
    if report.command:
        lines += ["```bash", public_text(report.command), "```"]
    if report.recipe:
        lines += ["", f"or, with this repository's `{RECIPE_FILE}`:", "", "```bash",
                  f"hf-unlearn run {RECIPE_FILE}", "```"]  # fmt: skip
    if not report.command and not report.recipe:
        lines.append("The command was not recorded.")
    if report.seed is not None:
        lines += ["", f"Seed: {report.seed}."]
    lines += ["", "## Versions", "", table(["package", "version"], [[k, v] for k, v in report.versions.items()])]
    bibtex = [p["bibtex"].strip() for p in (*report.papers, *_optimizer_papers(report)) if p.get("bibtex")]
    if bibtex:
        lines += ["", "## Citation", "", "```bibtex", "\n\n".join(bibtex), "```"]
    return "\n".join(lines) + "\n"


def build_model_card(report: UnlearnReport) -> ModelCard:
    """The model card of a report: Hub metadata (with ``model-index``) and the body."""
    data = card_data(report)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_body(report)}")


def write_card(output_dir: str | Path) -> Path:
    """(Re)build ``output_dir/README.md`` from ``output_dir/unlearn_report.json``; returns its path."""
    report = UnlearnReport.load(output_dir)
    return atomic_write_text(Path(output_dir) / CARD_FILE, str(build_model_card(report)))
