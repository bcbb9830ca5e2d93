"""Ratios that hold still: sides measured in alternation (A B A B ...) after a warm-up, reported as median and spread.

On a shared CPU, load from other processes comes and goes over seconds; one measurement of each side, or all of A
then all of B, puts that drift into the ratio. Alternating puts it into both sides alike, and the ratio of each
adjacent pair (A_i / B_i) is then a repeat of the comparison: its median is the figure, its min–max the spread.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from benchmarks_perf.journal import Journal


def _cuda_wall_time() -> float:
    import torch

    torch.cuda.synchronize()  # the kernels launched so far belong to the measurement that launched them
    return time.perf_counter()


# Process CPU time: at one intra-op thread it barely moves when other processes share the CPU, unlike wall time.
# On a GPU the work is asynchronous: wall time between two synchronisations.
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter, "cuda": _cuda_wall_time}


def timed(fn: Callable[[], object], clock: str = "cpu") -> Callable[[], float]:
    """A measurement that runs ``fn`` once and returns its seconds on ``clock`` (``cpu`` or ``wall``)."""
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r}: choose one of {', '.join(CLOCKS)}")
    now = CLOCKS[clock]

    def measure() -> float:
        start = now()
        fn()
        return now() - start

    return measure


def alternate(
    sides: dict[str, Callable[[], float]],
    repeats: int = 5,
    warmup: int = 1,
    journal: Journal | None = None,
    row: str = "",
) -> dict[str, list[float]]:
    """Each side's measurements (a callable returning one value: seconds, megabytes), taken in rounds.

    ``warmup`` rounds run every side once in order and are discarded (allocator, page faults, lazy
    initialisation); then ``repeats`` rounds run every side once, in the order given: A B A B ... for two sides.

    ``journal``: the rounds already in it whole for comparison ``row`` are taken as measured (a resumed run
    continues at the first round missing, and a round cut by the stop is measured again whole: A_i / B_i pairs values
    of one sitting) and each new value is recorded there as soon as it is taken. The warm-up runs only when something
    is left to measure.
    """
    if not sides:
        raise ValueError("alternate() needs at least one side to measure.")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0.")
    values = journal.whole_rounds(row, list(sides), repeats) if journal else {name: [] for name in sides}
    rounds_measured = len(next(iter(values.values())))  # whole rounds: every side has as many values
    if rounds_measured == repeats:
        return values
    for _ in range(warmup):
        for measure in sides.values():
            measure()
    for _ in range(rounds_measured, repeats):
        for name, measure in sides.items():
            values[name].append(float(measure()))
            if journal is not None:
                journal.record(row, name, values[name][-1])
    return values


def ratio_entry(
    a_name: str,
    a_values: list[float],
    b_name: str,
    b_values: list[float],
    goal: float | None,
    unit: str = "seconds",
    **setup,
) -> dict:
    """The comparison of side A over side B: per-round ratios A_i / B_i, their median and min–max, the goal.

    ``meets_goal`` is ``ratio_median <= goal`` (every goal here is a ceiling); ``None`` when there is no goal.
    """
    if len(a_values) != len(b_values) or not a_values:
        raise ValueError(f"{a_name} and {b_name} need the same number (>= 1) of measurements to pair them.")
    if min(b_values) <= 0:
        raise ValueError(f"{b_name} measured {min(b_values)} {unit}: a ratio needs a positive denominator.")
    ratios = [a / b for a, b in zip(a_values, b_values)]
    median = statistics.median(ratios)
    return {
        "a": a_name,
        "b": b_name,
        "ratio_median": round(median, 4),
        "ratio_min": round(min(ratios), 4),
        "ratio_max": round(max(ratios), 4),
        "goal": goal,
        "meets_goal": None if goal is None else bool(median <= goal),
        f"a_{unit}": [round(v, 4) for v in a_values],
        f"b_{unit}": [round(v, 4) for v in b_values],
        f"a_median_{unit}": round(statistics.median(a_values), 4),
        f"b_median_{unit}": round(statistics.median(b_values), 4),
        "repeats": len(ratios),
        **setup,
    }


def compare(
    a_name: str,
    a: Callable[[], float],
    b_name: str,
    b: Callable[[], float],
    goal: float | None,
    repeats: int = 5,
    warmup: int = 1,
    unit: str = "seconds",
    journal: Journal | None = None,
    **setup,
) -> dict:
    """:func:`alternate` two sides (A first; journaled as the row ``<a>_vs_<b>``), then :func:`ratio_entry` of A
    over B."""
    values = alternate({a_name: a, b_name: b}, repeats, warmup, journal, row=f"{a_name}_vs_{b_name}")
    return ratio_entry(a_name, values[a_name], b_name, values[b_name], goal, unit, warmup=warmup, **setup)


RATIO_KEYS = ("a", "b", "ratio_median", "ratio_min", "ratio_max", "goal", "meets_goal", "repeats")


def check_ratio_entry(entry: dict) -> None:
    """Raise ``ValueError`` naming what is missing or inconsistent in a ratio entry (the JSON schema, checked)."""
    missing = [key for key in RATIO_KEYS if key not in entry]
    units = [key[2:] for key in entry if key.startswith("a_") and isinstance(entry[key], list)]
    if missing or len(units) != 1 or not isinstance(entry.get(f"b_{units[0] if units else ''}"), list):
        raise ValueError(f"not a ratio entry: missing {missing or 'the a_/b_ measurement lists'}")
    a_values, b_values = entry[f"a_{units[0]}"], entry[f"b_{units[0]}"]
    if not (len(a_values) == len(b_values) == entry["repeats"]):
        raise ValueError(f"{entry['repeats']} repeats but {len(a_values)} and {len(b_values)} measurements")
    if not entry["ratio_min"] <= entry["ratio_median"] <= entry["ratio_max"]:
        raise ValueError(
            f"median {entry['ratio_median']} outside its spread {entry['ratio_min']}–{entry['ratio_max']}"
        )
    if entry["goal"] is not None and entry["meets_goal"] != (entry["ratio_median"] <= entry["goal"]):
        raise ValueError(f"meets_goal={entry['meets_goal']} disagrees with {entry['ratio_median']} <= {entry['goal']}")


def markdown_table(entries: dict[str, dict]) -> str:
    """A Markdown table of ratio entries: median with its spread, the medians of both sides, the goal."""
    lines = ["| comparison | A / B | median (min–max) | A, B medians | goal | met |", "|---|---|---|---|---|---|"]
    for name, entry in entries.items():
        check_ratio_entry(entry)
        unit = next(key[len("a_median_") :] for key in entry if key.startswith("a_median_"))
        short = "s" if unit == "seconds" else unit.upper()
        sides = f"{entry[f'a_median_{unit}']:.3g} / {entry[f'b_median_{unit}']:.3g} {short}"
        goal = "—" if entry["goal"] is None else f"≤ {entry['goal']}"
        met = {True: "yes", False: "no", None: "—"}[entry["meets_goal"]]
        spread = f"**{entry['ratio_median']:.3f}** ({entry['ratio_min']:.3f}–{entry['ratio_max']:.3f})"
        lines.append(f"| {name} | {entry['a']} / {entry['b']} | {spread} | {sides} | {goal} | {met} |")
    return "\n".join(lines) + "\n"
