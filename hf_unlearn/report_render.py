"""How an `UnlearnReport` reads: Markdown tables (shared by unlearn_report.md and the model card) and PNG plots.

Plots use matplotlib's object API with the Agg canvas, so rendering never touches pyplot's global backend.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_unlearn.optim.args import ZEROTH_ORDER_OPTIMIZERS as ZO_OPTIMIZERS


if TYPE_CHECKING:
    from hf_unlearn.report import AttackRun, Metrics, UnlearnReport


LOSS_PLOT = "unlearn_losses.png"
RELEARN_PLOT = "unlearn_relearning.png"
EVAL_PLOT = "unlearn_eval_curve.png"
BEFORE, AFTER = "before_training", "after_training"
# The forget metric that relearning curves, robustness tables and sweeps follow, in order of preference: TOFU's,
# then MUSE's (knowledge and verbatim memorisation of the forget set), then WMDP's hazardous-knowledge accuracies.
FORGET_METRICS = (
    "forget_prob", "forget_rouge_l_recall", "forget_truth_ratio", "knowmem_f", "verbmem_f", "wmdp_bio_acc",
    "wmdp_cyber_acc", "wmdp_chem_acc",
)  # fmt: skip


def pick_forget_metric(metrics: Metrics) -> str | None:
    """The first available forget metric of :data:`FORGET_METRICS`, else None."""
    return next((name for name in FORGET_METRICS if metrics.get(name) is not None), None)


# An absolute or home-relative path inside a text: not after a word character, ':' or '/' (so neither the path of
# a URL nor an owner/name Hub id), up to a space, quote or bracket.
_LOCAL_PATH = re.compile(r"(?<![\w:/.~-])~?/[^\s'\"`()\[\],;]+")


def public_name(value: str | None) -> str | None:
    """A Hub id or relative name as it is; an absolute (or ``~``) path as its base name, e.g. ``/home/me/model`` ->
    ``model``: what a published card or report may say about a folder of this machine."""
    if not value or not _LOCAL_PATH.fullmatch(str(value)):
        return value
    return Path(str(value).rstrip("/")).name or str(value)


def public_text(text: str) -> str:
    """`text` with every absolute path in it replaced by its base name (see :func:`public_name`)."""
    return _LOCAL_PATH.sub(lambda match: public_name(match.group(0)), text)


PHASE_COLORS = {"fo": "#4c72b0", "zo": "#dd8452"}
PHASE_NAMES = {"fo": "first-order (FO)", "zo": "zeroth-order (ZO)"}


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _metric_names(metric_sets: list[Metrics]) -> list[str]:
    names: dict[str, None] = {}
    for metrics in metric_sets:
        names.update(dict.fromkeys(metrics.values))
    return list(names)


def unavailable_notes(labelled: list[tuple[str, Metrics]]) -> str:
    notes = [
        f"- `{name}` ({label}): unavailable, {reason}"
        for label, metrics in labelled
        for name, reason in metrics.unavailable.items()
    ]
    return "\n".join(notes)


def benchmark_table(report: UnlearnReport) -> str:
    """Metrics (rows) of each evaluated model state (columns), then the reasons for every unavailable value."""
    if not report.evaluations:
        return "No evaluation was run."
    labels = list(report.evaluations)
    metric_sets = [report.evaluations[label] for label in labels]
    rows = [[f"`{name}`", *(m.get(name) for m in metric_sets)] for name in _metric_names(metric_sets)]
    text = table(["metric", *(label.replace("_", " ") for label in labels)], rows)
    notes = unavailable_notes(list(report.evaluations.items()))
    return f"{text}\n\n{notes}" if notes else text


def forget_metric_names(metrics: Metrics) -> list[str]:
    names = [name for name in metrics.values if "forget" in name]
    return names or list(metrics.values)


def robustness_table(run: AttackRun) -> str:
    """Forget metrics before any attack, after each relearning budget and each quantization, and the share of
    quantization codes unlearning changed."""
    names = forget_metric_names(run.unlearned)
    rows = [["no attack", *(run.unlearned.get(n) for n in names), ""]]
    rows += [[f"relearned {p.step} steps", *(p.metrics.get(n) for n in names), ""] for p in run.relearn]
    for attack in run.quantization:
        codes = attack.codes_changed_fraction
        codes_cell = "n/a" if codes is None else f"{codes:.2%}"
        rows.append([f"quantized {attack.kind}", *(attack.metrics.get(n) for n in names), codes_cell])
    text = table(["attack", *(f"`{n}`" for n in names), "codes changed by unlearning"], rows)
    labelled = [("no attack", run.unlearned)]
    labelled += [(f"relearned {p.step} steps", p.metrics) for p in run.relearn]
    labelled += [(f"quantized {a.kind}", a.metrics) for a in run.quantization]
    notes = [line for line in unavailable_notes(labelled).splitlines() if line.split("`")[1] in names]
    notes += [
        f"- codes changed ({a.kind}): unavailable, {a.codes_changed_unavailable}"
        for a in run.quantization
        if a.codes_changed_fraction is None
    ]
    return text + ("\n\n" + "\n".join(notes) if notes else "")


def compute_table(compute: dict[str, Any] | None) -> str:
    if not compute:
        return "Not counted (add `ComputeAccountingCallback` to the trainer)."
    header = ["phase", "steps", "micro-batches", "forwards", "reference forwards", "backwards",
              "forwards / micro-batch", "backwards / micro-batch"]  # fmt: skip
    rows = []
    for phase in ("fo", "zo"):
        counts = compute.get(phase) or {}
        if not counts.get("steps"):
            continue
        micro = counts["micro_batches"] or 1
        rows.append([PHASE_NAMES[phase], counts["steps"], counts["micro_batches"], counts["forwards"],
                     counts["reference_forwards"], counts["backwards"], counts["forwards"] / micro,
                     counts["backwards"] / micro])  # fmt: skip
    processes = compute.get("num_processes", 1)
    note = f"Counted by hooks on the model, per process ({processes} process{'es' if processes != 1 else ''})."
    return table(header, rows) + "\n\n" + note


def schedule_text(report: UnlearnReport) -> str:
    """One paragraph: which optimizer, how FO and ZO steps alternate, and the ZO estimator's settings."""
    s = report.optimizer_schedule
    optimizer = s.get("optimizer") or report.optimizer
    if not optimizer:
        return "Not recorded."
    zo = (f"{s.get('zo_num_directions', '?')} {s.get('zo_direction', '')} direction(s) per step, "
          f"μ = {fmt(s.get('zo_mu'))}, {s.get('zo_difference', '')} differences")  # fmt: skip
    if optimizer == "hybrid":
        fo_steps, zo_steps = s.get("hybrid_fo_steps"), s.get("hybrid_zo_steps")
        zo_steps = fo_steps if zo_steps is None else zo_steps
        text = (f"Hybrid FO-ZO: {fo_steps} first-order steps ({s.get('hybrid_fo_optimizer', '?')}) then {zo_steps} "
                f"zeroth-order steps ({s.get('hybrid_zo_optimizer', '?')}; {zo}), repeated; ZO learning rate "
                f"{fmt(s.get('zo_learning_rate') or s.get('learning_rate'))}.")  # fmt: skip
    elif optimizer in ZO_OPTIMIZERS:
        text = f"Zeroth-order ({optimizer}): {zo}."
    else:
        text = f"First-order ({optimizer})."
    steps = s.get("max_steps")
    steps = f"{steps} steps" if steps and steps > 0 else f"{fmt(s.get('num_train_epochs'))} epochs"
    batch, accumulation = s.get("per_device_train_batch_size", "?"), s.get("gradient_accumulation_steps", 1)
    text += (f" Learning rate {fmt(s.get('learning_rate'))} ({s.get('lr_scheduler_type', '?')} schedule), {steps}, "
             f"batch {batch} per device × {accumulation} accumulation.")  # fmt: skip
    return text


