"""The optimizer registry: one :class:`OptimizerEntry` per optimizer, and everything else reads it.

An entry says what the optimizer is (name, family, label, its grade in the paper's order), which config fields it
reads and how they are checked, and how it is built. The factory builds from it, the config gate checks from it
(known names, the hybrid's and the smoothing optimizers' admissible halves, the families' rules), the sweep sorts
and labels its rows with it, and the model card and ``--help`` word the optimizer with it.

Adding an optimizer is one entry below and its class: ``register_optimizer(OptimizerEntry(...))``.

The grade is the order of Downgrade to Upgrade (Lang et al. 2025, arXiv 2510.00761), from the highest grade
(second-order curvature) to the lowest (no gradient at all): Sophia -> AdamW (and the smoothing baselines that
wrap it) -> Q(m;8) .. Q(m;1) -> signAdam -> zeroth order -> the FO-ZO hybrid. Lower numbers are higher grades.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

from .compressed import QAdam, SignAdam, SignSGD
from .hybrid import HybridOptimizer, HybridSchedule
from .papers import DOWNGRADE_TO_UPGRADE, SOUL
from .smoothing import FORS, SAM
from .sophia import SophiaG
from .zo import ZOSGD, AdaZO, ZOAdam, ZOSettings, check_zo_settings


class Family(str, enum.Enum):
    """What information an optimizer's step uses; it decides how the trainer steps and which rules apply."""

    SECOND_ORDER = "second-order"
    FIRST_ORDER = "first-order"
    SIGN_QUANTIZED = "sign/quantized"
    ZEROTH_ORDER = "zeroth-order"
    HYBRID = "hybrid"
    SMOOTHING = "smoothing"

    @property
    def steps_on_gradient(self) -> bool:
        """One backward, one step: what the hybrid's FO phases and a smoothing optimizer's base can be."""
        return self in (Family.SECOND_ORDER, Family.FIRST_ORDER, Family.SIGN_QUANTIZED)


# A builder takes torch param groups and the optimizer config (an ``OptimizerArguments``: its fields plus
# TrainingArguments' learning_rate, weight_decay, adam_beta1/2, adam_epsilon, seed) and returns the optimizer.
Builder = Callable[[list[dict], Any], Optimizer]


@dataclass(frozen=True)
class Variant:
    """A family of settings of one optimizer that the sweep compares as separate rows: ``qadam:4`` is Q(m;4).

    ``name:VALUE`` sets config field ``field`` to VALUE (an integer in ``values``); the row is labelled
    ``label.format(VALUE)`` and graded ``grade(VALUE)``; ``metavar`` names VALUE in messages and help.
    """

    field: str
    values: range
    label: str
    grade: Callable[[int], float]
    metavar: str = "VALUE"


@dataclass(frozen=True)
class OptimizerEntry:
    """One optimizer of the registry.

    Attributes:
        name: the config value (``optimizer: adamw``).
        family: what its step uses (:class:`Family`).
        grade: position in the paper's order (lower = higher grade); the sweep's rows are sorted by it.
        label: how tables, plots and the model card name it.
        build: ``build(param_groups, config) -> torch.optim.Optimizer``.
        summary: a phrase for ``--help`` and the model card.
        fields: the config fields only this optimizer reads (documentation and ``--help``).
        check: raises a one-line ``ValueError`` naming a bad field among ``fields`` and its fix; the config gate
            runs it for every entry, so a bad value fails even while another optimizer is chosen (a rule that holds
            only when this optimizer runs reads ``cfg.optimizer``). The family's rules (ZO refuses fp16, smoothing
            refuses DeepSpeed, the hybrid's max_steps) are the gate's own.
        variant: the sweep's ``name:VALUE`` rows (:class:`Variant`), if any.
        papers: the papers a run with it cites (records like the report's ``papers``).
    """

    name: str
    family: Family
    grade: float
    label: str
    build: Builder
    summary: str = ""
    fields: tuple[str, ...] = ()
    check: Callable[[Any], None] | None = None
    variant: Variant | None = None
    papers: tuple[Mapping[str, str], ...] = ()

    def __post_init__(self):
        if not (isinstance(self.name, str) and self.name.isidentifier() and self.name.islower()):
            raise ValueError(f"optimizer entry name {self.name!r}: use a lower-case identifier, e.g. 'sgd_nesterov'")
        if not isinstance(self.family, Family):
            families = ", ".join(f"Family.{f.name}" for f in Family)
            raise ValueError(f"optimizer {self.name!r}: family {self.family!r} must be one of {families}")
        grade = self.grade
        if isinstance(grade, bool) or not isinstance(grade, (int, float)) or not math.isfinite(grade):
            raise ValueError(f"optimizer {self.name!r}: grade {grade!r} must be a finite number (sweeps sort by it)")
        if not (isinstance(self.label, str) and self.label.strip()):
            raise ValueError(f"optimizer {self.name!r}: give it a label (tables and plots name it so)")
        if not callable(self.build):
            raise ValueError(f"optimizer {self.name!r}: build must be a callable (param_groups, config) -> Optimizer")

    def label_for(self, value: int | None = None) -> str:
        """The label of the row ``name:value`` (the plain label without a variant value)."""
        return self.variant.label.format(value) if self.variant and value is not None else self.label

    def grade_for(self, value: int | None = None) -> float:
        return float(self.variant.grade(value) if self.variant and value is not None else self.grade)


