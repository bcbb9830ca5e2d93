"""Kill a real `hf-unlearn run` with SIGKILL in the middle of a hybrid ZO phase, resume it with the same command plus
`--resume_from_checkpoint true`, and get what an uninterrupted run gets: the same weights bit for bit, the same report
numbers, and no duplicated or half-written files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file


ROOT = Path(__file__).resolve().parents[1]
DEMO_RECIPE = ROOT / "recipes" / "demo.yaml"
MAX_STEPS, FO_STEPS, ZO_STEPS = 40, 1, 3  # ZO steps: 2, 3, 4, 6, 7, 8, ...


def is_zo_step(step: int) -> bool:
    return (step - 1) % (FO_STEPS + ZO_STEPS) >= FO_STEPS


def command(model_dir, data_dir, output_dir) -> list[str]:
    flags = {
        "model_name_or_path": model_dir, "data_source": "tofu", "data_dir": data_dir, "output_dir": output_dir,
        "max_steps": MAX_STEPS, "hybrid_fo_steps": FO_STEPS, "hybrid_zo_steps": ZO_STEPS,
        "per_device_train_batch_size": 2, "save_strategy": "steps", "save_steps": 1, "logging_steps": 1,
        "evaluate": "true", "evaluate_before_training": "false", "eval_max_new_tokens": 4, "disable_tqdm": "true",
        "max_length": 64,
    }  # fmt: skip
    argv = [sys.executable, "-m", "hf_unlearn", "run", str(DEMO_RECIPE)]
    for key, value in flags.items():
        argv += [f"--{key}", str(value)]
    return argv


def environment() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["HF_UNLEARN_CACHE"] = env.get("HF_UNLEARN_CACHE", str(Path(os.environ.get("TMPDIR", "/tmp")) / "hf_unlearn"))
    return env


def complete_checkpoints(output_dir: Path) -> list[int]:
    """The steps of the checkpoints a resume may start from (hf_unlearn.resume's definition of complete)."""
    from hf_unlearn.resume import incomplete_reason

    return sorted(int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*") if incomplete_reason(p) is None)


def report_numbers(output_dir: Path) -> dict:
    report = json.loads((output_dir / "unlearn_report.json").read_text())
    log = [
        {k: v for k, v in row.items() if "runtime" not in k and "per_second" not in k}
        for row in report["training_log"]
    ]
    return {
        "log": log,
        "evaluations": {k: v["values"] for k, v in report["evaluations"].items()},
        "stopped": report["stopped"],
        # carried in the checkpoint (hf_unlearn.resume): the whole run's, not the resumed half's
        "train_loss": report["training"]["train_loss"],
        "compute": report["compute"],
    }


def all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_killed_hybrid_run_resumes_bit_identical(tiny_model_dir, synthetic_data_dir, tmp_path):
    env = environment()
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(command(tiny_model_dir, synthetic_data_dir, whole), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    process = subprocess.Popen(
        command(tiny_model_dir, synthetic_data_dir, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        saved = complete_checkpoints(killed)
        # a checkpoint after a ZO step that the next step continues: the run is in the middle of a ZO phase
        if saved and saved[-1] >= 2 * (FO_STEPS + ZO_STEPS) and is_zo_step(saved[-1]) and is_zo_step(saved[-1] + 1):
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    resumed_from = complete_checkpoints(killed)[-1]
    assert is_zo_step(resumed_from) and resumed_from < MAX_STEPS
    assert not (killed / "model.safetensors").exists() and not (killed / "unlearn_report.json").exists()

    again = subprocess.run(
        command(tiny_model_dir, synthetic_data_dir, killed) + ["--resume_from_checkpoint", "true"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]

    expected, got = load_file(whole / "model.safetensors"), load_file(killed / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert expected[name].equal(got[name]), f"{name} differs after kill and resume from step {resumed_from}"
    assert report_numbers(killed) == report_numbers(whole)
    # the same files, once each, none half-written: a checkpoint per step, each complete, no temporary files
    assert all_files(killed) == all_files(whole)
    assert complete_checkpoints(killed) == list(range(1, MAX_STEPS + 1))
    assert not [name for name in all_files(killed) if name.endswith(".tmp") or "/." in f"/{name}"]
