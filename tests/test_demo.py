"""The embedded demo (what `make demo` runs), shrunk: a sweep per regime, the table with ±, the plots."""

import importlib.resources
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import hf_unlearn
from hf_unlearn.cli import main
from hf_unlearn.demo import DEFAULT_RECIPE
from hf_unlearn.recipes import load_recipe


ROOT = Path(__file__).resolve().parents[1]


def test_demo_sweeps_both_regimes_and_prints_the_tables(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--output_dir", str(out), "--num_authors", "6", "--finetune_epochs", "8", "--seeds", "2"]
    argv += ["--optimizers", "adamw", "adazo", "--max_steps", "4", "--relearn_steps", "2", "--max_new_tokens", "4"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out
    # Trainer's log lines (fine-tuning and every run) go to stderr as JSON; stdout keeps the demo's own lines
    assert "train_runtime" not in printed and "train_runtime" in captured.err
    for regime in ("paper", "small_change"):
        report = json.loads((out / regime / "sweep_report.json").read_text())
        assert [r["label"] for r in report["summary"]] == ["AdamW", "AdaZO"]
        assert [c["name"] for c in report["controls"]] == [
            "original", "retain", "noise ~ AdaZO", "noise ~ AdaZO"
        ]  # fmt: skip
        assert report["controls"][1]["metrics"]["forget_quality"] == 1.0  # the retain model against its own statistics
        for cell in report["cells"]:
            assert [p["step"] for p in cell["relearn"]] == [0, 2] and cell["global_step"] == 4
            assert 0 < cell["codes_changed"]["rtn4"] <= 1 and set(cell["quantized"]) == {"rtn4", "rtn8"}
        assert (out / regime / "sweep_grade.png").is_file() and (out / regime / "sweep_relearning.png").is_file()
        assert f"{regime} regime (mean ± std over 2 seeds)" in printed
    paper = json.loads((out / "paper" / "sweep_report.json").read_text())
    small = json.loads((out / "small_change" / "sweep_report.json").read_text())
    # The small-change regime's learning rate moves fewer 4-bit codes than the paper's
    codes = [r["summary"][0]["columns"]["codes_changed/rtn4"]["mean"] for r in (paper, small)]
    assert codes[1] < codes[0]
    assert "| AdamW | 2 |" in printed and "of the rtn4 codes" in printed
    assert (out / "demo_report.md").read_text().startswith("# hf_unlearn demo")
    assert not (out / "report.json").exists()


def test_demo_recipe_is_package_data_identical_to_the_checkout_copy():
    """The demo reads its recipe from the package (importlib.resources), not from the checkout: a wheel carries it."""
    packaged = importlib.resources.files("hf_unlearn").joinpath("demo.yaml")
    assert packaged.is_file() and Path(str(packaged)) == DEFAULT_RECIPE
    assert DEFAULT_RECIPE.parent == Path(hf_unlearn.__file__).parent
    assert packaged.read_text() == (ROOT / "recipes" / "demo.yaml").read_text()  # one recipe, two places
    recipe = load_recipe(DEFAULT_RECIPE)  # its model and data are what the demo writes first
    assert recipe["method"] == "npo" and recipe["optimizer"] == "hybrid"


@pytest.mark.slow
def test_wheel_carries_the_demo_recipe_and_no_perf(tmp_path):
    """The built wheel holds the demo's recipe (and the other package data) and not the bench's perf/ modules."""
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*build, str(ROOT)], check=True, capture_output=True, text=True)
    (wheel,) = tmp_path.glob("hf_unlearn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"hf_unlearn/demo.yaml", "hf_unlearn/accelerate_configs/zero3.yaml", "hf_unlearn/cli/logs.py"} <= names
    assert not [n for n in names if n.startswith("hf_unlearn/perf/")]
    assert not [n for n in names if n.startswith(("tests/", "recipes/", "scripts/", "benchmarks_perf/"))]
