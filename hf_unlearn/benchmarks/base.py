"""The `Benchmark` interface, its result object and the name registry behind `benchmarks.get("tofu")`.

Benchmarks register lazily (module path + class name), so importing `hf_unlearn.benchmarks` never imports
lm-eval or loads data.
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hf_unlearn.errors import UserInputError
from hf_unlearn.io import json_safe


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
    """An evaluator: configured in ``__init__``, applied to an in-memory model by ``evaluate``.

    Benchmarks whose metrics compare against a retain model (forget quality, privleak) set ``retain_stats_format``,
    ``retain_model`` / ``retain_stats`` and implement ``settings`` and ``retain_statistics``.
    """

    name: str = "benchmark"
    retain_stats_format: str = ""

    @abstractmethod
    def evaluate(self, model, tokenizer) -> BenchmarkResult:
        """Evaluate ``model`` (a causal LM, any device) with ``tokenizer``; every rank calls it, all get the result."""

    def reference_statistics(self, model) -> tuple[dict | None, str | None]:
        """``(retain-model statistics, None)``, computed once and cached or as given; else ``(None, reason)``."""
        from hf_unlearn.benchmarks.retain_stats import load_retain_model, resolve_reference
        from hf_unlearn.modeling import model_device

        def compute() -> dict[str, Any]:
            return self.retain_statistics(*load_retain_model(self.retain_model, model_device(model)))

        return resolve_reference(
            self.retain_stats, self.retain_model, self.retain_stats_format, self.settings(), compute
        )


_REGISTRY: dict[str, tuple[str, str, dict[str, Any]] | Callable[..., Benchmark]] = {
    "tofu": ("hf_unlearn.benchmarks.tofu", "TofuBenchmark", {}),
    "tofu-legacy": ("hf_unlearn.benchmarks.tofu", "TofuBenchmark", {"legacy": True}),
    "muse": ("hf_unlearn.benchmarks.muse", "MuseBenchmark", {}),
    "muse-news": ("hf_unlearn.benchmarks.muse", "MuseBenchmark", {"corpus": "news"}),
    "muse-books": ("hf_unlearn.benchmarks.muse", "MuseBenchmark", {"corpus": "books"}),
    "wmdp": ("hf_unlearn.benchmarks.wmdp", "WmdpBenchmark", {}),
}


def register(name: str, factory: Callable[..., Benchmark]) -> None:
    """Register a benchmark factory (a class or function taking keyword settings) under ``name``."""
    _REGISTRY[name] = factory


def available() -> list[str]:
    """Registered benchmark names."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs) -> Benchmark:
    """Build the benchmark registered as ``name`` with the given settings, e.g. ``get("tofu", forget_split=...)``."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown benchmark {name!r}; available: {', '.join(available())}.")
    entry = _REGISTRY[name]
    if callable(entry):
        return entry(**kwargs)
    module_name, class_name, defaults = entry
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**{**defaults, **kwargs})
