"""The benchmark registry: one entry per benchmark, holding what the rest of hf_unlearn knows of it.

An entry (:class:`BenchmarkSpec`) names the benchmark's class (imported only when the benchmark is built, so
this module, the report and the model card never import torch, lm-eval or data) and declares the benchmark's
forget metrics, its Hub datasets, its relearning preset and the recipe ``data_source`` that trains on its data.
The benchmark class itself declares its typed settings (``settings_class``, see :mod:`hf_unlearn.benchmarks.base`).
``--benchmark`` choices, the model card's datasets, the report's forget metric and the relearning presets all
read this table; adding a benchmark is its class and one line here (or one :func:`register` call).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from hf_unlearn.benchmarks.base import Benchmark


@dataclass(frozen=True)
class RelearnPreset:
    """A published (or, for TOFU, our) relearning protocol; `text_format` says how raw text becomes examples."""

    eval_at: tuple[int, ...]
    num_examples: int | None = None
    text_format: str = "blocks"  # "qa" rows, "blocks" of block_size tokens, or one "samples" per document
    block_size: int = 2048
    max_length: int = 512


@dataclass(frozen=True)
class BenchmarkSpec:
    """What hf_unlearn knows of one registered benchmark, readable without importing it.

    Attributes:
        target: the benchmark class, or ``"module:Class"`` to import it only when the benchmark is built.
        family: the benchmark's display name (``TOFU``), used in messages ("--privacy applies to TOFU and MUSE").
        forget_metrics: metrics of how much of the forget set the model still knows, the preferred first: what
            relearning curves, robustness tables and sweeps follow.
        hub_datasets: the Hub datasets it reads when no local copy is given (the model card's ``datasets``).
        relearn_preset: its relearning protocol (``hf_unlearn.attacks.relearn``), None when it has none.
        data_source: the recipe ``data_source`` whose forget data this benchmark measures, None when none does.
        defaults: settings this name fixes (``tofu-legacy`` is TOFU with ``legacy=True``).
    """

    target: Any
    family: str
    forget_metrics: tuple[str, ...] = ()
    hub_datasets: tuple[str, ...] = ()
    relearn_preset: RelearnPreset | None = None
    data_source: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def benchmark_class(self) -> type[Benchmark]:
        """The benchmark class (imported here, on first use)."""
        if not isinstance(self.target, str):
            return self.target
        module_name, class_name = self.target.split(":")
        return getattr(importlib.import_module(module_name), class_name)


# Relearning protocols (docs/definitions.md): AdamW, lr 1e-5, cosine, batch 4. MUSE: 2048-token blocks of the raw
# forget text, 50/75/100 steps (Books) or 100/125/150 (News). WMDP: 20 forget samples over 1-3 epochs (batch 4: 5
# steps per epoch). TOFU has no published protocol; ours relearns 40 QA pairs of the forget split for 10/20/40 steps.
TOFU_RELEARN = RelearnPreset(eval_at=(10, 20, 40), num_examples=40, text_format="qa")
MUSE_BOOKS_RELEARN = RelearnPreset(eval_at=(50, 75, 100), text_format="blocks", block_size=2048)
MUSE_NEWS_RELEARN = RelearnPreset(eval_at=(100, 125, 150), text_format="blocks", block_size=2048)
WMDP_RELEARN = RelearnPreset(eval_at=(5, 10, 15), num_examples=20, text_format="samples", max_length=512)

# Forget metrics: TOFU's forget-set probability, ROUGE and truth ratio; MUSE's knowledge and verbatim memorisation
# of the forget set; WMDP's hazardous-knowledge accuracies.
TOFU = BenchmarkSpec(
    "hf_unlearn.benchmarks.tofu:TofuBenchmark", "TOFU", ("forget_prob", "forget_rouge_l_recall", "forget_truth_ratio"),
    ("locuslab/TOFU",), TOFU_RELEARN, "tofu",
)  # fmt: skip
MUSE = BenchmarkSpec(
    "hf_unlearn.benchmarks.muse:MuseBenchmark", "MUSE", ("knowmem_f", "verbmem_f"), ("muse-bench/MUSE-News",),
    MUSE_NEWS_RELEARN, "muse",
)  # fmt: skip
WMDP = BenchmarkSpec(
    "hf_unlearn.benchmarks.wmdp:WmdpBenchmark", "WMDP", ("wmdp_bio_acc", "wmdp_cyber_acc", "wmdp_chem_acc"),
    ("cais/wmdp",), WMDP_RELEARN, "wmdp",
)  # fmt: skip

BENCHMARKS: dict[str, BenchmarkSpec] = {
    "tofu": TOFU,
    "tofu-legacy": dataclasses.replace(TOFU, defaults={"legacy": True}),
    "muse": MUSE,
    "muse-news": dataclasses.replace(MUSE, defaults={"corpus": "news"}),
    "muse-books": dataclasses.replace(
        MUSE, hub_datasets=("muse-bench/MUSE-Books",), relearn_preset=MUSE_BOOKS_RELEARN, defaults={"corpus": "books"}
    ),
    "wmdp": WMDP,
}


def register(name: str, target: Any, **facts: Any) -> BenchmarkSpec:
    """Register a benchmark class (or ``"module:Class"``) under ``name``; ``facts`` are :class:`BenchmarkSpec`'s
    other fields (``family`` defaults to the name). It shows up in ``--benchmark`` choices at once."""
    spec = BenchmarkSpec(target, **{"family": name.upper(), **facts})
    BENCHMARKS[name] = spec
    return spec


def available() -> list[str]:
    """Registered benchmark names."""
    return sorted(BENCHMARKS)


def spec_of(name: str) -> BenchmarkSpec:
    """The registry entry of ``name``; an unknown name fails in one line listing the registered ones."""
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}; available: {', '.join(available())}.")
    return BENCHMARKS[name]


def get(name: str, **settings: Any) -> Benchmark:
    """Build the benchmark registered as ``name`` with the given settings, e.g. ``get("tofu", forget_split=...)``."""
    spec = spec_of(name)
    for key, fixed in spec.defaults.items():
        if key in settings and settings[key] != fixed:
            base = next((n for n, s in BENCHMARKS.items() if s.target == spec.target and not s.defaults), "another")
            raise ValueError(
                f"{name} is {key}={fixed!r}; {key}={settings[key]!r} contradicts it: drop {key} or use {base}."
            )
    return spec.benchmark_class()(**{**spec.defaults, **settings})


def forget_metrics() -> tuple[str, ...]:
    """Every registered benchmark's forget metrics, each benchmark's preferred first, in registry order."""
    return tuple(dict.fromkeys(m for spec in BENCHMARKS.values() for m in spec.forget_metrics))


def forget_metric_of(benchmark: str | None, metrics: Mapping[str, Any] | None = None) -> str | None:
    """The forget metric to follow: the first of ``benchmark``'s forget metrics that ``metrics`` holds a value for
    (its first one without ``metrics``); for an unregistered (or no) benchmark, the first of every benchmark's."""
    names = BENCHMARKS[benchmark].forget_metrics if benchmark in BENCHMARKS else forget_metrics()
    if metrics is None:
        return names[0] if names else None
    return next((name for name in names if metrics.get(name) is not None), None)


def hub_datasets_of(benchmark: str | None) -> tuple[str, ...]:
    """The Hub datasets ``benchmark`` reads when no local copy is given; none for an unregistered name."""
    return BENCHMARKS[benchmark].hub_datasets if benchmark in BENCHMARKS else ()


def benchmark_of_source(data_source: str) -> str | None:
    """The benchmark that evaluates a recipe's ``data_source`` (its registry entry's ``data_source``), else None."""
    return next((name for name, spec in BENCHMARKS.items() if spec.data_source == data_source), None)


def relearn_preset_of(name: str) -> RelearnPreset:
    """The relearning preset of the benchmark ``name``; one line listing those with a preset otherwise."""
    preset = BENCHMARKS[name].relearn_preset if name in BENCHMARKS else None
    if preset is None:
        with_preset = [n for n, spec in BENCHMARKS.items() if spec.relearn_preset is not None]
        raise ValueError(f"Unknown relearning preset {name!r}; choose one of {', '.join(with_preset)}.")
    return preset


def families_with_setting(setting: str) -> list[str]:
    """The families whose settings class has the field ``setting`` (imports each registered benchmark's class)."""
    families = []
    for spec in BENCHMARKS.values():
        fields = {f.name for f in dataclasses.fields(spec.benchmark_class().settings_class)}
        if setting in fields and spec.family not in families:
            families.append(spec.family)
    return families
