"""Recipe parsing: every shipped recipe parses, YAML values keep their types, every bad input fails in one line."""

from pathlib import Path

import pytest
import yaml

from hf_unlearn.launch import NotSelfLaunching, check_self_launching
from hf_unlearn.recipes import LAUNCH_KEY, ScriptArguments, parse_recipe
from tests.helpers import load_script


ROOT = Path(__file__).resolve().parents[1]
# Unlearning recipes name their method; recipes/smollm2/finetune.yaml is a `hf-unlearn finetune --config` file (TRL's).
YAMLS = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate_configs" not in p.parts)
RECIPES = [p for p in YAMLS if "\nmethod: " in p.read_text()]
FINETUNE_CONFIGS = [p for p in YAMLS if p not in RECIPES]


def recipe_id(path: Path) -> str:
    return str(path.relative_to(ROOT / "recipes"))


def write(tmp_path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "some text"}\n')
    return path


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
    others = {
        f"tofu/{split}_{method}_{optimizer}.yaml"
        for split in ("forget01", "forget05", "forget10")
        for method in ("undial", "ce_u", "satimp", "wga")
        for optimizer in ("adamw", "hybrid")
    }
    assert others <= names and len(others) == 24


def test_committed_recipes_equal_the_generator_output():
    generator = load_script("make_recipes")
    expected = generator.all_recipes()
    assert len(expected) == 69
    for relative, text in expected.items():
        assert (ROOT / relative).read_text() == text, f"{relative} differs: run python scripts/make_recipes.py"


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_every_shipped_recipe_launches_itself(recipe):
    text = recipe.read_text()
    compile(text, str(recipe), "exec")  # Python compiles the whole file before running its first line
    check_self_launching(recipe)
    values = yaml.safe_load(text)
    assert next(iter(values)) == LAUNCH_KEY and isinstance(values[LAUNCH_KEY], str)


def test_the_checker_names_the_line_python_cannot_read(tmp_path, tiny_model_dir):
    launch = (ROOT / "recipes" / "demo.yaml").read_text().splitlines()[3]
    assert launch.startswith(f"{LAUNCH_KEY}: ")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"# a comment\n{launch}\nmethod: npo\nmodel_name_or_path: org/llama-2-7b\n")
    with pytest.raises(NotSelfLaunching, match=r"r.yaml:4: Python cannot read `model_name_or_path: org/llama-2-7b`"):
        check_self_launching(recipe)
    recipe.write_text(f'{launch}\nmethod: npo\nmodel_name_or_path: "org/llama-2-7b"\nquantization:\n  - fp4\n')
    with pytest.raises(NotSelfLaunching, match=r"r.yaml:5: `- fp4` is indented; .* \[a, b\]"):
        check_self_launching(recipe)
    recipe.write_text(f'method: npo\nmodel_name_or_path: "{tiny_model_dir}"\n')
    with pytest.raises(NotSelfLaunching, match=r"r.yaml:1: the first entry must be the launch line"):
        check_self_launching(recipe)
    # ...while the same recipe outside the subset still parses for `hf-unlearn run`
    assert parse_recipe(recipe).script.model_name_or_path == str(tiny_model_dir)
    recipe.write_text(f'{launch}\nmethod: npo\nmodel_name_or_path: "{tiny_model_dir}"\nquantization: [fp4]\n')
    check_self_launching(recipe)
    assert parse_recipe(recipe).robustness.quantization == ["fp4"]


