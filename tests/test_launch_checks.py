"""What a launch on a machine without CUDA needs from the config before accelerate builds its state (backend, bf16),
and how a launched rank ends."""

import os
import sys
from types import SimpleNamespace

import pytest

from hf_unlearn import distributed


@pytest.fixture
def cpu_launch(monkeypatch):
    """Rank 0 of two processes started by `accelerate launch` with a DeepSpeed config, on a CPU-only machine."""
    monkeypatch.setattr(distributed, "cuda_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    return monkeypatch


def args(**values):
    return SimpleNamespace(**{"deepspeed": None, "ddp_backend": None, "use_cpu": False, **values})


def test_deepspeed_config_launch_on_cpu_names_gloo(cpu_launch):
    config = args()
    distributed.resolve_cpu_launch(config)
    assert config.ddp_backend == "gloo"  # accelerate then counts both processes, as DeepSpeed does
    assert config.use_cpu is False  # use_cpu would switch DeepSpeed off


def test_ddp_launch_on_cpu_takes_accelerates_gloo_path(cpu_launch):
    cpu_launch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    config = args()
    distributed.resolve_cpu_launch(config)
    assert config.use_cpu is True and config.ddp_backend is None


@pytest.mark.parametrize("world_size,has_cuda,cpu", [("2", False, True), ("1", False, False), ("2", True, False)])
def test_process_state_counts_a_cpu_launch_through_accelerates_gloo_path(monkeypatch, world_size, has_cuda, cpu):
    """The state the sweep guard, evaluation sharding and prepare_source read before any TrainingArguments exist."""
    import accelerate

    made = []
    monkeypatch.setattr(accelerate, "PartialState", lambda **kwargs: made.append(kwargs) or "state")
    monkeypatch.setattr(distributed, "cuda_available", lambda: has_cuda)
    monkeypatch.setenv("WORLD_SIZE", world_size)
    assert distributed.process_state() == "state" and made == [{"cpu": cpu}]


@pytest.mark.parametrize("env,has_cuda", [({"WORLD_SIZE": "1"}, False), ({}, True)], ids=["one_process", "cuda"])
def test_other_launches_keep_their_settings(cpu_launch, env, has_cuda):
    cpu_launch.setattr(distributed, "cuda_available", lambda: has_cuda)
    for key, value in env.items():
        cpu_launch.setenv(key, value)
    config = args()
    distributed.resolve_cpu_launch(config)
    assert config.ddp_backend is None and config.use_cpu is False


def test_impossible_cpu_deepspeed_setups_fail_naming_the_fix(cpu_launch):
    with pytest.raises(ValueError, match="launch with `accelerate launch --config_file recipes/accelerate_configs/"):
        distributed.resolve_cpu_launch(args(deepspeed="ds.json"))
    with pytest.raises(ValueError, match="ddp_backend='nccl' cannot run DeepSpeed .* set ddp_backend=gloo"):
        distributed.resolve_cpu_launch(args(ddp_backend="nccl"))


# ---- a bf16 recipe (written for GPUs) on a machine without one -------------------------------------------------


@pytest.fixture
def no_gpu(monkeypatch, tmp_path):
    """A machine without CUDA (as this one; forced where a GPU exists) and a recipe's `bf16: true`, not yet built."""
    import transformers.utils

    monkeypatch.setattr(distributed, "cuda_available", lambda: False)
    monkeypatch.setattr(transformers.utils, "is_torch_bf16_gpu_available", lambda: False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)

    def bf16_recipe_config(**values):
        from hf_unlearn.trainers import NPOConfig

        return NPOConfig(**{"output_dir": str(tmp_path / "out"), "bf16": True, "report_to": "none", **values})

    return bf16_recipe_config


def test_bf16_recipe_without_a_gpu_runs_as_cpu_autocast(no_gpu, tmp_path):
    import torch
    from transformers import Trainer

    from hf_unlearn.tiny import build_tiny_model
    from tests.helpers import synthetic_tokenizer

    with pytest.warns(UserWarning, match=r"bf16 runs as CPU autocast \(use_cpu=True\).*`--bf16 false`"):
        config = no_gpu()  # transformers alone stops here: "Your setup doesn't support bf16/gpu"
    assert config.bf16 and config.use_cpu and config.device.type == "cpu"
    assert not (tmp_path / "out").exists()
    tokenizer = synthetic_tokenizer()
    trainer = Trainer(model=build_tiny_model(tokenizer), args=config)
    assert trainer.accelerator.mixed_precision == "bf16"
    ids = torch.tensor([tokenizer("Ava Varga was born")["input_ids"]])
    with trainer.accelerator.autocast():
        assert trainer.model(input_ids=ids).logits.dtype == torch.bfloat16  # the forward computes in bf16
    assert next(trainer.model.parameters()).dtype == torch.float32  # the weights stay as loaded


@pytest.mark.parametrize("how", ["accelerate_config", "deepspeed_json"])
def test_bf16_under_deepspeed_without_a_gpu_fails_naming_bf16_false(no_gpu, monkeypatch, tmp_path, how):
    values = {}
    if how == "accelerate_config":  # `accelerate launch --config_file recipes/accelerate_configs/zero2.yaml`
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    else:
        (tmp_path / "ds.json").write_text('{"bf16": {"enabled": "auto"}, "zero_optimization": {"stage": 2}}')
        values["deepspeed"] = str(tmp_path / "ds.json")
    with pytest.raises(ValueError, match=r"^bf16 under DeepSpeed needs a GPU.*pass `--bf16 false`") as caught:
        no_gpu(**values)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_bf16_false_and_gpu_machines_are_left_alone(no_gpu, monkeypatch):
    assert not no_gpu(bf16=False).use_cpu
    monkeypatch.setattr(distributed, "cuda_available", lambda: True)  # a GPU without bf16: transformers' advice
    config = SimpleNamespace(bf16=True, bf16_full_eval=False, use_cpu=False, deepspeed=None)
    distributed.resolve_cpu_bf16(config)
    assert not config.use_cpu


# ---- the end of a launched process ------------------------------------------------------------------------------


class Exited(Exception):
    """Stands for `os._exit` in these tests."""


@pytest.fixture
def one_rank_group(monkeypatch, tmp_path):
    """A real gloo group of one process, presented as rank 0 of two (barrier recorded, not run); `os._exit` and
    the atexit handlers recorded instead of run."""
    import atexit
    import os

    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(distributed, "_launched_group_ended", False)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: calls.append("barrier"))
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: calls.append("atexit"))

    def fake_exit(code):
        calls.append(("os._exit", code))
        raise Exited

    monkeypatch.setattr(os, "_exit", fake_exit)
    yield calls
    if dist.is_initialized():
        dist.destroy_process_group()


