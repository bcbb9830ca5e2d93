"""Issue 22, group 7: one run per output folder. A live lock refuses a second run in one line, a dead run's lock is
replaced, the lock goes away on every exit path, and only the main process of a launch takes it."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hf_unlearn.lock import LOCK_FILE, output_lock, read_lock


ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo.yaml"


def flags(model, data, out, *extra):
    return [
        "--model_name_or_path", str(model), "--data_source", "tofu", "--data_dir", str(data), "--output_dir", str(out),
        "--max_steps", "2", "--hybrid_fo_steps", "1", "--hybrid_zo_steps", "1", "--disable_tqdm", "true",
        "--max_length", "64", *extra,
    ]  # fmt: skip


@pytest.fixture
def live_pid():
    """The pid of a process that runs for the test's duration (the holder of a 'live' lock)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


@pytest.fixture
def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(folder: Path, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "x"}))


def test_second_run_into_a_locked_folder_is_refused_in_one_line(
    cli, tiny_model_dir, synthetic_data_dir, tmp_path, live_pid
):
    out = tmp_path / "out"
    write_lock(out, live_pid)
    code, stdout, stderr = cli("run", DEMO, *flags(tiny_model_dir, synthetic_data_dir, out, "--overwrite_output_dir",
                                                   "true"))  # fmt: skip
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and f"pid {live_pid}" in stderr and "in use by another run" in stderr
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written, the holder's lock untouched
    assert read_lock(out)["pid"] == live_pid


def test_lock_taken_while_the_run_writes_and_released_after(cli, tiny_model_dir, synthetic_data_dir, tmp_path):
    from hf_unlearn import lock

    seen = []
    real_take = lock._take

    def spy(folder):
        real_take(folder)
        seen.append(read_lock(folder))

    out = tmp_path / "out"
    lock._take = spy
    try:
        code, _, stderr = cli("run", DEMO, *flags(tiny_model_dir, synthetic_data_dir, out))
    finally:
        lock._take = real_take
    assert code == 0, stderr
    assert seen and seen[0]["pid"] == os.getpid()
    assert not (out / LOCK_FILE).exists() and (out / "model.safetensors").is_file()


def test_stale_lock_of_a_dead_run_is_replaced(cli, tiny_model_dir, synthetic_data_dir, tmp_path, dead_pid):
    out = tmp_path / "out"
    write_lock(out, dead_pid)
    # the stale lock alone does not make the folder "hold files"; the run replaces it and removes it at the end
    code, _, stderr = cli("run", DEMO, *flags(tiny_model_dir, synthetic_data_dir, out))
    assert code == 0, stderr
    assert not (out / LOCK_FILE).exists() and (out / "unlearn_report.json").is_file()


def test_lock_of_another_host_is_obeyed(tmp_path, dead_pid):
    write_lock(tmp_path / "out", dead_pid, host="some-other-machine")
    with pytest.raises(FileExistsError, match="in use by another run .*some-other-machine.*delete"):
        with output_lock(tmp_path / "out"):
            pass


@pytest.mark.parametrize("exit_with", [RuntimeError("training failed"), KeyboardInterrupt(), SystemExit(3)])
def test_lock_released_on_every_exit_path(tmp_path, exit_with):
    out = tmp_path / "out"
    with pytest.raises(type(exit_with)):
        with output_lock(out):
            assert read_lock(out)["pid"] == os.getpid()
            (out / "partial.bin").write_bytes(b"x")
            raise exit_with
    assert not (out / LOCK_FILE).exists() and (out / "partial.bin").exists()


def test_lock_folder_created_for_nothing_is_removed_and_other_ranks_take_no_lock(tmp_path, live_pid):
    with output_lock(tmp_path / "new"):
        assert (tmp_path / "new" / LOCK_FILE).is_file()
    assert not (tmp_path / "new").exists()  # created by the lock, left empty: removed
    held = tmp_path / "held"
    write_lock(held, live_pid)
    with output_lock(held, main_process=False):  # rank 1 of the launch whose rank 0 holds the lock
        assert read_lock(held)["pid"] == live_pid
    assert read_lock(held)["pid"] == live_pid  # not released by a process that did not take it


def test_other_ranks_do_not_refuse_a_folder_rank_0_locked(tiny_model_dir, synthetic_data_dir, tmp_path, monkeypatch,
                                                          live_pid):  # fmt: skip
    from hf_unlearn.recipes import parse_recipe

    out = tmp_path / "out"
    write_lock(out, live_pid)
    monkeypatch.setenv("RANK", "1")
    recipe = parse_recipe(DEMO, flags(tiny_model_dir, synthetic_data_dir, out))
    assert recipe.config.output_dir == str(out)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(FileExistsError, match="in use by another run"):
        parse_recipe(DEMO, flags(tiny_model_dir, synthetic_data_dir, out))


def test_sweep_does_not_delete_a_cell_another_process_is_training(tmp_path, live_pid):
    from hf_unlearn.sweep import Cell, OptimizerSpec, run_cell

    folder = tmp_path / "adamw_seed0"
    write_lock(folder, live_pid)
    (folder / "checkpoint-1").mkdir()
    cell = Cell(optimizer=OptimizerSpec.parse("adamw"), seed=0, output_dir=folder)
    with pytest.raises(FileExistsError, match="in use by another run"):
        run_cell(None, cell, None)
    assert (folder / "checkpoint-1").is_dir() and read_lock(folder)["pid"] == live_pid
