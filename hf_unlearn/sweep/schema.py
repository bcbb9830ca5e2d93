"""`SweepReport`: what a sweep measured, typed; it reads and writes ``sweep_report.json`` (schema: docs/sweep.md).

Every record is a dataclass whose fields are the JSON keys, in the JSON's order, so the document is
``dataclasses.asdict`` of the report (control rows leave out the keys their kind does not have).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_unlearn.errors import UserInputError
from hf_unlearn.io import atomic_write_json, read_json


SWEEP_SCHEMA_VERSION = 1
SWEEP_KIND = "hf_unlearn.sweep"
SWEEP_REPORT_FILE = "sweep_report.json"


@dataclass
class Stat:
    """Mean and sample standard deviation (n - 1) over the available values; std is None below two values."""

    mean: float | None
    std: float | None
    n: int


@dataclass
class Column:
    """One column of the table: ``unlearned/<metric>``, ``relearned``, ``quantized/<kind>``, ``recovered/<kind>``,
    ``codes_changed/<kind>``, ``compute/forwards`` or ``compute/backwards``."""

    key: str
    header: str


@dataclass
class OptimizerRow:
    """One optimizer as given (``qadam:4``), its label and its grade (lower = higher grade)."""

    spec: str
    label: str
    grade: float


@dataclass
class RelearnValue:
    """The forget metric after ``step`` relearning steps (step 0: no attack)."""

    step: int
    value: float | None


@dataclass
class CellRecord:
    """One run (optimizer, seed): its final model's metrics and attacks, and its compute counts."""

    optimizer: str
    label: str
    grade: float
    seed: int
    output_dir: str
    global_step: int | None
    unlearned: dict[str, float | None]
    relearn: list[RelearnValue]
    quantized: dict[str, float | None]
    codes_changed: dict[str, float | None]
    compute: dict[str, int]  # steps, forwards, reference_forwards, backwards, passes, zo_steps; {} when not counted


@dataclass
class SummaryRow:
    """One optimizer, in grade order: mean ± std over its seeds of every column."""

    optimizer: str
    label: str
    grade: float
    seeds: list[int]
    columns: dict[str, Stat]


@dataclass
class ControlRow:
    """A model evaluated for comparison, not attacked: ``original``, ``retain`` or ``noise`` (matched to a run).

    ``path`` is set for original and retain; ``of``, ``seed`` and ``codes_changed`` for noise (the JSON leaves out
    the keys a kind does not have).
    """

    name: str
    kind: str
    path: str | None = None
    of: str | None = None
    seed: int | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    codes_changed: dict[str, float | None] | None = None

    OPTIONAL = ("path", "of", "seed", "codes_changed")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: v for k, v in data.items() if not (k in self.OPTIONAL and v is None)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ControlRow:
        return cls(**data)


@dataclass
class ControlSummary:
    """The controls of one name (``noise ~ AdaZO`` over seeds), as a summary row."""

    name: str
    kind: str
    n: int
    columns: dict[str, Stat]


@dataclass
class MatchedRun:
    """One run at its checkpoint whose model utility is closest to the target, attacked there."""

    optimizer: str
    label: str
    grade: float
    seed: int
    step: int
    final_step: int | None
    utility: float
    distance: float
    checkpoint_utilities: list[dict[str, Any]]  # [{step, utility}]
    unlearned: dict[str, float | None]
    relearn: list[RelearnValue]
    quantized: dict[str, float | None]
    codes_changed: dict[str, float | None]


@dataclass
class UtilityMatched:
    """The utility-matched comparison: the target, where it came from, and each run's match."""

    target: float | None
    target_source: str
    checkpoints_per_run: int
    runs: list[MatchedRun] = field(default_factory=list)


@dataclass
class SweepReport:
    """What a sweep measured; see docs/sweep.md for every field."""

    title: str
    output_dir: str
    recipe: str
    overrides: list[str]
    method: str | None
    benchmark: str | None
    base_model: str | None
    forget_metric: str
    seeds: list[int]
    optimizers: list[OptimizerRow]
    compute_budget: int | None
    columns: list[Column]
    cells: list[CellRecord]
    summary: list[SummaryRow]
    controls: list[ControlRow]
    controls_summary: list[ControlSummary]
    utility_matched: UtilityMatched
    schema_version: int = SWEEP_SCHEMA_VERSION
    kind: str = SWEEP_KIND

    def column_pairs(self) -> list[tuple[str, str]]:
        return [(c.key, c.header) for c in self.columns]

    def cells_of(self, optimizer: str) -> list[CellRecord]:
        return [c for c in self.cells if c.optimizer == optimizer]

    # ---- JSON --------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = {"schema_version": self.schema_version, "kind": self.kind}
        for f in dataclasses.fields(self):
            if f.name not in data:
                value = getattr(self, f.name)
                data[f.name] = [c.to_dict() for c in value] if f.name == "controls" else _plain(value)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepReport:
        version, kind = data.get("schema_version"), data.get("kind")
        if kind != SWEEP_KIND or not isinstance(version, int):
            raise ValueError(f"Not a sweep report: its kind is {kind!r}, not {SWEEP_KIND!r}.")
        if version > SWEEP_SCHEMA_VERSION:
            raise ValueError(
                f"This sweep report has schema_version {version}; this hf_unlearn reads up to "
                f"{SWEEP_SCHEMA_VERSION}: upgrade it."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown sweep report field(s) {', '.join(unknown)} for schema_version {version}.")
        values = dict(data)
        values["optimizers"] = [OptimizerRow(**o) for o in data["optimizers"]]
        values["columns"] = [Column(**c) for c in data["columns"]]
        values["cells"] = [cell_from_dict(c) for c in data["cells"]]
        values["summary"] = [SummaryRow(**{**r, "columns": stats_from_dict(r["columns"])}) for r in data["summary"]]
        values["controls"] = [ControlRow.from_dict(c) for c in data["controls"]]
        values["controls_summary"] = [
            ControlSummary(**{**r, "columns": stats_from_dict(r["columns"])}) for r in data["controls_summary"]
        ]
        matched = data["utility_matched"]
        runs = [MatchedRun(**{**r, "relearn": [RelearnValue(**p) for p in r["relearn"]]}) for r in matched["runs"]]
        values["utility_matched"] = UtilityMatched(**{**matched, "runs": runs})
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> SweepReport:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, output_dir: str | Path) -> SweepReport:
        """The report in ``output_dir/sweep_report.json``."""
        path = Path(output_dir) / SWEEP_REPORT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"No {SWEEP_REPORT_FILE} in {output_dir}: `hf-unlearn sweep` writes one there.")
        fix = "run the sweep again without --only to write it"
        data = read_json(path, "The sweep report", fix)
        if not isinstance(data, dict):
            raise UserInputError(f"The sweep report {path} is not a JSON object; {fix}.")
        return cls.from_dict(data)

    def save_json(self, output_dir: str | Path) -> Path:
        return atomic_write_json(Path(output_dir) / SWEEP_REPORT_FILE, self.to_dict())


def cell_from_dict(data: Mapping[str, Any]) -> CellRecord:
    return CellRecord(**{**data, "relearn": [RelearnValue(**p) for p in data["relearn"]]})


def stats_from_dict(columns: Mapping[str, Mapping[str, Any]]) -> dict[str, Stat]:
    return {key: Stat(**stat) for key, stat in columns.items()}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
