"""Issue 22 (groups 1, 3, 4, 5, 6, 8, 9): the second layer of bad input, as a new user meets it.

Every case keeps the bad-input suite's shape (tests/test_bad_inputs.py): the exit code, exactly one stderr line naming
the key or file and the fix, no traceback, every input folder unchanged, and no output folder left behind.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from hf_unlearn.cli import report_error
from hf_unlearn.errors import UserInputError


ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "recipes" / "demo.yaml")


@dataclass
class Case:
    id: str
    argv: list[str]  # {model} {data} {out} {in} are filled in per test
    code: int
    says: list[str]  # substrings of the one stderr line: the key or file, and the fix


def run_flags(**extra) -> list[str]:
    flags = {"model_name_or_path": "{model}", "data_source": "tofu", "data_dir": "{data}", "output_dir": "{out}"}
    flags.update(max_steps=2, hybrid_fo_steps=1, hybrid_zo_steps=1, disable_tqdm="true", max_length=64)
    flags.update(extra)
    return [item for key, value in flags.items() if value is not None for item in (f"--{key}", str(value))]


def run(*extra_argv, recipe=DEMO, **flags) -> list[str]:
    return ["run", recipe, *run_flags(**flags), *extra_argv]


def typed(name: str, **flags) -> list[str]:
    """A run of the recipe {in}/<name>.yaml (a value of the wrong type), without the flags that would hide it."""
    return ["run", f"{{in}}/{name}.yaml", *run_flags(**flags)]


EVAL = ["eval", "--model", "{model}", "--benchmark", "tofu", "--data_dir", "{data}", "--output_dir", "{out}"]
ATTACK = ["attack", "--model", "{model}", "--benchmark", "nll", "--data_dir", "{data}", "--output_dir", "{out}"]
DEMO_CMD = ["demo", "--output_dir", "{out}"]

CASES = [
    # ---- group 1: bounded work ----
    Case(
        "lmc-points-unbounded",
        ["lmc", "{model}", "{model}", "--points", "100000", "--data_dir", "{data}", "--output_dir", "{out}"],
        2,
        ["points", "1001"],
    ),  # fmt: skip
    # ---- group 3: a recipe value of the wrong type, named with the fix ----
    Case("type-list-for-number", typed("lr_list"), 2, ["learning_rate is a list", "takes a number"]),
    Case("type-mapping-for-number", typed("beta_mapping"), 2, ["beta is a mapping", "takes a number"]),
    Case("type-null-for-number", typed("steps_null", max_steps=None), 2, ["max_steps is null", "integer"]),
    Case("type-fraction-for-int", typed("steps_fraction", max_steps=None), 2, ["max_steps", "2.5", "max_steps: 3"]),
    Case("type-method-list", typed("method_list"), 2, ["method is a list", "name one method"]),
    Case("type-quantization-scalar", typed("quantization_scalar"), 2, ["quantization", "quantization: [rtn4]"]),
    # ---- group 4: settings that would do nothing while saying they did something ----
    Case("run-max-steps-zero", run(max_steps=0), 2, ["max_steps=0", ">= 1"]),
    Case(
        "run-epochs-zero", run(max_steps=-1, num_train_epochs=0), 2, ["num_train_epochs=0", "trains nothing"]
    ),  # fmt: skip
    Case("run-eval-tokens-zero", run(eval_max_new_tokens=0), 2, ["eval_max_new_tokens=0", ">= 1"]),
    Case("eval-new-tokens-negative", [*EVAL, "--max_new_tokens", "-5"], 2, ["max_new_tokens=-5", ">= 1"]),
    Case("eval-max-examples-zero", [*EVAL, "--max_examples", "0"], 2, ["max_examples=0", ">= 1"]),
    Case("attack-relearn-lr-zero", [*ATTACK, "--relearn_lr", "0"], 2, ["relearn_lr=0", "relearn_steps"]),
    Case("attack-max-examples-zero", [*ATTACK, "--max_examples", "0"], 2, ["max_examples=0", ">= 1"]),
    Case("demo-max-steps-zero", [*DEMO_CMD, "--max_steps", "0"], 2, ["--max_steps 0", "at least 1"]),
    # ---- group 5: a tokenizer or max_length the model cannot take, found from the configs ----
    Case(
        "tokenizer-past-embeddings",
        run(model_name_or_path="{in}/wide_tokenizer"),
        2,
        ["model_name_or_path", "embedding rows", "resize"],
    ),  # fmt: skip
    Case(
        "retain-model-fewer-rows", run(retain_model="{in}/narrow_model"), 2, ["retain_model", "embedding rows"]
    ),  # fmt: skip
    Case(
        "reference-model-fewer-rows", run(ref_model_path="{in}/narrow_model"), 2, ["ref_model_path", "embedding rows"]
    ),  # fmt: skip
    Case(
        "max-length-past-learned-positions",
        run(model_name_or_path="{in}/gpt2_32", max_length=64),
        2,
        ["max_length=64", "n_positions", "<= 32"],
    ),  # fmt: skip
    # ---- group 6: corrupt files named, with what to do ----
    Case(
        "weights-truncated",
        run(model_name_or_path="{in}/truncated_weights"),
        2,
        ["model.safetensors", "not a complete safetensors file", "again"],
    ),  # fmt: skip
    Case(
        "weights-garbage",
        [*EVAL[:2], "{in}/garbage_weights", *EVAL[3:]],
        2,
        ["model.safetensors", "not a complete safetensors file", "again"],
    ),  # fmt: skip
    Case("weights-empty", [*ATTACK[:2], "{in}/empty_weights", *ATTACK[3:]], 2, ["model.safetensors is empty"]),
    Case(
        "retain-stats-truncated",
        [*EVAL, "--retain_stats", "{in}/stats_truncated.json"],
        2,
        ["stats_truncated.json", "not valid JSON", "delete it"],
    ),  # fmt: skip
    Case("report-truncated", ["card", "{in}/report_truncated"], 2, ["unlearn_report.json", "not valid JSON", "rerun"]),
    Case("report-empty", ["card", "{in}/report_empty"], 2, ["unlearn_report.json is empty", "rerun"]),
    Case("recipe-binary", ["run", "{in}/binary.yaml"], 2, ["binary.yaml", "YAML recipe"]),
    Case("recipe-nul-bytes", ["run", "{in}/nul.yaml"], 2, ["nul.yaml", "binary file"]),
    # ---- group 9: cheap checks before expensive work ----
    Case("demo-seeds-zero", [*DEMO_CMD, "--seeds", "0"], 2, ["--seeds 0", "at least one seed"]),
    Case("demo-optimizer-unknown", [*DEMO_CMD, "--optimizers", "lion9"], 2, ["lion9", "choose from"]),
    Case("bench-output-is-a-folder", ["bench", "--only", "zo_peak_memory", "--output", "{in}"], 2, ["is a folder"]),
]


def tree_hash(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir, synthetic_data_dir):
    """The bad inputs of this file, built once."""
    import json
    import shutil

    import yaml

    from hf_unlearn.tiny import build_tiny_model

    folder = tmp_path_factory.mktemp("user_errors")
    recipes = {
        "lr_list": {"learning_rate": [1.0e-3]},
        "beta_mapping": {"beta": {"value": 0.1}},
        "steps_null": {"max_steps": None},
        "steps_fraction": {"max_steps": 2.5},
        "method_list": {"method": ["npo", "rmu"]},
        "quantization_scalar": {"quantization": "rtn4"},
    }
    for name, values in recipes.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({"method": "npo", **values}))
    (folder / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    (folder / "nul.yaml").write_bytes(b"method: npo\x00\x00\x00")
    model = Path(tiny_model_dir)
    weights = (model / "model.safetensors").read_bytes()
    for name, data in (
        ("truncated", weights[: len(weights) // 2]),
        ("garbage", bytes(range(256)) * 8),
        ("empty", b""),
    ):
        shutil.copytree(model, folder / f"{name}_weights")
        (folder / f"{name}_weights" / "model.safetensors").write_bytes(data)
    # A tokenizer with tokens the model has no embedding rows for.
    from transformers import AutoTokenizer

    shutil.copytree(model, folder / "wide_tokenizer")
    wide = AutoTokenizer.from_pretrained(model)
    wide.add_tokens([f"<extra_{i}>" for i in range(5)])
    wide.save_pretrained(folder / "wide_tokenizer")
    # A retain model whose config declares fewer embedding rows than the run's tokenizer has tokens.
    shutil.copytree(model, folder / "narrow_model")
    config = json.loads((model / "config.json").read_text())
    (folder / "narrow_model" / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))
    tokenizer = AutoTokenizer.from_pretrained(model)
    gpt2 = build_tiny_model(tokenizer, "gpt2", n_positions=32)
    gpt2.save_pretrained(folder / "gpt2_32")
    tokenizer.save_pretrained(folder / "gpt2_32")
    (folder / "stats_truncated.json").write_text('{"format": "hf_unlearn.tofu_retain_stats/v1", "truth_ratio": [0.1,')
    for name, text in (("report_truncated", '{"schema_version": 1, "method": "np'), ("report_empty", "")):
        (folder / name).mkdir()
        (folder / name / "unlearn_report.json").write_text(text)
    return folder


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_user_error(case, cli, inputs, tiny_model_dir, synthetic_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_UNLEARN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    values = {"model": str(tiny_model_dir), "data": str(synthetic_data_dir), "out": str(out), "in": str(inputs)}
    argv = [a.format(**values) for a in case.argv]
    watched = {"model": Path(tiny_model_dir), "data": Path(synthetic_data_dir), "inputs": inputs}
    watched["recipes"] = ROOT / "recipes"
    before = {name: tree_hash(path) for name, path in watched.items()}

    code, stdout, stderr = cli(*argv)

    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == case.code, f"exit {code}; stderr: {stderr[-1500:]}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr[-1500:]}"
    assert "Traceback" not in stderr and "Traceback" not in stdout
    for text in case.says:
        assert text in lines[0], f"{text!r} not in: {lines[0]}"
    assert {name: tree_hash(path) for name, path in watched.items()} == before, "an input was modified"
    assert not out.exists(), "a refused command left an output folder behind"


# ---- group 6: exit 2 for bad input, 1 for a bug inside the library ----


@pytest.mark.parametrize(
    "err, code",
    [
        (UserInputError("max_steps: 2.5 is not an integer"), 2),
        (ValueError("learning_rate must be > 0"), 2),
        (FileNotFoundError("nope.yaml not found"), 2),
        (TypeError("unsupported operand type(s)"), 1),
        (KeyError("beta1"), 1),
        (RuntimeError("index out of range in self"), 1),
    ],
    ids=["user-input", "value", "file", "type-error-is-a-bug", "key-error-is-a-bug", "runtime"],
)
def test_exit_code_separates_bad_input_from_library_bugs(err, code, capsys):
    assert report_error("run", err) == code
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_type_error_inside_a_command_exits_1(cli, monkeypatch):
    import hf_unlearn.cli.card as card

    def broken(args):
        raise TypeError("'NoneType' object is not subscriptable")

    monkeypatch.setattr(card, "main", broken)
    code, _, stderr = cli("card", "somewhere")
    assert code == 1 and "NoneType" in stderr


# ---- group 8 ----


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_flag_works_before_and_after_the_command(cli, tmp_path, where):
    argv = ["synthetic", str(tmp_path / "data"), "--num_authors", "3"]
    code, stdout, stderr = cli(*(["--debug", *argv] if where == "before" else [*argv, "--debug"]))
    assert code == 0, stderr
    assert (tmp_path / "data" / "forget10.json").is_file()


def test_debug_before_a_raw_argv_command_shows_the_traceback(cli, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        cli("--debug", "run", str(tmp_path / "nope.yaml"))


# ---- group 1: no hang, no unbounded silent run ----


def test_synthetic_benchmark_has_unique_names_past_the_name_grid(cli, tmp_path):
    """TOFU's own size (200 authors, 220 with holdout) is past the 14 x 10 first/last grid; it looped forever."""
    from hf_unlearn.benchmarks.synthetic import FIRST, LAST, make_synthetic_tofu

    splits = make_synthetic_tofu(num_authors=200, qa_per_author=1)
    born = [r["question"] for r in splits["full"] + splits["holdout10"]]
    assert len(born) == 220 and len(set(born)) == 220
    assert len(born) > len(FIRST) * len(LAST)
    # The first 140 names are the grid's own (no middle initial), as the benchmark always had them.
    small = make_synthetic_tofu(num_authors=20, qa_per_author=1)["full"]
    assert all(len(r["question"].split()) == 5 for r in small), small[0]  # "Where was Ava Varga born?"
    code, _, stderr = cli("synthetic", tmp_path / "tofu", "--num_authors", "200", "--qa_per_author", "1")
    assert code == 0, stderr
    assert len((tmp_path / "tofu" / "full.json").read_text().splitlines()) == 200