def curve_metrics(report: UnlearnReport) -> list[str]:
    """The curve's metrics a table or plot shows: the selection and the metrics it reads when there is one, else
    the forget metric and the utility metrics (at most four), else the first four."""
    seen = _metric_names_in_curve(report.evaluation_curve)
    best = report.best_model
    if best:
        from hf_unlearn.benchmarks.selection import parse_selection

        names = [best["metric"], *parse_selection(best["metric"]).names]
    else:
        names = [n for n in (*FORGET_METRICS, "model_utility", "knowmem_r", "mmlu_acc") if n in seen][:4]
    names = list(dict.fromkeys(n for n in names if n in seen))
    return names or seen[:4]


def _metric_names_in_curve(curve: list[dict]) -> list[str]:
    names: dict[str, None] = {}
    for entry in curve:
        names.update(dict.fromkeys(entry["values"]))
    return list(names)


def evaluation_section(report: UnlearnReport) -> str:
    """The in-run evaluations as a table (one row per evaluation) and the best step metric_for_best_model chose."""
    names = curve_metrics(report)
    rows = [
        [entry["step"], entry["epoch"], *(entry["values"].get(n) for n in names)] for entry in report.evaluation_curve
    ]
    text = table(["step", "epoch", *(f"`{n}`" for n in names)], rows)
    best = report.best_model
    if best:
        direction = "higher" if best["greater_is_better"] else "lower"
        kept = f"checkpoint `{best['checkpoint']}`" if best["checkpoint"] else "no checkpoint saved at that step"
        loaded = ", loaded at the end (the saved model)" if best["loaded_at_end"] else ""
        text += (
            f"\n\nBest step by `{best['metric']}` ({direction} is better): step {best['step']}, value "
            f"{fmt(best['value'])}; {kept}{loaded}."
        )
    return text