def test_the_checker_command_prints_one_line_per_recipe_outside_the_subset(tmp_path, capsys):
    from hf_unlearn.launch import main

    outside = tmp_path / "nested.yaml"
    outside.write_text("method: npo\nmodel_name_or_path: m\n")
    assert main([str(ROOT / "recipes" / "demo.yaml")]) == 0
    assert main([str(ROOT / "recipes" / "demo.yaml"), str(outside)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{outside}:1: the first entry must be the launch line")


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_every_recipe_parses_into_its_method_config(recipe, tmp_path, tiny_model_dir, corpus, synthetic_data_dir):
    # The recipes name Hub models and the user's corpora; local stand-ins here (the Hub is off in tests).
    flags = ["--use_cpu", "true", "--model_name_or_path", str(tiny_model_dir)]
    text = recipe.read_text()
    if any(f"data_source: {s}" in text for s in ("muse", "wmdp", "jsonl")):
        flags += ["--forget_file", str(corpus), "--retain_file", str(corpus)]
    if "\nretain_model: " in text:  # the SmolLM2 sweep names the retain model and data its first stages write
        flags += ["--retain_model", str(tiny_model_dir), "--data_dir", str(synthetic_data_dir)]
    if "method: altpo" in text:  # the recipe names the file `hf-unlearn alternates` would write
        alternates = tmp_path / "alternates.jsonl"
        alternates.write_text('{"question": "Q?", "answer": "A.", "alternate": "B."}\n')
        flags += ["--alternates_file", str(alternates)]
    parsed = parse_recipe(recipe, flags)
    assert type(parsed.config).__name__.lower().startswith(parsed.script.method.replace("_", ""))
    assert parsed.config.remove_unused_columns is False


def test_finetune_configs_parse_as_trl_configs(tmp_path, tiny_model_dir):
    from hf_unlearn.finetune import parse_finetune_args

    assert [recipe_id(p) for p in FINETUNE_CONFIGS] == ["smollm2/finetune.yaml"]
    for path in FINETUNE_CONFIGS:
        flags = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "out")]
        script, config, model = parse_finetune_args(["--config", str(path), *flags])
        assert script.forget_split == "forget01" and config.num_train_epochs == 4 and config.bf16
        assert not config.gradient_checkpointing  # TRL turns it on by default; a 135M model does not need it


def test_yaml_values_are_typed_and_flags_override(tmp_path, tiny_model_dir):
    recipe = write(tmp_path, f"method: npo\nmodel_name_or_path: {tiny_model_dir}\nlearning_rate: 1e-5\nbeta: 0.2\n")
    parsed = parse_recipe(recipe, ["--beta", "0.5", "--relearn_steps", "3", "6", "--output_dir", "o"])
    assert parsed.config.learning_rate == 1e-5 and isinstance(parsed.config.learning_rate, float)  # YAML: a string
    assert parsed.config.beta == 0.5 and parsed.robustness.relearn_steps == [3, 6]


def test_negative_scientific_numbers_survive_yaml_and_flags(tmp_path, tiny_model_dir):
    recipe = write(tmp_path, f"method: simnpo\nmodel_name_or_path: {tiny_model_dir}\nmargin: -1.0e-5\n")
    assert parse_recipe(recipe).config.margin == -1.0e-5
    assert parse_recipe(recipe, ["--margin", "-2e-5"]).config.margin == -2e-5


def test_method_flag_switches_the_config_class(tmp_path, tiny_model_dir):
    recipe = write(tmp_path, f"method: npo\nmodel_name_or_path: {tiny_model_dir}\nalpha: 0.5\n")
    parsed = parse_recipe(recipe, ["--method", "simnpo"])
    assert type(parsed.config).__name__ == "SimNPOConfig" and parsed.config.alpha == 0.5
    recipe = write(tmp_path, f"method: npo\nmodel_name_or_path: {tiny_model_dir}\nref_log_probs: online\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) for method rmu: ref_log_probs"):
        parse_recipe(recipe, ["--method", "rmu"])


def test_keys_renamed_before_the_first_release_are_unknown_keys(tmp_path, tiny_model_dir, corpus):
    """`benchmark` and `retain_model_path` were renamed (data_source, retain_model) before anything was released: no
    shim translates them; they are refused like any unknown key, in one line that names them."""
    recipe = write(tmp_path, f"method: npo\nmodel_name_or_path: {tiny_model_dir}\nretain_model_path: {corpus}\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) for method npo: retain_model_path \(did you mean"):
        parse_recipe(recipe)


def test_untested_paths_parse_into_the_fields_users_set(tmp_path, tiny_model_dir, corpus):
    recipe = write(
        tmp_path,
        f"method: npo\nmodel_name_or_path: {tiny_model_dir}\nref_model_path: {tiny_model_dir}\nzo_seed: 7\n"
        'retain_split: retain95\nqa_template: "Q: {question}\\nA: "\nlora_r: 4\ntext_field: body\n',
    )
    parsed = parse_recipe(recipe)
    assert parsed.config.ref_model_path == str(tiny_model_dir) and parsed.config.zo_seed == 7
    assert parsed.script.retain_split == "retain95" and parsed.script.qa_template == "Q: {question}\nA: "
    assert parsed.script.peft_rank == 4 and parsed.script.text_field == "body"
    assert parse_recipe(recipe, ["--lora_r", "0", "--use_peft", "true"]).script.peft_rank == 16  # TRL's default


