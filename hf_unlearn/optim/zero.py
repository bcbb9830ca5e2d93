"""Zeroth-order steps under DeepSpeed ZeRO: the update must reach the weights DeepSpeed keeps.

Under DeepSpeed the optimizer the Trainer sees is a no-op wrapper: the engine steps its ZeRO optimizer (and the lr
scheduler) from ``backward``, which a ZO step never calls. So a ZO step under DeepSpeed steps our optimizer itself
and steps the scheduler (:func:`zo_step_under_deepspeed`).

At the first ZO step the ZO engine is pointed at DeepSpeed's own fp32 master partitions (:func:`attach_zero_masters`,
``hf_unlearn.optim.masters``): each rank perturbs, restores and updates only the elements of its partition,

- writing its slice of the module weights as ``cast(master ± μz)``, restoring as ``cast(master)`` (exact), applying
  the update to its master slice and re-casting, as DeepSpeed's own step does; ``z`` is the same as without ZeRO
  (each rank regenerates whole tensors from the seeds and keeps its slice; a ZeRO-2 rank skips tensors with no
  element in its partition);
- ZeRO-1/2: after each write the bf16 (or fp32) partitions are all-gathered into every rank's full weights, as after
  a DeepSpeed step;
- ZeRO-3: gathered weights are released before each write and persistent (small) ones re-gathered after it, as
  DeepSpeed's step does; the others are gathered from the new partitions by the next forward. No per-tensor gather.
  In fp32 on the weights' device DeepSpeed makes the masters alias the partitions: the perturbation is then added
  in place, as without masters.

The ZO optimizer's own state (ZO-Adam/AdaZO moments) is sized like the rank's partition. Supported: fp32 and bf16
(ZeRO-2/3). Rejected at config time (:func:`validate_deepspeed_for_zo`): fp16 (dynamic loss scaling has nothing to
scale without a backward), bf16 under ZeRO-0/1 (DeepSpeed then keeps no fp32 partitions for the engine to use), and
optimizer/parameter offload (masters on another device than the weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .chain import find_in_chain
from .masters import MasterPiece, MasterWeights


def _find_in_chain(optimizer, attribute: str):
    return find_in_chain(optimizer, lambda link: hasattr(link, attribute))


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
    stage = zero.get("stage", 0)
    name = f"optimizer={cfg.optimizer!r}"
    if _enabled(ds.get("fp16"), getattr(cfg, "fp16", False)):
        raise ValueError(f"{name} runs zeroth-order steps, which have no backward to loss-scale: use bf16, not fp16")
    if _enabled(ds.get("bf16"), getattr(cfg, "bf16", False)) and stage not in (2, 3):
        raise ValueError(
            f"{name} with bf16 under DeepSpeed needs the fp32 master partitions of ZeRO-2/3 (stage {stage} keeps none "
            "the ZO step can use): set zero_optimization.stage to 2 or 3"
        )
    if getattr(cfg, "zo_master_weights", False):
        raise ValueError(
            "zo_master_weights duplicates the fp32 masters DeepSpeed ZeRO keeps; unset it under DeepSpeed"
        )
    if getattr(cfg, "zo_stochastic_rounding", False):
        raise ValueError("zo_stochastic_rounding is for bf16 weights without masters; unset it under DeepSpeed")
    if stage == 3 and getattr(cfg, "zo_exact_restore", False):
        raise ValueError("zo_exact_restore copies whole weights, which ZeRO-3 partitions; unset it under ZeRO-3")
    for key in ("offload_optimizer", "offload_param"):
        device = (zero.get(key) or {}).get("device", "none")
        if device not in (None, "none"):
            raise ValueError(f"{name} under DeepSpeed does not support zero_optimization.{key}; remove it")


def _offset(view: torch.Tensor, base: torch.Tensor) -> int:
    return (view.data_ptr() - base.data_ptr()) // base.element_size()


class Zero2Masters(MasterWeights):
    """The rank's slices of the flat bf16/fp32 groups of a ZeRO-1/2 optimizer and its fp32 master partitions."""

    def __init__(self, zero, params: list[torch.Tensor]):
        import deepspeed.comm as dist

        self.zero = zero
        pieces: dict[int, MasterPiece] = {}
        for i, group in enumerate(zero.bit16_groups):
            flat = zero.bit16_groups_flat[i]
            rank = dist.get_rank(group=zero.real_dp_process_group[i])
            part = zero.parallel_partitioned_bit16_groups[i][rank]
            master = zero.single_partition_of_fp32_groups[i]
            lo, hi = _offset(part, flat), _offset(part, flat) + part.numel()
            for p in group:
                start = _offset(p.data, flat)
                a, b = max(start, lo), min(start + p.numel(), hi)
                if a < b:
                    aliased = master.data_ptr() == part.data_ptr()
                    slice_master = None if aliased else master.narrow(0, a - lo, b - a)
                    pieces[id(p)] = MasterPiece(flat.narrow(0, a, b - a), slice_master, a - start, b - a)
        super().__init__([pieces.get(id(p)) for p in params])

    def after_write(self) -> None:
        from deepspeed.runtime.utils import all_gather_dp_groups

        zero = self.zero
        all_gather_dp_groups(
            groups_flat=zero.bit16_groups_flat,
            partitioned_param_groups=zero.parallel_partitioned_bit16_groups,
            dp_process_group=zero.real_dp_process_group,
            start_alignment_factor=zero.nccl_start_alignment_factor,
            allgather_bucket_size=zero.allgather_bucket_size,
        )


