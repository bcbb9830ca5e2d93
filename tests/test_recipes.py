import importlib.util
from pathlib import Path

import pytest
import yaml

from hf_unlearn.launch import LAUNCH_KEY, NotSelfLaunching, check_self_launching
from hf_unlearn.recipes import parse_recipe


ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate_configs" not in p.parts)


def recipe_id(path: Path) -> str:
    return str(path.relative_to(ROOT / "recipes"))


def test_recipes_folder_holds_the_paper_settings():
    names = {recipe_id(p) for p in RECIPES}
    assert names >= {
        "demo.yaml", "tofu_npo_hybrid.yaml", "tofu_npo_adam.yaml", "wmdp_rmu_hybrid.yaml", "muse_news_npo_hybrid.yaml",
        "muse/news_npo_adamw.yaml", "muse/books_npo_hybrid.yaml",
        "wmdp/bio_rmu_adamw.yaml", "wmdp/bio_rmu_hybrid.yaml",
    }  # fmt: skip
    grid = {
        f"tofu/{split}_{method}_{optimizer}.yaml"
        for split in ("forget01", "forget05", "forget10")
        for method in ("npo", "grad_diff", "simnpo")
        for optimizer in ("adamw", "signadam", "adazo", "hybrid")
    }
    assert grid <= names and len(grid) == 36


def test_committed_recipes_equal_the_generator_output():
    spec = importlib.util.spec_from_file_location("make_recipes", ROOT / "scripts" / "make_recipes.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    expected = generator.all_recipes()
    assert len(expected) == 42
    for relative, text in expected.items():
        assert (ROOT / relative).read_text() == text, f"{relative} differs: run python scripts/make_recipes.py"


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_every_shipped_recipe_launches_itself(recipe):
    text = recipe.read_text()
    compile(text, str(recipe), "exec")  # Python compiles the whole file before running its first line
    check_self_launching(recipe)
    values = yaml.safe_load(text)
    assert next(iter(values)) == LAUNCH_KEY and isinstance(values[LAUNCH_KEY], str)


def test_the_checker_names_the_line_python_cannot_read(tmp_path):
    launch = (ROOT / "recipes" / "demo.yaml").read_text().splitlines()[3]
    assert launch.startswith(f"{LAUNCH_KEY}: ")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"# a comment\n{launch}\nmethod: npo\nmodel_name_or_path: org/llama-2-7b\n")
    with pytest.raises(NotSelfLaunching, match=r"r.yaml:4: Python cannot read `model_name_or_path: org/llama-2-7b`"):
        check_self_launching(recipe)
    recipe.write_text(f'{launch}\nmethod: npo\nmodel_name_or_path: "org/llama-2-7b"\nquantization:\n  - fp4\n')
    with pytest.raises(NotSelfLaunching, match=r"r.yaml:5: `- fp4` is indented; .* \[a, b\]"):
        check_self_launching(recipe)
    recipe.write_text('method: npo\nmodel_name_or_path: "m"\n')
    with pytest.raises(NotSelfLaunching, match=r"r.yaml:1: the first entry must be the launch line"):
        check_self_launching(recipe)
    # ...while the same recipe outside the subset still parses for `hf-unlearn run`
    assert parse_recipe(recipe)[0].model_name_or_path == "m"
    recipe.write_text(f'{launch}\nmethod: npo\nmodel_name_or_path: "org/llama-2-7b"\nquantization: [fp4]\n')
    check_self_launching(recipe)
    assert parse_recipe(recipe)[2].quantization == ["fp4"]


def test_the_checker_command_prints_one_line_per_recipe_outside_the_subset(tmp_path, capsys):
    from hf_unlearn.launch import main

    outside = tmp_path / "nested.yaml"
    outside.write_text("method: npo\nmodel_name_or_path: m\n")
    assert main([str(ROOT / "recipes" / "demo.yaml")]) == 0
    assert main([str(ROOT / "recipes" / "demo.yaml"), str(outside)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{outside}:1: the first entry must be the launch line")


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
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


def test_peft_fields_follow_trl_model_config_names(tmp_path):
    from hf_unlearn.run import peft_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: npo\nmodel_name_or_path: m\n")
    assert peft_config(parse_recipe(recipe)[0]) is None
    lora = peft_config(parse_recipe(recipe, ["--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj"])[0])
    assert (lora.r, lora.lora_alpha, set(lora.target_modules)) == (16, 16, {"q_proj", "v_proj"})  # TRL's defaults
    assert peft_config(parse_recipe(recipe, ["--lora_r", "4"])[0]).r == 4


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
