"""`hf-unlearn sweep`: one recipe, run once per (optimizer, seed), attacked, compared in one report.

The question it answers for a user's own model and data: does a lower-grade optimizer make unlearning harder to
undo, and at what cost in forgetting and utility? Each *cell* (optimizer, seed) is an ordinary `pipeline.run` of
the recipe in its own folder ``<output_dir>/<optimizer>_seed<seed>`` with the robustness checks on (relearning
curve, a 4-bit and an 8-bit quantization, the share of quantization codes unlearning changed). The sweep then adds
the controls (the model before unlearning, the retain model when the recipe names one, and Gaussian noise matched
tensor by tensor to each zeroth-order or hybrid run's weight change) and writes ``sweep_report.json`` (schema:
docs/sweep.md), ``sweep_report.md`` (the paper's table, mean ± sample standard deviation over seeds) and plots.

Fair comparisons:

- *utility-matched*: with ``checkpoints=N`` each run saves N checkpoints; their model utility is evaluated, and each
  run is attacked at the checkpoint whose utility is closest to a target (default: AdamW's mean final utility);
  the report says how far each match is. Only the matched checkpoint is attacked, the cheapest correct way.
- *compute-matched*: every run's forward/backward passes come from its report's compute accounting; with
  ``compute_budget`` every run stops once its passes reach the same budget.

Cells run one after another in one process: the data, the tokenizer, the benchmark (with the retain model's
statistics) and the original model are loaded once, and the controls are evaluated once. A killed sweep resumes: a
cell whose ``unlearn_report.json`` is complete is not run again; an incomplete cell is run again from scratch.
For separate launches (``accelerate launch``, a cluster array job) run single cells with ``only=["adamw:0"]``
(``--only adamw:0``); a final run without ``only`` finds them finished and writes the report.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hf_unlearn.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from hf_unlearn.optim.args import KNOWN_OPTIMIZERS, ZEROTH_ORDER_OPTIMIZERS
from hf_unlearn.report_render import AFTER, FORGET_METRICS, pick_forget_metric


SWEEP_SCHEMA_VERSION = 1
SWEEP_REPORT_FILE = "sweep_report.json"
SWEEP_MARKDOWN_FILE = "sweep_report.md"
RELEARN_PLOT = "sweep_relearning.png"
GRADE_PLOT = "sweep_grade.png"
TRADEOFF_PLOT = "sweep_tradeoff.png"
CHECKPOINTS_FILE = "sweep_checkpoints.json"  # per cell: the metrics of each saved checkpoint
MATCHED_FILE = "sweep_matched.json"  # per cell: the checks of the utility-matched checkpoint
CONTROLS_DIR = "controls"
UTILITY = "model_utility"
QUALITY = "forget_quality"
FOUR_BIT, EIGHT_BIT = ("fp4", "nf4", "rtn4"), ("int8", "rtn8")
# Below this much forgetting (original - unlearned forget metric) the share an attack undid is a ratio of noise.
MIN_FORGETTING = 0.05

# The optimizer grade, from the highest (second-order curvature) to the lowest (no gradient at all): Sophia ->
# AdamW (and the smoothing baselines that wrap it) -> Q(m;8)..Q(m;1) -> signAdam -> ZO -> the FO-ZO hybrid.
LABELS = {
    "sophia": "Sophia", "adamw": "AdamW", "adamw_8bit": "AdamW 8-bit", "sam": "SAM", "fo_rs": "FO-RS", "sgd": "SGD",
    "signadam": "signAdam", "signsgd": "signSGD", "zo_sgd": "ZO-SGD", "zo_adam": "ZO-Adam", "adazo": "AdaZO",
    "hybrid": "hybrid FO-ZO",
}  # fmt: skip
GRADES = {
    "sophia": 0.0, "adamw": 1.0, "adamw_8bit": 1.1, "sam": 1.2, "fo_rs": 1.3, "sgd": 1.4, "signadam": 10.0,
    "signsgd": 10.1, "zo_adam": 11.0, "zo_sgd": 11.1, "adazo": 11.2, "hybrid": 12.0,
}  # fmt: skip


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer of a sweep: ``adamw``, ``qadam:4`` (Q(m;4): `qadam` with ``qadam_bits=4``), ``hybrid``, ..."""

    spec: str
    optimizer: str
    bits: int | None = None

    @classmethod
    def parse(cls, text: str) -> OptimizerSpec:
        name, _, bits = str(text).partition(":")
        if name not in KNOWN_OPTIMIZERS:
            raise ValueError(f"--optimizers: {text!r} is unknown; choose from {', '.join(KNOWN_OPTIMIZERS)}")
        if bits and name != "qadam":
            raise ValueError(f"--optimizers: {text!r}: only qadam takes :BITS (qadam:4 is Q(m;4))")
        if name == "qadam":
            if not bits:
                raise ValueError("--optimizers: give qadam its bits, e.g. qadam:4 (Q(m;4)), 1..8")
            if not bits.isdigit() or not 1 <= int(bits) <= 8:
                raise ValueError(f"--optimizers: {text!r}: the bits of qadam:BITS must be 1..8")
        return cls(str(text), name, int(bits) if bits else None)

    @property
    def label(self) -> str:
        return f"Q(m;{self.bits})" if self.optimizer == "qadam" else LABELS[self.optimizer]

    @property
    def grade(self) -> float:
        """Position in the grade order (lower: higher grade); Q(m;8) sits right after AdamW, Q(m;1) before signAdam."""
        return 2.0 + (8 - self.bits) if self.optimizer == "qadam" else GRADES[self.optimizer]

    @property
    def zeroth_order(self) -> bool:
        return self.optimizer in ZEROTH_ORDER_OPTIMIZERS or self.optimizer == "hybrid"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_]", "", self.spec.replace(":", ""))

    def flags(self) -> list[str]:
        return ["--optimizer", self.optimizer] + (["--qadam_bits", str(self.bits)] if self.bits else [])


