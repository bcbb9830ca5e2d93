"""Process-group settings that `accelerate launch` leaves to the training script on a machine without CUDA.

Under a DeepSpeed accelerate config (`distributed_type: DEEPSPEED`) on CPU, `accelerate.PartialState` picks its
backend from the accelerators it finds; with no CUDA it finds none, so it records "no backend" and counts ONE
process, while DeepSpeed (which initialises the process group itself, over gloo) counts all of them. The `auto`
batch sizes are then filled in for one process and DeepSpeed's batch assertion fails on every rank; had it not,
each rank would also have trained on the whole data set and written the outputs as "rank 0". Naming the backend
(`ddp_backend="gloo"`, which TrainingArguments hands to PartialState) makes both count the same processes.
"""

from __future__ import annotations

import os


def launched_processes() -> int:
    """How many processes the launcher started (torchrun/accelerate set WORLD_SIZE; 1 for a plain `python`)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_cpu_deepspeed_backend(args) -> None:
    """Name gloo as the backend of a multi-process DeepSpeed launch on CPU, or fail at start where that cannot help.

    Called from `UnlearnConfig.__post_init__`, before the Trainer's distributed state exists.
    """
    if launched_processes() <= 1 or cuda_available():
        return
    if args.deepspeed:
        # With `deepspeed=` in TrainingArguments, transformers builds PartialState without a backend argument, so
        # ddp_backend cannot reach it and accelerate would still count one process.
        raise ValueError(
            f"deepspeed={args.deepspeed!r} with {launched_processes()} processes on a machine without CUDA: "
            "accelerate would count one process; unset deepspeed and launch with `accelerate launch --config_file "
            "recipes/accelerate_configs/zero2.yaml` (or zero3.yaml; `deepspeed_config_file:` there for a JSON)"
        )
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return  # DDP: `--multi_gpu` on CPU already runs gloo through accelerate's MULTI_CPU path
    if args.ddp_backend is None:
        args.ddp_backend = "gloo"
    elif args.ddp_backend != "gloo":
        raise ValueError(
            f"ddp_backend={args.ddp_backend!r} cannot run DeepSpeed on a machine without CUDA; set ddp_backend=gloo"
        )
