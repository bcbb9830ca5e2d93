"""Zeroth-order engine: seeded in-place perturbations (MeZO) and the ZO optimizers that consume them.

A ZO step never materialises a gradient or an activation graph. The trainer (``ZerothOrderMixin``) draws a seed,
perturbs the weights in place by ``+μz``, ``−2μz``, ``+μz`` (``z`` regenerated from the seed, one tensor at a
time), and records the projected gradient ``c = (f(θ+μz) − f(θ−μz)) / 2μ`` with :meth:`ZerothOrderOptimizer.record`.
:meth:`~ZerothOrderOptimizer.step` then regenerates each ``z`` once more and applies the update to the estimate
``ĝ = Σ_records c·z``. Regenerating ``z`` is the whole extra cost of a step over its forwards: one sweep for the
sphere's norm (cached per seed), ``+μz``, ``−2μz``, then the restore and the update in one sweep (the trainer leaves
the last perturbation for the step to undo, ``defer_restore``: the same operations per weight, so the same bits).
Two ways to make that cost small (``ZOSettings``): ``direction="rademacher"`` (±1 signs drawn 31 per random word,
about 4x cheaper than a Gaussian per element, and its norm is √d exactly, so no norm sweep), and
``cache_directions`` (``z`` drawn once per seed and kept in bf16, 2 bytes per trainable weight, until the step).

Restoring by ``+μz`` after ``−2μz`` is exact in real arithmetic but not bit-exact in floating point: each weight
may come back up to three half-ulp roundings (≤ 1.5·eps·(|θ| + |μz|)) away. Bit-exact restoring in place would
need a copy of the weights, which is the memory ZO exists to save. Runs stay deterministic (bit-exact resumption
holds). In bf16/fp16 the rounding step is much coarser and updates below the weights' spacing vanish: perturb and
update fp32 master weights instead (``hf_unlearn.optim.masters``: DeepSpeed ZeRO-2/3's, or ``master_weights=True``
on one device), or round updates stochastically (``stochastic_rounding=True``, bf16).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from .masters import FP32MasterCopy, MasterWeights, stochastic_round_


DIRECTIONS = ("sphere", "gaussian", "rademacher")
DIFFERENCES = ("central", "forward")
_MASK64 = (1 << 64) - 1


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


def _shape(p: torch.Tensor) -> torch.Size:
    # A DeepSpeed ZeRO-3 parameter is an empty placeholder outside its gathers; its true shape is ds_shape.
    return p.ds_shape if hasattr(p, "ds_shape") else p.shape


def _numel(p: torch.Tensor) -> int:
    return p.ds_numel if hasattr(p, "ds_numel") else p.numel()


def check_zo_settings(mu, num_directions, difference, direction: str = "sphere") -> None:
    """The one check of the ZO engine's numeric settings (the config gate and :class:`ZOSettings` call it)."""
    if not (isinstance(num_directions, int) and num_directions >= 1):
        raise ValueError(f"zo_num_directions={num_directions!r} must be an integer >= 1 (q directions per ZO step)")
    if not (mu > 0 and math.isfinite(mu)):
        raise ValueError(f"zo_mu={mu!r} must be a finite number > 0 (try 1e-3)")
    if direction not in DIRECTIONS:
        raise ValueError(f"zo_direction={direction!r}: choose one of {', '.join(DIRECTIONS)}")
    if difference not in DIFFERENCES:
        raise ValueError(f"zo_difference={difference!r}: choose one of {', '.join(DIFFERENCES)}")


