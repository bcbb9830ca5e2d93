"""A benchmark declares its own knowledge: one registry entry and one settings class, read by every consumer.

Issue 23: the settings a benchmark takes, its forget metric, Hub datasets and relearning preset sat in about eight
copies (CLI eval and attack, sources, card, report, relearn presets), two of which disagreed. These tests register a
new benchmark and check that every consumer sees it without being edited, and that flags and recipe keys reach the
settings through one mapping.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch

from hf_unlearn.benchmarks import registry
from hf_unlearn.benchmarks.base import Benchmark, BenchmarkResult, settings_from


@dataclass
class ToySettings:
    data_dir: str | None = field(default=None, metadata={"help": "Where the toy data is."})
    max_examples: int | None = field(
        default=None, metadata={"help": "Rows per set.", "aliases": ("eval_max_examples",)}
    )
    batch_size: int = field(default=16, metadata={"help": "Rows per forward."})


class ToyBenchmark(Benchmark):
    name = "toy"
    settings_class = ToySettings

    def evaluate(self, model, tokenizer) -> BenchmarkResult:
        return BenchmarkResult(benchmark=self.name, metrics={"toy_forget": float(self.args.batch_size)})


@pytest.fixture
def toy(monkeypatch):
    """The toy benchmark registered for one test (the registry is restored afterwards)."""
    monkeypatch.setattr(registry, "BENCHMARKS", dict(registry.BENCHMARKS))
    preset = registry.RelearnPreset(eval_at=(1, 2), num_examples=3, text_format="qa")
    return registry.register(
        "toy", ToyBenchmark, forget_metrics=("toy_forget",), hub_datasets=("someone/toy",), relearn_preset=preset
    )


def _choices(parser: argparse.ArgumentParser, flag: str) -> list[str]:
    return next(a for a in parser._actions if flag in a.option_strings).choices


def test_a_registered_benchmark_is_a_benchmark_choice_of_eval_and_attack(toy):
    from hf_unlearn.cli import attack
    from hf_unlearn.cli import eval as eval_cli

    eval_parser = eval_cli.add_arguments(argparse.ArgumentParser())
    attack_parser = argparse.ArgumentParser()
    attack.add_arguments(attack_parser)
    assert "toy" in _choices(eval_parser, "--benchmark")
    assert set(_choices(attack_parser, "--benchmark")) == {*registry.available(), "nll"}
    assert "toy" in registry.available()
    # Its flags reach its settings class through the one mapping, and the name builds it.
    args = eval_parser.parse_args(["--model", "m", "--benchmark", "toy", "--max_examples", "3", "--batch_size", "2"])
    settings = eval_cli.benchmark_settings(args)
    assert settings == {"max_examples": 3, "batch_size": 2}
    benchmark = registry.get("toy", **settings)
    assert isinstance(benchmark, ToyBenchmark) and benchmark.args == ToySettings(max_examples=3, batch_size=2)


def test_a_flag_the_benchmark_does_not_take_names_the_benchmarks_that_do(toy):
    from hf_unlearn.cli.eval import add_arguments, benchmark_settings

    args = add_arguments(argparse.ArgumentParser()).parse_args(["--model", "m", "--benchmark", "toy", "--privacy"])
    with pytest.raises(ValueError, match=r"--privacy applies to TOFU and MUSE; toy has no holdout set.*Drop it"):
        benchmark_settings(args)


def test_report_card_and_relearning_read_the_registered_facts(toy):
    from hf_unlearn.attacks.relearn import get_preset
    from hf_unlearn.model_card import hub_datasets
    from hf_unlearn.report_render import pick_forget_metric

    assert pick_forget_metric({"toy_forget": 0.25, "other": 1.0}) == "toy_forget"
    assert pick_forget_metric({"forget_prob": 0.5, "toy_forget": 0.25}, benchmark="toy") == "toy_forget"
    assert registry.forget_metric_of("toy") == "toy_forget"
    assert hub_datasets("toy") == ["someone/toy"] and hub_datasets("toy", data_dir="local") == []
    assert get_preset("toy").eval_at == (1, 2) and get_preset("toy").num_examples == 3


def test_the_built_in_entries_keep_their_published_facts():
    from hf_unlearn.attacks.relearn import get_preset
    from hf_unlearn.model_card import hub_datasets

    # MUSE's protocol: Books 50/75/100 steps, News 100/125/150 (docs/definitions.md); the default corpus is News.
    assert get_preset("muse-books").eval_at == (50, 75, 100)
    assert get_preset("muse-news").eval_at == get_preset("muse").eval_at == (100, 125, 150)
    assert hub_datasets("muse-books") == ["muse-bench/MUSE-Books"] and hub_datasets("muse") == ["muse-bench/MUSE-News"]
    assert hub_datasets("tofu-legacy") == ["locuslab/TOFU"] and hub_datasets("wmdp") == ["cais/wmdp"]
    assert registry.forget_metric_of("wmdp", {"mmlu_acc": 0.5, "wmdp_bio_acc": 0.3}) == "wmdp_bio_acc"
    with pytest.raises(ValueError, match="Unknown relearning preset 'glue'; choose one of tofu, tofu-legacy"):
        get_preset("glue")


def test_flags_and_recipe_keys_reach_the_settings_through_one_mapping(tmp_path, tiny_model_dir, synthetic_data_dir):
    """The CLI's --max_examples and the recipe's eval_max_examples are two names of one TofuSettings field: eval,
    attack and the recipe's source all build the benchmark's settings with `settings_from`."""
    from hf_unlearn.benchmarks.sources import source_from_recipe
    from hf_unlearn.benchmarks.tofu import TofuSettings
    from hf_unlearn.cli.eval import add_arguments, benchmark_settings
    from hf_unlearn.recipes import parse_recipe

    flags = ["--model", "m", "--benchmark", "tofu", "--max_examples", "7", "--qa_template", "Q: {question} A: "]
    flags += ["--retain_model", str(tiny_model_dir), "--data_dir", str(synthetic_data_dir)]
    from_cli = TofuSettings(**benchmark_settings(add_arguments(argparse.ArgumentParser()).parse_args(flags)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"method: npo\nmodel_name_or_path: {tiny_model_dir}\ndata_dir: {synthetic_data_dir}\neval_max_examples: 7\n"
        f"qa_template: 'Q: {{question}} A: '\nretain_model: {tiny_model_dir}\noutput_dir: {tmp_path / 'out'}\n"
    )
    parsed = parse_recipe(recipe)
    source = source_from_recipe(parsed.script, parsed.config)
    for name in ("max_examples", "qa_format", "retain_model", "data_dir", "forget_split", "max_new_tokens"):
        assert getattr(source.settings, name) == getattr(from_cli, name), name
    assert source.settings.max_examples == 7 and source.settings.qa_format.template == "Q: {question} A: "
    # One QA format, built once from the recipe, handed down to the training data and to the benchmark.
    assert source.settings.qa_format is parsed.script.qa_format
    assert source.benchmark(show_progress=False).args.qa_format is parsed.script.qa_format
    # settings_from reads each field by its own name or its declared aliases, and nothing else.
    namespace = argparse.Namespace(eval_max_examples=4, batch_size=None, unrelated=1)
    assert settings_from(TofuSettings, namespace) == {"max_examples": 4}


def test_every_settings_field_is_documented():
    for name, spec in registry.BENCHMARKS.items():
        settings_class = spec.benchmark_class().settings_class
        undocumented = [f.name for f in dataclasses.fields(settings_class) if not f.metadata.get("help")]
        assert not undocumented, (name, undocumented)


def test_a_name_that_fixes_a_setting_refuses_a_contradicting_one(cli, tiny_model_dir, tmp_path):
    from hf_unlearn.cli.eval import add_arguments, benchmark_settings

    with pytest.raises(ValueError, match="muse-books is corpus='books'; corpus='news' contradicts it.*use muse"):
        registry.get("muse-books", corpus="news")
    args = add_arguments(argparse.ArgumentParser()).parse_args(["--model", "m", "--benchmark", "muse-books"])
    assert registry.get("muse-books", **benchmark_settings(args)).args.corpus == "books"
    code, _, err = cli("eval", "--model", tiny_model_dir, "--benchmark", "muse-books", "--corpus", "news",
                       "--output_dir", tmp_path / "o")  # fmt: skip
    assert code != 0 and "contradicts it" in err and not (tmp_path / "o").exists()


def test_one_retain_reference_reads_a_given_statistics_file_before_any_weight(tmp_path):
    from hf_unlearn.benchmarks.retain_stats import RetainReference
    from hf_unlearn.benchmarks.tofu import TofuBenchmark

    empty = tmp_path / "stats.json"
    empty.write_text("")
    with pytest.raises(ValueError, match="stats.json"):
        TofuBenchmark(retain_stats=empty)
    benchmark = TofuBenchmark(retain_model="somewhere/retain")
    assert benchmark.args.retain == RetainReference(model="somewhere/retain")
    stats, reason = TofuBenchmark().reference_statistics(model=None)
    assert stats is None and "pass retain_model" in reason


def test_the_registry_report_and_card_import_no_benchmark_module_nor_torch():
    code = (
        "import sys, hf_unlearn.benchmarks.registry, hf_unlearn.benchmarks;"
        "assert 'torch' not in sys.modules, 'torch';"
        "import hf_unlearn.model_card, hf_unlearn.report;"
        "heavy = [m for m in ('hf_unlearn.benchmarks.tofu', 'hf_unlearn.benchmarks.muse', 'lm_eval')"
        " if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("name", "anywhere", "owner_required"),
    [("owner/model", True, True), ("gpt2", True, False), ("a/b/c", False, False), ("a..b/c", False, False),
     ("-x/y", False, False), ("owner/name.git", False, False)],
)  # fmt: skip
def test_one_hub_id_rule_for_model_paths_and_the_card(name, anywhere, owner_required):
    from hf_unlearn.hub_ids import is_hub_id

    assert is_hub_id(name) is anywhere
    assert is_hub_id(name, owner_required=True) is owner_required


def test_eval_mode_with_gradients_inside_inference_mode_restores_training():
    from hf_unlearn.modeling import eval_mode

    model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Dropout(0.5)).train()
    with torch.inference_mode(), eval_mode(model, grad=True):
        assert not model.training
        out = model(torch.ones(1, 3)).sum()
        (grad,) = torch.autograd.grad(out, [model[0].weight])
    assert model.training and torch.equal(grad, torch.ones(1, 3))
