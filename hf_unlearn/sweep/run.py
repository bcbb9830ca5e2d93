"""Running a sweep: the cells one after another, then the checkpoints' evaluations, the utility-matched attacks,
the controls and the report."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

from hf_unlearn.io import atomic_write_json

from .controls import control_rows, load_model
from .plan import (
    FOUR_BIT,
    Cell,
    SweepSettings,
    cell_complete,
    cell_overrides,
    parse_specs,
    plan,
    quantization_kinds,
    seeds_from,
    select,
)
from .render import write_report
from .schema import CellRecord, MatchedRun, OptimizerRow, SweepReport, UtilityMatched
from .stats import (
    UTILITY,
    attack_numbers,
    cell_record,
    columns,
    control_summary,
    pick_forget_metric,
    summarise,
    utility_target,
)


CHECKPOINTS_FILE = "sweep_checkpoints.json"  # per cell: the metrics of each saved checkpoint
MATCHED_FILE = "sweep_matched.json"  # per cell: the checks of the utility-matched checkpoint


def run_cell(settings: SweepSettings, cell: Cell, base, on_trainer=None) -> None:
    """Train and attack one cell (an ordinary `pipeline.run` of the recipe) into its emptied folder."""
    from hf_unlearn.pipeline import run
    from hf_unlearn.recipes import parse_recipe

    if cell.output_dir.exists():  # an interrupted cell: its checkpoints and partial files would mix with the rerun
        from hf_unlearn.lock import check_unlocked

        check_unlocked(cell.output_dir)  # unless another process is training this cell right now
        shutil.rmtree(cell.output_dir)
    recipe = parse_recipe(settings.recipe, cell_overrides(settings, cell, base))
    run(recipe, compute_budget=settings.compute_budget, on_trainer=on_trainer)


class Evaluator:
    """Loads the recipe's data source, benchmark and original model once, for checkpoints and controls."""

    def __init__(self, base):
        self.base = base
        self._tokenizer = self._benchmark = self._original = self._source = None

    @property
    def source(self):
        if self._source is None:
            from hf_unlearn.benchmarks.sources import source_from_recipe

            self._source = source_from_recipe(self.base.script, self.base.config)
        return self._source

    @property
    def original(self):
        if self._original is None:
            from hf_unlearn.loading import load_model_and_tokenizer

            self._original, self._tokenizer = load_model_and_tokenizer(self.base.script.model_name_or_path, "cpu")
        return self._original

    @property
    def tokenizer(self):
        self.original  # noqa: B018  (loads the tokenizer with it)
        return self._tokenizer

    @property
    def benchmark(self):
        if self._benchmark is None:
            self._benchmark = self.source.benchmark(self.tokenizer, show_progress=False)
        return self._benchmark

    def evaluate(self, model) -> dict[str, float | None]:
        from hf_unlearn.modeling import eval_mode
        from hf_unlearn.report_schema import Metrics

        with eval_mode(model, inference=False):
            return Metrics.coerce(self.benchmark.evaluate(model, self.tokenizer)).values

    def attack(self, model, robustness) -> dict:
        from hf_unlearn.attacks.robustness import benchmark_eval_fn, robustness_checks

        checks = dataclasses.replace(robustness, results_file="")
        forget = self.source.forget_dataset(self.tokenizer)
        return robustness_checks(
            model, self.tokenizer, benchmark_eval_fn(self.benchmark), forget, checks, self.original
        )