@dataclass(frozen=True)
class Cell:
    optimizer: OptimizerSpec
    seed: int
    output_dir: Path

    @property
    def name(self) -> str:
        return f"{self.optimizer.spec}:{self.seed}"


@dataclass
class SweepSettings:
    """What `run_sweep` runs; the CLI's flags, one to one."""

    recipe: str
    optimizers: list[str]
    seeds: list[int] | int  # the seeds, or a count (3: the recipe's seed and the next two)
    output_dir: str | None = None  # default: the recipe's output_dir
    overrides: list[str] = field(default_factory=list)  # recipe keys, for every cell
    only: list[str] | None = None  # "optimizer:seed" cells to run (training only; no report)
    checkpoints: int = 0  # checkpoints per run for the utility-matched comparison (0: final models only)
    utility_target: float | None = None  # default: AdamW's mean final model utility
    compute_budget: int | None = None  # stop every run at this many model passes
    controls: bool = True
    title: str = "hf_unlearn sweep"


def seeds_from(count_or_list, base: int = 0) -> list[int]:
    """``3`` -> [base, base+1, base+2]; a list is taken as the seeds themselves."""
    if isinstance(count_or_list, int):
        if count_or_list < 1:
            raise ValueError(f"--seeds {count_or_list}: need at least one seed")
        return list(range(base, base + count_or_list))
    seeds = [int(s) for s in count_or_list]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds}: give distinct seeds (or a count)")
    return seeds


def sweep_section(recipe: str | Path) -> dict:
    """The recipe's ``sweep:`` section (``optimizers``, ``seeds``), or {}."""
    import yaml

    from hf_unlearn.recipes import SWEEP_KEY, load_recipe

    load_recipe(recipe)  # the one-line errors for a missing / malformed file
    section = (yaml.safe_load(Path(recipe).read_text()) or {}).get(SWEEP_KEY) or {}
    if not isinstance(section, dict) or set(section) - {"optimizers", "seeds"}:
        raise ValueError(f"Recipe {recipe}: the sweep: section takes optimizers: [...] and seeds: N (or a list)")
    return section


# ---- cells -----------------------------------------------------------------------------------------------------


def quantization_kinds(kinds: Sequence[str]) -> list[str]:
    """The recipe's quantization kinds, with a 4-bit (rtn4) and an 8-bit (rtn8) one added where missing."""
    kinds = list(kinds)
    if not any(k in FOUR_BIT for k in kinds):
        kinds.append("rtn4")
    if not any(k in EIGHT_BIT for k in kinds):
        kinds.append("rtn8")
    return kinds


def four_bit_kind(kinds: Sequence[str]) -> str:
    return next(k for k in kinds if k in FOUR_BIT)


