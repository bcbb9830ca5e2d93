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


CASES = [
    # ---- group 8: `hf-unlearn --debug COMMAND` parses like `hf-unlearn COMMAND --debug` ----
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
    folder = tmp_path_factory.mktemp("user_errors")
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
