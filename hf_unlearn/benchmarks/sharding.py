"""Split evaluation examples across processes and gather the per-example results back in order.

Every rank evaluates ``indices[rank::world_size]`` and the results are all-gathered, so every rank ends with
the full, identically ordered list: the numbers do not depend on the number of processes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch.distributed as dist


T = TypeVar("T")


def process_info() -> tuple[int, int]:
    """``(rank, world_size)`` from torch.distributed if initialised, else from accelerate's ``PartialState``.

    A single process without launcher environment variables is ``(0, 1)``.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from hf_unlearn.distributed import process_state  # initialises the process group from the launcher's variables

        state = process_state()
        return state.process_index, state.num_processes
    return 0, 1


def shard(items: Sequence[T], rank: int, world_size: int) -> list[tuple[int, T]]:
    """This rank's ``(global_index, item)`` pairs, strided so that shards differ in length by at most one."""
    return [(i, items[i]) for i in range(rank, len(items), world_size)]


def gather_in_order(local: list[tuple[int, Any]], total: int, world_size: int) -> list[Any]:
    """All-gather ``(global_index, value)`` pairs from every rank and return the values ordered by index."""
    if world_size == 1:
        pairs = local
    else:
        gathered: list[list[tuple[int, Any]] | None] = [None] * world_size
        dist.all_gather_object(gathered, local)
        pairs = [pair for part in gathered for pair in part]
    ordered: list[Any] = [None] * total
    for index, value in pairs:
        ordered[index] = value
    missing = [i for i, v in enumerate(ordered) if v is None]
    if missing:
        raise RuntimeError(
            f"Gathering evaluation results lost {len(missing)} of {total} examples (first: {missing[0]})."
        )
    return ordered
