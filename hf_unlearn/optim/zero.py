"""Zeroth-order steps under DeepSpeed ZeRO: the update must reach the weights DeepSpeed keeps.

Under DeepSpeed the optimizer the Trainer sees is a no-op wrapper: the engine steps its ZeRO optimizer (and the lr
scheduler) from ``backward``, which a ZO step never calls. So a ZO step under DeepSpeed steps our optimizer itself,
makes the fp32 master partitions agree with the updated weights, and steps the scheduler. Left alone, the next
first-order step would copy the masters from before the ZO phase back over the weights and undo it.

- ZeRO-1/2: the ZO engine perturbs and updates the module's (replicated) weights; afterwards they are copied into
  the fp32 master partitions.
- ZeRO-3: each parameter is gathered for the duration of each in-place change and re-partitioned from it
  (``deepspeed.zero.GatheredParameters`` with a modifier rank; ``SeededDirections.materialized``), so directions are
  the same as without ZeRO and one full tensor is gathered at a time. In fp32 the masters alias the partitions; a
  separate master copy is refreshed. The ZO optimizer's own state (ZO-Adam/AdaZO moments) is full-size on every
  rank, not partitioned, and every sweep costs a gather and a broadcast per tensor.

Supported in fp32 without offload (module weights and masters are then the same numbers, so copying is exact);
fp16/bf16 and offload are rejected at config time (:func:`validate_deepspeed_for_zo`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .hybrid import unwrap_optimizer


def _find_in_chain(optimizer, attribute: str):
    seen = set()
    while optimizer is not None and id(optimizer) not in seen:
        if hasattr(optimizer, attribute):
            return optimizer
        seen.add(id(optimizer))
        optimizer = getattr(optimizer, "optimizer", None)
    return None


def load_deepspeed_config(deepspeed: Any) -> dict | None:
    """The DeepSpeed config given to ``TrainingArguments.deepspeed`` (a dict, a JSON path, or None)."""
    if deepspeed is None or deepspeed == "":
        return None
    if isinstance(deepspeed, dict):
        return deepspeed
    return json.loads(Path(deepspeed).read_text())


def _enabled(section: Any, fallback: bool) -> bool:
    if not isinstance(section, dict):
        return False
    value = section.get("enabled", False)
    return fallback if value == "auto" else bool(value)


def validate_deepspeed_for_zo(cfg: Any) -> None:
    """Reject DeepSpeed setups a zeroth-order step cannot keep consistent, in one line naming the fix."""
    ds = load_deepspeed_config(getattr(cfg, "deepspeed", None))
    if ds is None:
        return
    zero = ds.get("zero_optimization", {}) or {}
    name = f"optimizer={cfg.optimizer!r}"
    if _enabled(ds.get("bf16"), getattr(cfg, "bf16", False)) or _enabled(ds.get("fp16"), getattr(cfg, "fp16", False)):
        raise ValueError(
            f"{name} runs zeroth-order steps, which under DeepSpeed need fp32 weights (copying bf16/fp16 module "
            "weights into the fp32 masters would truncate them); disable bf16/fp16 in the DeepSpeed config"
        )
    if zero.get("stage", 0) == 3 and getattr(cfg, "zo_exact_restore", False):
        raise ValueError("zo_exact_restore copies whole weights, which ZeRO-3 partitions; unset it under ZeRO-3")
    for key in ("offload_optimizer", "offload_param"):
        device = (zero.get(key) or {}).get("device", "none")
        if device not in (None, "none"):
            raise ValueError(f"{name} under DeepSpeed does not support zero_optimization.{key}; remove it")


@torch.no_grad()
def sync_zero_masters_from_module(optimizer) -> None:
    """Copy the module weights into the ZeRO fp32 master partitions (no-op when there are none or they alias)."""
    zero3 = _find_in_chain(optimizer, "fp32_partitioned_groups_flat")
    if zero3 is not None:
        for low, master in zip(zero3.fp16_partitioned_groups_flat, zero3.fp32_partitioned_groups_flat):
            # in fp32 on the weights' device, DeepSpeed makes the master an alias of the partition: nothing to copy
            if low is not None and master.data_ptr() != low.data_ptr():
                master.data.copy_(low.data)
        return
    zero = _find_in_chain(optimizer, "single_partition_of_fp32_groups")
    if zero is None:
        return  # ZeRO-0: the optimizer holds the module weights themselves
    import deepspeed.comm as dist

    for i, master in enumerate(zero.single_partition_of_fp32_groups):
        partition_id = dist.get_rank(group=zero.real_dp_process_group[i])
        master.data.copy_(zero.parallel_partitioned_bit16_groups[i][partition_id].data)


def zo_step_under_deepspeed(optimizer, lr_scheduler) -> None:
    """Apply the recorded ZO update, push it into the ZeRO masters and step the lr scheduler, as engine.step would."""
    unwrap_optimizer(optimizer).step()
    sync_zero_masters_from_module(optimizer)
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's DeepSpeed wrapper steps nothing
    if scheduler is not None:
        scheduler.step()
