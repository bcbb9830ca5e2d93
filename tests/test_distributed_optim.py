"""Multi-process runs of the hybrid optimizer: DDP (2 CPU processes over gloo) and DeepSpeed ZeRO."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.scripts.optim_fixtures import save_npo_model


SCRIPT = Path(__file__).parent / "scripts" / "hybrid_npo_run.py"
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _launch(args: list[str], processes: int, timeout: int = 240) -> None:
    if processes == 1:
        command = [sys.executable, str(SCRIPT), *args]
    else:
        # --multi_gpu selects DDP over gloo on a CPU-only machine; --cpu would silently run one process
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), str(SCRIPT), *args,
        ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


@pytest.mark.slow
def test_ddp_hybrid_npo_matches_one_process_with_the_same_global_batch(tmp_path):
    model_path = save_npo_model(tmp_path / "model")
    _launch([model_path, str(tmp_path / "ddp"), "2"], processes=2)
    _launch([model_path, str(tmp_path / "single"), "4"], processes=1)
    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "single" / "rank0.pt")
    start = torch.load(tmp_path / "model" / "model.safetensors") if False else None  # noqa: F841
    logs = json.loads((tmp_path / "ddp" / "logs0.json").read_text())
    assert [log["optim/phase"] for log in logs] == [0, 0, 1, 1]  # the run ended with ZO steps
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name  # no gradient traffic, yet identical replicas
        torch.testing.assert_close(rank0[name], single[name], rtol=0, atol=1e-6)
    single_logs = json.loads((tmp_path / "single" / "logs0.json").read_text())
    assert [log["zo/projected_grad"] for log in logs[2:]] == pytest.approx(
        [log["zo/projected_grad"] for log in single_logs[2:]], rel=1e-3
    )
