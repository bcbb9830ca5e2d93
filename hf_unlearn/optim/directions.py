"""Seeded random directions ``z`` for zeroth-order steps, regenerated chunk by chunk instead of stored.

A ZO step moves every trainable weight along ``z`` four or five times (the sphere's norm, ``+μz``, ``−2μz``, the
restore and the update). Keeping ``z`` would cost as much memory as the weights, so each sweep regenerates it from
the seed; and each tensor's slice is generated :data:`CHUNK` elements at a time into one small reused buffer, so the
memory a step needs beyond inference is a few MB whatever the largest tensor (a 49k × 576 tied embedding is 113 MB
in fp32).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch

from .masters import MasterWeights


DIRECTIONS = ("sphere", "gaussian", "rademacher")
_MASK64 = (1 << 64) - 1

# Elements of z generated at a time. A multiple of 16 (torch's CPU normal_ fills and transforms blocks of 16) and of
# 31 (Rademacher signs per random word), so that drawing the chunks one after another from one generator gives the
# same values as one fill of the whole tensor on CPU: chunking changes no number, only the memory.
CHUNK = 16 * 31 * 2048  # 1,015,808 elements: 3.9 MB in fp32
_SMALLEST_FILL = 16  # torch's CPU normal_ draws a fill below 16 elements differently: never leave one as the tail


def chunk_bounds(numel: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each chunk of a tensor's ``numel`` elements; a tail below 16 joins the chunk before."""
    bounds = [(start, min(start + CHUNK, numel)) for start in range(0, numel, CHUNK)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < _SMALLEST_FILL:
        bounds[-2:] = [(bounds[-2][0], numel)]
    return bounds


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """Hash integers (run seed, global step, direction, parameter index, ...) into one 63-bit seed.

    A hash rather than ``seed + step`` so that neighbouring steps and neighbouring tensors get unrelated streams.
    """
    h = 0
    for part in parts:
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h & ((1 << 63) - 1)


def shape_of(p: torch.Tensor) -> torch.Size:
    # A DeepSpeed ZeRO-3 parameter is an empty placeholder outside its gathers; its true shape is ds_shape.
    return p.ds_shape if hasattr(p, "ds_shape") else p.shape


def numel_of(p: torch.Tensor) -> int:
    return p.ds_numel if hasattr(p, "ds_numel") else p.numel()


@contextlib.contextmanager
def flat_view(p: torch.Tensor) -> Iterator[torch.Tensor]:
    """A 1-D tensor whose in-place changes reach ``p`` (a copy written back on exit when ``p`` is not contiguous)."""
    if p.is_contiguous():
        yield p.view(-1)
        return
    flat = p.contiguous().view(-1)
    yield flat
    p.copy_(flat.view_as(p))


_SIGN_BIT, _ONE_FP32 = -(1 << 31), 0x3F800000
_SIGNS_PER_WORD = 31  # int32 random_() fills [0, 2^31): 31 uniform bits per word


def _fill_rademacher(out: torch.Tensor, generator: torch.Generator) -> None:
    """±1 into the 1-D ``out``: each random int32 word gives 31 signs, written as the bits of fp32 ±1.0.

    One random word per 31 elements instead of one random number per element: the cost is three integer passes
    over ``z``, about a quarter of ``normal_``'s (docs/zo_directions.md).
    """
    n = out.numel()
    words = torch.empty(-(-n // _SIGNS_PER_WORD), 1, dtype=torch.int32, device=out.device).random_(generator=generator)
    shifts = torch.arange(1, _SIGNS_PER_WORD + 1, dtype=torch.int32, device=out.device)  # bit k-1 to the sign bit
    full = n // _SIGNS_PER_WORD
    direct = out.dtype == torch.float32 and out.is_contiguous()
    if direct and full:  # straight into out's bits, no temporary
        bits = out[: full * _SIGNS_PER_WORD].view(torch.int32).view(full, _SIGNS_PER_WORD)
        torch.bitwise_left_shift(words[:full], shifts, out=bits)
        bits.bitwise_and_(_SIGN_BIT).bitwise_or_(_ONE_FP32)
    start = full * _SIGNS_PER_WORD if direct else 0
    if start < n:
        rest = torch.bitwise_left_shift(words[start // _SIGNS_PER_WORD :], shifts)
        rest.bitwise_and_(_SIGN_BIT).bitwise_or_(_ONE_FP32)
        out[start:].copy_(rest.view(torch.float32).view(-1)[: n - start])


class SeededDirections:
    """Regenerates a random direction ``z`` over a list of tensors, one chunk of one tensor at a time, from a seed.

    Each tensor's slice of ``z`` comes from a private ``torch.Generator`` (never the global RNG) seeded with
    ``derive_seed(seed, tensor_index)`` and drawn chunk by chunk (:func:`chunk_bounds`), so any tensor's slice can be
    regenerated alone and in any order, and several seeds' streams can advance side by side.

    Kinds: ``gaussian`` (``N(0, I)``), ``rademacher`` (±1 with probability ½ each), ``sphere`` (uniform on the
    sphere of radius ``√d``, ``d`` = number of elements: a normalised Gaussian). All three have ``E[z] = 0`` and
    ``E[z zᵀ] = I``, so ``μ`` keeps a per-weight meaning and the estimate ``(zᵀg) z`` is unbiased. The sphere's
    norm needs one extra generation sweep per seed; it is cached until :meth:`release`.

    ``cache``: keep each tensor's ``z`` in bf16 from its first generation until :meth:`release`; later sweeps copy it
    back instead of regenerating. Memory: 2 bytes per trainable weight per direction, allocated at the first step and
    kept for the run. ``z`` is then the bf16-rounded sample (the sphere normalised over the rounded values) in every
    sweep, the perturbations and the update alike.
    """

    def __init__(self, params: Iterable[torch.Tensor], kind: str = "sphere", cache: bool = False):
        if kind not in DIRECTIONS:
            raise ValueError(f"zo_direction must be one of {DIRECTIONS}, got {kind!r}")
        self.params = list(params)
        self.kind = kind
        self.cache = cache
        # the cache: bf16 buffers per (slot, tensor), allocated once and kept across steps (no page faults per step);
        # a slot is the seed's place among those drawn since the last release
        self._cache_slots: dict[int, int] = {}
        self._cache_filled: set[tuple[int, int]] = set()
        self._cache_buffers: dict[tuple[int, int], torch.Tensor] = {}
        self.dim = sum(numel_of(p) for p in self.params)
        self._sphere_scale: dict[int, float] = {}
        self._buffers: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        # With fp32 masters (hf_unlearn.optim.masters) z is drawn in the masters' dtype and only over the pieces
        # this process owns; see attach_masters.
        self.masters: MasterWeights | None = None

    def attach_masters(self, masters: MasterWeights) -> None:
        """Perturb and update through ``masters`` from now on (drops cached norms: z's dtype may change)."""
        if len(masters.pieces) != len(self.params):
            raise ValueError(f"{len(masters.pieces)} master pieces for {len(self.params)} trainable tensors")
        self.masters = masters
        self.release()

    def dtype(self, index: int) -> torch.dtype:
        return self.masters.dtype if self.masters is not None else self.params[index].dtype

    def _generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device)

    def buffer(self, role: str, index: int) -> torch.Tensor:
        """A reused chunk-sized 1-D buffer for tensor ``index``'s device and ``z`` dtype, one per ``role``."""
        p = self.params[index]
        key = (role, p.device, self.dtype(index))
        if key not in self._buffers:
            largest = max(numel_of(q) for i, q in enumerate(self.params) if (q.device, self.dtype(i)) == key[1:])
            self._buffers[key] = torch.empty(min(largest, CHUNK + _SMALLEST_FILL - 1), dtype=key[2], device=p.device)
        return self._buffers[key]

    def stream(
        self, seed: int, index: int, start: int = 0, stop: int | None = None, role: str = "z"
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """The unscaled sample behind ``z(seed)`` for tensor ``index``, elements ``start .. stop`` of its flattened
        slice, chunk by chunk: ``(offset, values)``, the values in the ``role`` buffer, valid until the next chunk.

        Streams of one role share their buffer: consume each chunk before drawing the next from any of them.
        """
        numel = numel_of(self.params[index])
        stop = numel if stop is None else stop
        buffer = self.buffer(role, index)
        cached = filled = None
        if self.cache:
            key = (self._cache_slots.setdefault(seed, len(self._cache_slots)), index)
            if key not in self._cache_buffers:
                self._cache_buffers[key] = torch.empty(numel, dtype=torch.bfloat16, device=buffer.device)
            cached, filled = self._cache_buffers[key], key in self._cache_filled
        generator = None
        if not filled:
            generator = self._generator(buffer.device)
            generator.manual_seed(derive_seed(seed, index))
        for low, high in chunk_bounds(numel):
            if low >= stop:
                return  # what is left is never needed here (and the cache stays unfilled: the next sweep draws it)
            if filled and high <= start:
                continue  # a stream must be drawn from its start, a cached one need not
            out = buffer[: high - low]
            if filled:
                out.copy_(cached[low:high])
            else:
                if self.kind == "rademacher":
                    _fill_rademacher(out, generator)
                else:
                    out.normal_(generator=generator)
                if cached is not None:  # from the first use on, z is the rounded sample: every sweep sees the same z
                    out.copy_(cached[low:high].copy_(out))
            first, last = max(low, start), min(high, stop)
            if first < last:
                yield first, out[first - low : last - low]
        if cached is not None:
            self._cache_filled.add(key)

    def sample(self, seed: int, index: int) -> torch.Tensor:
        """The unscaled sample behind ``z`` for tensor ``index``, as a fresh tensor of its shape."""
        p = self.params[index]
        out = torch.empty(numel_of(p), dtype=self.dtype(index), device=p.device)
        for offset, values in self.stream(seed, index):
            out[offset : offset + values.numel()].copy_(values)
        return out.view(shape_of(p))

    def direction(self, seed: int, index: int) -> torch.Tensor:
        """The slice of ``z`` for tensor ``index`` (a fresh tensor the caller may keep and modify)."""
        scale = self.scale(seed)
        z = self.sample(seed, index)
        return z if scale == 1.0 else z.mul_(scale)

    def scale(self, seed: int) -> float:
        """Factor that turns the raw sample into the direction (``√d/‖raw‖`` for the sphere, else 1)."""
        if self.kind != "sphere":
            return 1.0
        if seed not in self._sphere_scale:
            sq_norm = 0.0
            for index in range(len(self.params)):
                total = None
                for _, raw in self.stream(seed, index, role="norm"):
                    # accumulate half-precision samples in fp32; fp32/fp64 as they are
                    wide = torch.float32 if raw.dtype in (torch.float16, torch.bfloat16) else None
                    part = torch.linalg.vector_norm(raw, dtype=wide).double().square()
                    total = part if total is None else total.add_(part)
                sq_norm += float(total)
            self._sphere_scale[seed] = math.sqrt(self.dim / sq_norm)
        return self._sphere_scale[seed]

    @torch.no_grad()
    def perturb_(self, seed: int, alpha: float) -> None:
        """``θ ← θ + alpha·z`` in place, one chunk of ``z`` alive at a time."""
        if self.masters is not None:
            raise RuntimeError("with master weights, move the weights with move_(seed, to, at)")
        self._add_(seed, alpha)

    def _add_(self, seed: int, alpha: float) -> None:
        alpha = alpha * self.scale(seed)
        for index, p in enumerate(self.params):
            with self.materialized(index), flat_view(p) as flat:
                for offset, raw in self.stream(seed, index):
                    flat[offset : offset + raw.numel()].add_(raw, alpha=alpha)

    @torch.no_grad()
    def move_(self, seed: int, to: float, at: float) -> None:
        """Weights at ``θ + at·z`` → ``θ + to·z``.

        Without masters: ``θ ← θ + (to − at)·z`` in place. With separate masters: written as ``cast(master + to·z)``
        (``cast(master)`` for ``to = 0``, which needs no ``z``), so each perturbed value is rounded once and
        restoring is exact.
        """
        masters = self.masters
        if masters is None:
            self._add_(seed, to - at)
            return
        scale = self.scale(seed)
        masters.before_write()
        for index, piece in enumerate(masters.pieces):
            if piece is None:
                continue
            if masters.absolute and to == 0:
                piece.low.copy_(piece.master)
                continue
            for offset, raw in self.stream(seed, index, piece.start, piece.start + piece.length):
                part = slice(offset - piece.start, offset - piece.start + raw.numel())
                if masters.absolute:
                    piece.low[part].copy_(raw.mul_(to * scale).add_(piece.master[part]))
                else:
                    piece.low[part].add_(raw, alpha=(to - at) * scale)
        masters.after_write()

    def materialized(self, index: int):
        """Context in which tensor ``index`` holds its full value and in-place changes to it persist.

        A no-op for ordinary tensors. A DeepSpeed ZeRO-3 parameter is gathered for the duration and re-partitioned
        from the modified copy on exit (``deepspeed.zero.GatheredParameters`` with a modifier rank: every rank
        computes the same change, so the broadcast from rank 0 moves nothing new). One full tensor at a time.
        """
        p = self.params[index]
        if not hasattr(p, "ds_id"):
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters([p], modifier_rank=0)

    def release(self) -> None:
        """Forget cached per-seed norms and directions and free the chunk buffers (once the seeds' updates are
        applied)."""
        self._sphere_scale.clear()
        self._buffers.clear()
        self._cache_slots.clear()
        self._cache_filled.clear()  # the cache's buffers stay allocated for the next step
