"""Training-data sources: the forget and retain data a recipe unlearns with, next to the benchmark that measures it.

A source owns its data (`forget_dataset`, `retain_dataset`) and its evaluation (`benchmark`, `evaluate`), so a
recipe's in-run evaluation and attacks always use the recipe's own data: TOFU QA splits, the synthetic TOFU-shaped
benchmark, MUSE and WMDP raw corpora (evaluated with MUSE / WMDP), or a user's JSON Lines texts (answer NLL).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hf_unlearn.benchmarks import registry
from hf_unlearn.benchmarks.base import Benchmark, BenchmarkResult, settings_from
from hf_unlearn.benchmarks.nll import NLLBenchmark
from hf_unlearn.benchmarks.synthetic import write_synthetic_tofu
from hf_unlearn.benchmarks.tofu import TofuBenchmark, TofuSettings
from hf_unlearn.benchmarks.tofu_data import load_tofu, tofu_split_names
from hf_unlearn.data import QADataset, TextBlockDataset, read_texts


class DataSource:
    """Forget / retain training data and the benchmark that evaluates a model unlearned on it."""

    name = "source"

    def forget_dataset(self, tokenizer):
        raise NotImplementedError

    def retain_dataset(self, tokenizer):
        raise NotImplementedError

    def benchmark(self, tokenizer=None, **settings) -> Benchmark:
        """The evaluator of this source; `settings` are the benchmark's own (batch size, progress, ...)."""
        raise NotImplementedError

    def evaluate(self, model, tokenizer, **settings) -> BenchmarkResult:
        return self.benchmark(tokenizer, **settings).evaluate(model, tokenizer)

    def prepare(self) -> None:
        """Anything to write before the data is read (main process only); nothing by default."""

    def datasets(self) -> list[str]:
        """Where the data comes from, for the model card's `datasets` (Hub ids, or local paths)."""
        return []


class TofuSource(DataSource):
    """TOFU's QA splits (`forget_split` and its complement), evaluated with the TOFU metrics.

    Training data and evaluation share one :class:`~hf_unlearn.benchmarks.tofu.TofuSettings` (given, or built from
    keywords): split, data folder, QA format and length are the same object in both.
    """

    name = "tofu"

    def __init__(self, settings: TofuSettings | None = None, retain_split: str | None = None, **tofu_settings):
        if settings is not None and tofu_settings:
            raise TypeError("TofuSource takes a TofuSettings or its keywords, not both.")
        self.settings = settings if settings is not None else TofuSettings(**tofu_settings)
        self.retain_split = retain_split or tofu_split_names(self.settings.forget_split)["retain"]

    def datasets(self) -> list[str]:
        return [str(self.settings.data_dir) if self.settings.data_dir else "locuslab/TOFU"]

    def _qa(self, split: str, tokenizer) -> QADataset:
        settings = self.settings
        source = f"{settings.data_dir or 'locuslab/TOFU'}:{split}"
        rows = load_tofu(split, settings.data_dir)
        return QADataset(rows, tokenizer, max_length=settings.max_length, qa_format=settings.qa_format, source=source)

    def forget_dataset(self, tokenizer) -> QADataset:
        return self._qa(self.settings.forget_split, tokenizer)

    def retain_dataset(self, tokenizer) -> QADataset:
        return self._qa(self.retain_split, tokenizer)

    def benchmark(self, tokenizer=None, **settings) -> Benchmark:
        return TofuBenchmark(with_settings(self.settings, settings))


class SyntheticSource(TofuSource):
    """The synthetic fictitious-author benchmark, written on the spot (never over other files), read as TOFU."""

    name = "synthetic"

    def __init__(
        self,
        data_dir: str | Path,
        num_authors: int = 20,
        seed: int = 0,
        settings: TofuSettings | None = None,
        retain_split: str | None = None,
        **tofu_settings,
    ):
        if settings is None:
            settings = TofuSettings(data_dir=data_dir, **tofu_settings)
        super().__init__(dataclasses.replace(settings, data_dir=data_dir), retain_split)
        self.num_authors, self.seed = num_authors, seed

    def prepare(self) -> None:
        write_synthetic_tofu(self.settings.data_dir, num_authors=self.num_authors, seed=self.seed)


