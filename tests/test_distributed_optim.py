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


def _run(command_for_port, timeout: int) -> None:
    """Run a launcher; retry once on a port taken between choosing it and binding it (other test runs share ports)."""
    for attempt in range(2):
        result = subprocess.run(
            command_for_port(_free_port()), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
        )
        if result.returncode == 0:
            return
        if attempt == 0 and "address already in use" in (result.stdout + result.stderr).lower():
            continue
        break
    raise AssertionError(result.stdout[-3000:] + result.stderr[-5000:])


def _launch(args: list[str], processes: int, timeout: int = 240) -> None:
    if processes == 1:
        _run(lambda port: [sys.executable, str(SCRIPT), *args], timeout)
        return
    # --multi_gpu selects DDP over gloo on a CPU-only machine; --cpu would silently run one process
    _run(
        lambda port: [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), str(SCRIPT), *args,
        ],
        timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_ddp_hybrid_npo_matches_one_process_with_the_same_global_batch(tmp_path):
    model_path = save_npo_model(tmp_path / "model")
    _launch([model_path, str(tmp_path / "ddp"), "2"], processes=2)
    _launch([model_path, str(tmp_path / "single"), "4"], processes=1)
    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "single" / "rank0.pt")
    logs = json.loads((tmp_path / "ddp" / "logs0.json").read_text())
    assert [log["optim/phase"] for log in logs] == [0, 0, 1, 1]  # the run ended with ZO steps
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name  # no gradient traffic, yet identical replicas
        torch.testing.assert_close(rank0[name], single[name], rtol=0, atol=1e-6)
    single_logs = json.loads((tmp_path / "single" / "logs0.json").read_text())
    assert [log["zo/projected_grad"] for log in logs[2:]] == pytest.approx(
        [log["zo/projected_grad"] for log in single_logs[2:]], rel=1e-3
    )


ZERO2 = {
    "zero_optimization": {"stage": 2},
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
    "bf16": {"enabled": False},
    "fp16": {"enabled": False},
}


@pytest.mark.slow
def test_zero2_zo_phase_survives_the_next_fo_step(tmp_path):
    config = tmp_path / "zero2.json"
    config.write_text(json.dumps(ZERO2))
    _run(
        lambda port: [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            str(SCRIPT.parent / "zero_hybrid_run.py"), str(tmp_path / "out"), str(config),
        ],
        timeout=400,
    )  # fmt: skip
    assert (tmp_path / "out" / "engine0.txt").read_text() == "DeepSpeedEngine DeepSpeedZeroOptimizer"
    snaps, other_rank = (torch.load(tmp_path / "out" / f"snapshots{r}.pt") for r in (0, 1))
    name = "model.layers.0.mlp.up_proj.weight"
    steps = [(after[name] - before[name]).abs() for before, after in zip(snaps, snaps[1:])]
    # schedule FO, ZO, FO, ZO with FO lr 1e-6 and ZO lr 1e-2 (bias-corrected AdaZO: first step = lr per weight)
    assert 0 < float(steps[0].max()) <= 1.1e-6  # FO phases work under ZeRO-2
    assert float(steps[1].mean()) == pytest.approx(1e-2, rel=1e-3)  # the ZO step
    # the next FO step moves the weights by ~1e-6 only: had it restored the fp32 masters from before the ZO step,
    # it would have undone the whole 1e-2 ZO change
    assert float(steps[2].max()) <= 1.1e-6
    assert all(torch.equal(snaps[-1][n], other_rank[-1][n]) for n in snaps[-1])
