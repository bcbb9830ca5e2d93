"""The `Benchmark` interface, its result object, and the mapping from flags and recipe keys to its settings.

The name registry behind `benchmarks.get("tofu")` is :mod:`hf_unlearn.benchmarks.registry`.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hf_unlearn.errors import UserInputError
from hf_unlearn.io import json_safe


class MetricValues(dict):
    """``{metric: value}`` as an ``eval_fn`` returns it, with the reason behind each ``None`` in ``unavailable``.

    A plain dict to everything that reads values; reports read ``unavailable`` too, so a metric a benchmark could
    not compute keeps the benchmark's reason through the attacks (relearning curves, quantization) that re-evaluate.
    ``MetricValues(other)`` keeps ``other``'s reasons, if it has any.
    """

    def __init__(self, values: Mapping[str, float | None] = (), unavailable: Mapping[str, str] | None = None):
        super().__init__(values)
        self.unavailable = dict(getattr(values, "unavailable", {}) if unavailable is None else unavailable)


@dataclass
class BenchmarkResult:
    """What every benchmark returns.

    Attributes:
        benchmark: registry name, e.g. ``"tofu"``.
        metrics: metric name -> value (``None`` when unavailable; the reason is in ``unavailable``).
        unavailable: metric name -> one-line reason it could not be computed.
        per_example: split name -> list of per-example records (plain JSON values).
        config: the settings the numbers depend on (split names, legacy mode, generation length, ...).
        num_examples: split name -> number of examples evaluated.
        runtime_s: wall-clock seconds of ``evaluate``.
    """

    benchmark: str
    metrics: dict[str, float | None]
    unavailable: dict[str, str] = field(default_factory=dict)
    per_example: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    num_examples: dict[str, int] = field(default_factory=dict)
    runtime_s: float = 0.0

    def metric_values(self) -> MetricValues:
        """The metrics with their reasons, as an ``eval_fn`` returns them."""
        return MetricValues(self.metrics, self.unavailable)

    def summary(self) -> dict[str, Any]:
        """Everything except the per-example records (what a report records of an evaluation)."""
        data = asdict(self)
        data.pop("per_example")
        return json_safe(data)

    def save_per_example(self, output_dir: str | Path, model_name: str | None = None) -> Path:
        """Write ``<name>_per_example.json`` (the per-example records) into ``output_dir``, atomically.

        The aggregate numbers go into the run's ``unlearn_report.json`` (``hf_unlearn.report``), not here.
        """
        from hf_unlearn.io import atomic_write_text

        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{self.benchmark.replace('/', '_')}_per_example.json"
        per_example = {"benchmark": self.benchmark, "model": model_name, "splits": json_safe(self.per_example)}
        atomic_write_text(path, json.dumps(per_example) + "\n")
        return path

    def table(self) -> str:
        """A two-column text table of the metrics, unavailable ones with their reason."""
        rows = [(name, "n/a" if value is None else f"{value:.4f}") for name, value in self.metrics.items()]
        width = max([len(name) for name, _ in rows] + [len("metric")])
        lines = [f"{self.benchmark} ({', '.join(f'{k}={v}' for k, v in self.num_examples.items())})"]
        lines += [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
        lines += [f"{name:<{width}}  {value}" for name, value in rows]
        lines += [f"{name}: unavailable ({reason})" for name, reason in self.unavailable.items()]
        return "\n".join(lines)


def check_counts(**counts: int | None) -> None:
    """Refuse a count setting below 1 (None: unset, allowed) in one line naming it.

    ``max_examples=0`` evaluated no rows and ended in an unrelated AUC error; ``max_new_tokens=-5`` generated nothing
    and reported ROUGE 0 as if the model had forgotten everything.
    """
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserInputError(
                f"{name}={value!r} must be a whole number >= 1 (at {value!r} nothing would be evaluated); "
                f"give a positive {name} or leave it unset for the default."
            )


class Benchmark(ABC):
    """An evaluator: configured by its typed settings, applied to an in-memory model by ``evaluate``.

    A benchmark class declares ``settings_class``, a dataclass of documented fields (like a trainer's config
    class): ``TofuBenchmark(forget_split="forget05")`` and ``TofuBenchmark(TofuSettings(forget_split="forget05"))``
    are the same; the checked settings are ``self.args``. What the rest of hf_unlearn knows of a benchmark (forget
    metrics, Hub datasets, relearning preset) is its :mod:`hf_unlearn.benchmarks.registry` entry.

    Benchmarks whose metrics compare against a retain model (forget quality, privleak) have a ``retain``
    (:class:`~hf_unlearn.benchmarks.retain_stats.RetainReference`) setting and implement ``settings`` (the
    statistics' compatibility key) and ``retain_statistics``.
    """

    name: str = "benchmark"
    settings_class: ClassVar[type]  # the benchmark's settings dataclass
    retain_stats_format: str = ""

    def __init__(self, args=None, /, **settings):
        if args is not None and settings:
            raise TypeError(f"{type(self).__name__} takes a {self.settings_class.__name__} or keywords, not both.")
        self.args = args if args is not None else self.settings_class(**settings)

    @abstractmethod
    def evaluate(self, model, tokenizer) -> BenchmarkResult:
        """Evaluate ``model`` (a causal LM, any device) with ``tokenizer``; every rank calls it, all get the result."""

    def relearn_rows(self):
        """The forget rows a relearning attack trains on; a benchmark without forget texts says so in one line."""
        raise ValueError(
            f"--benchmark {self.name} ships no forget texts to relearn on: pass --relearn_data with a JSON Lines "
            'forget corpus ({"text": ...} rows), or --relearn_steps with no value to skip relearning.'
        )

    def reference_statistics(self, model) -> tuple[dict | None, str | None]:
        """``(retain-model statistics, None)`` from the ``retain`` setting; else ``(None, reason)``."""
        return self.args.retain.statistics(self, model)


UNSET = object()  # what a field's ``from_namespace`` returns when the namespace does not set it


def show_progress_of(namespace):
    """``show_progress`` from ``--no_progress`` (unset where the namespace has no such flag)."""
    return not namespace.no_progress if hasattr(namespace, "no_progress") else UNSET


def settings_from(settings_class, namespace, **fixed: Any) -> dict[str, Any]:
    """The keyword settings a parsed namespace (CLI flags, a recipe's ``ScriptArguments``) gives ``settings_class``.

    The one mapping from flags and recipe keys to a benchmark's settings: each field is read from the first of its
    names (the field's own, then ``metadata["aliases"]``) the namespace has and sets (not None), or computed from
    the namespace by ``metadata["from_namespace"]`` (a flag group such as the QA format; :data:`UNSET` when the
    namespace does not set it). Unset fields are left out (the settings class's defaults apply); ``fixed`` wins.
    """
    settings: dict[str, Any] = {}
    for f in dataclasses.fields(settings_class):
        if not f.init:
            continue
        if "from_namespace" in f.metadata:
            value = f.metadata["from_namespace"](namespace)
        else:
            names = (f.name, *f.metadata.get("aliases", ()))
            value = next((getattr(namespace, n) for n in names if getattr(namespace, n, None) is not None), UNSET)
        if value is not UNSET:
            settings[f.name] = value
    return {**settings, **fixed}
