"""The report's schema: what a run measured, as dataclasses with their JSON form (no files, no rendering).

One schema for every command (run, demo, eval, attack): metrics before and after training and after each attack,
the resolved recipe, versions, seed, wall times and the forward/backward passes of each optimizer phase. The schema
is described in docs/report.md; its version is :data:`SCHEMA_VERSION`. :mod:`hf_unlearn.report_render` renders it
(Markdown, plots) and :mod:`hf_unlearn.report` writes and reads its files; neither is imported from here.

A metric that could not be computed is recorded as ``None`` with its reason in ``unavailable`` (the convention of
``BenchmarkResult``), never as a number.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import math
import platform
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hf_unlearn.io import json_safe
from hf_unlearn.optim.registry import Family, optimizer_family


SCHEMA_VERSION = 1
# The files a report is written as (`UnlearnReport.save`).
REPORT_FILE = "unlearn_report.json"
MARKDOWN_FILE = "unlearn_report.md"
RECIPE_FILE = "unlearn_recipe.yaml"
LOSS_PLOT = "unlearn_losses.png"
RELEARN_PLOT = "unlearn_relearning.png"
EVAL_PLOT = "unlearn_eval_curve.png"
# The labels of the evaluations before and after training in `evaluations`.
BEFORE, AFTER = "before_training", "after_training"
NO_VALUE = "the evaluator returned no value"
VERSIONED_PACKAGES = ("torch", "transformers", "trl", "accelerate", "huggingface_hub", "datasets", "peft", "deepspeed")
# Never written into a report, a card or saved args: the Hub token (TrainingArguments.to_dict already masks it).
SECRET_FIELDS = ("hub_token",)
LOGGED_KEYS = (
    "epoch", "loss", "loss/forget", "loss/retain", "optim/phase", "learning_rate", "grad_norm", "zo/projected_grad",
    "pdu/lambda",
)  # fmt: skip


@dataclass
class Metrics:
    """One model's metrics on one benchmark.

    Attributes:
        values: metric name -> value; ``None`` when unavailable.
        unavailable: metric name -> one-line reason (every ``None`` value has one).
        benchmark: the benchmark's registry name (``"tofu"``, ``"muse-news"``, ...).
        settings: what the numbers depend on (splits, generation length, ...).
        num_examples: split name -> number of examples evaluated.
        runtime_s: wall-clock seconds of the evaluation.
    """

    values: dict[str, float | None]
    unavailable: dict[str, str] = field(default_factory=dict)
    benchmark: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    num_examples: dict[str, int] = field(default_factory=dict)
    runtime_s: float | None = None

    def __post_init__(self):
        values: dict[str, float | None] = {}
        unavailable = dict(self.unavailable)
        for name, value in self.values.items():
            if value is None:
                unavailable.setdefault(name, NO_VALUE)
                values[name] = None
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"metric {name!r} must be a number or None, got {type(value).__name__} {value!r}")
            if not math.isfinite(value):
                unavailable.setdefault(name, f"the evaluator returned {value}")
                values[name] = None
            else:
                values[name] = float(value)
        for name in unavailable:
            if values.get(name) is not None:
                raise ValueError(f"metric {name!r} has a value ({values[name]}) and an 'unavailable' reason")
            values.setdefault(name, None)
        self.values, self.unavailable = values, unavailable
        self.settings = json_safe(self.settings)

    @classmethod
    def from_result(cls, result) -> Metrics:
        """From a ``BenchmarkResult`` (its metrics, reasons, settings, sizes and runtime)."""
        return cls(
            values=dict(result.metrics), unavailable=dict(result.unavailable), benchmark=result.benchmark,
            settings=dict(result.config), num_examples=dict(result.num_examples), runtime_s=result.runtime_s,
        )  # fmt: skip

    @classmethod
    def coerce(cls, value, benchmark: str | None = None) -> Metrics:
        """A ``Metrics`` from a ``Metrics``, a ``BenchmarkResult`` or a plain ``{metric: value}`` dict."""
        if isinstance(value, Metrics):
            return value
        if hasattr(value, "metrics") and hasattr(value, "unavailable"):
            return cls.from_result(value)
        if isinstance(value, Mapping):  # a MetricValues carries its reasons
            return cls(values=dict(value), unavailable=dict(getattr(value, "unavailable", {})), benchmark=benchmark)
        raise TypeError(f"cannot read metrics from {type(value).__name__}")

    def get(self, name: str) -> float | None:
        return self.values.get(name)


@dataclass
class RelearnPoint:
    """Metrics after ``step`` relearning steps."""

    step: int
    metrics: Metrics


@dataclass
class QuantizationAttack:
    """Metrics of the model with its weights quantized (``kind``: fp4, nf4, int8, rtnN).

    ``codes_changed_fraction`` is the share of quantization codes unlearning changed (None with its reason in
    ``codes_changed_unavailable`` when the model before unlearning was not compared).
    """

    kind: str
    metrics: Metrics
    codes_changed_fraction: float | None = None
    codes_changed_unavailable: str | None = None

    def __post_init__(self):
        if self.codes_changed_fraction is None and self.codes_changed_unavailable is None:
            self.codes_changed_unavailable = "the model before unlearning was not compared (report_codes_changed)"


@dataclass
class AttackRun:
    """One round of robustness checks on one checkpoint (or, in a comparison, one model).

    Attributes:
        label: what was attacked, e.g. ``"step 40"`` or ``"NPO + hybrid"``.
        global_step: the training step of the checkpoint, if any.
        unlearned: the metrics before any attack.
        relearn: the relearning curve, in increasing steps.
        relearn_config: the relearning settings (lr, batch size, data size, seed, ...).
        relearn_losses: the relearning run's training loss per step.
        quantization: one entry per quantization kind.
        weights_sha256: hash of the attacked weights (they are verified unchanged afterwards).
        runtime_s: wall-clock seconds of the checks.
    """

    label: str
    unlearned: Metrics
    global_step: int | None = None
    relearn: list[RelearnPoint] = field(default_factory=list)
    relearn_config: dict[str, Any] = field(default_factory=dict)
    relearn_losses: list[float] = field(default_factory=list)
    quantization: list[QuantizationAttack] = field(default_factory=list)
    weights_sha256: str | None = None
    runtime_s: float | None = None

    @classmethod
    def from_robustness(
        cls, results: Mapping[str, Any], label: str, global_step: int | None = None, benchmark: str | None = None
    ) -> AttackRun:
        """From the dict `robustness_checks` returns (or one of the runs in ``robustness.json``)."""
        relearn = results.get("relearn") or {}
        return cls(
            label=label,
            global_step=global_step if global_step is not None else results.get("global_step"),
            unlearned=Metrics.coerce(results["unlearned"], benchmark),
            relearn=[
                RelearnPoint(int(p["step"]), Metrics.coerce(p["metrics"], benchmark)) for p in relearn.get("curve", [])
            ],
            relearn_config=json_safe(relearn.get("config", {})),
            relearn_losses=[float(x) for x in relearn.get("losses", [])],
            quantization=[
                QuantizationAttack(kind, Metrics.coerce(r["metrics"], benchmark), r.get("codes_changed_fraction"))
                for kind, r in (results.get("quantization") or {}).items()
            ],
            weights_sha256=results.get("weights_sha256"),
            runtime_s=results.get("runtime_s"),
        )


@dataclass
class ReportData:
    """What one run (or one comparison of models) measured; see docs/report.md for every field.

    The schema and its JSON form only: :class:`hf_unlearn.report.UnlearnReport` adds the files (save, load) and the
    rendering (Markdown, plots).
    """

    method: str | None = None
    optimizer: str | None = None
    base_model: str | None = None
    benchmark: str | None = None
    datasets: list[str] = field(default_factory=list)
    hub_model_id: str | None = None
    seed: int | None = None
    command: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    optimizer_schedule: dict[str, Any] = field(default_factory=dict)
    papers: list[dict[str, str | None]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=lambda: collect_versions())
    wall_time_s: dict[str, float] = field(default_factory=dict)
    evaluations: dict[str, Metrics] = field(default_factory=dict)
    attacks: list[AttackRun] = field(default_factory=list)
    compute: dict[str, Any] | None = None
    training: dict[str, float] = field(default_factory=dict)
    training_log: list[dict[str, float]] = field(default_factory=list)
    # In-run evaluations (eval_strategy): one {step, epoch, values} per evaluation, and the step metric_for_best_model
    # chose ({metric, greater_is_better, step, value, checkpoint, loaded_at_end}); see docs/report.md.
    evaluation_curve: list[dict[str, Any]] = field(default_factory=list)
    best_model: dict[str, Any] | None = None
    # Why training stopped early (the divergence guard: step, quantity, value, message); None for a complete run.
    stopped: dict[str, Any] | None = None
    # A few forget and retain questions with each model's greedy answer ({set, question, answer, generations:
    # {"before" | "after" | "relearned (N steps)": text}}); see hf_unlearn.answers.
    answers: list[dict[str, Any]] = field(default_factory=list)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        self.papers = paper_records(self.papers)
        # What a push publishes names no folder of this machine: the command and the data by their base names.
        self.command = public_text(self.command) if self.command else self.command
        self.datasets = [public_name(d) for d in self.datasets]

    # ---- filling it in -----------------------------------------------------------------------------------------

    def add_evaluation(self, label: str, result, benchmark: str | None = None) -> Metrics:
        """Record a model's metrics under ``label`` (``BEFORE``, ``AFTER`` or a model name in a comparison)."""
        metrics = Metrics.coerce(result, benchmark or self.benchmark)
        self.evaluations[label] = metrics
        return metrics

    def add_attacks(self, results: Mapping[str, Any], label: str | None = None, global_step: int | None = None):
        """Record one round of robustness checks (the dict `robustness_checks` returns)."""
        step = global_step if global_step is not None else results.get("global_step")
        label = label or (f"unlearned model at step {step}" if step is not None else "unlearned model")
        run = AttackRun.from_robustness(results, label, step, self.benchmark)
        self.attacks.append(run)
        return run

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the wall-clock seconds of the block to ``wall_time_s[name]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.wall_time_s[name] = self.wall_time_s.get(name, 0.0) + time.perf_counter() - start

    def record_training(self, trainer, train_output=None) -> None:
        """Method, paper, optimizer, seed, resolved config, losses, run time and compute counts from a trainer."""
        from hf_unlearn.compute import ComputeAccountingCallback

        args = trainer.args
        self.method = self.method or getattr(trainer, "_name", None)
        self.papers = self.papers or paper_records(getattr(trainer, "_paper", None))
        self.optimizer = self.optimizer or getattr(args, "optimizer", None)
        self.seed = args.seed
        self.config = {k: v for k, v in json_safe(args.to_dict()).items() if k not in SECRET_FIELDS}
        self.optimizer_schedule = optimizer_schedule(self.config)
        if self.base_model is None:
            model = trainer.accelerator.unwrap_model(trainer.model)
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            self.base_model = getattr(base.config, "_name_or_path", None) or None
        self.training_log = training_log(trainer.state.log_history)
        self.evaluation_curve = evaluation_curve(trainer.state.log_history)
        self.best_model = best_model_record(args, trainer.state, self.evaluation_curve)
        if train_output is not None:
            self.training = json_safe({"global_step": train_output.global_step, **train_output.metrics})
            if hasattr(trainer, "training_loss_total"):
                # Trainer's train_loss averages the steps of this train() call only; after a resume that is the
                # run's second half. The trainer's own sum is the whole run's (carried in the checkpoint).
                total = trainer.training_loss_total()
                self.training["train_loss"] = total / max(train_output.global_step, 1)
            if "train_runtime" in train_output.metrics:
                self.wall_time_s["train"] = float(train_output.metrics["train_runtime"])
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, ComputeAccountingCallback):
                self.compute = {**callback.to_dict(), "num_processes": trainer.accelerator.num_processes}

    # ---- JSON --------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return json_safe(dataclasses.asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReportData:
        version = data.get("schema_version")
        if version is None:
            raise ValueError("Not an unlearn report: it has no schema_version.")
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"This report has schema_version {version}; this hf_unlearn reads up to {SCHEMA_VERSION}: upgrade it."
            )
        data = dict(data)
        data["evaluations"] = {k: Metrics(**v) for k, v in data.get("evaluations", {}).items()}
        data["attacks"] = [_attack_from_dict(a) for a in data.get("attacks", [])]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown unlearn report field(s) {', '.join(unknown)} for schema_version {version}.")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ReportData:
        return cls.from_dict(json.loads(text))


