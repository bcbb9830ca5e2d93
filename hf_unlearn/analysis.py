"""Linear mode connectivity between two checkpoints (``docs/definitions.md``).

Along ``θ(a) = (1 − a)·θ_A + a·θ_B`` the loss is measured at evenly spaced ``a`` in [0, 1]; the barrier is
``max_a L(θ(a)) − ((1 − a)·L(θ_A) + a·L(θ_B))``. A barrier near zero means the two models share a basin (the
paper finds this for sign optimizers vs Adam, and not for zeroth order).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hf_unlearn.errors import UserInputError


# Each point is one full evaluation pass; 1001 resolves the curve to a thousandth of the path and, on a real model,
# already takes hours. Past it a run is unbounded in practice (100000 points ran silently for as long as it ran).
MAX_POINTS = 1001

LossFn = Callable[[Any], float]
MetricsFn = Callable[[Any], dict[str, float]]


@dataclass
class LMCResult:
    """Losses (and metrics) at each interpolation weight, with the barrier height and where it is."""

    alphas: list[float]
    losses: list[float]
    barrier: float
    barrier_alpha: float
    metrics: list[dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def barrier_height(alphas: list[float], losses: list[float]) -> tuple[float, float]:
    """``(max_a L(a) − linear interpolation of the endpoint losses, the a where it is reached)``."""
    if len(alphas) != len(losses) or len(alphas) < 2:
        raise ValueError("barrier_height needs at least two (alpha, loss) pairs of equal length.")
    start, end = losses[0], losses[-1]
    gaps = [loss - ((1 - a) * start + a * end) for a, loss in zip(alphas, losses)]
    best = max(range(len(gaps)), key=gaps.__getitem__)
    return gaps[best], alphas[best]


def _endpoint_states(model_a, model_b) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    if state_a.keys() != state_b.keys():
        missing = sorted(set(state_a) ^ set(state_b))[:3]
        raise ValueError(f"The two models have different parameters (e.g. {missing}); LMC needs one architecture.")
    for name, tensor in state_a.items():
        other = state_b[name]
        if tensor.shape != other.shape:
            raise ValueError(f"{name}: shapes differ ({tuple(tensor.shape)} vs {tuple(other.shape)}).")
        if not tensor.is_floating_point() and not torch.equal(tensor, other.to(tensor.device)):
            raise ValueError(f"{name}: integer buffers differ between the models and cannot be interpolated.")
    return state_a, state_b


def check_points(points: int) -> None:
    """The number of interpolation weights: 2 (the endpoints) to `MAX_POINTS`; one line naming ``points`` if not."""
    if not 2 <= points <= MAX_POINTS:
        raise UserInputError(
            f"points must be between 2 (the two endpoints) and {MAX_POINTS} (each point is a full evaluation), got "
            f"{points}; 11 or 21 show a barrier."
        )


@torch.no_grad()
def linear_mode_connectivity(
    model_a,
    model_b,
    loss_fn: LossFn,
    points: int = 11,
    metrics_fn: MetricsFn | None = None,
    on_point: Callable[[int, float, float], None] | None = None,
) -> LMCResult:
    """Evaluate `loss_fn` (and `metrics_fn`) on ``θ(a)`` for `points` evenly spaced ``a`` in [0, 1].

    `on_point(index, a, loss)` is called after each point (the command line prints progress with it).

    Works on a copy of `model_a`; neither model changes. ``a = 0`` and ``a = 1`` are exactly θ_A and θ_B
    (``torch.lerp`` is exact at its ends), so the endpoint losses equal the two models' own losses.
    """
    check_points(points)
    state_a, state_b = _endpoint_states(model_a, model_b)
    probe = copy.deepcopy(model_a).eval()
    targets = probe.state_dict(keep_vars=True)
    alphas = [i / (points - 1) for i in range(points)]
    losses, metrics = [], []
    for alpha in alphas:
        for name, target in targets.items():
            if target.is_floating_point():
                start = state_a[name]
                end = state_b[name].to(start.device)
                exact = torch.promote_types(target.dtype, torch.float32)  # half precision mixes in fp32
                target.data.copy_(torch.lerp(start.to(exact), end.to(exact), alpha).to(target.dtype))
        losses.append(float(loss_fn(probe)))
        if on_point is not None:
            on_point(len(losses) - 1, alpha, losses[-1])
        if metrics_fn is not None:
            metrics.append(dict(metrics_fn(probe)))
    barrier, where = barrier_height(alphas, losses)
    return LMCResult(alphas, losses, barrier, where, metrics if metrics_fn is not None else None)


def plot_lmc(result: LMCResult, path: str | Path, title: str | None = None, label: str = "loss") -> Path:
    """Write a PNG of the loss along the path, with the straight line between the endpoint losses."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure + Agg canvas: no pyplot state and no change to the user's global backend.
    figure = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(result.alphas, result.losses, marker="o", label=label)
    axes.plot([0, 1], [result.losses[0], result.losses[-1]], linestyle="--", color="grey", label="linear")
    axes.set_xlabel("a  (θ = (1 − a)·θ_A + a·θ_B)")
    axes.set_ylabel(label)
    axes.set_title(title or f"Linear mode connectivity (barrier {result.barrier:.4g})")
    axes.legend()
    figure.tight_layout()
    import io

    from hf_unlearn.io import atomic_write_bytes

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return atomic_write_bytes(path, buffer.getvalue())
