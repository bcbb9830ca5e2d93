"""Zeroth-order engine: seeded in-place perturbations (MeZO) and the ZO optimizers that consume them.

A ZO step never materialises a gradient or an activation graph. The trainer (``ZerothOrderMixin``) draws a seed,
perturbs the weights in place by ``+μz``, ``−2μz``, ``+μz`` (``z`` regenerated from the seed, one chunk of a tensor
at a time: ``hf_unlearn.optim.directions``), and records the projected gradient ``c = (f(θ+μz) − f(θ−μz)) / 2μ``
with :meth:`ZerothOrderOptimizer.record`.
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

from .directions import DIRECTIONS, SeededDirections, derive_seed, flat_view
from .masters import FP32MasterCopy, stochastic_round_


DIFFERENCES = ("central", "forward")


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


class ZerothOrderOptimizer(Optimizer):
    """Base class of the ZO optimizers: owns the perturbation engine and the pending (seed, c) records.

    Only parameters with ``requires_grad`` are perturbed and updated. Subclasses implement :meth:`_update`.

    ``settings``: the :class:`ZOSettings` (or its fields as keywords, ``ZOSGD(params, lr=..., mu=1e-3)``).
    ``master_weights``: for bf16/fp16 trainable weights, keep an fp32 copy (4 bytes per weight) that is perturbed
    from, restored from exactly and updated (a no-op for fp32 weights). ``stochastic_rounding``: for bf16 weights,
    compute each update in fp32 and round it into the weights stochastically (no extra memory beyond fp32 moments).
    Under DeepSpeed ZeRO the engine's masters are attached instead (``hf_unlearn.optim.zero``).
    """

    moment_buffers: tuple[str, ...] = ()  # per-weight state tensors, e.g. Adam's ("exp_avg", "exp_avg_sq")

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

        One sweep over ``z``, chunk by chunk: a perturbation left in place by :meth:`defer_restore_` is undone in
        the same sweep, with the ``z`` of its (recorded) seed drawn once for both. Each weight then sees the same
        operations in the same order as restoring first, so the result is the same bit for bit. With masters the
        update goes to the master and the weights are re-cast from it (which also restores them). The update is
        elementwise, so it runs on each chunk of ``ĝ`` as it is formed: no tensor-sized temporary.
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
        if absolute:
            pending = None  # writing the weights from the masters restores them
        records = list(self._records.items())
        scales = [directions.scale(seed) for seed, _ in records]
        if pending is not None and pending[0] not in self._records:  # a perturbation along an unrecorded seed
            directions.move_(pending[0], 0.0, pending[1] * self.settings.mu)  # its own sweep, same float operations
            pending = None
        if masters is not None:
            masters.before_write()
        for index, p in enumerate(directions.params):
            piece = masters.pieces[index] if masters is not None else None
            if masters is not None and piece is None:
                continue  # none of this tensor lives on this process
            group = self.param_groups[self._group_index[index]]
            with directions.materialized(index) if masters is None else contextlib.nullcontext():
                self._step_tensor(index, p, piece, group, records, scales, pending)
        if masters is not None:
            masters.after_write()
        self._records.clear()
        directions.release()
        return None

    def _step_tensor(self, index, p, piece, group, records, scales, pending) -> None:
        directions = self.directions
        stochastic = piece is None and self.settings.stochastic_rounding
        with flat_view(p) if piece is None else contextlib.nullcontext(piece.low) as low:
            start = 0 if piece is None else piece.start
            if piece is not None and piece.master is not None:
                target = piece.master
            else:
                target = low
            # moments shaped like the parameter (or its piece), fp32 where updates are computed in fp32
            like = p if piece is None else target
            t, moments = self._moments(p, like, torch.float32 if stochastic else like.dtype)
            if stochastic:
                rounding = torch.Generator(device=p.device)
                rounding.manual_seed(derive_seed(records[0][0], index, 0x5352))
            stop = start + low.numel()
            streams = [directions.stream(seed, index, start, stop) for seed, _ in records]
            accumulator = directions.buffer("estimate", index) if len(records) > 1 else None
            for offset, first in streams[0]:
                part = slice(offset - start, offset - start + first.numel())
                estimate = None
                for k, (seed, c) in enumerate(records):
                    # each stream's chunk is used before the next stream draws into the shared buffer
                    raw = first if k == 0 else next(streams[k])[1]
                    if pending is not None and seed == pending[0]:  # with z before scaling, as move_ does
                        low[part].add_(raw, alpha=(0.0 - pending[1] * self.settings.mu) * scales[k])
                    z = raw if scales[k] == 1.0 else raw.mul_(scales[k])
                    if k == 0:
                        estimate = (z if accumulator is None else accumulator[: z.numel()].copy_(z)).mul_(c)
                    else:
                        estimate.add_(z, alpha=c)
                chunk = [m[part] for m in moments]
                if stochastic:
                    wide = low[part].float()
                    self._update(wide, estimate, group, chunk, t)
                    stochastic_round_(low[part], wide, rounding)
                else:
                    self._update(target[part], estimate, group, chunk, t)
                    if target is not low:
                        low[part].copy_(target[part])

    def _moments(self, p: torch.Tensor, like: torch.Tensor, dtype: torch.dtype) -> tuple[int, list[torch.Tensor]]:
        """This tensor's step count (advanced once per step) and flat views of its moment buffers (zeros like
        ``like`` in ``dtype`` at the first step), for optimizers with ``moment_buffers``."""
        if not self.moment_buffers:
            return 0, []
        state = self.state[p]
        if not state:
            state["step"] = 0
            for name in self.moment_buffers:
                state[name] = torch.zeros_like(like, dtype=dtype)
        state["step"] += 1
        return state["step"], [state[name].view(-1) for name in self.moment_buffers]

    def _update(
        self, p: torch.Tensor, estimate: torch.Tensor, group: dict, moments: list[torch.Tensor], t: int
    ) -> None:
        """Update the 1-D chunk ``p`` of a tensor in place from the same chunk of ``ĝ`` and of its moment buffers
        (step ``t``): elementwise, so chunk by chunk equals the whole tensor at once."""
        raise NotImplementedError


class ZOSGD(ZerothOrderOptimizer):
    """ZO-SGD: ``θ ← θ(1 − lr·wd) − lr·ĝ``."""

    def __init__(self, params, lr: float = 1e-6, weight_decay: float = 0.0, **zo_kwargs):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay}, **zo_kwargs)

    def _update(self, p, estimate, group, moments, t):
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(estimate, alpha=-group["lr"])


class ZOAdam(ZerothOrderOptimizer):
    """ZO-Adam: AdamW (bias-corrected, decoupled weight decay) fed with the ZO estimate ``ĝ``."""

    moment_buffers = ("exp_avg", "exp_avg_sq")

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

    def _update(self, p, estimate, group, moments, t):
        beta1, beta2 = group["betas"]
        m, v = moments
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

    moment_buffers = ("exp_avg", "exp_avg_sq")

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

    def _update(self, p, estimate, group, moments, t):
        beta1, beta2 = group["betas"]
        m, v = moments
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