def test_a_finished_rank_waits_for_the_others_then_exits_without_interpreter_teardown(one_rank_group):
    """DDP keeps gloo's threads alive past destroy_process_group(): the process must not finalize around them."""
    import threading
    import time

    import torch.distributed as dist

    distributed.end_process_group(finished=True)
    assert one_rank_group == ["barrier"] and not dist.is_initialized()
    late = []
    threading.Thread(target=lambda: (time.sleep(0.2), late.append("written"))).start()  # a non-daemon writer
    with pytest.raises(Exited):
        distributed.exit_process(3)
    assert one_rank_group == ["barrier", "atexit", ("os._exit", 3)]
    assert late == ["written"]  # joined before the process ends, as the interpreter would


def test_a_failed_rank_does_not_wait_for_peers_that_may_never_arrive(one_rank_group):
    import torch.distributed as dist

    distributed.end_process_group(finished=False)
    assert one_rank_group == [] and not dist.is_initialized()
    with pytest.raises(Exited):
        distributed.exit_process(2)
    assert one_rank_group == ["atexit", ("os._exit", 2)]


def test_a_finished_rank_whose_peer_left_still_ends(one_rank_group, monkeypatch):
    import torch.distributed as dist

    def peer_gone(*args, **kwargs):
        one_rank_group.append("barrier")
        raise dist.DistBackendError("Connection closed by peer")  # what gloo raises when the other rank has exited

    monkeypatch.setattr(dist, "barrier", peer_gone)
    distributed.end_process_group(finished=True)
    assert one_rank_group == ["barrier"] and not dist.is_initialized()


def test_without_a_process_group_the_process_exits_normally(monkeypatch):
    monkeypatch.setattr(distributed, "_launched_group_ended", False)
    distributed.end_process_group(finished=True)  # nothing to close
    with pytest.raises(SystemExit) as caught:
        distributed.exit_process(2)
    assert caught.value.code == 2


GLOO_THREADS_AFTER_DESTROY = """
import gc, os, sys
import torch, torch.distributed as dist

def gloo_threads():
    names = (open(f"/proc/self/task/{task}/comm").read().strip() for task in os.listdir("/proc/self/task"))
    return sorted(name for name in names if "gloo" in name)

dist.init_process_group("gloo")
if sys.argv[1] == "ddp":
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))
    model(torch.ones(2, 3)).sum().backward()
    del model
gc.collect()
dist.destroy_process_group()
gc.collect()
with open(os.path.join(sys.argv[2], sys.argv[1] + os.environ["RANK"]), "w") as f:
    f.write(" ".join(gloo_threads()))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread names from /proc")
def test_ddp_keeps_gloo_threads_alive_past_destroy_process_group(tmp_path):
    """Why a launched rank ends with `os._exit` (hf_unlearn.distributed.exit_process): after DDP, gloo's threads
    outlive `destroy_process_group()` and `gc.collect()`, so a normal exit would finalize the interpreter around
    them. Should torch release them one day, this test fails and the workaround can be reconsidered."""
    import socket
    import subprocess

    script = tmp_path / "probe.py"
    script.write_text(GLOO_THREADS_AFTER_DESTROY)
    threads = {}
    for mode in ("plain", "ddp"):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
        result = subprocess.run(
            [*command, str(script), mode, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        threads[mode] = [(tmp_path / f"{mode}{rank}").read_text() for rank in (0, 1)]
    assert threads["plain"] == ["", ""]  # without DDP, destroying the group joins gloo's threads
    assert all("pt_gloo_runloop" in names and "gloo_tcp_loop" in names for names in threads["ddp"]), threads