OPTIMIZERS: dict[str, OptimizerEntry] = {}


def register_optimizer(entry: OptimizerEntry) -> OptimizerEntry:
    """Add ``entry`` to the registry; a name is registered once."""
    if entry.name in OPTIMIZERS:
        raise ValueError(f"optimizer {entry.name!r} is already registered; pick another name")
    OPTIMIZERS[entry.name] = entry
    return entry


def optimizer_entry(name: str, role: str = "optimizer", families: Sequence[Family] | None = None) -> OptimizerEntry:
    """The entry of ``name`` (of one of ``families``, when given); else a one-line ``ValueError`` naming the choices
    as ``role=...``."""
    entry = OPTIMIZERS.get(name)
    if entry is None or (families is not None and entry.family not in families):
        names = optimizer_names(*(families or ()))
        if entry is None and families is None:
            raise ValueError(f"{role}={name!r} is unknown; choose one of: {', '.join(names)}")
        raise ValueError(f"{role}={name!r}: choose one of {', '.join(names)}")
    return entry


def optimizer_names(*families: Family) -> list[str]:
    """Registered names, in registration order; only those of ``families`` when given."""
    return [name for name, entry in OPTIMIZERS.items() if not families or entry.family in families]


def optimizer_family(name: str | None) -> Family | None:
    """The family of a registered optimizer; None for an unknown name (e.g. a report written by a plugin)."""
    entry = OPTIMIZERS.get(name) if name else None
    return entry.family if entry else None


class OptimizerNames(Sequence):
    """The registered names (of some families), read from the registry each time: ``name in KNOWN_OPTIMIZERS``
    sees an entry registered after import, and argparse's ``choices`` list it."""

    def __init__(self, *families: Family):
        self.families = families

    def _names(self) -> list[str]:
        return optimizer_names(*self.families)

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name) -> bool:
        return name in self._names()

    def __repr__(self) -> str:
        return repr(tuple(self._names()))


GRADIENT_FAMILIES = tuple(f for f in Family if f.steps_on_gradient)
KNOWN_OPTIMIZERS = OptimizerNames()
FIRST_ORDER_OPTIMIZERS = OptimizerNames(*GRADIENT_FAMILIES)  # what the hybrid's FO half / a smoothing base can be
ZEROTH_ORDER_OPTIMIZERS = OptimizerNames(Family.ZEROTH_ORDER)
SMOOTHING_OPTIMIZERS = OptimizerNames(Family.SMOOTHING)


def optimizer_label(name: str | None, config: Mapping[str, Any] | None = None) -> str | None:
    """How reports name a run's optimizer: the entry's label (Q(m;4) for qadam with qadam_bits 4); an unknown
    name as it is."""
    entry = OPTIMIZERS.get(name) if name else None
    if entry is None:
        return name
    value = (config or {}).get(entry.variant.field) if entry.variant else None
    return entry.label_for(value)