@dataclasses.dataclass(frozen=True)
class ZOSettings:
    """Everything the ZO engine reads, built once (from the config by :meth:`from_args`, or from keywords) and handed
    to the optimizer; validated on construction. Field meanings: the ``zo_*`` config fields of the same names."""

    mu: float = 1e-3
    num_directions: int = 1
    direction: str = "sphere"
    difference: str = "central"
    exact_restore: bool = False
    master_weights: bool = False
    stochastic_rounding: bool = False
    cache_directions: bool = False
    seed: int | None = None  # None: the trainer's seed

    def __post_init__(self):
        check_zo_settings(self.mu, self.num_directions, self.difference, self.direction)
        if self.master_weights and self.stochastic_rounding:
            raise ValueError(
                "zo_master_weights and zo_stochastic_rounding exclude each other; keep zo_master_weights (nearer fp32)"
            )

    @classmethod
    def from_args(cls, args: Any) -> ZOSettings:
        """From the ``zo_*`` fields of a config (``OptimizerArguments``); ``seed`` defaults to ``args.seed``."""
        seed = getattr(args, "zo_seed", None)
        names = ("mu", "num_directions", "direction", "difference", "exact_restore", "master_weights")
        values = {name: getattr(args, f"zo_{name}") for name in names}
        return cls(
            **values,
            stochastic_rounding=args.zo_stochastic_rounding,
            cache_directions=getattr(args, "zo_cache_directions", False),
            seed=getattr(args, "seed", None) if seed is None else seed,
        )


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
    """Regenerates a random direction ``z`` over a list of tensors, one tensor at a time, from a seed.

    Each tensor's slice of ``z`` comes from a private ``torch.Generator`` (one per device, never the global RNG)
    seeded with ``derive_seed(seed, tensor_index)``, so any tensor's slice can be regenerated alone and in any order.

    Kinds: ``gaussian`` (``N(0, I)``), ``rademacher`` (±1 with probability ½ each), ``sphere`` (uniform on the
    sphere of radius ``√d``, ``d`` = number of elements: a normalised Gaussian). All three have ``E[z] = 0`` and
    ``E[z zᵀ] = I``, so ``μ`` keeps a per-weight meaning and the estimate ``(zᵀg) z`` is unbiased. The sphere's
    norm needs one extra generation sweep per seed; it is cached until :meth:`release`.

    ``cache``: keep each tensor's ``z`` in bf16 from its first generation until :meth:`release`; later sweeps copy it
    back instead of regenerating. Memory: 2 bytes per trainable weight per direction, allocated at the first step and
    kept for the run. ``z`` is then the bf16-rounded
    sample (the sphere normalised over the rounded values) in every sweep, the perturbations and the update alike.
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
        self.dim = sum(_numel(p) for p in self.params)
        self._generators: dict[torch.device, torch.Generator] = {}
        self._sphere_scale: dict[int, float] = {}
        self._scratch: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        # With fp32 masters (hf_unlearn.optim.masters) z is drawn in the masters' dtype and only over the pieces
        # this process owns; see attach_masters.
        self.masters: MasterWeights | None = None

    def attach_masters(self, masters: MasterWeights) -> None:
        """Perturb and update through ``masters`` from now on (drops cached norms: z's dtype may change)."""
        if len(masters.pieces) != len(self.params):
            raise ValueError(f"{len(masters.pieces)} master pieces for {len(self.params)} trainable tensors")
        self.masters = masters
        self.release()

    def _dtype(self, index: int) -> torch.dtype:
        return self.masters.dtype if self.masters is not None else self.params[index].dtype

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        return self._generators[device]

    def _fill(self, seed: int, index: int, out: torch.Tensor) -> torch.Tensor:
        # Always a contiguous 1-D fill then a view, so a scratch slice and a fresh tensor get the same values.
        p = self.params[index]
        if self.cache:
            key = (self._cache_slots.setdefault(seed, len(self._cache_slots)), index)
            if key in self._cache_filled:
                return out.copy_(self._cache_buffers[key]).view(_shape(p))
        gen = self._generator(p.device)
        gen.manual_seed(derive_seed(seed, index))
        if self.kind == "rademacher":
            _fill_rademacher(out, gen)
        else:
            out.normal_(generator=gen)
        if self.cache:  # from the first use on, z is the rounded sample: every sweep moves along the same z
            if key not in self._cache_buffers:
                self._cache_buffers[key] = torch.empty(out.numel(), dtype=torch.bfloat16, device=out.device)
            out.copy_(self._cache_buffers[key].copy_(out))
            self._cache_filled.add(key)
        return out.view(_shape(p))

    def scratch_direction(self, seed: int, index: int, scaled: bool = True) -> torch.Tensor:
        """The slice of ``z`` for tensor ``index`` in a reused buffer, valid until the next call.

        One buffer per (device, dtype), as large as the largest such tensor: it avoids an allocation (and its page
        faults) per tensor per sweep, and is the only tensor-sized memory a perturbation needs.
        """
        scale = self.scale(seed) if scaled else 1.0  # first: computing it refills the scratch buffer
        p = self.params[index]
        key = (p.device, self._dtype(index))
        if key not in self._scratch:
            size = max(_numel(q) for i, q in enumerate(self.params) if (q.device, self._dtype(i)) == key)
            self._scratch[key] = torch.empty(size, dtype=key[1], device=p.device)
        z = self._fill(seed, index, self._scratch[key][: _numel(p)])
        return z if scale == 1.0 else z.mul_(scale)

    def sample(self, seed: int, index: int, fresh: bool = False) -> torch.Tensor:
        """The unscaled sample behind ``z`` for tensor ``index``: in the scratch buffer, or a fresh tensor."""
        if not fresh:
            return self.scratch_direction(seed, index, scaled=False)
        p = self.params[index]
        return self._fill(seed, index, torch.empty(_numel(p), dtype=self._dtype(index), device=p.device))

    def direction(self, seed: int, index: int) -> torch.Tensor:
        """The slice of ``z`` for tensor ``index`` (a fresh tensor the caller may keep and modify)."""
        scale = self.scale(seed)
        p = self.params[index]
        z = self._fill(seed, index, torch.empty(_numel(p), dtype=self._dtype(index), device=p.device))
        return z if scale == 1.0 else z.mul_(scale)

    def scale(self, seed: int) -> float:
        """Factor that turns the raw sample into the direction (``√d/‖raw‖`` for the sphere, else 1)."""
        if self.kind != "sphere":
            return 1.0
        if seed not in self._sphere_scale:
            sq_norm = 0.0
            for i in range(len(self.params)):
                raw = self.scratch_direction(seed, i, scaled=False)
                # accumulate half-precision samples in fp32; fp32/fp64 as they are
                wide = torch.float32 if raw.dtype in (torch.float16, torch.bfloat16) else None
                sq_norm += float(torch.linalg.vector_norm(raw, dtype=wide)) ** 2
            self._sphere_scale[seed] = math.sqrt(self.dim / sq_norm)
        return self._sphere_scale[seed]

    @torch.no_grad()
    def perturb_(self, seed: int, alpha: float) -> None:
        """``θ ← θ + alpha·z`` in place, one tensor-sized ``z`` alive at a time."""
        if self.masters is not None:
            raise RuntimeError("with master weights, move the weights with move_(seed, to, at)")
        alpha = alpha * self.scale(seed)
        for index, p in enumerate(self.params):
            with self.materialized(index):
                p.add_(self.scratch_direction(seed, index, scaled=False), alpha=alpha)

    @torch.no_grad()
    def move_(self, seed: int, to: float, at: float) -> None:
        """Weights at ``θ + at·z`` → ``θ + to·z``.

        Without masters: ``θ ← θ + (to − at)·z`` in place. With separate masters: written as ``cast(master + to·z)``
        (``cast(master)`` for ``to = 0``, which needs no ``z``), so each perturbed value is rounded once and
        restoring is exact.
        """
        masters = self.masters
        scale = self.scale(seed)
        if masters is None:
            for index, p in enumerate(self.params):
                with self.materialized(index):
                    p.add_(self.scratch_direction(seed, index, scaled=False), alpha=(to - at) * scale)
            return
        masters.before_write()
        for index, piece in enumerate(masters.pieces):
            if piece is None:
                continue
            if masters.absolute and to == 0:
                piece.low.copy_(piece.master)
                continue
            raw = self._piece_of(self.scratch_direction(seed, index, scaled=False), piece)
            if masters.absolute:
                piece.low.copy_(raw.mul_(to * scale).add_(piece.master))
            else:
                piece.low.add_(raw, alpha=(to - at) * scale)
        masters.after_write()

    @staticmethod
    def _piece_of(z: torch.Tensor, piece) -> torch.Tensor:
        return z.view(-1)[piece.start : piece.start + piece.length]

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
        """Forget cached per-seed norms and directions and free the scratch buffer (once the seeds' updates are
        applied)."""
        self._sphere_scale.clear()
        self._scratch.clear()
        self._cache_slots.clear()
        self._cache_filled.clear()  # the cache's buffers stay allocated for the next step


class ZerothOrderOptimizer(Optimizer):
    """Base class of the ZO optimizers: owns the perturbation engine and the pending (seed, c) records.

    Only parameters with ``requires_grad`` are perturbed and updated. Subclasses implement :meth:`_update`.

    ``settings``: the :class:`ZOSettings` (or its fields as keywords, ``ZOSGD(params, lr=..., mu=1e-3)``).
    ``master_weights``: for bf16/fp16 trainable weights, keep an fp32 copy (4 bytes per weight) that is perturbed
    from, restored from exactly and updated (a no-op for fp32 weights). ``stochastic_rounding``: for bf16 weights,
    compute each update in fp32 and round it into the weights stochastically (no extra memory beyond fp32 moments).
    Under DeepSpeed ZeRO the engine's masters are attached instead (``hf_unlearn.optim.zero``).
    """

    def __init__(self, params, defaults: dict, settings: ZOSettings | None = None, **fields):
        if settings is None:
            settings = ZOSettings(**fields)
        elif fields:
            raise TypeError(f"pass the ZO settings either as settings= or as keywords, not both ({sorted(fields)})")
        if defaults.get("lr", 1.0) <= 0:
            raise ValueError(f"lr must be > 0, got {defaults['lr']}")
        super().__init__(params, defaults)
        self.settings = settings
        self._directions: SeededDirections | None = None
        self._group_index: list[int] = []
        self._records: dict[int, float] = {}
        # (seed, offset in units of mu) of a perturbation left in place for step() to undo in its own sweep
        self._pending_restore: tuple[int, float] | None = None
        # The trainer stores the last step's mean projected gradient here for logging (``zo/projected_grad``).
        self.last_projected_grad: float | None = None
        self.directions  # noqa: B018 -- build the engine (and masters) now, not at the first step

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._directions = None  # the perturbed set changed: rebuild lazily

    @property
    def directions(self) -> SeededDirections:
        """The perturbation engine over the trainable parameters, in param-group order."""
        if self._directions is None:
            pairs = [(g, p) for g, group in enumerate(self.param_groups) for p in group["params"] if p.requires_grad]
            self._group_index = [g for g, _ in pairs]
            params = [p for _, p in pairs]
            settings = self.settings
            self._directions = SeededDirections(params, settings.direction, cache=settings.cache_directions)
            low = [p for p in params if p.dtype in (torch.float16, torch.bfloat16)]
            if settings.master_weights and low:
                self._directions.attach_masters(FP32MasterCopy(params))
            elif low and not settings.stochastic_rounding and not any(hasattr(p, "ds_id") for p in params):
                warnings.warn(
                    f"zeroth-order steps on {low[0].dtype} weights without fp32 masters: updates below the weights' "
                    "spacing are lost and the +-mu restore drifts; set zo_master_weights=True (or load in fp32)",
                    UserWarning,
                    stacklevel=3,
                )
            if settings.stochastic_rounding and any(p.dtype != torch.bfloat16 for p in params):
                raise ValueError("zo_stochastic_rounding rounds ZO updates into bf16 weights; load the model in bf16")
        return self._directions

    def perturb_(self, seed: int, scale: float) -> None:
        """``θ ← θ + scale·μ·z(seed)`` in place on the trainable parameters (no masters)."""
        self.directions.perturb_(seed, scale * self.settings.mu)

    def move_(self, seed: int, to: float, at: float) -> None:
        """Weights at ``θ + at·μ·z(seed)`` → ``θ + to·μ·z(seed)`` (written from the masters when there are any)."""
        mu = self.settings.mu
        self.directions.move_(seed, to * mu, at * mu)

    @torch.no_grad()
    def snapshot(self) -> list[torch.Tensor] | None:
        """With ``exact_restore`` (and no masters), a copy of the trainable weights to restore bit for bit."""
        self.flush_restore_()
        masters = self.directions.masters
        if not self.settings.exact_restore or (masters is not None and masters.absolute):
            return None  # masters restore exactly by themselves
        params = self.directions.params
        if any(hasattr(p, "ds_id") for p in params):
            raise ValueError("zo_exact_restore cannot copy ZeRO-3 partitioned weights; unset it under ZeRO-3.")
        return [p.detach().clone() for p in params]

    @torch.no_grad()
    def restore_(self, snapshot: list[torch.Tensor] | None, seed: int, scale: float) -> None:
        """Undo the current perturbation ``scale·μ·z(seed)``: copy the snapshot back, re-cast the masters, or subtract
        in place."""
        if snapshot is None:
            self.move_(seed, 0.0, scale)
            return
        for p, saved in zip(self.directions.params, snapshot):
            p.copy_(saved)

    def defer_restore_(self, seed: int, scale: float) -> None:
        """Leave the perturbation ``scale·μ·z(seed)`` in place: the next :meth:`step` undoes it in its own sweep over
        ``z`` (bit for bit the same as restoring first). Anything else that needs the weights restores first."""
        self.flush_restore_()
        self._pending_restore = (seed, scale)

    def flush_restore_(self) -> None:
        """Undo a deferred perturbation now (no-op when none is pending)."""
        if self._pending_restore is not None:
            seed, scale = self._pending_restore
            self._pending_restore = None
            self.restore_(None, seed, scale)

    def record(self, seed: int, projected_grad: float) -> None:
        """Queue ``projected_grad·z(seed)`` for the next :meth:`step` (records with the same seed add up)."""
        value = float(projected_grad)
        if not math.isfinite(value):
            raise FloatingPointError(f"non-finite ZO projected gradient {value} for seed {seed}")
        self._records[seed] = self._records.get(seed, 0.0) + value

    @property
    def pending_records(self) -> dict[int, float]:
        return dict(self._records)

    @torch.no_grad()
    def step(self, closure=None):
        """Apply the update for ``ĝ = Σ c·z`` over the recorded seeds and clear the records.

        One sweep over ``z``: a perturbation left in place by :meth:`defer_restore_` is undone tensor by tensor in
        the same sweep, with the ``z`` of its (recorded) seed drawn once for both. Each weight then sees the same
        operations in the same order as restoring first, so the result is the same bit for bit. With masters the
        update goes to the master and the weights are re-cast from it (which also restores them).
        """
        if closure is not None:
            raise ValueError("ZO optimizers take no closure: record projected gradients with record(seed, c)")
        if not self._records:
            self.flush_restore_()
            raise RuntimeError(
                "ZO optimizer stepped with no recorded projected gradient: train with a ZerothOrderMixin trainer "
                "(or call record(seed, c) before step())"
            )
        directions = self.directions
        masters = directions.masters
        absolute = masters is not None and masters.absolute
        pending, self._pending_restore = self._pending_restore, None
        records = list(self._records.items())
        first_seed = records[0][0]
        fused = pending is not None and pending[0] in self._records
        if masters is not None:
            masters.before_write()
        for index, p in enumerate(directions.params):
            piece = masters.pieces[index] if masters is not None else None
            if masters is not None and piece is None:
                continue  # none of this tensor lives on this process
            group = self.param_groups[self._group_index[index]]
            with directions.materialized(index) if masters is None else contextlib.nullcontext():
                low = p if piece is None else piece.low
                if pending is not None and not fused and not absolute:  # a perturbation along an unrecorded seed
                    raw = directions.scratch_direction(pending[0], index, scaled=False)
                    self._restore_tensor(low, raw, piece, pending)
                estimate = None
                for k, (seed, c) in enumerate(records):
                    scale = directions.scale(seed)  # first: computing it refills the scratch buffer
                    # with q > 1 the first sample is the accumulator: a fresh tensor, as the others use the scratch
                    raw = directions.sample(seed, index, fresh=k == 0 and len(records) > 1)
                    if pending is not None and seed == pending[0] and not absolute:
                        self._restore_tensor(low, raw, piece, pending)  # with z before scaling, as move_ does
                    z = raw if scale == 1.0 else raw.mul_(scale)
                    estimate = z.mul_(c) if k == 0 else estimate.add_(z, alpha=c)
                self._apply(p, piece, estimate, group, first_seed, index)
        if masters is not None:
            masters.after_write()
        self._records.clear()
        directions.release()
        return None

    def _restore_tensor(self, low: torch.Tensor, raw: torch.Tensor, piece, pending: tuple[int, float]) -> None:
        # the same float operations as move_(seed, 0, at) on this tensor
        seed, at = pending
        z = raw if piece is None else SeededDirections._piece_of(raw, piece)
        low.add_(z, alpha=(0.0 - at * self.settings.mu) * self.directions.scale(seed))

    def _apply(self, p, piece, estimate, group, seed, index) -> None:
        state = self.state[p]
        if piece is None and not self.settings.stochastic_rounding:
            self._update(p, estimate.view_as(p), group, state)
        elif piece is None:  # bf16 weights: update in fp32, round at random so small updates survive on average
            wide = p.float()
            self._update(wide, estimate.view_as(p), group, state)
            generator = self.directions._generator(p.device)
            generator.manual_seed(derive_seed(seed, index, 0x5352))
            stochastic_round_(p.data, wide, generator)
        else:
            piece_estimate = SeededDirections._piece_of(estimate, piece)
            if piece.master is None:
                self._update(piece.low, piece_estimate, group, state)
            else:
                self._update(piece.master, piece_estimate, group, state)
                piece.low.copy_(piece.master)

    def _update(self, p: torch.Tensor, estimate: torch.Tensor, group: dict, state: dict) -> None:
        raise NotImplementedError


class ZOSGD(ZerothOrderOptimizer):
    """ZO-SGD: ``θ ← θ(1 − lr·wd) − lr·ĝ``."""

    def __init__(self, params, lr: float = 1e-6, weight_decay: float = 0.0, **zo_kwargs):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay}, **zo_kwargs)

    def _update(self, p, estimate, group, state):
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(estimate, alpha=-group["lr"])