def answers_section(report: UnlearnReport) -> str:
    """Each sample question with the true answer and every model's generated one (quoted, one line each)."""
    blocks = []
    for record in report.answers:
        lines = [f"**{record['set']}:** {record['question']}", "", f"- *true answer*: {record['answer']}"]
        lines += [f"- *{label}*: {_one_line(text)}" for label, text in record["generations"].items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(empty)"


def report_markdown(report: UnlearnReport) -> str:
    title = " + ".join(x for x in (report.method, report.optimizer) if x) or "evaluation"
    lines = [f"# Unlearning report: {title}", ""]
    facts = [
        ("base model", public_name(report.base_model)), ("benchmark", report.benchmark), ("seed", report.seed),
        ("command", f"`{report.command}`" if report.command else None), ("created", report.created_at),
    ]  # fmt: skip
    lines += [f"- {name}: {value}" for name, value in facts if value is not None]
    if report.stopped:
        lines += ["", f"**Training stopped early:** {report.stopped.get('message')}"]
    lines += ["", "## Optimizer schedule", "", schedule_text(report), "", "## Benchmark", "", benchmark_table(report)]
    if report.evaluation_curve:
        lines += ["", "## Evaluation during training", "", evaluation_section(report)]
    for run in report.attacks:
        lines += ["", f"## Robustness: {run.label}", "", robustness_table(run)]
    if report.answers:
        lines += ["", "## Sample answers", "", answers_section(report)]
    lines += ["", "## Compute", "", compute_table(report.compute)]
    if report.wall_time_s:
        lines += ["", "## Wall time", "", table(["stage", "seconds"], [[k, v] for k, v in report.wall_time_s.items()])]
    present = ((LOSS_PLOT, report.training_log), (RELEARN_PLOT, _has_relearning(report)),
               (EVAL_PLOT, report.evaluation_curve))  # fmt: skip
    plots = [name for name, shown in present if shown]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    lines += ["", "## Versions", "", table(["package", "version"], [[k, v] for k, v in report.versions.items()])]
    return "\n".join(lines) + "\n"


# ---- plots -----------------------------------------------------------------------------------------------------


def _has_relearning(report: UnlearnReport) -> bool:
    return any(run.relearn for run in report.attacks)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps
    return figure, axes


def _phase_of(entry: dict, optimizer: str | None) -> str | None:
    if "optim/phase" in entry:
        return "zo" if entry["optim/phase"] >= 0.5 else "fo"
    if optimizer in ZO_OPTIMIZERS:
        return "zo"
    return None if optimizer in (None, "hybrid") else "fo"


def loss_plot(report: UnlearnReport) -> bytes | None:
    figure = loss_figure(report)
    return None if figure is None else _png(figure)


def evaluation_plot(report: UnlearnReport) -> bytes | None:
    figure = evaluation_figure(report)
    return None if figure is None else _png(figure)


def relearning_plot(report: UnlearnReport) -> bytes | None:
    figure = relearning_figure(report)
    return None if figure is None else _png(figure)


def loss_figure(report: UnlearnReport):
    """Forget and retain loss per logged step; the span each log covers is shaded by its optimizer phase."""
    log = sorted(report.training_log, key=lambda e: e["step"])
    if not log:
        return None
    from matplotlib.patches import Patch

    figure, axes = _new_figure()
    keys = [k for k in ("loss/forget", "loss/retain") if any(k in e for e in log)] or ["loss"]
    for key in keys:
        points = [(e["step"], e[key]) for e in log if key in e]
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None, label=key)
    shaded, previous = set(), 0
    for entry in log:
        phase = _phase_of(entry, report.optimizer)
        if phase is not None:
            axes.axvspan(previous, entry["step"], color=PHASE_COLORS[phase], alpha=0.12, linewidth=0, gid=phase)
            shaded.add(phase)
        previous = entry["step"]
    handles, _ = axes.get_legend_handles_labels()
    handles += [Patch(color=PHASE_COLORS[p], alpha=0.3, label=PHASE_NAMES[p] + " steps") for p in sorted(shaded)]
    axes.legend(handles=handles)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.set_title(" + ".join(x for x in (report.method, report.optimizer) if x) or "training")
    return figure


