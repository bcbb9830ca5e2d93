from pathlib import Path

import pytest

from hf_unlearn.recipes import parse_recipe


RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_recipes_folder_is_not_empty():
    assert {p.name for p in RECIPES} >= {
        "demo.yaml", "tofu_npo_hybrid.yaml", "tofu_npo_adam.yaml", "wmdp_rmu_hybrid.yaml", "muse_news_npo_hybrid.yaml"
    }  # fmt: skip


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_into_its_method_config(recipe, tmp_path):
    flags = ["--use_cpu", "true"]
    if "benchmark: text" in recipe.read_text():  # their corpora are the user's files; stand-ins here
        corpus = tmp_path / "corpus.jsonl"
        corpus.write_text('{"text": "some text"}\n')
        flags += ["--forget_file", str(corpus), "--retain_file", str(corpus)]
    script_args, config, _ = parse_recipe(recipe, flags)
    assert type(config).__name__.lower().startswith(script_args.method.replace("_", ""))
    assert config.remove_unused_columns is False


def test_yaml_values_are_typed_and_flags_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: npo\nmodel_name_or_path: m\nlearning_rate: 1e-5\nbeta: 0.2\noutput_dir: o\n")
    script_args, config, robustness = parse_recipe(recipe, ["--beta", "0.5", "--relearn_steps", "3", "6"])
    assert config.learning_rate == 1e-5 and isinstance(config.learning_rate, float)  # YAML reads 1e-5 as a string
    assert config.beta == 0.5 and robustness.relearn_steps == [3, 6] and script_args.model_name_or_path == "m"


def test_bad_recipes_fail_in_one_line_naming_the_fix(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: npo\nmodel_name_or_path: m\nlearning_rat: 1e-5\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) learning_rat \(did you mean learning_rate\?\)"):
        parse_recipe(recipe)
    recipe.write_text("method: npoo\nmodel_name_or_path: m\n")
    with pytest.raises(ValueError, match="known methods: grad_ascent"):
        parse_recipe(recipe)
    recipe.write_text("method: npo\nmodel_name_or_path: m\nbeta: -1\n")
    with pytest.raises(ValueError, match="beta must be > 0"):
        parse_recipe(recipe)
    recipe.write_text("method: npo\nmodel_name_or_path: m\noptimizer: hybrid\nmax_steps: 30\nhybrid_fo_steps: 10\n")
    with pytest.raises(ValueError, match="ends with a ZO phase; use max_steps=40"):
        parse_recipe(recipe)
    recipe.write_text("method: npo\nmodel_name_or_path: m\nquantization: [fp3]\n")
    with pytest.raises(ValueError, match="fp3"):
        parse_recipe(recipe)
    recipe.write_text("method: npo\nmodel_name_or_path: m\nbenchmark: wmdp\n")
    with pytest.raises(ValueError, match="choose one of tofu, synthetic, text"):
        parse_recipe(recipe)
    recipe.write_text("method: rmu\nmodel_name_or_path: m\nbenchmark: text\n")
    with pytest.raises(ValueError, match="benchmark=text needs forget_file"):
        parse_recipe(recipe)
    with pytest.raises(FileNotFoundError, match="forget_file nowhere.jsonl not found"):
        parse_recipe(recipe, ["--forget_file", "nowhere.jsonl"])
    with pytest.raises(FileNotFoundError, match="recipes/ folder"):
        parse_recipe(tmp_path / "missing.yaml")
