"""What `accelerate launch` leaves to the training script on a machine without CUDA, and how a launched rank ends.

A data-parallel launch (`accelerate launch --multi_gpu`, or a MULTI_GPU config) on a machine without CUDA: accelerate
takes its gloo (MULTI_CPU) path only when told `cpu=True`. Without it, `PartialState` finds no accelerator and
records one process: every rank then trains alone, as "rank 0", on the whole data set and writes the outputs, while
the launch looks like DDP. `resolve_cpu_launch` sets `use_cpu=True` for such a launch (TrainingArguments hands it
to PartialState as `cpu=True`), and :func:`process_state` gives the commands that need the launch's state before any
TrainingArguments exist the same count.

Under a DeepSpeed accelerate config (`distributed_type: DEEPSPEED`) on CPU, `accelerate.PartialState` picks its
backend from the accelerators it finds; with no CUDA it finds none, so it records "no backend" and counts ONE
process, while DeepSpeed (which initialises the process group itself, over gloo) counts all of them. The `auto`
batch sizes are then filled in for one process and DeepSpeed's batch assertion fails on every rank; had it not,
each rank would also have trained on the whole data set and written the outputs as "rank 0". Naming the backend
(`ddp_backend="gloo"`, which TrainingArguments hands to PartialState) makes both count the same processes.

A bf16 recipe (written for GPUs) on such a machine: TrainingArguments refuses `bf16=True` without a bf16 GPU unless
`use_cpu=True`, and advises exactly that, which a user who typed `accelerate launch recipe.yaml` never set.
`resolve_cpu_bf16` sets it where CPU autocast can run the recipe (plain or DDP launches: accelerate's MULTI_CPU
path also takes `cpu=True`), and refuses DeepSpeed, which `use_cpu` would switch off, in one line naming
`--bf16 false`.

Also here: the ZeRO-3 helpers (:func:`is_zero3`, :func:`gathered_copy`) that in-run evaluation and the robustness
checks share.
"""

from __future__ import annotations

import os
import warnings


def launched_processes() -> int:
    """How many processes the launcher started (torchrun/accelerate set WORLD_SIZE; 1 for a plain `python`)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def deepspeed_requested(args) -> bool:
    """A DeepSpeed run: `deepspeed=` in the arguments, or an accelerate config with `distributed_type: DEEPSPEED`."""
    return bool(args.deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def wait_for_every_rank() -> None:
    """A barrier across the launch's processes (nothing in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def resolve_cpu_bf16(args) -> None:
    """Run a bf16 recipe on a machine without a bf16 GPU as CPU autocast (`use_cpu=True`), or refuse DeepSpeed.

    Called from `UnlearnConfig.__post_init__` before TrainingArguments' own check, which would stop the run with
    advice (assign `use_cpu`) that names no flag of ours.
    """
    from transformers.utils import (
        is_torch_bf16_available_on_device,
        is_torch_bf16_gpu_available,
        is_torch_xla_available,
    )

    if not (args.bf16 or args.bf16_full_eval) or args.use_cpu:
        return
    if is_torch_bf16_gpu_available() or is_torch_xla_available():
        return
    if cuda_available():
        return  # a GPU without bf16: transformers' own message (it names the GPU generation needed) is the right one
    if deepspeed_requested(args):
        raise ValueError(
            "bf16 under DeepSpeed needs a GPU, and this machine has none (bf16 runs on CPU only as autocast with "
            "use_cpu, which turns DeepSpeed off); pass `--bf16 false` to train in fp32, or run on a GPU."
        )
    if not is_torch_bf16_available_on_device("cpu"):
        raise ValueError("bf16 needs a GPU or a PyTorch with CPU bf16 autocast; pass `--bf16 false` to train in fp32.")
    args.use_cpu = True
    if int(os.environ.get("RANK", "0")) == 0:
        warnings.warn(
            "No GPU: the recipe's bf16 runs as CPU autocast (use_cpu=True), weights stay in their loaded dtype; "
            "pass `--bf16 false` for fp32 compute.",
            stacklevel=3,
        )