def checkpoint_dirs(folder: Path) -> list[tuple[int, Path]]:
    found = [(int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return sorted(found)


def checkpoint_metrics(cell: Cell, report, evaluator: Evaluator) -> list[dict]:
    """Metrics of each saved checkpoint and the final model (``[{"step", "metrics"}]``); written once per cell."""
    from hf_unlearn.report_schema import AFTER

    path = cell.output_dir / CHECKPOINTS_FILE
    final_step = report.attacks[-1].global_step
    if path.is_file():
        return json.loads(path.read_text())["checkpoints"]
    points = []
    for step, folder in checkpoint_dirs(cell.output_dir):
        if step != final_step:
            points.append({"step": step, "metrics": evaluator.evaluate(load_model(folder))})
    points.append({"step": final_step, "metrics": report.evaluations[AFTER].values})
    atomic_write_json(path, {"checkpoints": points})
    return points


def matched_attack(cell: Cell, step: int, evaluator: Evaluator, robustness) -> dict:
    """The robustness checks of the cell's checkpoint at `step` (cached in the cell's folder)."""
    path = cell.output_dir / MATCHED_FILE
    cached = json.loads(path.read_text()) if path.is_file() else {}
    if str(step) not in cached:
        model = load_model(cell.output_dir / f"checkpoint-{step}")
        cached[str(step)] = evaluator.attack(model, robustness)
        atomic_write_json(path, cached)
    return cached[str(step)]


def utility_matched(
    cells: list[Cell], records: list[CellRecord], evaluator: Evaluator, base, settings: SweepSettings, metric: str
) -> UtilityMatched:
    """Each run at its checkpoint whose model utility is closest to the target, attacked there."""
    from hf_unlearn.report import UnlearnReport
    from hf_unlearn.report_schema import AttackRun

    target, source = utility_target(records, settings.utility_target)
    out = UtilityMatched(target, source, settings.checkpoints)
    if target is None:
        return out
    robustness = dataclasses.replace(base.robustness, quantization=quantization_kinds(base.robustness.quantization))
    for cell, record in zip(cells, records):
        report = UnlearnReport.load(cell.output_dir)
        points = checkpoint_metrics(cell, report, evaluator)
        usable = [p for p in points if p["metrics"].get(UTILITY) is not None]
        if not usable:
            continue
        best = min(usable, key=lambda p: (abs(p["metrics"][UTILITY] - target), -p["step"]))
        if best["step"] == record.global_step:
            attack = report.attacks[-1]
        else:
            results = matched_attack(cell, best["step"], evaluator, robustness)
            attack = AttackRun.from_robustness(results, f"step {best['step']}", best["step"])
        out.runs.append(MatchedRun(
            optimizer=record.optimizer, label=record.label, grade=record.grade, seed=record.seed, step=best["step"],
            final_step=record.global_step, utility=best["metrics"][UTILITY],
            distance=best["metrics"][UTILITY] - target,
            checkpoint_utilities=[{"step": p["step"], "utility": p["metrics"].get(UTILITY)} for p in points],
            **attack_numbers(attack, metric),
        ))  # fmt: skip
    return out


def check_sweep_folder(root: Path) -> None:
    """A sweep writes into a folder that is new or holds only what sweeps write there (cell folders, the controls,
    the report and its plots): a restart, or a report run after parallel ``--only`` launches, goes on; a folder
    holding anything else is refused in one line before anything loads."""
    from hf_unlearn.lock import LOCK_FILE

    from .controls import CONTROLS_DIR
    from .render import GRADE_PLOT, RELEARN_PLOT, SWEEP_MARKDOWN_FILE, TRADEOFF_PLOT
    from .schema import SWEEP_REPORT_FILE

    if not root.is_dir():
        return
    own = {CONTROLS_DIR, SWEEP_REPORT_FILE, SWEEP_MARKDOWN_FILE, GRADE_PLOT, RELEARN_PLOT, TRADEOFF_PLOT, LOCK_FILE}
    foreign = sorted(
        p.name for p in root.iterdir() if p.name not in own and not (p.is_dir() and _CELL.fullmatch(p.name))
    )
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise FileExistsError(
            f"The sweep folder {root} holds files a sweep did not write ({shown}); choose a new --output_dir."
        )


_CELL = re.compile(r".+_seed\d+")


def run_sweep(settings: SweepSettings, on_cell=print, on_trainer=None) -> SweepReport | None:
    """Run every unfinished cell, then (unless `only` is given) the controls, the comparison and the report.

    Returns the report (what ``sweep_report.json`` holds), or None when only some cells were run.
    """
    from hf_unlearn.distributed import process_state
    from hf_unlearn.recipes import parse_recipe
    from hf_unlearn.report import UnlearnReport

    if process_state().num_processes > 1 and not settings.only:
        # The report's evaluations run on one process; the others would wait in the benchmark's gather forever.
        raise ValueError(
            "A multi-process launch runs single cells: add --only OPTIMIZER:SEED, then write the report with the same "
            "command without --only in one process."
        )
    specs = parse_specs(settings.optimizers)
    if not specs:
        raise ValueError("No optimizers: pass --optimizers adamw adazo ... or give the recipe a sweep: section")
    # The recipe as its first cell runs it: keys that only hold for the recipe's own optimizer (a hybrid schedule
    # that max_steps must fit, say) are not checked for cells that do not use it. Its output_dir is the sweep's
    # folder, not a run's: that folder is checked as one (check_sweep_folder), each cell's folder as a run's.
    base = parse_recipe(settings.recipe, [*settings.overrides, *specs[0].flags(), "--overwrite_output_dir", "true"])
    settings.seeds = seeds = seeds_from(settings.seeds, base.config.seed)
    if settings.output_dir is None:
        settings.output_dir = base.config.output_dir
    check_sweep_folder(Path(settings.output_dir))
    if settings.compute_budget is not None and settings.compute_budget < 1:
        raise ValueError(f"--compute_budget {settings.compute_budget}: must be >= 1 model pass")
    if settings.checkpoints < 0:
        raise ValueError(f"--checkpoints {settings.checkpoints}: must be >= 0")
    cells = plan(settings)
    todo = select(cells, settings.only) if settings.only else cells
    # Every cell this launch runs is checked before the first one trains; not the others, which parallel --only
    # launches may be training right now (their folders are locked).
    for cell in todo:
        parse_recipe(settings.recipe, cell_overrides(settings, cell, base))
    for cell in todo:
        if cell_complete(cell, base.robustness):
            on_cell(f"[sweep] {cell.name}: finished earlier ({cell.output_dir})")
            continue
        on_cell(f"[sweep] {cell.name}: running into {cell.output_dir}")
        run_cell(settings, cell, base, on_trainer)
    if settings.only:
        return None
    reports = [UnlearnReport.load(c.output_dir) for c in cells]
    metric = pick_forget_metric(reports[0].attacks[-1].unlearned)
    if metric is None:
        raise ValueError("The sweep's benchmark reports no forget metric to compare the optimizers with.")
    records = [cell_record(c, r, metric) for c, r in zip(cells, reports)]
    evaluator = Evaluator(base)
    kinds = [k for k in records[0].codes_changed if k in FOUR_BIT]
    controls = control_rows(settings.output_dir, base, cells, evaluator, kinds) if settings.controls else []
    original = next((r.metrics for r in controls if r.kind == "original"), None)
    cols = columns(records, metric)
    report = SweepReport(
        title=settings.title, output_dir=str(settings.output_dir), recipe=str(settings.recipe),
        overrides=list(settings.overrides), method=base.script.method, benchmark=reports[0].benchmark,
        base_model=base.script.model_name_or_path, forget_metric=metric, seeds=list(seeds),
        optimizers=[OptimizerRow(c.optimizer.spec, c.optimizer.label, c.optimizer.grade) for c in cells
                    if c.seed == seeds[0]],
        compute_budget=settings.compute_budget, columns=cols, cells=records,
        summary=summarise(records, cols, original, metric), controls=controls,
        controls_summary=control_summary(controls, cols),
        utility_matched=utility_matched(cells, records, evaluator, base, settings, metric),
    )  # fmt: skip
    write_report(report, Path(settings.output_dir))
    return report
