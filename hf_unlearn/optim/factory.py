"""Build any optimizer of the hierarchy from config fields: ``build_optimizer(model, args)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.optim import Optimizer

from .args import OptimizerArguments, OptimizerConfig
from .registry import Family, build_entry, optimizer_family
from .zero import validate_deepspeed_for_zo


def optimizer_config(args: Any = None, **overrides) -> OptimizerArguments:
    """The typed, validated optimizer config: ``args`` itself when it is one and nothing is overridden.

    Otherwise an :class:`OptimizerConfig` from the fields of ``args`` (any object, e.g. a TrainingArguments) and
    ``overrides``; building it runs the one validation of every field.
    """
    if isinstance(args, OptimizerArguments) and not overrides:
        if not args.optimizer_fields_checked:  # a TRL config with the optimizer fields mixed in
            args.check_optimizer_fields()
        return args
    names = {f.name for f in dataclasses.fields(OptimizerConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown optimizer config field(s) {sorted(unknown)}; known: {sorted(names)}")
    values = {name: getattr(args, name) for name in names if args is not None and hasattr(args, name)}
    return OptimizerConfig(**{**values, **overrides})


def validate_optimizer_args(args: Any = None, **overrides) -> OptimizerArguments:
    """Check the optimizer fields of ``args`` / ``overrides`` before any weight is loaded; return the typed config."""
    return optimizer_config(args, **overrides)


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
        A ``torch.optim.Optimizer``, built by the optimizer's registry entry (``hf_unlearn.optim.registry``):
        torch's AdamW/SGD, ``SignSGD``, ``SignAdam``, ``QAdam``, bitsandbytes' ``AdamW8bit``, ``SophiaG``,
        ``ZOSGD``, ``ZOAdam``, ``AdaZO``, ``HybridOptimizer``, or ``SAM`` / ``FORS`` around a first-order one (they
        need a ``SmoothingMixin`` trainer or ``step(closure)``).
    """
    cfg = optimizer_config(args, **overrides)
    groups = parameter_groups(model_or_params, cfg.weight_decay, decay_parameter_names)
    return build_entry(cfg.optimizer, groups, cfg)


class OptimizerFactoryMixin:
    """Trainer mixin: ``create_optimizer`` builds from ``self.args`` through :func:`build_optimizer`.

    The Trainer's ``optim`` enum cannot name these optimizers, hence the override; weight-decay groups follow the
    Trainer's own ``get_decay_parameter_names``.
    """

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
            if plugin is not None and optimizer_family(self.args.optimizer) is Family.SMOOTHING:
                optimizer_config(self.args, deepspeed=plugin.deepspeed_config)  # refuses DeepSpeed, in one line
            if plugin is not None and optimizer_config(self.args).uses_zeroth_order:
                # DeepSpeed set up by `accelerate launch --config_file` never reaches args.deepspeed: check what
                # the engine will actually run with.
                validate_deepspeed_for_zo(optimizer_config(self.args, deepspeed=plugin.deepspeed_config))
            names = self.get_decay_parameter_names(opt_model)
            self.optimizer = build_optimizer(opt_model, self.args, decay_parameter_names=names)
        return self.optimizer