def test_recipe_with_tofu_sized_synthetic_benchmark_parses(tiny_model_dir, tmp_path):
    """`synthetic_num_authors: 200` hung in parse (the synthetic folder check builds the benchmark to compare it)."""
    from hf_unlearn.recipes import parse_recipe

    (tmp_path / "data").mkdir()
    flags = run_flags(data_source="synthetic", synthetic_num_authors=200, max_steps=2)
    values = {"model": str(tiny_model_dir), "data": str(tmp_path / "data"), "out": str(tmp_path / "out")}
    recipe = parse_recipe(DEMO, [a.format(**values) for a in flags])
    assert recipe.script.synthetic_num_authors == 200


def test_lmc_refuses_points_past_the_bound_in_the_library():
    from hf_unlearn.analysis import MAX_POINTS, linear_mode_connectivity

    with pytest.raises(UserInputError, match=f"between 2 .* and {MAX_POINTS}"):
        linear_mode_connectivity(None, None, lambda model: 0.0, points=MAX_POINTS + 1)


# ---- group 9: names and settings checked before any weight loads ----


@pytest.mark.parametrize(
    "argv, says",
    [
        (["attack", "--model", "{model}", "--forget_split", "forget99", "--benchmark", "nll"], "forget99"),
        (["attack", "--model", "{model}", "--benchmark", "glue"], "glue"),
        (["attack", "--model", "{model}", "--quantization", "rtn99"], "rtn99"),
        (["lmc", "{model}", "{model}", "--split", "forget99"], "forget99"),
        (["lmc", "{model}", "{model}", "--split", "forget10", "--eval_splits", "retain1000"], "retain1000"),
        (["lmc", "{model}", "{model}", "--points", "1"], "points"),
        (["eval", "--model", "{model}", "--benchmark", "tofu", "--forget_split", "forget99"], "forget99"),
    ],
    ids=[
        "attack-split",
        "attack-benchmark",
        "attack-quantization",
        "lmc-split",
        "lmc-eval-split",
        "lmc-points",
        "eval",
    ],
)
def test_names_are_checked_before_any_weight_loads(
    argv, says, cli, tiny_model_dir, synthetic_data_dir, tmp_path, monkeypatch
):
    import hf_unlearn.cli.eval
    import hf_unlearn.loading

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the settings were checked")

    monkeypatch.setattr(hf_unlearn.loading, "load_model_and_tokenizer", no_weights)
    monkeypatch.setattr(hf_unlearn.cli.eval, "load_model_and_tokenizer", no_weights)
    values = {"model": str(tiny_model_dir)}
    argv = [a.format(**values) for a in argv]
    out = tmp_path / "out"
    code, _, stderr = cli(*argv, "--data_dir", synthetic_data_dir, "--output_dir", out)
    assert code == 2, stderr
    assert says in stderr and "weights loaded" not in stderr
    assert not out.exists()


