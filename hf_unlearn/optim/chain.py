"""The one walk down an optimizer's wrapper chain (accelerate, DeepSpeed: each exposes the wrapped one as
``.optimizer``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator


def optimizer_chain(optimizer) -> Iterator:
    """``optimizer``, then what it wraps, and so on down to the innermost optimizer (a cycle ends the walk)."""
    seen = set()
    while optimizer is not None and id(optimizer) not in seen:
        yield optimizer
        seen.add(id(optimizer))
        optimizer = getattr(optimizer, "optimizer", None)


def find_in_chain(optimizer, accepts: Callable[[object], bool]):
    """The outermost optimizer of the chain that ``accepts``, or None."""
    return next((link for link in optimizer_chain(optimizer) if accepts(link)), None)