def relearning_figure(report: UnlearnReport):
    """The forget metric after 0 (no attack) and each relearning budget, one line per attack run."""
    runs = [run for run in report.attacks if run.relearn]
    if not runs:
        return None
    metric = next((m for m in (pick_forget_metric(run.unlearned) for run in runs) if m), None)
    if metric is None:
        return None
    figure, axes = _new_figure()
    for run in runs:
        steps = [0] + [p.step for p in run.relearn]
        values = [run.unlearned.get(metric)] + [p.metrics.get(metric) for p in run.relearn]
        axes.plot(steps, [math.nan if v is None else v for v in values], marker="o", label=run.label)
    before = report.evaluations.get(BEFORE)
    if before is not None and before.get(metric) is not None:
        axes.axhline(before.get(metric), color="gray", linestyle="--", label="before unlearning")
    axes.legend()
    axes.set_xlabel("relearning steps")
    axes.set_ylabel(metric)
    axes.set_title("Relearning attack")
    return figure


def evaluation_figure(report: UnlearnReport):
    """Each shown metric of the in-run evaluations per step; the best step metric_for_best_model chose is marked."""
    curve = report.evaluation_curve
    if not curve:
        return None
    figure, axes = _new_figure()
    for name in curve_metrics(report):
        values = [entry["values"].get(name) for entry in curve]
        axes.plot(
            [entry["step"] for entry in curve], [math.nan if v is None else v for v in values], marker="o", label=name
        )
    best = report.best_model
    if best and best["step"] is not None:
        axes.axvline(best["step"], color="gray", linestyle="--", label=f"best step {best['step']}", gid="best")
    axes.legend()
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("metric value")
    axes.set_title("Evaluation during training")
    return figure