def optimizer_papers(optimizer: str | None, config: Mapping[str, Any] | None = None) -> list[dict[str, str]]:
    """The papers a run with `optimizer` cites (records like the report's ``papers``), in citation order. A hybrid
    also cites its halves' papers (``hybrid_fo_optimizer`` / ``hybrid_zo_optimizer``, read from `config`)."""
    entry = OPTIMIZERS.get(optimizer) if optimizer else None
    if entry is None:
        return []
    papers = list(entry.papers)
    if entry.family is Family.HYBRID and config:
        for part in (config.get("hybrid_fo_optimizer"), config.get("hybrid_zo_optimizer")):
            papers += OPTIMIZERS[part].papers if part in OPTIMIZERS else ()
    unique: dict[str, dict[str, str]] = {}
    for paper in papers:  # each paper once, where it is first cited
        unique.setdefault(paper["arxiv_id"], dict(paper))
    return list(unique.values())


def optimizer_help() -> str:
    """The ``optimizer`` field's help: the optimizers by family, each family in grade order."""
    by_family = {family: [e.name for e in sorted(OPTIMIZERS.values(), key=lambda e: e.grade) if e.family is family]
                 for family in Family}  # fmt: skip
    parts = [f"{family.value}: {', '.join(names)}" for family, names in by_family.items() if names]
    return "Unlearning optimizer, by family: " + "; ".join(parts) + "."


# ---- the fields' checks -------------------------------------------------------------------------------------------


def _finite_positive(cfg, name: str, hint: str = "") -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name}={value!r} must be a finite number > 0{hint}")


def _check_sgd(cfg) -> None:
    if not (isinstance(cfg.sgd_momentum, (int, float)) and 0 <= cfg.sgd_momentum < 1):
        raise ValueError(f"sgd_momentum={cfg.sgd_momentum!r} must be a number in [0, 1) (0 = plain SGD)")


def _check_qadam(cfg) -> None:
    if not (isinstance(cfg.qadam_bits, int) and 1 <= cfg.qadam_bits <= 8):
        raise ValueError(f"qadam_bits={cfg.qadam_bits!r} must be an integer in 1..8 (1 = sign)")


def _check_sophia(cfg) -> None:
    if not cfg.sophia_rho > 0:
        raise ValueError(f"sophia_rho={cfg.sophia_rho!r} must be > 0 (SOUL uses 0.04)")


def _check_zeroth_order(cfg) -> None:
    check_zo_settings(cfg.zo_mu, cfg.zo_num_directions, cfg.zo_difference, cfg.zo_direction)
    if cfg.zo_learning_rate is not None:
        _finite_positive(cfg, "zo_learning_rate", " (or unset: learning_rate)")


def _check_hybrid(cfg) -> None:
    optimizer_entry(cfg.hybrid_fo_optimizer, "hybrid_fo_optimizer", GRADIENT_FAMILIES)
    optimizer_entry(cfg.hybrid_zo_optimizer, "hybrid_zo_optimizer", (Family.ZEROTH_ORDER,))
    fo_steps, zo_steps = cfg.hybrid_schedule
    if not (isinstance(fo_steps, int) and fo_steps >= 1):
        raise ValueError(f"hybrid_fo_steps={fo_steps!r} must be an integer >= 1 (the paper uses 20)")
    if not (isinstance(zo_steps, int) and zo_steps >= 0):
        raise ValueError(f"hybrid_zo_steps={zo_steps!r} must be an integer >= 0 (unset = hybrid_fo_steps)")


SMOOTHING_SCOPES = ("forget", "loss")


def _check_smoothing(cfg) -> None:
    optimizer_entry(cfg.smoothing_base_optimizer, "smoothing_base_optimizer", GRADIENT_FAMILIES)
    if cfg.smoothing_scope not in SMOOTHING_SCOPES:
        raise ValueError(f"smoothing_scope={cfg.smoothing_scope!r}: choose one of {', '.join(SMOOTHING_SCOPES)}")


def _check_sam(cfg) -> None:
    _check_smoothing(cfg)
    _finite_positive(cfg, "sam_rho", " (the paper uses 0.01)")


def _check_fo_rs(cfg) -> None:
    _check_smoothing(cfg)
    _finite_positive(cfg, "fo_rs_sigma", " (the paper uses 1e-4)")
    if not (isinstance(cfg.fo_rs_samples, int) and cfg.fo_rs_samples >= 1):
        raise ValueError(f"fo_rs_samples={cfg.fo_rs_samples!r} must be an integer >= 1 (the paper uses 3)")


# ---- the builders -------------------------------------------------------------------------------------------------


