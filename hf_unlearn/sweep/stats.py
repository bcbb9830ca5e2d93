"""The sweep's numbers: each run's record, the table's columns, mean ± std over seeds, the controls' summary and the
utility target."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from hf_unlearn.report_render import FORGET_METRICS, pick_forget_metric  # noqa: F401  (the sweep's one import of them)

from .plan import FOUR_BIT, Cell
from .schema import CellRecord, Column, ControlRow, ControlSummary, RelearnValue, Stat, SummaryRow


UTILITY = "model_utility"
QUALITY = "forget_quality"
# Below this much forgetting (original - unlearned forget metric) the share an attack undid is a ratio of noise.
MIN_FORGETTING = 0.05


# ---- records ---------------------------------------------------------------------------------------------------


def attack_numbers(attack, metric: str) -> dict:
    """The numbers one attack round gives the table: the forget metric along relearning and after quantization."""
    unlearned = attack.unlearned.values
    return {
        "unlearned": dict(unlearned),
        "relearn": [RelearnValue(0, unlearned.get(metric))]
        + [RelearnValue(p.step, p.metrics.get(metric)) for p in attack.relearn],
        "quantized": {q.kind: q.metrics.get(metric) for q in attack.quantization},
        "codes_changed": {q.kind: q.codes_changed_fraction for q in attack.quantization},
    }


def compute_record(compute: dict | None) -> dict:
    """Forwards, reference forwards, backwards and model passes over both phases, from a report's compute counts."""
    from hf_unlearn.compute import passes

    if not compute:
        return {}
    phases = [compute.get(p) or {} for p in ("fo", "zo")]
    keys = ("steps", "forwards", "reference_forwards", "backwards")
    total = {k: sum(int(c.get(k, 0)) for c in phases) for k in keys}
    return {**total, "passes": sum(passes(c) for c in phases), "zo_steps": int(phases[1].get("steps", 0))}


def cell_record(cell: Cell, report, metric: str) -> CellRecord:
    """One run's record from its ``UnlearnReport``: the last attack round and the compute counts."""
    attack = report.attacks[-1]
    spec = cell.optimizer
    return CellRecord(
        optimizer=spec.spec, label=spec.label, grade=spec.grade, seed=cell.seed, output_dir=str(cell.output_dir),
        global_step=attack.global_step, **attack_numbers(attack, metric), compute=compute_record(report.compute),
    )  # fmt: skip


# ---- statistics and columns --------------------------------------------------------------------------------------


def mean_std(values: Sequence[float | None]) -> Stat:
    """Mean and sample standard deviation (n - 1) of the available values; std is None below two values."""
    present = [v for v in values if v is not None]
    if not present:
        return Stat(None, None, 0)
    std = statistics.stdev(present) if len(present) > 1 else None
    return Stat(statistics.fmean(present), std, len(present))


def columns(cells: list[CellRecord], metric: str) -> list[Column]:
    """The columns of the paper-shaped table, in order."""
    first = cells[0]
    names = [n for n in (*FORGET_METRICS, QUALITY) if first.unlearned.get(n) is not None]
    cols = [Column(f"unlearned/{n}", n) for n in names]
    if UTILITY in first.unlearned:
        cols.append(Column(f"unlearned/{UTILITY}", UTILITY))
    last = first.relearn[-1].step
    if last:
        cols.append(Column("relearned", f"{metric} after relearn {last}"))
    cols += [Column(f"quantized/{k}", f"{metric} after {k}") for k in first.quantized]
    cols += [Column(f"recovered/{k}", f"share of forgetting undone by {k}") for k in first.quantized]
    cols += [Column(f"codes_changed/{k}", f"{k} codes changed") for k in first.codes_changed if k in FOUR_BIT]
    cols += [Column("compute/forwards", "forwards"), Column("compute/backwards", "backwards")]
    return cols


def cell_value(cell: CellRecord, key: str, original: dict | None, metric: str) -> float | None:
    """A column's value for one run; ``recovered/<kind>`` needs the original model's metrics."""
    group, _, name = key.partition("/")
    if group == "unlearned":
        return cell.unlearned.get(name)
    if group == "relearned":
        return cell.relearn[-1].value
    if group == "quantized":
        return cell.quantized.get(name)
    if group == "recovered":  # (quantized - unlearned) / (original - unlearned): 0 = nothing undone, 1 = all
        before = (original or {}).get(metric)
        after, quantized = cell.unlearned.get(metric), cell.quantized.get(name)
        if None in (before, after, quantized) or abs(before - after) < MIN_FORGETTING:
            return None
        return (quantized - after) / (before - after)
    if group == "codes_changed":
        return cell.codes_changed.get(name)
    if group == "compute":
        return cell.compute.get(name)
    raise ValueError(f"unknown sweep column {key!r}")


def in_grade_order(records: Sequence) -> list[str]:
    """The optimizers (specs) of `records` from the highest grade to the lowest, each once."""
    return list(dict.fromkeys(r.optimizer for r in sorted(records, key=lambda r: (r.grade, r.seed))))


def summarise(cells: list[CellRecord], cols: list[Column], original: dict | None, metric: str) -> list[SummaryRow]:
    """One row per optimizer, in grade order: mean ± std over its seeds of every column."""
    rows = []
    for spec in in_grade_order(cells):
        mine = [c for c in cells if c.optimizer == spec]
        stats = {col.key: mean_std([cell_value(c, col.key, original, metric) for c in mine]) for col in cols}
        rows.append(SummaryRow(spec, mine[0].label, mine[0].grade, [c.seed for c in mine], stats))
    return rows


def control_summary(rows: list[ControlRow], cols: list[Column]) -> list[ControlSummary]:
    """The controls grouped by name, with the columns a control has (its metrics and codes changed)."""
    groups: dict[str, list[ControlRow]] = {}
    for row in rows:
        groups.setdefault(row.name, []).append(row)
    out = []
    for name, members in groups.items():
        stats = {}
        for col in cols:
            group, _, metric = col.key.partition("/")
            if group == "unlearned":
                stats[col.key] = mean_std([m.metrics.get(metric) for m in members])
            elif group == "codes_changed" and members[0].codes_changed:
                stats[col.key] = mean_std([m.codes_changed.get(metric) for m in members])
        out.append(ControlSummary(name, members[0].kind, len(members), stats))
    return out


def utility_target(cells: list[CellRecord], given: float | None) -> tuple[float | None, str]:
    """The model utility to match: the given one, else AdamW's mean final utility, else the highest grade's."""
    if given is not None:
        return given, "given (--utility_target)"
    for spec in ("adamw", *in_grade_order(cells)):
        stat = mean_std([c.unlearned.get(UTILITY) for c in cells if c.optimizer == spec])
        if stat.mean is not None:
            label = next(c.label for c in cells if c.optimizer == spec)
            return stat.mean, f"{label}'s mean final {UTILITY}"
    return None, f"no run reports {UTILITY}"