def cell_overrides(settings: SweepSettings, cell: Cell, base) -> list[str]:
    # The sweep owns each cell's folder: a finished cell is never run again and an unfinished one is emptied before
    # it runs, so the run may write into it (overwrite_output_dir).
    flags = [*settings.overrides, *cell.optimizer.flags(), "--seed", str(cell.seed), "--output_dir",
             str(cell.output_dir), "--overwrite_output_dir", "true", "--robustness", "true",
             "--report_codes_changed", "true",
             "--quantization", *quantization_kinds(base.robustness.quantization)]  # fmt: skip
    if settings.checkpoints:
        steps = base.config.max_steps
        if not steps or steps <= 0:
            raise ValueError("--checkpoints needs the recipe's max_steps (> 0) to space the checkpoints")
        every = max(1, steps // (settings.checkpoints + 1))
        flags += ["--save_strategy", "steps", "--save_steps", str(every), "--save_only_model", "true"]
    return flags


def cell_complete(cell: Cell, robustness) -> bool:
    """A finished cell: its report loads, has the final evaluation and the attacks the recipe asks for."""
    from hf_unlearn.report import REPORT_FILE, UnlearnReport

    if not (cell.output_dir / REPORT_FILE).is_file():
        return False
    try:
        report = UnlearnReport.load(cell.output_dir)
    except (ValueError, TypeError, KeyError):
        return False
    if AFTER not in report.evaluations or not report.attacks:
        return False
    attack = report.attacks[-1]
    relearned = [p.step for p in attack.relearn] == sorted(int(s) for s in robustness.relearn_steps)
    return relearned and {q.kind for q in attack.quantization} >= set(quantization_kinds(robustness.quantization))


def run_cell(settings: SweepSettings, cell: Cell, base) -> None:
    from hf_unlearn.pipeline import run
    from hf_unlearn.recipes import parse_recipe

    if cell.output_dir.exists():  # an interrupted cell: its checkpoints and partial files would mix with the rerun
        from hf_unlearn.lock import check_unlocked

        check_unlocked(cell.output_dir)  # unless another process is training this cell right now
        shutil.rmtree(cell.output_dir)
    run(parse_recipe(settings.recipe, cell_overrides(settings, cell, base)), compute_budget=settings.compute_budget)


# ---- evaluation helpers (one data source, tokenizer, benchmark and original model for the whole sweep) ----------


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
        from hf_unlearn.report import Metrics

        with _eval(model):
            return Metrics.coerce(self.benchmark.evaluate(model, self.tokenizer)).values

    def attack(self, model, robustness) -> dict:
        from hf_unlearn.attacks.robustness import benchmark_eval_fn, robustness_checks

        checks = dataclasses.replace(robustness, results_file="")
        forget = self.source.forget_dataset(self.tokenizer)
        return robustness_checks(
            model, self.tokenizer, benchmark_eval_fn(self.benchmark), forget, checks, self.original
        )


class _eval:
    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.training)


def load_model(path: Path):
    from hf_unlearn.loading import load_model as load

    return load(path, dtype="float32").eval()