def _attack_from_dict(data: Mapping[str, Any]) -> AttackRun:
    data = dict(data)
    data["unlearned"] = Metrics(**data["unlearned"])
    data["relearn"] = [RelearnPoint(p["step"], Metrics(**p["metrics"])) for p in data.get("relearn", [])]
    data["quantization"] = [
        QuantizationAttack(**{**q, "metrics": Metrics(**q["metrics"])}) for q in data.get("quantization", [])
    ]
    return AttackRun(**data)


# ---- helpers ---------------------------------------------------------------------------------------------------


def collect_versions() -> dict[str, str]:
    """hf_unlearn, Python and the versions of the installed dependencies (absent optional ones are left out)."""
    from hf_unlearn import __version__

    versions = {"hf_unlearn": __version__, "python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


_ARXIV_ID = re.compile(r"\b(\d{4}\.\d{4,5})(?:v\d+)?\b")


def paper_records(paper) -> list[dict[str, str | None]]:
    """Normalise a method's ``_paper``: a string (one or several citations separated by ';'), a dict or dataclass
    with ``title`` / ``arxiv_id`` / ``bibtex`` (and optionally ``citation``), or a list of those."""
    if not paper:
        return []
    if isinstance(paper, (list, tuple)):
        return [record for item in paper for record in paper_records(item)]
    if isinstance(paper, str):
        records = []
        for part in (p.strip() for p in paper.split(";")):
            if part:
                found = _ARXIV_ID.search(part)
                records.append({"title": None, "arxiv_id": found.group(1) if found else None, "bibtex": None,
                                "citation": part})  # fmt: skip
        return records
    from hf_unlearn.paper import Paper

    if isinstance(paper, Paper):
        return [{"title": paper.title, "arxiv_id": paper.arxiv, "bibtex": paper.bibtex(), "citation": paper.short()}]
    if dataclasses.is_dataclass(paper) and not isinstance(paper, type):
        paper = dataclasses.asdict(paper)
    if isinstance(paper, Mapping):
        record = {key: paper.get(key) for key in ("title", "arxiv_id", "bibtex", "citation")}
        if not any(record.values()):
            raise ValueError(f"a paper record needs a title, arxiv_id, bibtex or citation; got keys {sorted(paper)}")
        return [record]
    raise TypeError(f"_paper must be a string, a dict/dataclass (title, arxiv_id, bibtex) or a list; got {paper!r}")


def optimizer_schedule(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that define the optimizer and its schedule (all ZO and hybrid fields when they apply)."""
    keys = ["optimizer", "learning_rate", "lr_scheduler_type", "warmup_steps", "max_steps", "num_train_epochs",
            "per_device_train_batch_size", "gradient_accumulation_steps", "weight_decay", "max_grad_norm"]  # fmt: skip
    family = optimizer_family(config.get("optimizer"))
    if family in (Family.HYBRID, Family.ZEROTH_ORDER):
        keys += sorted(k for k in config if k.startswith("zo_"))
    if family is Family.HYBRID:
        keys += sorted(k for k in config if k.startswith("hybrid_"))
    return {k: config[k] for k in keys if k in config}


def training_log(log_history: list[Mapping[str, Any]]) -> list[dict[str, float]]:
    """The training entries of a Trainer's ``log_history`` (those with a ``loss``), numeric keys kept."""
    entries = []
    for log in log_history:
        if "loss" not in log or "step" not in log:
            continue
        entry = {"step": int(log["step"])}
        for key in LOGGED_KEYS:
            value = log.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                entry[key] = float(value)
        entries.append(entry)
    return entries


# Trainer's own timing keys of an evaluation log, not metrics.
EVAL_TIMING_KEYS = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time")


def evaluation_curve(log_history: list[Mapping[str, Any]], prefix: str = "eval_") -> list[dict[str, Any]]:
    """The evaluation entries of a Trainer's ``log_history``: ``{"step", "epoch", "values": {metric: value}}`` in
    step order, the ``eval_`` prefix dropped; an unavailable (non-finite) value is None."""
    curve = []
    for log in log_history:
        values = {
            key.removeprefix(prefix): _finite(value)
            for key, value in log.items()
            if key.startswith(prefix) and key.removeprefix(prefix) not in EVAL_TIMING_KEYS
        }
        if values and "step" in log:
            curve.append({"step": int(log["step"]), "epoch": _finite(log.get("epoch")), "values": values})
    return sorted(curve, key=lambda entry: entry["step"])


def best_model_record(args, state, curve: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What `metric_for_best_model` chose: the metric, its direction, the best step and value, the checkpoint kept
    (its folder name; None when no checkpoint was saved at that step) and whether it was loaded at the end."""
    metric = getattr(args, "metric_for_best_model", None)
    if metric is None or not curve:
        return None
    name = metric.removeprefix("eval_")
    greater = bool(args.greater_is_better)
    step, value = None, None
    for entry in curve:  # Trainer's rule: the first evaluation strictly better than every earlier one
        current = entry["values"].get(name)
        if current is not None and (value is None or (current > value if greater else current < value)):
            step, value = entry["step"], current
    checkpoint = Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None
    return {
        "metric": name,
        "greater_is_better": greater,
        "step": step,
        "value": value,
        "checkpoint": checkpoint,
        "loaded_at_end": bool(args.load_best_model_at_end and checkpoint is not None),
    }


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


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
