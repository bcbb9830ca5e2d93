"""The optimizer hierarchy of the paper: first order, compressed, second order, zeroth order and the FO-ZO hybrid."""

from .args import OptimizerArguments, OptimizerConfig, check_hybrid_max_steps
from .compressed import QAdam, SignAdam, SignSGD, quantize_direction
from .factory import (
    OptimizerFactoryMixin,
    build_optimizer,
    optimizer_config,
    parameter_groups,
    validate_optimizer_args,
)
from .hybrid import HybridOptimizer, unwrap_optimizer, zo_optimizer_of
from .registry import (
    FIRST_ORDER_OPTIMIZERS,
    KNOWN_OPTIMIZERS,
    OPTIMIZERS,
    SMOOTHING_OPTIMIZERS,
    SMOOTHING_SCOPES,
    ZEROTH_ORDER_OPTIMIZERS,
    Family,
    OptimizerEntry,
    Variant,
    optimizer_entry,
    optimizer_family,
    optimizer_label,
    optimizer_names,
    register_optimizer,
)
from .smoothing import FORS, SAM, SmoothingOptimizer, smoothing_optimizer_of
from .sophia import SophiaG
from .zo import ZOSGD, AdaZO, SeededDirections, ZerothOrderOptimizer, ZOAdam, derive_seed


__all__ = [
    "FIRST_ORDER_OPTIMIZERS",
    "KNOWN_OPTIMIZERS",
    "OPTIMIZERS",
    "SMOOTHING_OPTIMIZERS",
    "SMOOTHING_SCOPES",
    "ZEROTH_ORDER_OPTIMIZERS",
    "FORS",
    "Family",
    "OptimizerEntry",
    "Variant",
    "SAM",
    "AdaZO",
    "HybridOptimizer",
    "OptimizerArguments",
    "OptimizerConfig",
    "OptimizerFactoryMixin",
    "QAdam",
    "SeededDirections",
    "SignAdam",
    "SignSGD",
    "SmoothingOptimizer",
    "SophiaG",
    "ZOAdam",
    "ZOSGD",
    "ZerothOrderOptimizer",
    "build_optimizer",
    "check_hybrid_max_steps",
    "derive_seed",
    "optimizer_config",
    "optimizer_entry",
    "optimizer_family",
    "optimizer_label",
    "optimizer_names",
    "parameter_groups",
    "quantize_direction",
    "register_optimizer",
    "smoothing_optimizer_of",
    "unwrap_optimizer",
    "validate_optimizer_args",
    "zo_optimizer_of",
]