def _advance_moments(p: torch.Tensor, state: dict) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Adam-style per-parameter state: the incremented step count and the first and second moment buffers."""
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p)
        state["exp_avg_sq"] = torch.zeros_like(p)
    state["step"] += 1
    return state["step"], state["exp_avg"], state["exp_avg_sq"]


class ZOAdam(ZerothOrderOptimizer):
    """ZO-Adam: AdamW (bias-corrected, decoupled weight decay) fed with the ZO estimate ``ĝ``."""

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        **zo_kwargs,
    ):
        super().__init__(
            params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}, **zo_kwargs
        )

    def _update(self, p, estimate, group, state):
        beta1, beta2 = group["betas"]
        t, m, v = _advance_moments(p, state)
        m.mul_(beta1).add_(estimate, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(estimate, estimate, value=1 - beta2)
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        denom = (v / (1 - beta2**t)).sqrt_().add_(group["eps"])
        p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1**t))


class AdaZO(ZerothOrderOptimizer):
    """R-AdaZO (Shu et al., ICML 2025): the second moment tracks the *momentum*, not the raw estimate.

    Without bias correction (the reference code)::

        m ← β1·m + (1−β1)·ĝ;   v ← β2·v + (1−β2)·m²;   θ ← θ − lr·m/(√v + eps)

    whose first step is ``lr/√(1−β2)`` (≈ 32·lr at β2 = 0.999) on every weight. With ``bias_correction=True``
    (default) ``m̂ = m/(1−β1ᵗ)`` feeds the second moment, ``v ← β2·v + (1−β2)·m̂²``, ``v̂ = v/(1−β2ᵗ)`` and
    ``θ ← θ − lr·m̂/(√v̂ + eps)``: the first step is ``lr`` per weight, as Adam's. Weight decay is decoupled.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        **zo_kwargs,
    ):
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        defaults["bias_correction"] = bias_correction
        super().__init__(params, defaults, **zo_kwargs)
        if not bias_correction:
            warnings.warn(
                f"AdaZO without bias correction: the first step moves every weight by about "
                f"lr/sqrt(1-beta2) = {lr / math.sqrt(1 - betas[1]):.3g}; set zo_bias_correction=True or use a ZO "
                "learning rate 10-100x below the first-order one",
                UserWarning,
                stacklevel=2,
            )

    def _update(self, p, estimate, group, state):
        beta1, beta2 = group["betas"]
        t, m, v = _advance_moments(p, state)
        m.mul_(beta1).add_(estimate, alpha=1 - beta1)
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        if group["bias_correction"]:
            m_hat = m / (1 - beta1**t)
            v.mul_(beta2).addcmul_(m_hat, m_hat, value=1 - beta2)
            denom = (v / (1 - beta2**t)).sqrt_().add_(group["eps"])
            p.addcdiv_(m_hat, denom, value=-group["lr"])
        else:
            v.mul_(beta2).addcmul_(m, m, value=1 - beta2)
            p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-group["lr"])