class Zero3Masters(MasterWeights):
    """Each parameter's own partition (``ds_tensor``) in a ZeRO-3 optimizer's flat groups, and its fp32 master."""

    def __init__(self, zero3, params: list[torch.Tensor]):
        import deepspeed.comm as dist

        self.zero3 = zero3
        pieces: dict[int, MasterPiece] = {}
        for i, group in enumerate(zero3.fp16_groups):
            low_flat, master_flat = zero3.fp16_partitioned_groups_flat[i], zero3.fp32_partitioned_groups_flat[i]
            aliased = master_flat.data_ptr() == low_flat.data_ptr()
            for p in group:
                part = p.ds_tensor
                start = dist.get_rank(group=p.ds_process_group) * part.ds_numel
                length = max(0, min(part.ds_numel, p.ds_numel - start))  # the last rank's partition is padded
                if length == 0:
                    continue
                offset = _offset(part, low_flat)
                master = None if aliased else master_flat.narrow(0, offset, length)
                pieces[id(p)] = MasterPiece(low_flat.narrow(0, offset, length), master, start, length)
        super().__init__([pieces.get(id(p)) for p in params])

    def before_write(self) -> None:
        # release every gathered weight (persistent ones included) so that none keeps a stale full copy
        self.zero3._partition_all_parameters()

    def after_write(self) -> None:
        persistent = self.zero3.persistent_parameters
        if persistent:
            persistent[0].all_gather(persistent)


def attach_zero_masters(zo, optimizer) -> None:
    """Point the ZO optimizer ``zo`` at the fp32 master partitions of the DeepSpeed ZeRO optimizer in ``optimizer``'s
    wrapper chain (no-op at ZeRO-0, where the module weights are the optimizer's)."""
    directions = zo.directions
    if directions.masters is not None:
        return
    zero3 = _find_in_chain(optimizer, "fp32_partitioned_groups_flat")
    if zero3 is not None:
        directions.attach_masters(Zero3Masters(zero3, directions.params))
        return
    zero = _find_in_chain(optimizer, "single_partition_of_fp32_groups")
    if zero is not None:
        directions.attach_masters(Zero2Masters(zero, directions.params))


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


def zo_step_under_deepspeed(stepped, zo, optimizer, lr_scheduler) -> None:
    """Step ``stepped`` (the ZO optimizer ``zo``, or the hybrid around it) as engine.step would: the recorded update
    goes to the ZeRO masters once attached (else they are refreshed from the module, ``optimizer`` being the wrapped
    chain), then the lr scheduler steps."""
    stepped.step()
    if zo.directions.masters is None:
        sync_zero_masters_from_module(optimizer)
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's DeepSpeed wrapper steps nothing
    if scheduler is not None:
        scheduler.step()
