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


def _zero_config(stage: int, **zero) -> dict:
    return {
        "zero_optimization": {"stage": stage, **zero},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
    }


def _zero_run(tmp_path, name: str, config: dict, robustness: bool = True, zo_fields: dict | None = None) -> list[dict]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    out = tmp_path / name
    _run(
        lambda port: [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            str(SCRIPT.parent / "zero_hybrid_run.py"), str(out), str(path), json.dumps(zo_fields or {}),
        ],
        timeout=400,
    )  # fmt: skip
    stage3 = config["zero_optimization"]["stage"] == 3
    expected = "DeepSpeedZeroOptimizer_Stage3" if stage3 else "DeepSpeedZeroOptimizer"
    assert (out / "engine0.txt").read_text() == f"DeepSpeedEngine {expected}"
    snaps, other_rank = (torch.load(out / f"snapshots{r}.pt") for r in (0, 1))
    assert all(torch.equal(snaps[-1][n], other_rank[-1][n]) for n in snaps[-1])  # replicas agree
    if robustness:
        _check_robustness(out, snaps[-1], gathered=stage3)
    return snaps


def _check_robustness(out, final_weights: dict, gathered: bool) -> None:
    """The train-end checks ran on the final weights (gathered under ZeRO-3) and relearning lowered the loss."""
    from tests.scripts.optim_fixtures import tiny_llama
    from tests.scripts.zero_hybrid_run import token_loss

    run = json.loads((out / "robustness.json").read_text())["runs"][-1]
    assert run["zero3_gathered"] is gathered
    model = tiny_llama()
    model.load_state_dict(final_weights, strict=False)  # the snapshots hold every parameter; buffers are rebuilt
    with torch.no_grad():
        expected = token_loss(model.eval(), None)["loss"]
    assert run["unlearned"]["loss"] == pytest.approx(expected, rel=1e-5)
    curve = [point["metrics"]["loss"] for point in run["relearn"]["curve"]]
    assert [point["step"] for point in run["relearn"]["curve"]] == [1, 2] and curve[-1] < expected
    assert run["quantization"]["rtn4"]["metrics"]["loss"] != expected


@pytest.mark.slow
def test_zero_zo_phase_survives_the_next_fo_step(tmp_path):
    runs = {
        "zero2": _zero_run(tmp_path, "zero2", _zero_config(2)),
        # every tensor partitioned, then the default where this tiny model's tensors all stay gathered (persistent)
        "zero3": _zero_run(tmp_path, "zero3", _zero_config(3, stage3_param_persistence_threshold=0)),
        "zero3_persistent": _zero_run(tmp_path, "zero3_persistent", _zero_config(3)),
    }
    name = "model.layers.0.mlp.up_proj.weight"
    for snaps in runs.values():
        steps = [(after[name] - before[name]).abs() for before, after in zip(snaps, snaps[1:])]
        # schedule FO, ZO, FO, ZO with FO lr 1e-6 and ZO lr 1e-2 (bias-corrected AdaZO: first step = lr per weight)
        assert 0 < float(steps[0].max()) <= 1.1e-6  # FO phases work under ZeRO
        assert float(steps[1].mean()) == pytest.approx(1e-2, rel=1e-3)  # the ZO step
        # the next FO step moves the weights by ~1e-6 only: had it restored the fp32 masters from before the ZO
        # step, it would have undone the whole 1e-2 ZO change
        assert float(steps[2].max()) <= 1.1e-6
    # ZeRO-3 perturbs whole gathered tensors with the same directions, so it reproduces the ZeRO-2 run
    for other in ("zero3", "zero3_persistent"):
        for n, value in runs["zero2"][-1].items():
            torch.testing.assert_close(runs[other][-1][n], value, rtol=0, atol=1e-7)


def _bf16_zero_config(stage: int, **zero) -> dict:
    return {**_zero_config(stage, **zero), "bf16": {"enabled": True}}


@pytest.mark.slow
def test_zero_bf16_zo_updates_reach_the_fp32_masters_and_restore_is_exact(tmp_path):
    """bf16 weights over DeepSpeed's fp32 master partitions (ZeRO-2 and ZeRO-3, every tensor partitioned), with
    Rademacher directions kept in the bf16 cache: the fast engine still writes to the masters."""
    fields = {"zo_direction": "rademacher", "zo_cache_directions": True}
    runs = {
        "zero2": _zero_run(tmp_path, "zero2", _bf16_zero_config(2), robustness=False, zo_fields=fields),
        "zero3": _zero_run(
            tmp_path, "zero3", _bf16_zero_config(3, stage3_param_persistence_threshold=0), False, zo_fields=fields
        ),
    }
    for name, snaps in runs.items():
        assert all(value.dtype == torch.bfloat16 for value in snaps[-1].values())
        for rank in (0, 1):
            # DeepSpeed's fp32 master partitions at the start and after the steps FO, ZO, FO, ZO; the ZO engine
            # attaches to them at the first ZO step
            log = torch.load(tmp_path / name / f"masters{rank}.pt")
            assert [entry["attached"] for entry in log] == [False, False, True, True, True]
            assert all(entry["separate_masters"] and entry["low_is_cast_master"] for entry in log[2:])
            fo_step, zo_step, next_fo = ((log[k + 1]["master"] - log[k]["master"]).abs() for k in range(3))
            # bias-corrected AdaZO's first step moves each master element by lr = 1e-2 (lr·|g|/(|g| + eps): less
            # only where |g| is near eps, and not at all on the partition padding)
            assert float(zo_step.max()) == pytest.approx(1e-2, rel=1e-3)
            assert float(zo_step.median()) == pytest.approx(1e-2, rel=1e-3)
            # FO steps (lr 1e-6) move the same masters by ~1e-6: the ZO change is kept, not overwritten
            assert 0 < float(fo_step.max()) <= 1.1e-6 and 0 < float(next_fo.max()) <= 1.1e-6
            restore = json.loads((tmp_path / name / f"restore{rank}.json").read_text())
            assert restore["weights_exact"] and restore["masters_exact"]  # cast(master) restores bit for bit
            assert restore["projected_grad"] != 0
    # the two stages perturb and update the same elements the same way; only the FO reductions' order differs
    for n, value in runs["zero2"][-1].items():
        torch.testing.assert_close(runs["zero3"][-1][n].float(), value.float(), rtol=0, atol=2**-7 * value.abs().max())
