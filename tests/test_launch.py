"""Recipes that launch themselves: `python recipe.yaml` and `accelerate launch recipe.yaml`, typed as a user would."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_unlearn.report import UnlearnReport
from hf_unlearn.tiny import build_tiny_model
from tests.helpers import synthetic_tokenizer


ROOT = Path(__file__).resolve().parents[1]
DEMO_RECIPE = ROOT / "recipes" / "demo.yaml"


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    folder = tmp_path_factory.mktemp("launch") / "original"
    tokenizer = synthetic_tokenizer()
    build_tiny_model(tokenizer, hidden_size=32, intermediate_size=64).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def accelerate() -> str:
    found = Path(sys.executable).with_name("accelerate")
    return str(found) if found.is_file() else shutil.which("accelerate")


def launch(command: list[str], original: Path, out: Path, processes: int = 1) -> UnlearnReport:
    """Run `command recipes/demo.yaml --flags...` in a fresh process; the run's report."""
    flags = ["--model_name_or_path", str(original), "--data_dir", str(out / "data"), "--output_dir", str(out)]
    flags += ["--synthetic_num_authors", "10", "--max_steps", "2", "--hybrid_fo_steps", "1"]
    flags += ["--per_device_train_batch_size", "1", "--disable_tqdm", "true"]
    # The subprocess imports the hf_unlearn under test, wherever pytest runs from.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [*command, str(DEMO_RECIPE.relative_to(ROOT)), *flags], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = UnlearnReport.load(out)
    # Each process walks ceil(n / processes) forget examples per epoch at batch 1: the epoch after 2 steps
    # shows how many processes shared the data.
    forget = (out / "data" / "forget10.json").read_text().strip().splitlines()
    steps_per_epoch = -(-len(forget) // processes)
    assert report.training["global_step"] == 2 and report.training["epoch"] == pytest.approx(2 / steps_per_epoch)
    before = AutoModelForCausalLM.from_pretrained(original).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    return report


def test_python_runs_the_recipe_file_with_its_flags(original, tmp_path):
    report = launch([sys.executable], original, tmp_path / "python")
    assert report.method == "npo" and report.optimizer == "hybrid"


def test_accelerate_launch_runs_the_recipe_file(original, tmp_path):
    report = launch([accelerate(), "launch", "--num_processes", "1"], original, tmp_path / "single")
    assert report.method == "npo" and report.training["train_loss"] > 0


@pytest.mark.slow
def test_accelerate_launch_multi_gpu_runs_the_recipe_on_two_processes(original, tmp_path):
    launch([accelerate(), "launch", "--multi_gpu", "--num_processes", "2"], original, tmp_path / "ddp", processes=2)
