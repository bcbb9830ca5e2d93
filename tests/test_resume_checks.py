"""Issue 22, group 2: a resume checks what it resumes. Each checkpoint records its method, optimizer, schedule and data
keys; a resume whose keys differ, from an incomplete checkpoint, past max_steps or of a finished run is refused in one
line with nothing written; a clean resume reports what the uninterrupted run reports (the killed-process version of
the last check is tests/test_resume.py)."""

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hf_unlearn.resume import RECORD_FILE, find_checkpoint, incomplete_reason


ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo.yaml"
STEPS = 4


def flags(model, data, out, *extra):
    return [
        "--model_name_or_path", str(model), "--data_source", "tofu", "--data_dir", str(data), "--output_dir", str(out),
        "--max_steps", str(STEPS), "--hybrid_fo_steps", "1", "--hybrid_zo_steps", "1", "--disable_tqdm", "true",
        "--max_length", "64", "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1",
        "--per_device_train_batch_size", "2", *extra,
    ]  # fmt: skip


def run(*args):
    from hf_unlearn.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", str(DEMO), *map(str, args)])
    return code, err.getvalue()


@pytest.fixture(scope="module")
def whole(tiny_model_dir, synthetic_data_dir, tmp_path_factory):
    """An uninterrupted 4-step hybrid NPO run with a checkpoint after every step."""
    out = tmp_path_factory.mktemp("whole") / "run"
    code, stderr = run(*flags(tiny_model_dir, synthetic_data_dir, out))
    assert code == 0, stderr
    return out


def resumable(whole: Path, tmp_path: Path, step: int) -> Path:
    """A fresh output folder holding only the whole run's checkpoint-`step`: a run killed after that step."""
    out = tmp_path / "resumed"
    shutil.copytree(whole / f"checkpoint-{step}", out / f"checkpoint-{step}")
    return out


def folder_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def test_every_checkpoint_records_its_keys_loss_and_compute(whole):
    record = json.loads((whole / "checkpoint-2" / RECORD_FILE).read_text())
    assert record["keys"]["method"]["method"] == "npo" and record["keys"]["method"]["beta"] == 0.1
    assert record["keys"]["optimizer"]["optimizer"] == "hybrid"
    assert record["keys"]["schedule"]["max_steps"] == STEPS and record["keys"]["schedule"]["learning_rate"] == 1e-3
    assert record["keys"]["data"]["forget_split"] == "forget10" and record["keys"]["data"]["max_length"] == 64
    log = json.loads((whole / "unlearn_report.json").read_text())["training_log"]
    assert record["loss_total"] == pytest.approx(sum(row["loss"] for row in log[:2]), rel=1e-6)
    assert record["compute"]["fo"]["steps"] == 1 and record["compute"]["zo"]["steps"] == 1


def test_clean_resume_reports_what_the_uninterrupted_run_reports(whole, tiny_model_dir, synthetic_data_dir, tmp_path):
    out = resumable(whole, tmp_path, 2)
    code, stderr = run(*flags(tiny_model_dir, synthetic_data_dir, out, "--resume_from_checkpoint", "true"))
    assert code == 0, stderr
    expected, got = (json.loads((d / "unlearn_report.json").read_text()) for d in (whole, out))
    assert got["training"]["global_step"] == STEPS
    # Trainer alone would report the mean loss of steps 3-4 and the passes of those two steps
    assert got["training"]["train_loss"] == expected["training"]["train_loss"]
    assert got["compute"] == expected["compute"] and got["compute"]["fo"]["steps"] == 2
    assert got["training_log"] == expected["training_log"]
    weights = load_file(whole / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--method", "simnpo"], "method ('npo' -> 'simnpo')"),
        (["--optimizer", "adamw"], "optimizer ('hybrid' -> 'adamw')"),
        (["--learning_rate", "0.01"], "learning_rate (0.001 -> 0.01)"),
        (["--max_length", "32"], "max_length (64 -> 32)"),
        (["--beta", "0.5"], "beta (0.1 -> 0.5)"),
    ],
)
def test_resume_with_other_keys_is_refused_naming_them(
    whole, tiny_model_dir, synthetic_data_dir, tmp_path, change, named
):
    out = resumable(whole, tmp_path, 2)
    before = folder_digest(out)
    code, stderr = run(*flags(tiny_model_dir, synthetic_data_dir, out, "--resume_from_checkpoint", "true", *change))
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and "checkpoint-2 was trained with other settings" in stderr
    assert named in stderr
    assert folder_digest(out) == before  # nothing written, nothing loaded into the folder