@pytest.mark.slow  # a fresh interpreter: whether torch gets imported cannot be seen from inside this one
def test_run_reports_a_missing_recipe_before_importing_torch(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys; from hf_unlearn.cli import main; code = main(['run', sys.argv[1]]); "
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported'); sys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "nope.yaml")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "nope.yaml not found" in done.stderr
    assert done.stdout.strip() == "torch not imported"


def test_recipe_types_accept_what_the_parser_converts():
    """Strings stand for scalars (YAML reads 1e-3 as a string; the parser converts it), lists of the element type
    pass, and peft's one-string `lora_target_modules: all-linear` stays a string."""
    from hf_unlearn.attacks.robustness import RobustnessConfig
    from hf_unlearn.recipes import ScriptArguments, check_value_types
    from hf_unlearn.trainers import get_method

    classes = (ScriptArguments, get_method("npo").config_class, RobustnessConfig)
    good = {
        "learning_rate": "1e-3", "max_steps": 3, "num_train_epochs": 2, "eval_steps": None, "report_to": "none",
        "quantization": ["rtn4", "fp4"], "relearn_steps": [5, 10], "lr_scheduler_kwargs": {"num_cycles": 1},
        "bf16": False, "lora_target_modules": "all-linear", "seed": 0,
    }  # fmt: skip
    check_value_types(good, classes, "Recipe r.yaml")
    for key, value in {
        "relearn_steps": ["10"],
        "max_steps": True,
        "forget_split": 10,
        "gamma": [1],
    }.items():
        with pytest.raises(UserInputError, match=f"Recipe r.yaml: {key} is "):
            check_value_types({key: value}, classes, "Recipe r.yaml")
