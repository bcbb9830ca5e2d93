"""What a launch on a machine without CUDA needs from the config before accelerate builds its state."""

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
    return SimpleNamespace(**{"deepspeed": None, "ddp_backend": None, **values})


def test_deepspeed_config_launch_on_cpu_names_gloo(cpu_launch):
    config = args()
    distributed.resolve_cpu_deepspeed_backend(config)
    assert config.ddp_backend == "gloo"  # accelerate then counts both processes, as DeepSpeed does


@pytest.mark.parametrize(
    "env,has_cuda",
    [({"ACCELERATE_USE_DEEPSPEED": "false"}, False), ({"WORLD_SIZE": "1"}, False), ({}, True)],
    ids=["ddp", "one_process", "cuda"],
)
def test_other_launches_keep_their_backend(cpu_launch, env, has_cuda):
    cpu_launch.setattr(distributed, "cuda_available", lambda: has_cuda)
    for key, value in env.items():
        cpu_launch.setenv(key, value)
    config = args()
    distributed.resolve_cpu_deepspeed_backend(config)
    assert config.ddp_backend is None


def test_impossible_cpu_deepspeed_setups_fail_naming_the_fix(cpu_launch):
    with pytest.raises(ValueError, match="launch with `accelerate launch --config_file recipes/accelerate_configs/"):
        distributed.resolve_cpu_deepspeed_backend(args(deepspeed="ds.json"))
    with pytest.raises(ValueError, match="ddp_backend='nccl' cannot run DeepSpeed .* set ddp_backend=gloo"):
        distributed.resolve_cpu_deepspeed_backend(args(ddp_backend="nccl"))
