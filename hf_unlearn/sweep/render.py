"""How a `SweepReport` reads: ``sweep_report.md`` (the table in grade order, the utility-matched table) and the
plots, drawn with the report renderer's table and figure helpers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from hf_unlearn.io import atomic_write_bytes, atomic_write_text
from hf_unlearn.report_render import new_figure, png_bytes, table

from .schema import Stat, SweepReport
from .stats import MIN_FORGETTING, QUALITY, UTILITY, in_grade_order, mean_std


SWEEP_MARKDOWN_FILE = "sweep_report.md"
RELEARN_PLOT = "sweep_relearning.png"
GRADE_PLOT = "sweep_grade.png"
TRADEOFF_PLOT = "sweep_tradeoff.png"

TABLE_NOTE = (
    "Rows run from the highest optimizer grade (Sophia) to the lowest (zeroth order, hybrid). *Share of forgetting "
    "undone* = (metric after quantization - unlearned) / (original - unlearned): 0 means the attack restored nothing, "
    "1 all of it; it is left empty where unlearning forgot less than {min_forgetting} of the metric. Quantization can "
    "only restore knowledge where the 4-bit codes snap back to the original model's, so read it next to *codes "
    "changed*. Forwards and backwards are per process, from each run's compute accounting. Controls are evaluated "
    "only (not attacked); a noise control adds Gaussian noise to the original weights with the norm of the run's "
    "change, tensor by tensor."
)


def fmt_stat(stat: Stat | None, digits: int = 3, count: bool = False) -> str:
    """``mean ± std``; a count (forwards, say) that every seed shares is printed as a plain integer."""
    if not stat or stat.mean is None:
        return ""
    if count and float(stat.mean).is_integer() and not stat.std:
        return f"{int(stat.mean)}"
    text = f"{stat.mean:.{digits}f}"
    return text if stat.std is None else f"{text} ± {stat.std:.{digits}f}"


def main_table(report: SweepReport) -> str:
    """The optimizers in grade order, then the controls: mean ± std over seeds of every column."""
    cols = report.column_pairs()
    rows = [
        [row.label, str(len(row.seeds)), *(fmt_stat(row.columns[k], count=k.startswith("compute/")) for k, _ in cols)]
        for row in report.summary
    ]
    rows += [[f"*{row.name}* (control)", str(row.n), *(fmt_stat(row.columns.get(k)) for k, _ in cols)]
             for row in report.controls_summary]  # fmt: skip
    return table(["optimizer", "seeds", *(h for _, h in cols)], rows)


def matched_table(report: SweepReport) -> str:
    """Each optimizer at its utility-matched checkpoints (mean ± std over seeds), and what it was matched to."""
    matched, metric = report.utility_matched, report.forget_metric
    if matched.target is None or not matched.runs:
        return f"Not available: {matched.target_source}."
    runs = matched.runs
    kinds = list(runs[0].quantized)
    last = runs[0].relearn[-1].step
    header = ["optimizer", "seeds", "checkpoint step (of final)", UTILITY, "distance to target", metric,
              f"{metric} after relearn {last}", *(f"{metric} after {k}" for k in kinds)]  # fmt: skip
    rows = []
    for spec in in_grade_order(runs):
        mine = [r for r in runs if r.optimizer == spec]
        rows.append([
            mine[0].label, str(len(mine)), ", ".join(f"{r.step}/{r.final_step}" for r in mine),
            fmt_stat(mean_std([r.utility for r in mine])), fmt_stat(mean_std([r.distance for r in mine])),
            fmt_stat(mean_std([r.unlearned.get(metric) for r in mine])),
            fmt_stat(mean_std([r.relearn[-1].value for r in mine])),
            *(fmt_stat(mean_std([r.quantized.get(k) for r in mine])) for k in kinds),
        ])  # fmt: skip
    note = (f"Target {UTILITY} {matched.target:.4f} ({matched.target_source}); each run is taken at the saved "
            f"checkpoint ({matched.checkpoints_per_run} per run, plus the final model) closest to it. "
            "Distance = matched utility - target.")  # fmt: skip
    return table(header, rows) + "\n\n" + note


def sweep_markdown(report: SweepReport, plots: Sequence[str] = ()) -> str:
    overrides = f" with `{' '.join(report.overrides)}`" if report.overrides else ""
    lines = [f"# {report.title}", ""]
    lines += [f"- recipe: `{report.recipe}`{overrides}",
              f"- method: {report.method}; benchmark: {report.benchmark}; base model: `{report.base_model}`",
              f"- seeds: {', '.join(map(str, report.seeds))}; cells are mean ± sample standard deviation over "
              "seeds (n - 1; no ± with one seed)",
              f"- forget metric followed by the attacks: `{report.forget_metric}`"]  # fmt: skip
    if report.compute_budget:
        lines.append(f"- compute-matched: every run stopped at {report.compute_budget} model passes")
    lines += ["", "## Optimizers in grade order", "", main_table(report), ""]
    lines += [TABLE_NOTE.format(min_forgetting=MIN_FORGETTING), ""]
    lines += ["## Utility-matched", "", matched_table(report), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    return "\n".join(lines)


def write_report(report: SweepReport, out: Path) -> list[Path]:
    """``sweep_report.json``, the plots there is data for, and ``sweep_report.md``; each written atomically."""
    written = [report.save_json(out)]
    plots = {RELEARN_PLOT: relearning_figure, GRADE_PLOT: grade_figure, TRADEOFF_PLOT: tradeoff_figure}
    made = []
    for name, make in plots.items():
        figure = make(report)
        if figure is not None:
            written.append(atomic_write_bytes(out / name, png_bytes(figure)))
            made.append(name)
    written.append(atomic_write_text(out / SWEEP_MARKDOWN_FILE, sweep_markdown(report, made)))
    return written


# ---- plots -------------------------------------------------------------------------------------------------------


def _nan(value):
    return math.nan if value is None else value


def _control_lines(axes, report: SweepReport, metric: str) -> None:
    for row in report.controls:
        if row.kind in ("original", "retain") and row.metrics.get(metric) is not None:
            style = "--" if row.kind == "original" else ":"
            axes.axhline(row.metrics[metric], color="gray", linestyle=style, label=f"{row.name} model")


def relearning_figure(report: SweepReport):
    """The forget metric along relearning (step 0 = unlearned), mean over seeds with a ±std band per optimizer."""
    if len(report.cells[0].relearn) < 2:
        return None
    figure, axes = new_figure()
    for row in report.summary:
        mine = report.cells_of(row.optimizer)
        steps = [p.step for p in mine[0].relearn]
        stats = [mean_std([c.relearn[i].value for c in mine]) for i in range(len(steps))]
        means = [_nan(s.mean) for s in stats]
        (line,) = axes.plot(steps, means, marker="o", label=row.label)
        if len(mine) > 1:
            low = [m - (s.std or 0) for m, s in zip(means, stats)]
            high = [m + (s.std or 0) for m, s in zip(means, stats)]
            axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    _control_lines(axes, report, report.forget_metric)
    axes.set_xlabel("relearning steps")
    axes.set_ylabel(report.forget_metric)
    axes.set_title("Relearning attack (mean ± std over seeds)")
    axes.legend(fontsize="small")
    return figure


def grade_figure(report: SweepReport):
    """The forget metric after the largest relearning budget against the optimizer grade; one dot per seed."""
    metric = report.forget_metric
    figure, axes = new_figure(integer_x=False)
    relearned = len(report.cells[0].relearn) > 1
    key = "relearned" if relearned else f"unlearned/{metric}"
    budget = report.cells[0].relearn[-1].step
    for x, row in enumerate(report.summary):
        mine = report.cells_of(row.optimizer)
        values = [c.relearn[-1].value if relearned else c.unlearned.get(metric) for c in mine]
        first = x == 0
        axes.scatter([x] * len(values), [_nan(v) for v in values], color="#4c72b0", alpha=0.4, s=18,
                     label="one seed" if first else None)  # fmt: skip
        stat = row.columns[key]
        if stat.mean is not None:
            axes.errorbar([x], [stat.mean], yerr=[stat.std or 0], fmt="o", color="#c44e52", capsize=4,
                          label="mean ± std" if first else None)  # fmt: skip
    _control_lines(axes, report, metric)
    axes.set_xticks(range(len(report.summary)), [r.label for r in report.summary], rotation=20)
    axes.set_xlabel("optimizer, from the highest grade to the lowest")
    axes.set_ylabel(f"{metric} after relearning {budget} steps" if relearned else metric)
    axes.set_title("Forget metric after relearning vs optimizer grade (dots: seeds; bars: mean ± std)")
    axes.legend(fontsize="small")
    return figure


def tradeoff_figure(report: SweepReport):
    """Forget quality (or the forget metric) against model utility: one point per run, controls marked."""
    cells = report.cells
    if all(c.unlearned.get(UTILITY) is None for c in cells):
        return None
    y_metric = QUALITY if any(c.unlearned.get(QUALITY) is not None for c in cells) else report.forget_metric
    figure, axes = new_figure(integer_x=False)
    for row in report.summary:
        mine = report.cells_of(row.optimizer)
        axes.scatter([_nan(c.unlearned.get(UTILITY)) for c in mine], [_nan(c.unlearned.get(y_metric)) for c in mine],
                     label=row.label, s=28)  # fmt: skip
    markers = {"original": "*", "retain": "P", "noise": "x"}
    shown = set()
    for row in report.controls:
        label = None if row.name in shown else f"{row.name} (control)"
        shown.add(row.name)
        axes.scatter([_nan(row.metrics.get(UTILITY))], [_nan(row.metrics.get(y_metric))], color="black",
                     marker=markers[row.kind], s=60, label=label)  # fmt: skip
    if y_metric == QUALITY:
        axes.set_yscale("log")
    axes.set_xlabel(UTILITY)
    axes.set_ylabel(y_metric)
    axes.set_title("Forgetting vs utility, one point per run")
    axes.legend(fontsize="small")
    return figure
