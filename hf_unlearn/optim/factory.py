"""Build any optimizer of the hierarchy from config fields: ``build_optimizer(model, args)``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .args import FIRST_ORDER_OPTIMIZERS, KNOWN_OPTIMIZERS, ZEROTH_ORDER_OPTIMIZERS, OptimizerArguments
from .compressed import QAdam, SignAdam, SignSGD
from .hybrid import HybridOptimizer
from .sophia import SophiaG
from .zero import validate_deepspeed_for_zo
from .zo import DIFFERENCES, DIRECTIONS, ZOSGD, AdaZO, ZOAdam


# TrainingArguments fields the factory reads, with TrainingArguments' own defaults for plain-kwargs use.
_TRAINING_DEFAULTS = {
    "learning_rate": 5e-5,
    "weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "seed": 42,
    "fp16": False,
    "max_steps": -1,
    "bf16": False,
    "deepspeed": None,
}


def optimizer_config(args: Any = None, **overrides) -> SimpleNamespace:
    """All fields the factory reads: defaults, then attributes of ``args`` (any object), then ``overrides``."""
    values = {f.name: f.default for f in dataclasses.fields(OptimizerArguments)}
    values.update(_TRAINING_DEFAULTS)
    for key in list(values):
        if args is not None and hasattr(args, key):
            values[key] = getattr(args, key)
    unknown = set(overrides) - set(values)
    if unknown:
        raise TypeError(f"unknown optimizer config field(s) {sorted(unknown)}; known: {sorted(values)}")
    values.update(overrides)
    return SimpleNamespace(**values)


def uses_zeroth_order(cfg: Any) -> bool:
    """Whether the configured optimizer runs any ZO step."""
    if cfg.optimizer in ZEROTH_ORDER_OPTIMIZERS:
        return True
    return cfg.optimizer == "hybrid" and hybrid_steps(cfg)[1] > 0


def hybrid_steps(cfg: Any) -> tuple[int, int]:
    """(FO steps, ZO steps) per hybrid period."""
    zo_steps = cfg.hybrid_fo_steps if cfg.hybrid_zo_steps is None else cfg.hybrid_zo_steps
    return cfg.hybrid_fo_steps, zo_steps


def validate_optimizer_args(args: Any = None, **overrides) -> SimpleNamespace:
    """Check the optimizer fields before any weight is loaded; raise ``ValueError`` naming the field and the fix.

    Returns the resolved config.
    """
    cfg = optimizer_config(args, **overrides)

    def fail(message: str) -> None:
        raise ValueError(message)

    if cfg.optimizer not in KNOWN_OPTIMIZERS:
        fail(f"optimizer={cfg.optimizer!r} is unknown; choose one of: {', '.join(KNOWN_OPTIMIZERS)}")
    if cfg.hybrid_fo_optimizer not in FIRST_ORDER_OPTIMIZERS:
        fail(f"hybrid_fo_optimizer={cfg.hybrid_fo_optimizer!r}: choose one of {', '.join(FIRST_ORDER_OPTIMIZERS)}")
    if cfg.hybrid_zo_optimizer not in ZEROTH_ORDER_OPTIMIZERS:
        fail(f"hybrid_zo_optimizer={cfg.hybrid_zo_optimizer!r}: choose one of {', '.join(ZEROTH_ORDER_OPTIMIZERS)}")
    if not (isinstance(cfg.zo_num_directions, int) and cfg.zo_num_directions >= 1):
        fail(f"zo_num_directions={cfg.zo_num_directions!r} must be an integer >= 1 (q directions per ZO step)")
    if not (cfg.zo_mu > 0 and math.isfinite(cfg.zo_mu)):
        fail(f"zo_mu={cfg.zo_mu!r} must be a finite number > 0 (try 1e-3)")
    if cfg.zo_direction not in DIRECTIONS:
        fail(f"zo_direction={cfg.zo_direction!r}: choose one of {', '.join(DIRECTIONS)}")
    if cfg.zo_difference not in DIFFERENCES:
        fail(f"zo_difference={cfg.zo_difference!r}: choose one of {', '.join(DIFFERENCES)}")
    if cfg.zo_learning_rate is not None and not cfg.zo_learning_rate > 0:
        fail(f"zo_learning_rate={cfg.zo_learning_rate!r} must be > 0 (or unset to use learning_rate)")
    if not cfg.learning_rate > 0:
        fail(f"learning_rate={cfg.learning_rate!r} must be > 0")
    if not (isinstance(cfg.qadam_bits, int) and 1 <= cfg.qadam_bits <= 8):
        fail(f"qadam_bits={cfg.qadam_bits!r} must be an integer in 1..8 (1 = sign)")
    if not cfg.sophia_rho > 0:
        fail(f"sophia_rho={cfg.sophia_rho!r} must be > 0 (SOUL uses 0.04)")
    fo_steps, zo_steps = hybrid_steps(cfg)
    if not (isinstance(fo_steps, int) and fo_steps >= 1):
        fail(f"hybrid_fo_steps={fo_steps!r} must be an integer >= 1 (the paper uses 20)")
    if not (isinstance(zo_steps, int) and zo_steps >= 0):
        fail(f"hybrid_zo_steps={zo_steps!r} must be an integer >= 0 (unset = hybrid_fo_steps)")
    if cfg.optimizer == "hybrid" and zo_steps > 0 and cfg.max_steps > 0 and cfg.max_steps % (fo_steps + zo_steps):
        period = fo_steps + zo_steps
        fail(
            f"max_steps={cfg.max_steps} must be a multiple of hybrid_fo_steps + hybrid_zo_steps = {period} so the "
            f"run ends with a ZO phase; use max_steps={max(period, round(cfg.max_steps / period) * period)}"
        )
    if uses_zeroth_order(cfg) and cfg.fp16:
        fail(
            f"fp16=True cannot be combined with optimizer={cfg.optimizer!r}: its zeroth-order steps have no "
            "backward to loss-scale; set fp16=False and use bf16=True or fp32"
        )
    if uses_zeroth_order(cfg) and cfg.zo_master_weights and cfg.zo_stochastic_rounding:
        fail("zo_master_weights and zo_stochastic_rounding exclude each other; keep zo_master_weights (nearer fp32)")
    if uses_zeroth_order(cfg):
        validate_deepspeed_for_zo(cfg)
    return cfg


def parameter_groups(
    model_or_params: nn.Module | Iterable, weight_decay: float, decay_parameter_names: Iterable[str] | None = None
) -> list[dict]:
    """Trainable parameters as torch param groups.

    For a module: a decayed and a non-decayed group (names in ``decay_parameter_names`` decay; without it, tensors
    of 2 or more dimensions decay and biases / norm weights do not). Anything else is passed through as torch
    optimizers take it (an iterable of tensors or of group dicts).
    """
    if isinstance(model_or_params, nn.Module):
        named = [(n, p) for n, p in model_or_params.named_parameters() if p.requires_grad]
        decay = set(decay_parameter_names) if decay_parameter_names is not None else None
        decayed = [p for n, p in named if (n in decay if decay is not None else p.ndim >= 2)]
        kept = [p for n, p in named if (n not in decay if decay is not None else p.ndim < 2)]
        groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": kept, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    else:
        items = list(model_or_params)
        if items and isinstance(items[0], dict):
            groups = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in items]
        else:
            groups = [{"params": [p for p in items if p.requires_grad]}]
    if not any(g["params"] for g in groups):
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    return groups


def _copy_groups(groups: list[dict]) -> list[dict]:
    # torch's add_param_group fills defaults into the dict it is given; each optimizer needs its own.
    return [dict(g, params=list(g["params"])) for g in groups]


def _first_order(name: str, groups: list[dict], cfg: SimpleNamespace) -> Optimizer:
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    lr, wd = cfg.learning_rate, cfg.weight_decay
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=cfg.adam_epsilon, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.sgd_momentum, weight_decay=wd)
    if name == "signsgd":
        return SignSGD(groups, lr=lr, weight_decay=wd)
    if name == "signadam":
        return SignAdam(groups, lr=lr, beta1=cfg.adam_beta1, weight_decay=wd)
    if name == "qadam":
        return QAdam(groups, lr=lr, betas=betas, eps=cfg.adam_epsilon, weight_decay=wd, bits=cfg.qadam_bits)
    if name == "sophia":
        betas = (cfg.sophia_beta1, cfg.sophia_beta2)
        return SophiaG(
            groups, lr=lr, betas=betas, rho=cfg.sophia_rho, weight_decay=wd, batch_tokens=cfg.sophia_batch_tokens
        )
    if name == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ImportError("optimizer='adamw_8bit' needs bitsandbytes: pip install 'hf_unlearn[quant]'") from err
        return bnb.optim.AdamW8bit(groups, lr=lr, betas=betas, eps=cfg.adam_epsilon, weight_decay=wd)
    raise ValueError(f"{name!r} is not a first-order optimizer; choose one of {', '.join(FIRST_ORDER_OPTIMIZERS)}")


def _zeroth_order(name: str, groups: list[dict], cfg: SimpleNamespace):
    lr = cfg.learning_rate if cfg.zo_learning_rate is None else cfg.zo_learning_rate
    zo = {"mu": cfg.zo_mu, "num_directions": cfg.zo_num_directions, "direction": cfg.zo_direction}
    zo.update(difference=cfg.zo_difference, exact_restore=cfg.zo_exact_restore)
    zo.update(master_weights=cfg.zo_master_weights, stochastic_rounding=cfg.zo_stochastic_rounding)
    betas = (cfg.zo_beta1, cfg.zo_beta2)
    if name == "zo_sgd":
        return ZOSGD(groups, lr=lr, weight_decay=cfg.weight_decay, **zo)
    if name == "zo_adam":
        return ZOAdam(groups, lr=lr, betas=betas, eps=cfg.zo_eps, weight_decay=cfg.weight_decay, **zo)
    if name == "adazo":
        return AdaZO(
            groups, lr=lr, betas=betas, eps=cfg.zo_eps, weight_decay=cfg.weight_decay,
            bias_correction=cfg.zo_bias_correction, **zo,
        )  # fmt: skip
    raise ValueError(f"{name!r} is not a zeroth-order optimizer; choose one of {', '.join(ZEROTH_ORDER_OPTIMIZERS)}")


def build_optimizer(
    model_or_params: nn.Module | Iterable,
    args: Any = None,
    *,
    decay_parameter_names: Iterable[str] | None = None,
    **overrides,
) -> Optimizer:
    """Build the optimizer named by ``args.optimizer`` (or ``optimizer=...``) over the trainable parameters.

    Args:
        model_or_params: a module, or what torch optimizers take (tensors or param-group dicts).
        args: any object with the fields of :class:`OptimizerArguments` and ``TrainingArguments``' ``learning_rate``,
            ``weight_decay``, ``adam_beta1/2``, ``adam_epsilon`` (missing ones take their defaults), e.g. the
            training config; ``None`` for plain keyword use.
        decay_parameter_names: names of the module's parameters that take weight decay (``Trainer.
            get_decay_parameter_names``); default: tensors with 2 or more dimensions.
        **overrides: any of those fields, e.g. ``build_optimizer(model, optimizer="adazo", zo_mu=1e-3)``.

    Returns:
        A ``torch.optim.Optimizer``: torch's AdamW/SGD, ``SignSGD``, ``SignAdam``, ``QAdam``, bitsandbytes'
        ``AdamW8bit``, ``SophiaG``, ``ZOSGD``, ``ZOAdam``, ``AdaZO`` or ``HybridOptimizer``.
    """
    cfg = validate_optimizer_args(args, **overrides)
    groups = parameter_groups(model_or_params, cfg.weight_decay, decay_parameter_names)
    if cfg.optimizer in ZEROTH_ORDER_OPTIMIZERS:
        return _zeroth_order(cfg.optimizer, groups, cfg)
    if cfg.optimizer == "hybrid":
        fo = _first_order(cfg.hybrid_fo_optimizer, _copy_groups(groups), cfg)
        zo = _zeroth_order(cfg.hybrid_zo_optimizer, _copy_groups(groups), cfg)
        zo_lr = cfg.learning_rate if cfg.zo_learning_rate is None else cfg.zo_learning_rate
        return HybridOptimizer(fo, zo, zo_lr_scale=zo_lr / cfg.learning_rate)
    return _first_order(cfg.optimizer, groups, cfg)


class OptimizerFactoryMixin:
    """Trainer mixin: ``create_optimizer`` builds from ``self.args`` through :func:`build_optimizer`.

    The Trainer's ``optim`` enum cannot name these optimizers, hence the override; weight-decay groups follow the
    Trainer's own ``get_decay_parameter_names``.
    """

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
            if plugin is not None and uses_zeroth_order(optimizer_config(self.args)):
                # DeepSpeed set up by `accelerate launch --config_file` never reaches args.deepspeed: check what
                # the engine will actually run with.
                validate_deepspeed_for_zo(optimizer_config(self.args, deepspeed=plugin.deepspeed_config))
            names = self.get_decay_parameter_names(opt_model)
            self.optimizer = build_optimizer(opt_model, self.args, decay_parameter_names=names)
        return self.optimizer