@torch.no_grad()
def projected_gradients(
    optimizer: ZerothOrderOptimizer,
    loss_fn: Callable[[], torch.Tensor],
    seeds: Iterable[int],
    defer_restore: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Finite-difference projected gradients along ``z(seed)`` for each seed, perturbing the weights in place.

    Central: ``c = (f(θ+μz) − f(θ−μz)) / 2μ`` via ``+μz, −2μz, +μz``; forward: ``c = (f(θ+μz) − f(θ)) / μ`` via
    ``+μz, −μz`` with ``f(θ)`` evaluated once. With fp32 masters the weights are written as ``cast(master ± μz)``
    and restored as ``cast(master)`` instead. The weights are restored before returning (up to rounding without
    masters or a snapshot, see the module docstring) and ``loss_fn`` must not need autograd.

    ``defer_restore``: leave the last perturbation in place for the optimizer's next ``step()``, which undoes it
    in its update sweep (one sweep over ``z`` less, same result bit for bit). Only when that step comes next.

    Returns:
        ``(c, loss)``: the projected gradients (float64, one per seed) and the loss to report (``f(θ)`` for forward
        differences, the mean of ``f(θ±μz)`` for central ones, an ``O(μ²)`` estimate of it).
    """
    optimizer.flush_restore_()
    seeds = list(seeds)
    engine, mu = optimizer.directions, optimizer.settings.mu
    central = optimizer.settings.difference == "central"
    base = None if central else loss_fn().detach().double()
    projected, observed = [], []
    snapshot = optimizer.snapshot()
    for k, seed in enumerate(seeds):
        engine.move_(seed, mu, 0.0)
        plus = loss_fn().detach().double()
        at = 1.0
        if central:
            if snapshot is None:
                engine.move_(seed, -mu, mu)
            else:  # from θ itself, so θ−μz is rounded once, as θ+μz was
                optimizer.restore_(snapshot, seed, 1.0)
                engine.move_(seed, -mu, 0.0)
            minus = loss_fn().detach().double()
            at = -1.0
            projected.append((plus - minus) / (2 * mu))
            observed += [plus, minus]
        else:
            projected.append((plus - base) / mu)
        if defer_restore and snapshot is None and k == len(seeds) - 1:
            optimizer.defer_restore_(seed, at)
        else:
            optimizer.restore_(snapshot, seed, at)
    loss = torch.stack(observed).mean() if central else base
    return torch.stack(projected), loss