def build_entry(name: str, groups: list[dict], cfg) -> Optimizer:
    """Build the registered optimizer ``name`` over ``groups`` (param-group dicts) from ``cfg``."""
    return optimizer_entry(name).build(groups, cfg)


def _copy_groups(groups: list[dict]) -> list[dict]:
    # torch's add_param_group fills defaults into the dict it is given; each optimizer needs its own.
    return [dict(g, params=list(g["params"])) for g in groups]


def _betas(cfg) -> tuple[float, float]:
    return cfg.adam_beta1, cfg.adam_beta2


def _adamw(groups, cfg):
    return torch.optim.AdamW(
        groups, lr=cfg.learning_rate, betas=_betas(cfg), eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay
    )


def _adamw_8bit(groups, cfg):
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise ImportError("optimizer='adamw_8bit' needs bitsandbytes: pip install 'hf_unlearn[quant]'") from err
    return bnb.optim.AdamW8bit(
        groups, lr=cfg.learning_rate, betas=_betas(cfg), eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay
    )


def _sgd(groups, cfg):
    return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)


def _signsgd(groups, cfg):
    return SignSGD(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _signadam(groups, cfg):
    return SignAdam(groups, lr=cfg.learning_rate, beta1=cfg.adam_beta1, weight_decay=cfg.weight_decay)


def _qadam(groups, cfg):
    return QAdam(
        groups, lr=cfg.learning_rate, betas=_betas(cfg), eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay,
        bits=cfg.qadam_bits,
    )  # fmt: skip


def _sophia(groups, cfg):
    return SophiaG(
        groups, lr=cfg.learning_rate, betas=(cfg.sophia_beta1, cfg.sophia_beta2), rho=cfg.sophia_rho,
        weight_decay=cfg.weight_decay, batch_tokens=cfg.sophia_batch_tokens,
    )  # fmt: skip


def _zo_settings(cfg) -> dict[str, Any]:
    lr = cfg.learning_rate if cfg.zo_learning_rate is None else cfg.zo_learning_rate
    # One validated settings object (mu, directions, precision) reaches the engine as is.
    return {"lr": lr, "weight_decay": cfg.weight_decay, "settings": ZOSettings.from_args(cfg)}


def _zo_sgd(groups, cfg):
    return ZOSGD(groups, **_zo_settings(cfg))


def _zo_adam(groups, cfg):
    return ZOAdam(groups, betas=(cfg.zo_beta1, cfg.zo_beta2), eps=cfg.zo_eps, **_zo_settings(cfg))


def _adazo(groups, cfg):
    return AdaZO(
        groups, betas=(cfg.zo_beta1, cfg.zo_beta2), eps=cfg.zo_eps, bias_correction=cfg.zo_bias_correction,
        **_zo_settings(cfg),
    )  # fmt: skip


def _hybrid(groups, cfg):
    fo = build_entry(cfg.hybrid_fo_optimizer, _copy_groups(groups), cfg)
    zo = build_entry(cfg.hybrid_zo_optimizer, _copy_groups(groups), cfg)
    zo_lr = cfg.learning_rate if cfg.zo_learning_rate is None else cfg.zo_learning_rate
    schedule = HybridSchedule(*cfg.hybrid_schedule)
    return HybridOptimizer(fo, zo, zo_lr_scale=zo_lr / cfg.learning_rate, schedule=schedule)


def _sam(groups, cfg):
    return SAM(build_entry(cfg.smoothing_base_optimizer, groups, cfg), rho=cfg.sam_rho)


def _fo_rs(groups, cfg):
    seed = cfg.seed if cfg.fo_rs_seed is None else cfg.fo_rs_seed
    base = build_entry(cfg.smoothing_base_optimizer, groups, cfg)
    return FORS(base, sigma=cfg.fo_rs_sigma, num_samples=cfg.fo_rs_samples, seed=seed)


# ---- the entries (registered first order, ZO, hybrid, smoothing; `grade` gives the paper's order) -------------

_D2U = (DOWNGRADE_TO_UPGRADE,)
_ZO_FIELDS = ("zo_learning_rate", "zo_mu", "zo_num_directions", "zo_direction", "zo_difference", "zo_exact_restore",
              "zo_master_weights", "zo_stochastic_rounding", "zo_seed", "zo_cache_directions")  # fmt: skip
_SMOOTHING_FIELDS = ("smoothing_base_optimizer", "smoothing_scope")

# fmt: off
for _entry in (
    OptimizerEntry(name="adamw", family=Family.FIRST_ORDER, grade=1.0, label="AdamW", build=_adamw,
                   summary="AdamW (torch)"),
    OptimizerEntry(name="sgd", family=Family.FIRST_ORDER, grade=1.4, label="SGD", build=_sgd,
                   summary="SGD (torch), with momentum", fields=("sgd_momentum",), check=_check_sgd),
    OptimizerEntry(name="signsgd", family=Family.SIGN_QUANTIZED, grade=10.1, label="signSGD", build=_signsgd,
                   summary="the sign of the gradient", papers=_D2U),
    OptimizerEntry(name="signadam", family=Family.SIGN_QUANTIZED, grade=10.0, label="signAdam", build=_signadam,
                   summary="the sign of Adam's momentum", papers=_D2U),
    OptimizerEntry(name="qadam", family=Family.SIGN_QUANTIZED, grade=2.0, label="Q(m;N)", build=_qadam,
                   summary="Adam with its direction quantized to N bits, Q(m;N)", fields=("qadam_bits",),
                   check=_check_qadam, papers=_D2U,
                   # Q(m;8) right after AdamW, Q(m;1) (the sign) right before signAdam.
                   variant=Variant("qadam_bits", range(1, 9), "Q(m;{})", lambda bits: 2.0 + (8 - bits), "BITS")),
    OptimizerEntry(name="adamw_8bit", family=Family.SIGN_QUANTIZED, grade=1.1, label="AdamW 8-bit",
                   build=_adamw_8bit, summary="AdamW with 8-bit moments (bitsandbytes)", papers=_D2U),
    OptimizerEntry(name="sophia", family=Family.SECOND_ORDER, grade=0.0, label="Sophia", build=_sophia,
                   summary="Sophia: clipped, curvature-preconditioned steps",
                   fields=("sophia_rho", "sophia_beta1", "sophia_beta2", "sophia_batch_tokens"),
                   check=_check_sophia, papers=(DOWNGRADE_TO_UPGRADE, SOUL)),
    OptimizerEntry(name="zo_sgd", family=Family.ZEROTH_ORDER, grade=11.1, label="ZO-SGD", build=_zo_sgd,
                   summary="SGD on the ZO gradient estimate", fields=_ZO_FIELDS, check=_check_zeroth_order,
                   papers=_D2U),
    OptimizerEntry(name="zo_adam", family=Family.ZEROTH_ORDER, grade=11.0, label="ZO-Adam", build=_zo_adam,
                   summary="Adam on the ZO gradient estimate", fields=(*_ZO_FIELDS, "zo_beta1", "zo_beta2", "zo_eps"),
                   check=_check_zeroth_order, papers=_D2U),
    OptimizerEntry(name="adazo", family=Family.ZEROTH_ORDER, grade=11.2, label="AdaZO", build=_adazo,
                   summary="AdaZO: ZO steps scaled by a second-moment estimate",
                   fields=(*_ZO_FIELDS, "zo_beta1", "zo_beta2", "zo_eps", "zo_bias_correction"),
                   check=_check_zeroth_order, papers=_D2U),
    OptimizerEntry(name="hybrid", family=Family.HYBRID, grade=12.0, label="hybrid FO-ZO", build=_hybrid,
                   summary="the FO-ZO hybrid: first-order and zeroth-order phases alternate",
                   fields=("hybrid_fo_optimizer", "hybrid_zo_optimizer", "hybrid_fo_steps", "hybrid_zo_steps"),
                   check=_check_hybrid, papers=_D2U),
    OptimizerEntry(name="sam", family=Family.SMOOTHING, grade=1.2, label="SAM", build=_sam,
                   summary="sharpness-aware minimisation around a first-order optimizer",
                   fields=("sam_rho", *_SMOOTHING_FIELDS), check=_check_sam),
    OptimizerEntry(name="fo_rs", family=Family.SMOOTHING, grade=1.3, label="FO-RS", build=_fo_rs,
                   summary="first-order randomised smoothing around a first-order optimizer",
                   fields=("fo_rs_sigma", "fo_rs_samples", "fo_rs_seed", *_SMOOTHING_FIELDS), check=_check_fo_rs),
):
    register_optimizer(_entry)
# fmt: on