BAD = [
    ("learning_rat: 1e-5", ValueError, "unknown key(s) for method npo: learning_rat (did you mean learning_rate"),
    ("beta: -1", ValueError, "beta must be > 0"),
    ("optimizer: hybrid\nmax_steps: 30\nhybrid_fo_steps: 10", ValueError, "ends with a ZO phase; use max_steps=40"),
    ("quantization: [fp3]", ValueError, "fp3"),
    ("data_source: wmdpp", ValueError, "choose one of tofu, synthetic, muse, wmdp, jsonl"),
    ("data_source: wmdp", ValueError, "data_source=wmdp needs forget_file"),
    ("data_source: jsonl\nforget_file: nowhere.jsonl", FileNotFoundError, "forget_file nowhere.jsonl not found"),
    ("data_source: tofu\ndata_dir: no/such/dir", FileNotFoundError, "data_dir no/such/dir is not a folder"),
    ("zo_mu: .nan", ValueError, "zo_mu=nan must be a finite number > 0"),
    ("learning_rate: .inf", ValueError, "learning_rate=inf must be a finite number > 0"),
    ("optimizer: adamm", ValueError, "optimizer='adamm' is unknown"),
    ("retain_loss: mse", ValueError, "retain_loss must be one of nll, kl"),
    ("retain_model: ./no/such/model", FileNotFoundError, "retain_model folder ./no/such/model does not exist"),
    ("qa_template: 'Q: {q}'", ValueError, "has no '{question}' field"),
    ("max_length: 2", ValueError, "max_length=2 is too small"),
    ("lora_r: -1", ValueError, "lora_r=-1 must be >= 0"),
]


@pytest.mark.parametrize(("line", "error", "message"), BAD, ids=[b[0].split(":")[0] for b in BAD])
def test_bad_recipe_fails_in_one_line_naming_the_fix(tmp_path, tiny_model_dir, line, error, message):
    recipe = write(tmp_path, f"method: npo\nmodel_name_or_path: {tiny_model_dir}\n{line}\n")
    with pytest.raises(error, match="^[^\n]*$") as err:
        parse_recipe(recipe)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("method: npoo\n", ValueError, "known methods: grad_ascent, grad_diff, npo, simnpo, rmu, idk_dpo"),
        ("model_name_or_path: m\n", ValueError, "No method given"),
        ("method: npo\nmodel_name_or_path: ./missing_model\n", FileNotFoundError, "does not exist"),
        ("method: npo\n", ValueError, "model_name_or_path is required"),
        ("- a list\n", ValueError, "must be a YAML mapping"),
        ("method: npo\n  bad: indent\n", ValueError, "is not valid YAML"),
    ],
)
def test_bad_recipe_files_fail_in_one_line(tmp_path, text, error, message):
    with pytest.raises(error, match="^[^\n]*$") as err:
        parse_recipe(write(tmp_path, text))
    assert message in str(err.value)


def test_missing_recipe_and_unknown_flag(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="recipes/ folder"):
        parse_recipe(tmp_path / "missing.yaml")
    recipe = write(tmp_path, f"method: npo\nmodel_name_or_path: {tiny_model_dir}\n")
    with pytest.raises(ValueError, match=r"Command line: unknown key\(s\) for method npo: bta \(did you mean beta"):
        parse_recipe(recipe, ["--bta", "0.1"])


def test_every_script_field_is_documented():
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(ScriptArguments))


def test_peft_fields_follow_trl_model_config_names(tmp_path, tiny_model_dir):
    from hf_unlearn.pipeline import peft_config

    recipe = write(tmp_path, f"method: npo\nmodel_name_or_path: {tiny_model_dir}\n")
    assert peft_config(parse_recipe(recipe).script) is None
    lora = peft_config(
        parse_recipe(recipe, ["--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj"]).script
    )
    assert (lora.r, lora.lora_alpha, set(lora.target_modules)) == (16, 16, {"q_proj", "v_proj"})  # TRL's defaults
    assert peft_config(parse_recipe(recipe, ["--lora_r", "4"]).script).r == 4
