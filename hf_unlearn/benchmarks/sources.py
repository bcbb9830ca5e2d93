"""Training-data sources: the forget and retain data a recipe unlearns with, next to the benchmark that measures it.

A source owns its data (`forget_dataset`, `retain_dataset`) and its evaluation (`benchmark`, `evaluate`), so a
recipe's in-run evaluation and attacks always use the recipe's own data: TOFU QA splits, the synthetic TOFU-shaped
benchmark, MUSE and WMDP raw corpora (evaluated with MUSE / WMDP), or a user's JSON Lines texts (answer NLL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hf_unlearn.benchmarks.base import Benchmark, BenchmarkResult, get
from hf_unlearn.benchmarks.nll import NLLBenchmark
from hf_unlearn.benchmarks.synthetic import write_synthetic_tofu
from hf_unlearn.benchmarks.tofu_data import load_tofu, tofu_split_names
from hf_unlearn.data import QADataset, QAFormat, TextBlockDataset, read_texts


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
    """TOFU's QA splits (`forget_split` and its complement), evaluated with the TOFU metrics."""

    name = "tofu"

    def __init__(
        self,
        data_dir: str | Path | None = None,
        forget_split: str = "forget10",
        retain_split: str | None = None,
        qa_format: QAFormat | None = None,
        max_length: int = 512,
        retain_model: str | None = None,
        max_new_tokens: int = 200,
        max_examples: int | None = None,
    ):
        self.names = tofu_split_names(forget_split)
        self.data_dir, self.forget_split = data_dir, forget_split
        self.retain_split = retain_split or self.names["retain"]
        self.qa_format, self.max_length = qa_format or QAFormat(), max_length
        self.retain_model, self.max_new_tokens, self.max_examples = retain_model, max_new_tokens, max_examples

    def datasets(self) -> list[str]:
        return [str(self.data_dir) if self.data_dir else "locuslab/TOFU"]

    def _qa(self, split: str, tokenizer) -> QADataset:
        source = f"{self.data_dir or 'locuslab/TOFU'}:{split}"
        rows = load_tofu(split, self.data_dir)
        return QADataset(rows, tokenizer, max_length=self.max_length, qa_format=self.qa_format, source=source)

    def forget_dataset(self, tokenizer) -> QADataset:
        return self._qa(self.forget_split, tokenizer)

    def retain_dataset(self, tokenizer) -> QADataset:
        return self._qa(self.retain_split, tokenizer)

    def benchmark(self, tokenizer=None, **settings) -> Benchmark:
        own = {
            "forget_split": self.forget_split,
            "data_dir": self.data_dir,
            "qa_format": self.qa_format,
            "max_length": self.max_length,
            "max_new_tokens": self.max_new_tokens,
            "retain_model": self.retain_model,
            "max_examples": self.max_examples,
        }
        return get("tofu", **{**own, **settings})


class SyntheticSource(TofuSource):
    """The synthetic fictitious-author benchmark, written on the spot (never over other files), read as TOFU."""

    name = "synthetic"

    def __init__(self, data_dir: str | Path, num_authors: int = 20, seed: int = 0, **tofu_settings):
        super().__init__(data_dir=data_dir, **tofu_settings)
        self.num_authors, self.seed = num_authors, seed

    def prepare(self) -> None:
        write_synthetic_tofu(self.data_dir, num_authors=self.num_authors, seed=self.seed)


class TextSource(DataSource):
    """Raw forget / retain corpora (JSON Lines with a text field) cut into `max_length`-token blocks."""

    name = "jsonl"

    def __init__(
        self,
        forget_file: str | Path,
        retain_file: str | Path | None = None,
        text_field: str = "text",
        max_length: int = 512,
        data_dir: str | Path | None = None,
        **benchmark_settings: Any,
    ):
        self.forget_file, self.retain_file, self.text_field = forget_file, retain_file, text_field
        self.max_length, self.data_dir, self.benchmark_settings = max_length, data_dir, benchmark_settings

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


class MuseSource(TextSource):
    """MUSE forget / retain corpora; the result is evaluated with MUSE (VerbMem, KnowMem, PrivLeak) from `data_dir`."""

    name = "muse"

    def benchmark(self, tokenizer=None, **settings) -> Benchmark:
        settings.pop("max_new_tokens", None)
        return get("muse", data_dir=self.data_dir, **{**self.benchmark_settings, **settings})


class WmdpSource(TextSource):
    """WMDP forget corpora (+ a retain corpus); the result is evaluated with WMDP/MMLU through lm-eval."""

    name = "wmdp"

    def benchmark(self, tokenizer=None, **settings) -> Benchmark:
        kept = {k: v for k, v in settings.items() if k in ("batch_size", "tasks", "limit")}
        return get("wmdp", data_dir=self.data_dir, **{**self.benchmark_settings, **kept})


def source_from_recipe(script, config) -> DataSource:
    """The data source a recipe's `ScriptArguments` (and its training config, for defaults) describe."""
    tofu = {
        "forget_split": script.forget_split,
        "retain_split": script.retain_split,
        "qa_format": QAFormat.from_args(script),
        "max_length": script.max_length,
        "retain_model": script.retain_model,
        "max_new_tokens": script.eval_max_new_tokens,
        "max_examples": script.eval_max_examples,
    }
    text = {
        "forget_file": script.forget_file,
        "retain_file": script.retain_file,
        "text_field": script.text_field,
        "max_length": script.max_length,
        "data_dir": script.data_dir,
    }
    if script.data_source == "tofu":
        return TofuSource(data_dir=script.data_dir, **tofu)
    if script.data_source == "synthetic":
        folder = script.data_dir or str(Path(config.output_dir) / "data")
        return SyntheticSource(folder, num_authors=script.synthetic_num_authors, seed=config.seed, **tofu)
    if script.data_source == "muse":
        return MuseSource(
            corpus=script.muse_corpus, retain_model=script.retain_model, max_examples=script.eval_max_examples, **text
        )
    if script.data_source == "wmdp":
        return WmdpSource(**text)
    return TextSource(**text)