def checkpoint_dirs(folder: Path) -> list[tuple[int, Path]]:
    found = [(int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return sorted(found)


def checkpoint_metrics(cell: Cell, report, evaluator: Evaluator) -> list[dict]:
    """Metrics of each saved checkpoint and the final model (``[{"step", "metrics"}]``); written once per cell."""
    from hf_unlearn.io import atomic_write_json

    path = cell.output_dir / CHECKPOINTS_FILE
    final_step = report.attacks[-1].global_step
    if path.is_file():
        import json

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
    import json

    path = cell.output_dir / MATCHED_FILE
    cached = json.loads(path.read_text()) if path.is_file() else {}
    if str(step) not in cached:
        model = load_model(cell.output_dir / f"checkpoint-{step}")
        cached[str(step)] = evaluator.attack(model, robustness)
        atomic_write_json(path, cached)
    return cached[str(step)]


def noise_control(original: Path | str, unlearned: Path | str, output_dir: Path | str, seed: int) -> Path:
    """The original model plus Gaussian noise whose norm equals unlearning's change, tensor by tensor."""
    import torch

    from hf_unlearn.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(original, "cpu")
    moved = load_model(Path(unlearned)).state_dict()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            noise = torch.randn(weight.shape, generator=generator)
            weight.add_(noise * ((moved[name] - weight).norm() / noise.norm()))
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return Path(output_dir)


# ---- records ---------------------------------------------------------------------------------------------------


def attack_record(attack, metric: str) -> dict:
    """The numbers one attack round gives the table: the forget metric along relearning and after quantization."""
    unlearned = attack.unlearned.values
    return {
        "unlearned": dict(unlearned),
        "relearn": [{"step": 0, "value": unlearned.get(metric)}]
        + [{"step": p.step, "value": p.metrics.get(metric)} for p in attack.relearn],
        "quantized": {q.kind: q.metrics.get(metric) for q in attack.quantization},
        "codes_changed": {q.kind: q.codes_changed_fraction for q in attack.quantization},
    }


def compute_record(compute: dict | None) -> dict:
    from hf_unlearn.callbacks import passes

    if not compute:
        return {}
    phases = [compute.get(p) or {} for p in ("fo", "zo")]
    keys = ("steps", "forwards", "reference_forwards", "backwards")
    total = {k: sum(int(c.get(k, 0)) for c in phases) for k in keys}
    return {**total, "passes": sum(passes(c) for c in phases), "zo_steps": int(phases[1].get("steps", 0))}


def cell_record(cell: Cell, report, metric: str) -> dict:
    attack = report.attacks[-1]
    return {
        "optimizer": cell.optimizer.spec, "label": cell.optimizer.label, "grade": cell.optimizer.grade,
        "seed": cell.seed, "output_dir": str(cell.output_dir), "global_step": attack.global_step,
        **attack_record(attack, metric), "compute": compute_record(report.compute),
    }  # fmt: skip


# ---- statistics and columns --------------------------------------------------------------------------------------


def mean_std(values: Sequence[float | None]) -> dict:
    """Mean and sample standard deviation (n - 1) of the available values; std is None below two values."""
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(present) if len(present) > 1 else None
    return {"mean": statistics.fmean(present), "std": std, "n": len(present)}


def columns(cells: list[dict], metric: str) -> list[tuple[str, str]]:
    """(key, header) of the paper-shaped table, in order."""
    first = cells[0]
    names = [n for n in (*FORGET_METRICS, QUALITY) if first["unlearned"].get(n) is not None]
    cols = [(f"unlearned/{n}", n) for n in names]
    if UTILITY in first["unlearned"]:
        cols.append((f"unlearned/{UTILITY}", UTILITY))
    last = first["relearn"][-1]["step"]
    if last:
        cols.append(("relearned", f"{metric} after relearn {last}"))
    cols += [(f"quantized/{k}", f"{metric} after {k}") for k in first["quantized"]]
    cols += [(f"recovered/{k}", f"share of forgetting undone by {k}") for k in first["quantized"]]
    cols += [(f"codes_changed/{k}", f"{k} codes changed") for k in first["codes_changed"] if k in FOUR_BIT]
    cols += [("compute/forwards", "forwards"), ("compute/backwards", "backwards")]
    return cols


def cell_value(cell: dict, key: str, original: dict | None, metric: str) -> float | None:
    group, _, name = key.partition("/")
    if group == "unlearned":
        return cell["unlearned"].get(name)
    if group == "relearned":
        return cell["relearn"][-1]["value"]
    if group == "quantized":
        return cell["quantized"].get(name)
    if group == "recovered":  # (quantized - unlearned) / (original - unlearned): 0 = nothing undone, 1 = all
        before = (original or {}).get(metric)
        after, quantized = cell["unlearned"].get(metric), cell["quantized"].get(name)
        if None in (before, after, quantized) or abs(before - after) < MIN_FORGETTING:
            return None
        return (quantized - after) / (before - after)
    if group == "codes_changed":
        return cell["codes_changed"].get(name)
    if group == "compute":
        return cell["compute"].get(name)
    raise KeyError(key)


def summarise(cells: list[dict], cols, original: dict | None, metric: str) -> list[dict]:
    """One row per optimizer, in grade order: mean ± std over its seeds of every column."""
    rows = []
    for spec in dict.fromkeys(c["optimizer"] for c in sorted(cells, key=lambda c: (c["grade"], c["seed"]))):
        mine = [c for c in cells if c["optimizer"] == spec]
        stats = {key: mean_std([cell_value(c, key, original, metric) for c in mine]) for key, _ in cols}
        seeds = [c["seed"] for c in mine]
        rows.append({"optimizer": spec, "label": mine[0]["label"], "grade": mine[0]["grade"], "seeds": seeds,
                     "columns": stats})  # fmt: skip
    return rows


def fmt_stat(stat: dict | None, digits: int = 3, count: bool = False) -> str:
    """``mean ± std``; a count (forwards, say) that every seed shares is printed as a plain integer."""
    if not stat or stat["mean"] is None:
        return ""
    mean = stat["mean"]
    if count and float(mean).is_integer() and not stat["std"]:
        return f"{int(mean)}"
    text = f"{mean:.{digits}f}"
    return text if stat["std"] is None else f"{text} ± {stat['std']:.{digits}f}"


# ---- utility-matched ---------------------------------------------------------------------------------------------


def utility_target(cells: list[dict], given: float | None) -> tuple[float | None, str]:
    if given is not None:
        return given, "given (--utility_target)"
    for spec in ("adamw", *dict.fromkeys(c["optimizer"] for c in sorted(cells, key=lambda c: c["grade"]))):
        utilities = [c["unlearned"].get(UTILITY) for c in cells if c["optimizer"] == spec]
        stat = mean_std(utilities)
        if stat["mean"] is not None:
            label = next(c["label"] for c in cells if c["optimizer"] == spec)
            return stat["mean"], f"{label}'s mean final {UTILITY}"
    return None, f"no run reports {UTILITY}"


def utility_matched(cell_objs, cells, evaluator, base, settings, metric) -> dict:
    """Each run at its checkpoint whose model utility is closest to the target, attacked there."""
    from hf_unlearn.report import AttackRun, UnlearnReport

    target, source = utility_target(cells, settings.utility_target)
    out = {"target": target, "target_source": source, "checkpoints_per_run": settings.checkpoints, "runs": []}
    if target is None:
        return out
    robustness = dataclasses.replace(base.robustness, quantization=quantization_kinds(base.robustness.quantization))
    for cell, record in zip(cell_objs, cells):
        report = UnlearnReport.load(cell.output_dir)
        points = checkpoint_metrics(cell, report, evaluator)
        usable = [p for p in points if p["metrics"].get(UTILITY) is not None]
        if not usable:
            continue
        best = min(usable, key=lambda p: (abs(p["metrics"][UTILITY] - target), -p["step"]))
        if best["step"] == record["global_step"]:
            attack = report.attacks[-1]
        else:
            results = matched_attack(cell, best["step"], evaluator, robustness)
            attack = AttackRun.from_robustness(results, f"step {best['step']}", best["step"])
        out["runs"].append({
            "optimizer": record["optimizer"], "label": record["label"], "grade": record["grade"],
            "seed": record["seed"], "step": best["step"], "final_step": record["global_step"],
            "utility": best["metrics"][UTILITY], "distance": best["metrics"][UTILITY] - target,
            "checkpoint_utilities": [{"step": p["step"], "utility": p["metrics"].get(UTILITY)} for p in points],
            **attack_record(attack, metric),
        })  # fmt: skip
    return out


# ---- controls ----------------------------------------------------------------------------------------------------


def control_rows(settings, base, cell_objs, evaluator, kinds) -> list[dict]:
    """The original model, the retain model (when the recipe names one) and noise matched to each ZO/hybrid run."""
    import json

    from hf_unlearn.attacks.quantize import codes_changed_fraction

    folder = Path(settings.output_dir) / CONTROLS_DIR
    rows = []

    def cached(name: str, compute) -> dict:
        path = folder / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        row = compute()
        atomic_write_json(path, row)
        return row

    original_path = base.script.model_name_or_path
    rows.append(cached("original", lambda: {"name": "original", "kind": "original", "path": original_path,
                                              "metrics": evaluator.evaluate(evaluator.original)}))  # fmt: skip
    if base.script.retain_model:
        path = base.script.retain_model
        rows.append(cached("retain", lambda: {"name": "retain", "kind": "retain", "path": path,
                                              "metrics": evaluator.evaluate(load_model(Path(path)))}))  # fmt: skip
    for cell in cell_objs:
        if not cell.optimizer.zeroth_order:
            continue
        name = f"noise_{cell.optimizer.slug}_seed{cell.seed}"

        def noise(cell=cell, name=name) -> dict:
            path = noise_control(original_path, cell.output_dir, folder / name, seed=cell.seed)
            model = load_model(path)
            codes = {k: codes_changed_fraction(evaluator.original, model, k)["fraction"] for k in kinds}
            shutil.rmtree(path)  # the numbers are kept; the weights are re-made from the seed on demand
            return {"name": f"noise ~ {cell.optimizer.label}", "kind": "noise", "of": cell.optimizer.spec,
                    "seed": cell.seed, "metrics": evaluator.evaluate(model), "codes_changed": codes}  # fmt: skip

        rows.append(cached(name, noise))
    return rows


def control_summary(rows: list[dict], cols) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["name"], []).append(row)
    out = []
    for name, members in groups.items():
        stats = {}
        for key, _ in cols:
            group, _, metric = key.partition("/")
            if group == "unlearned":
                stats[key] = mean_std([m["metrics"].get(metric) for m in members])
            elif group == "codes_changed" and members[0].get("codes_changed"):
                stats[key] = mean_std([m["codes_changed"].get(metric) for m in members])
        out.append({"name": name, "kind": members[0]["kind"], "n": len(members), "columns": stats})
    return out


# ---- the sweep ---------------------------------------------------------------------------------------------------


def plan(settings: SweepSettings, base) -> list[Cell]:
    specs = [OptimizerSpec.parse(s) for s in settings.optimizers]
    if len({s.spec for s in specs}) != len(specs):
        raise ValueError(f"--optimizers {' '.join(settings.optimizers)}: an optimizer is listed twice")
    root = Path(settings.output_dir)
    return [Cell(spec, seed, root / f"{spec.slug}_seed{seed}") for spec in specs for seed in settings.seeds]


def select(cells: list[Cell], only: list[str]) -> list[Cell]:
    by_name = {c.name: c for c in cells}
    unknown = [name for name in only if name not in by_name]
    if unknown:
        raise ValueError(f"--only {' '.join(unknown)}: not a cell of this sweep; cells: {', '.join(by_name)}")
    return [by_name[name] for name in only]


def run_sweep(settings: SweepSettings, on_cell=print) -> dict | None:
    """Run every unfinished cell, then (unless `only` is given) the controls, the comparison and the report.

    Returns the report (the ``sweep_report.json`` document), or None when only some cells were run.
    """
    from accelerate import PartialState

    from hf_unlearn.recipes import parse_recipe
    from hf_unlearn.report import UnlearnReport

    if PartialState().num_processes > 1 and not settings.only:
        # The report's evaluations run on one process; the others would wait in the benchmark's gather forever.
        raise ValueError(
            "A multi-process launch runs single cells: add --only OPTIMIZER:SEED, then write the report with the same "
            "command without --only in one process."
        )
    specs = [OptimizerSpec.parse(s) for s in settings.optimizers]
    if not specs:
        raise ValueError("No optimizers: pass --optimizers adamw adazo ... or give the recipe a sweep: section")
    # The recipe as its first cell runs it: keys that only hold for the recipe's own optimizer (a hybrid schedule
    # that max_steps must fit, say) are not checked for cells that do not use it.
    base = parse_recipe(settings.recipe, [*settings.overrides, *specs[0].flags()])
    settings.seeds = seeds_from(settings.seeds, base.config.seed)
    if settings.output_dir is None:
        settings.output_dir = base.config.output_dir
    if settings.compute_budget is not None and settings.compute_budget < 1:
        raise ValueError(f"--compute_budget {settings.compute_budget}: must be >= 1 model pass")
    if settings.checkpoints < 0:
        raise ValueError(f"--checkpoints {settings.checkpoints}: must be >= 0")
    cells = plan(settings, base)
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
        run_cell(settings, cell, base)
    if settings.only:
        return None
    reports = [UnlearnReport.load(c.output_dir) for c in cells]
    metric = pick_forget_metric(reports[0].attacks[-1].unlearned)
    if metric is None:
        raise ValueError("The sweep's benchmark reports no forget metric to compare the optimizers with.")
    records = [cell_record(c, r, metric) for c, r in zip(cells, reports)]
    evaluator = Evaluator(base)
    kinds = [k for k in records[0]["codes_changed"] if k in FOUR_BIT]
    controls = control_rows(settings, base, cells, evaluator, kinds) if settings.controls else []
    original = next((r["metrics"] for r in controls if r["kind"] == "original"), None)
    cols = columns(records, metric)
    report = {
        "schema_version": SWEEP_SCHEMA_VERSION,
        "kind": "hf_unlearn.sweep",
        "title": settings.title,
        "output_dir": str(settings.output_dir),
        "recipe": str(settings.recipe),
        "overrides": list(settings.overrides),
        "method": base.script.method,
        "benchmark": reports[0].benchmark,
        "base_model": base.script.model_name_or_path,
        "forget_metric": metric,
        "seeds": list(settings.seeds),
        "optimizers": [
            {"spec": c.optimizer.spec, "label": c.optimizer.label, "grade": c.optimizer.grade}
            for c in cells
            if c.seed == settings.seeds[0]
        ],  # fmt: skip
        "compute_budget": settings.compute_budget,
        "columns": [{"key": k, "header": h} for k, h in cols],
        "cells": records,
        "summary": summarise(records, cols, original, metric),
        "controls": controls,
        "controls_summary": control_summary(controls, cols),
        "utility_matched": utility_matched(cells, records, evaluator, base, settings, metric),
    }
    write_report(report, Path(settings.output_dir))
    return report


# ---- the report files --------------------------------------------------------------------------------------------


def main_table(report: dict) -> str:
    cols = [(c["key"], c["header"]) for c in report["columns"]]
    header = ["optimizer", "seeds", *(h for _, h in cols)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["summary"]:
        cells = [row["label"], str(len(row["seeds"]))]
        cells += [fmt_stat(row["columns"][k], count=k.startswith("compute/")) for k, _ in cols]
        lines.append("| " + " | ".join(cells) + " |")
    for row in report["controls_summary"]:
        cells = [f"*{row['name']}* (control)", str(row["n"]), *(fmt_stat(row["columns"].get(k)) for k, _ in cols)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def matched_table(report: dict) -> str:
    matched, metric = report["utility_matched"], report["forget_metric"]
    if matched["target"] is None or not matched["runs"]:
        return f"Not available: {matched['target_source']}."
    runs = matched["runs"]
    kinds = list(runs[0]["quantized"])
    last = runs[0]["relearn"][-1]["step"]
    header = ["optimizer", "seeds", "checkpoint step (of final)", UTILITY, "distance to target", metric,
              f"{metric} after relearn {last}", *(f"{metric} after {k}" for k in kinds)]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for spec in dict.fromkeys(r["optimizer"] for r in sorted(runs, key=lambda r: (r["grade"], r["seed"]))):
        mine = [r for r in runs if r["optimizer"] == spec]
        steps = ", ".join(f"{r['step']}/{r['final_step']}" for r in mine)
        cells = [mine[0]["label"], str(len(mine)), steps, fmt_stat(mean_std([r["utility"] for r in mine])),
                 fmt_stat(mean_std([r["distance"] for r in mine])),
                 fmt_stat(mean_std([r["unlearned"].get(metric) for r in mine])),
                 fmt_stat(mean_std([r["relearn"][-1]["value"] for r in mine])),
                 *(fmt_stat(mean_std([r["quantized"].get(k) for r in mine])) for k in kinds)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"Target {UTILITY} {matched['target']:.4f} ({matched['target_source']}); each run is taken at the saved "
            f"checkpoint ({matched['checkpoints_per_run']} per run, plus the final model) closest to it. "
            "Distance = matched utility - target.")  # fmt: skip
    return "\n".join(lines) + "\n\n" + note


TABLE_NOTE = (
    "Rows run from the highest optimizer grade (Sophia) to the lowest (zeroth order, hybrid). *Share of forgetting "
    "undone* = (metric after quantization - unlearned) / (original - unlearned): 0 means the attack restored nothing, "
    "1 all of it; it is left empty where unlearning forgot less than {min_forgetting} of the metric. Quantization can "
    "only restore knowledge where the 4-bit codes snap back to the original model's, so read it next to *codes "
    "changed*. Forwards and backwards are per process, from each run's compute accounting. Controls are evaluated "
    "only (not attacked); a noise control adds Gaussian noise to the original weights with the norm of the run's "
    "change, tensor by tensor."
)


def write_report(report: dict, out: Path) -> list[Path]:
    written = [atomic_write_json(out / SWEEP_REPORT_FILE, report)]
    plots = {RELEARN_PLOT: relearning_figure, GRADE_PLOT: grade_figure, TRADEOFF_PLOT: tradeoff_figure}
    made = []
    for name, make in plots.items():
        figure = make(report)
        if figure is not None:
            written.append(atomic_write_bytes(out / name, _png(figure)))
            made.append(name)
    written.append(atomic_write_text(out / SWEEP_MARKDOWN_FILE, sweep_markdown(report, made)))
    return written


def sweep_markdown(report: dict, plots: Sequence[str] = ()) -> str:
    metric = report["forget_metric"]
    lines = [f"# {report['title']}", ""]
    lines += [f"- recipe: `{report['recipe']}`" + (f" with `{' '.join(report['overrides'])}`" if report["overrides"]
                                                   else ""),
              f"- method: {report['method']}; benchmark: {report['benchmark']}; base model: `{report['base_model']}`",
              f"- seeds: {', '.join(map(str, report['seeds']))}; cells are mean ± sample standard deviation over "
              "seeds (n - 1; no ± with one seed)",
              f"- forget metric followed by the attacks: `{metric}`"]  # fmt: skip
    if report["compute_budget"]:
        lines.append(f"- compute-matched: every run stopped at {report['compute_budget']} model passes")
    lines += ["", "## Optimizers in grade order", "", main_table(report), ""]
    lines += [TABLE_NOTE.format(min_forgetting=MIN_FORGETTING), ""]
    lines += ["## Utility-matched", "", matched_table(report), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    return "\n".join(lines)


# ---- plots (matplotlib object API, Agg canvas) -------------------------------------------------------------------


def _png(figure) -> bytes:
    from hf_unlearn.report_render import _png as png

    return png(figure)


def _figure(width: float = 7.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, 4))
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _nan(value):
    return math.nan if value is None else value


def _control_lines(axes, report, metric, orientation="h"):
    for row in report["controls"]:
        if row["kind"] in ("original", "retain") and row["metrics"].get(metric) is not None:
            style = "--" if row["kind"] == "original" else ":"
            value = row["metrics"][metric]
            line = axes.axhline if orientation == "h" else axes.axvline
            line(value, color="gray", linestyle=style, label=f"{row['name']} model")


def relearning_figure(report: dict):
    """The forget metric along relearning (step 0 = unlearned), mean over seeds with a ±std band per optimizer."""
    metric = report["forget_metric"]
    if len(report["cells"][0]["relearn"]) < 2:
        return None
    figure, axes = _figure()
    for row in report["summary"]:
        mine = [c for c in report["cells"] if c["optimizer"] == row["optimizer"]]
        steps = [p["step"] for p in mine[0]["relearn"]]
        stats = [mean_std([c["relearn"][i]["value"] for c in mine]) for i in range(len(steps))]
        means = [_nan(s["mean"]) for s in stats]
        (line,) = axes.plot(steps, means, marker="o", label=row["label"])
        if len(mine) > 1:
            low = [m - (s["std"] or 0) for m, s in zip(means, stats)]
            high = [m + (s["std"] or 0) for m, s in zip(means, stats)]
            axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    _control_lines(axes, report, metric)
    axes.set_xlabel("relearning steps")
    axes.set_ylabel(metric)
    axes.set_title("Relearning attack (mean ± std over seeds)")
    axes.legend(fontsize="small")
    return figure


def grade_figure(report: dict):
    """The forget metric after the largest relearning budget against the optimizer grade; one dot per seed."""
    metric = report["forget_metric"]
    figure, axes = _figure()
    key = "relearned" if len(report["cells"][0]["relearn"]) > 1 else f"unlearned/{metric}"
    budget = report["cells"][0]["relearn"][-1]["step"]
    for x, row in enumerate(report["summary"]):
        mine = [c for c in report["cells"] if c["optimizer"] == row["optimizer"]]
        values = [c["relearn"][-1]["value"] if key == "relearned" else c["unlearned"].get(metric) for c in mine]
        first = x == 0
        axes.scatter([x] * len(values), [_nan(v) for v in values], color="#4c72b0", alpha=0.4, s=18,
                     label="one seed" if first else None)  # fmt: skip
        stat = row["columns"][key]
        if stat["mean"] is not None:
            axes.errorbar([x], [stat["mean"]], yerr=[stat["std"] or 0], fmt="o", color="#c44e52", capsize=4,
                          label="mean ± std" if first else None)  # fmt: skip
    _control_lines(axes, report, metric)
    axes.set_xticks(range(len(report["summary"])), [r["label"] for r in report["summary"]], rotation=20)
    axes.set_xlabel("optimizer, from the highest grade to the lowest")
    axes.set_ylabel(f"{metric} after relearning {budget} steps" if key == "relearned" else metric)
    axes.set_title("Forget metric after relearning vs optimizer grade (dots: seeds; bars: mean ± std)")
    axes.legend(fontsize="small")
    return figure


def tradeoff_figure(report: dict):
    """Forget quality (or the forget metric) against model utility: one point per run, controls marked."""
    cells = report["cells"]
    if all(c["unlearned"].get(UTILITY) is None for c in cells):
        return None
    y_metric = QUALITY if any(c["unlearned"].get(QUALITY) is not None for c in cells) else report["forget_metric"]
    figure, axes = _figure()
    for row in report["summary"]:
        mine = [c for c in cells if c["optimizer"] == row["optimizer"]]
        axes.scatter([_nan(c["unlearned"].get(UTILITY)) for c in mine],
                     [_nan(c["unlearned"].get(y_metric)) for c in mine], label=row["label"], s=28)  # fmt: skip
    markers = {"original": "*", "retain": "P", "noise": "x"}
    shown = set()
    for row in report["controls"]:
        label = None if row["name"] in shown else f"{row['name']} (control)"
        shown.add(row["name"])
        axes.scatter([_nan(row["metrics"].get(UTILITY))], [_nan(row["metrics"].get(y_metric))], color="black",
                     marker=markers[row["kind"]], s=60, label=label)  # fmt: skip
    if y_metric == QUALITY:
        axes.set_yscale("log")
    axes.set_xlabel(UTILITY)
    axes.set_ylabel(y_metric)
    axes.set_title("Forgetting vs utility, one point per run")
    axes.legend(fontsize="small")
    return figure