def with_settings(settings, overrides: dict[str, Any]):
    """``settings`` with the caller's evaluation settings (batch size, progress, ...) that its class takes."""
    names = {f.name for f in dataclasses.fields(settings) if f.init}
    return dataclasses.replace(settings, **{k: v for k, v in overrides.items() if k in names})


class TextSource(DataSource):
    """Raw forget / retain corpora (JSON Lines with a text field) cut into `max_length`-token blocks."""

    name = "jsonl"

    def __init__(
        self,
        forget_file: str | Path,
        retain_file: str | Path | None = None,
        text_field: str = "text",
        max_length: int = 512,
    ):
        self.forget_file, self.retain_file, self.text_field = forget_file, retain_file, text_field
        self.max_length = max_length

    def datasets(self) -> list[str]:
        return [str(p) for p in (self.forget_file, self.retain_file) if p]

    def _blocks(self, path, tokenizer) -> TextBlockDataset:
        texts = read_texts(path, self.text_field)
        return TextBlockDataset(texts, tokenizer, block_size=self.max_length, source=str(path))

    def forget_dataset(self, tokenizer) -> TextBlockDataset:
        return self._blocks(self.forget_file, tokenizer)

    def retain_dataset(self, tokenizer) -> TextBlockDataset:
        if not self.retain_file:
            raise ValueError(f"data_source={self.name} needs retain_file for a retain term (or set alpha=0).")
        return self._blocks(self.retain_file, tokenizer)

    def benchmark(self, tokenizer=None, **settings) -> Benchmark:
        """Answer NLL of the forget (and retain) blocks: the measurement raw corpora have by themselves."""
        if tokenizer is None:
            raise ValueError("The NLL benchmark of a text source needs the tokenizer to cut its corpora.")
        datasets = {"forget": self.forget_dataset(tokenizer)}
        if self.retain_file:
            datasets["retain"] = self.retain_dataset(tokenizer)
        return NLLBenchmark(datasets, batch_size=settings.get("batch_size", 16))


class CorpusSource(TextSource):
    """A benchmark's raw forget / retain corpora (MUSE, WMDP), cut into blocks for training; the result is
    evaluated with that benchmark (its registry entry names this ``data_source``), from its local ``data_dir``."""

    def __init__(self, benchmark_name: str, settings, **text):
        super().__init__(**text)
        self.name, self.settings = benchmark_name, settings

    def benchmark(self, tokenizer=None, **settings) -> Benchmark:
        return registry.spec_of(self.name).benchmark_class()(with_settings(self.settings, settings))


def source_from_recipe(script, config) -> DataSource:
    """The data source a recipe's `ScriptArguments` (and its training config, for defaults) describe.

    The benchmark's settings come from the recipe's keys through its settings class (``settings_from``), the
    mapping ``hf-unlearn eval`` and ``attack`` use for their flags.
    """
    if script.data_source in ("tofu", "synthetic"):
        settings = TofuSettings(**settings_from(TofuSettings, script))
        if script.data_source == "tofu":
            return TofuSource(settings, retain_split=script.retain_split)
        return SyntheticSource(
            script.data_dir or str(Path(config.output_dir) / "data"), num_authors=script.synthetic_num_authors,
            seed=config.seed, settings=settings, retain_split=script.retain_split,
        )  # fmt: skip
    text = {
        "forget_file": script.forget_file,
        "retain_file": script.retain_file,
        "text_field": script.text_field,
        "max_length": script.max_length,
    }
    name = registry.benchmark_of_source(script.data_source)
    if name is None:  # the user's own corpora: answer NLL
        return TextSource(**text)
    settings_class = registry.spec_of(name).benchmark_class().settings_class
    return CorpusSource(name, settings_class(**settings_from(settings_class, script)), **text)