def test_finished_run_is_not_resumed(whole, tiny_model_dir, synthetic_data_dir):
    before = folder_digest(whole)
    code, stderr = run(*flags(tiny_model_dir, synthetic_data_dir, whole, "--resume_from_checkpoint", "true"))
    assert code == 2 and "holds a finished run" in stderr and "nothing to resume" in stderr, stderr
    assert folder_digest(whole) == before  # report, card and training_args.bin untouched


def test_resume_past_max_steps_is_refused(whole, tiny_model_dir, synthetic_data_dir, tmp_path):
    out = resumable(whole, tmp_path, 4)
    code, stderr = run(*flags(tiny_model_dir, synthetic_data_dir, out, "--resume_from_checkpoint", "true",
                              "--max_steps", "2"))  # fmt: skip
    assert code == 2 and "checkpoint-4 is at step 4, past max_steps=2" in stderr, stderr
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (lambda c: (c / "scheduler.pt").write_bytes(b""), "scheduler.pt is missing or empty"),
        (lambda c: (c / "trainer_state.json").write_text(""), "trainer_state.json is missing or does not parse"),
        (lambda c: (c / "trainer_state.json").write_text('{"global_step": 3'), "does not parse"),
        (lambda c: (c / "model.safetensors").unlink(), "no weights"),
        (lambda c: (c / RECORD_FILE).unlink(), RECORD_FILE),
    ],
)
def test_incomplete_checkpoint_is_skipped_or_refused(whole, tmp_path, damage, reason):
    out = tmp_path / "killed"
    for step in (2, 3):
        shutil.copytree(whole / f"checkpoint-{step}", out / f"checkpoint-{step}")
    assert find_checkpoint("true", str(out)) == str(out / "checkpoint-3")
    damage(out / "checkpoint-3")
    assert reason in incomplete_reason(out / "checkpoint-3")
    assert find_checkpoint("true", str(out)) == str(out / "checkpoint-2")  # the last complete one
    with pytest.raises(ValueError, match=f"checkpoint-3 cannot be resumed: .*{reason}"):
        find_checkpoint(str(out / "checkpoint-3"), str(out))
    shutil.rmtree(out / "checkpoint-2")
    with pytest.raises(
        FileNotFoundError, match=f"no complete checkpoint-N folder \\(the newest, checkpoint-3: .*{reason}"
    ):
        find_checkpoint("latest", str(out))


def test_diverged_run_is_not_resumed_as_it_was(whole, tiny_model_dir, synthetic_data_dir, tmp_path):
    out = resumable(whole, tmp_path, 2)
    (out / "unlearn_report.json").write_text(json.dumps({"schema_version": 1, "stopped": {"step": 3}}))
    code, stderr = run(*flags(tiny_model_dir, synthetic_data_dir, out, "--resume_from_checkpoint", "true"))
    assert code == 2 and "diverged at step 3" in stderr and "lower learning rate" in stderr, stderr


@pytest.mark.parametrize("rank", ["0", "1"])
def test_only_the_launched_rank_zero_writes_the_checkpoint_record(rank, tmp_path, monkeypatch):
    """A Trainer that sees itself as world process zero on rank 1 (transformers' "parallel_mode !=
    ParallelMode.DISTRIBUTED" case) must not write: two writers delete each other's temporary file."""
    from types import SimpleNamespace

    from hf_unlearn.resume import CheckpointRecordCallback

    (tmp_path / "checkpoint-3").mkdir()
    monkeypatch.setenv("RANK", rank)
    trainer = SimpleNamespace(training_loss_total=lambda: 1.5)
    callback = CheckpointRecordCallback(trainer, {"method": "npo"})
    state = SimpleNamespace(is_world_process_zero=True, global_step=3)
    callback.on_save(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    assert (tmp_path / "checkpoint-3" / RECORD_FILE).is_file() == (rank == "0")
