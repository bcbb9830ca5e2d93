"""fp32 master weights for zeroth-order steps on low-precision (bf16/fp16) module weights.

A ZO update (lr · c · z, about 1e-6 per weight) is far below the bf16 spacing of a typical weight (about 1e-4 at
magnitude 0.02): applied to bf16 weights it mostly vanishes, and restoring ``+μz, −2μz, +μz`` in place drifts by
a bf16 rounding per step. With fp32 masters the ZO engine instead

- perturbs the module weights as ``cast(master + μz)`` and ``cast(master − μz)``;
- restores them as ``cast(master)``: exact, with no copy beyond the masters;
- applies the update to the master and re-casts, as a first-order mixed-precision step does.

The engine sees the masters as :class:`MasterPiece` s: for each trainable tensor, the part of it this process owns
(the whole tensor on one device; the rank's partition under DeepSpeed ZeRO, see ``hf_unlearn.optim.zero``) as a
1-D low-precision view, its fp32 master, and where it starts in the tensor's flattened ``z``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class MasterPiece(NamedTuple):
    """The part of trainable tensor ``index`` this process updates: elements ``start .. start+length`` of it."""

    low: torch.Tensor  # 1-D view of the weights the forward reads (bf16/fp16, or fp32)
    master: torch.Tensor | None  # 1-D fp32 master of the same elements; None: ``low`` is itself the fp32 master
    start: int
    length: int


class MasterWeights:
    """Pieces (one per trainable tensor, None where this process owns no element) and the hooks around writes.

    ``absolute``: the pieces have separate masters, so perturbations are written as ``cast(master + αz)``. Otherwise
    (fp32 weights that are their own masters) perturbations are added in place, as without masters.
    """

    def __init__(self, pieces: list[MasterPiece | None]):
        self.pieces = pieces
        self.absolute = any(p is not None and p.master is not None for p in pieces)
        if self.absolute and any(p is not None and p.master is None for p in pieces):
            raise ValueError("either every piece has a separate master or none has")

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the directions ``z``: the masters'."""
        for piece in self.pieces:
            if piece is not None:
                return (piece.master if piece.master is not None else piece.low).dtype
        return torch.float32

    def before_write(self) -> None:
        """Called before the engine writes the low-precision pieces (e.g. to release gathered ZeRO-3 weights)."""

    def after_write(self) -> None:
        """Called after the engine wrote them (e.g. to all-gather the partitions of the other ranks)."""


class FP32MasterCopy(MasterWeights):
    """An fp32 copy of trainable low-precision weights on one device (``zo_master_weights``).

    Memory: 4 bytes per trainable weight (twice the bf16 weights themselves). First-order steps of a hybrid run
    update the low-precision weights in place; the change is detected (tensor version counters) and added to the
    master as ``master += float(low) − float(cast(master))``, so what the master accumulated below the low-precision
    spacing during ZO phases survives the FO phases.
    """

    def __init__(self, params: list[torch.Tensor]):
        pieces = []
        for p in params:
            if not p.is_contiguous():
                raise ValueError("zo_master_weights needs contiguous trainable weights")
            low = p.data.view(-1)
            pieces.append(MasterPiece(low, low.float().clone(), 0, low.numel()))
        super().__init__(pieces)
        self.params = list(params)
        self._versions = [p._version for p in self.params]

    @torch.no_grad()
    def before_write(self) -> None:
        for i, (p, piece) in enumerate(zip(self.params, self.pieces)):
            if p._version != self._versions[i]:
                piece.master.add_(piece.low.float() - piece.master.to(piece.low.dtype).float())

    def after_write(self) -> None:
        self._versions = [p._version for p in self.params]


@torch.no_grad()
def stochastic_round_(out: torch.Tensor, value: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Write fp32 ``value`` into bf16 ``out`` rounded up or down at random, with ``E[out] = value``.

    Adds uniform random bits below bf16's 16-bit cut to the fp32 bit pattern and truncates: the probability of
    rounding away from zero is the discarded fraction of a bf16 ulp.
    """
    if out.dtype != torch.bfloat16:
        raise ValueError(f"stochastic rounding writes bf16 weights, got {out.dtype}")
    bits = value.to(torch.float32).contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=generator)
    rounded = (bits + noise).bitwise_and_(-65536).view(torch.float32)  # -65536 = 0xFFFF0000 as int32
    return out.copy_(rounded.view_as(out))  # exact: the low 16 bits are zero
