"""Planning and resuming a sweep: the optimizers it compares, its cells (optimizer, seed), their flags, and which
of them a killed sweep already finished."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hf_unlearn.optim.registry import Family, OptimizerEntry, optimizer_entry, optimizer_names


FOUR_BIT, EIGHT_BIT = ("fp4", "nf4", "rtn4"), ("int8", "rtn8")


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer of a sweep: ``adamw``, ``qadam:4`` (Q(m;4): `qadam` with ``qadam_bits=4``), ``hybrid``, ...

    Its label and grade (the row's name and place in the table) come from the optimizer registry.
    """

    spec: str
    optimizer: str
    bits: int | None = None  # the value of the entry's variant field (qadam's bits)

    @classmethod
    def parse(cls, text: str) -> OptimizerSpec:
        name, _, value = str(text).partition(":")
        if name not in optimizer_names():
            raise ValueError(f"--optimizers: {text!r} is unknown; choose from {', '.join(optimizer_names())}")
        entry = optimizer_entry(name)
        variant = entry.variant
        if value and variant is None:
            with_values = " and ".join(n for n in optimizer_names() if optimizer_entry(n).variant)
            raise ValueError(f"--optimizers: {text!r}: {name} takes no :VALUE; only {with_values} takes one")
        if variant is not None:
            low, high, example = variant.values[0], variant.values[-1], variant.values[len(variant.values) // 2]
            if not value:
                raise ValueError(
                    f"--optimizers: give {name} its {variant.metavar.lower()}, e.g. {name}:{example} "
                    f"({entry.label_for(example)}), {low}..{high}"
                )
            if not value.isdigit() or int(value) not in variant.values:
                what = f"the {variant.metavar.lower()} of {name}:{variant.metavar}"
                raise ValueError(f"--optimizers: {text!r}: {what} must be {low}..{high}")
        return cls(str(text), name, int(value) if value else None)

    @property
    def entry(self) -> OptimizerEntry:
        return optimizer_entry(self.optimizer)

    @property
    def label(self) -> str:
        return self.entry.label_for(self.bits)

    @property
    def grade(self) -> float:
        """Position in the grade order (lower: higher grade); Q(m;8) sits right after AdamW, Q(m;1) before signAdam."""
        return self.entry.grade_for(self.bits)

    @property
    def zeroth_order(self) -> bool:
        """Whether the run takes ZO steps (the sweep adds a matched-noise control for it)."""
        return self.entry.family in (Family.ZEROTH_ORDER, Family.HYBRID)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_]", "", self.spec.replace(":", ""))

    def flags(self) -> list[str]:
        variant = self.entry.variant
        value = [f"--{variant.field}", str(self.bits)] if variant and self.bits is not None else []
        return ["--optimizer", self.optimizer, *value]


def optimizers_help() -> str:
    """The optimizers a sweep takes, in grade order, for ``--optimizers``' help."""
    names = sorted(optimizer_names(), key=lambda n: optimizer_entry(n).grade)
    shown = [f"{n}:{optimizer_entry(n).variant.metavar}" if optimizer_entry(n).variant else n for n in names]
    return "Optimizers to compare (rows follow this grade order): " + ", ".join(shown) + "."


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


def parse_specs(optimizers: Sequence[str]) -> list[OptimizerSpec]:
    specs = [OptimizerSpec.parse(s) for s in optimizers]
    if len({s.spec for s in specs}) != len(specs):
        raise ValueError(f"--optimizers {' '.join(optimizers)}: an optimizer is listed twice; list each once")
    return specs


def plan(settings: SweepSettings) -> list[Cell]:
    """The cells, optimizer by optimizer, seed by seed; each in ``<output_dir>/<optimizer>_seed<seed>``."""
    root = Path(settings.output_dir)
    specs = parse_specs(settings.optimizers)
    return [Cell(spec, seed, root / f"{spec.slug}_seed{seed}") for spec in specs for seed in settings.seeds]


def select(cells: list[Cell], only: list[str]) -> list[Cell]:
    by_name = {c.name: c for c in cells}
    unknown = [name for name in only if name not in by_name]
    if unknown:
        raise ValueError(f"--only {' '.join(unknown)}: not a cell of this sweep; cells: {', '.join(by_name)}")
    return [by_name[name] for name in only]


def quantization_kinds(kinds: Sequence[str]) -> list[str]:
    """The recipe's quantization kinds, with a 4-bit (rtn4) and an 8-bit (rtn8) one added where missing."""
    kinds = list(kinds)
    if not any(k in FOUR_BIT for k in kinds):
        kinds.append("rtn4")
    if not any(k in EIGHT_BIT for k in kinds):
        kinds.append("rtn8")
    return kinds


def cell_overrides(settings: SweepSettings, cell: Cell, base) -> list[str]:
    """The recipe keys of one cell: the sweep's overrides, its optimizer and seed, its folder, the attacks."""
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
    from hf_unlearn.report import UnlearnReport
    from hf_unlearn.report_schema import AFTER, REPORT_FILE

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