def process_state():
    """accelerate's `PartialState` for this process, counting every launched process on a machine without CUDA too."""
    from accelerate import PartialState

    return PartialState(cpu=launched_processes() > 1 and not cuda_available())


def resolve_cpu_launch(args) -> None:
    """Make a multi-process launch on a machine without CUDA a real one: DDP over gloo (`use_cpu=True`), or DeepSpeed
    with gloo named as its backend; fail at start where neither can help.

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
    if not deepspeed_requested(args):
        args.use_cpu = True  # accelerate's MULTI_CPU (gloo) path; without it every rank would train alone
        return
    if args.ddp_backend is None:
        args.ddp_backend = "gloo"
    elif args.ddp_backend != "gloo":
        raise ValueError(
            f"ddp_backend={args.ddp_backend!r} cannot run DeepSpeed on a machine without CUDA; set ddp_backend=gloo"
        )


# ---- the end of a launched process ------------------------------------------------------------------------------
#
# A rank of a multi-process launch used to end with `destroy_process_group()` and a normal interpreter exit. That
# does not stop gloo: DistributedDataParallel (every Trainer run on two or more processes wraps its model in one)
# keeps a reference to the backend that neither deleting the model nor `gc.collect()` drops, so with torch 2.13 the
# backend's two worker threads (`pt_gloo_runloop`) and its TCP loop thread (`gloo_tcp_loop`) are still running after
# `destroy_process_group()`. They then live on through interpreter finalization and the C++ runtime's static
# destructors, while the other rank, which exits at its own pace, closes the TCP connections under them. Under CPU
# load that teardown is slow, and a finished rank 0 was seen to die at exit with "terminate called without an
# active exception" (SIGABRT), the C++ runtime's abort of the kind a teardown around live threads ends in. So a
# launched process is ended in an order that leaves no such window:
# every rank waits for the others (nobody closes a connection another rank still uses), the group is destroyed,
# Python's own exit work is done explicitly (non-daemon threads joined, atexit handlers run, streams flushed), and
# the process ends with `os._exit`, skipping the finalization in which gloo's threads would still be running (as
# `multiprocessing` ends its children). A process that joined no group exits normally.

_launched_group_ended = False


def end_process_group(finished: bool) -> None:
    """Close the process group this process joined, if any: wait for every rank first when the command `finished`.

    A command that failed does not wait: its peers may be blocked in a collective that will never complete, and the
    launcher stops them once this rank exits with an error.
    """
    import sys

    global _launched_group_ended
    torch = sys.modules.get("torch")
    if torch is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return
    if finished and torch.distributed.get_world_size() > 1:
        try:
            torch.distributed.barrier()
        except RuntimeError:  # a peer failed and left (gloo: connection closed): nobody is left to wait for
            pass
    torch.distributed.destroy_process_group()
    _launched_group_ended = True


def exit_process(code: int) -> None:
    """End the process with `code`: `sys.exit` normally; after a process group, Python's exit work and `os._exit`."""
    import atexit
    import sys
    import threading

    if not _launched_group_ended:
        sys.exit(code)
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()  # what the interpreter does first at exit
    atexit._run_exitfuncs()  # logging.shutdown, tqdm's monitor, ... (registered handlers, in their order)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or detached: nothing left to flush
            pass
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)  # C libraries' buffered output, which `os._exit` would drop
    except (OSError, AttributeError):  # no C runtime to ask (not a POSIX libc)
        pass
    os._exit(code)


def is_zero3(model) -> bool:
    """Whether `model` is partitioned by DeepSpeed ZeRO-3 (each process holds a shard of every weight)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled() or any(hasattr(p, "ds_id") for p in model.parameters())


def gathered_copy(model):
    """A plain (unpartitioned) copy of a ZeRO-3 model on every rank; a collective call, so every rank must make it."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    # The class constructor, not from_config: transformers would wrap from_config in zero.Init and partition again.
    with deepspeed.zero.Init(enabled=False):
        copy = type(model)(model.config)
    copy.load_state_dict(state)
    return copy.to(next(iter(state.values())).device).eval()
