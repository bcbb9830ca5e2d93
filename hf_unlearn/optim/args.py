"""Config fields of the optimizer hierarchy, as a dataclass mixin for ``UnlearnConfig(TrainingArguments)``.

First-order hyperparameters reuse ``TrainingArguments``' own fields (``learning_rate``, ``weight_decay``,
``adam_beta1``, ``adam_beta2``, ``adam_epsilon``, ``seed``); the fields below add what the Trainer's ``optim`` enum
cannot express.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .registry import (
    FIRST_ORDER_OPTIMIZERS,
    KNOWN_OPTIMIZERS,
    OPTIMIZERS,
    SMOOTHING_SCOPES,
    ZEROTH_ORDER_OPTIMIZERS,
    Family,
    optimizer_entry,
    optimizer_help,
)


def check_hybrid_max_steps(max_steps: int, fo_steps: int, zo_steps: int) -> None:
    """The hybrid run must end on a complete ZO phase: `max_steps` a multiple of the period (when ZO steps run)."""
    period = fo_steps + zo_steps
    if zo_steps > 0 and max_steps > 0 and max_steps % period:
        raise ValueError(
            f"max_steps={max_steps} must be a multiple of hybrid_fo_steps + hybrid_zo_steps = {period} so the run "
            f"ends with a ZO phase; use max_steps={max(period, round(max_steps / period) * period)}"
        )


@dataclass
class OptimizerArguments:
    """Optimizer choice and hyperparameters (every field has a default, so it mixes into TrainingArguments)."""

    optimizer: str = field(
        default="adamw",
        metadata={"help": optimizer_help(), "choices": KNOWN_OPTIMIZERS},  # choices: live, read from the registry
    )
    sgd_momentum: float = field(default=0.0, metadata={"help": "Momentum of `sgd`."})
    qadam_bits: int = field(
        default=8,
        metadata={"help": "Bits N of the quantizer Q(m;N) applied to Adam's direction by `qadam` (1..8; 1 = sign)."},
    )
    sophia_rho: float = field(default=0.04, metadata={"help": "Sophia's clipping scale rho."})
    sophia_beta1: float = field(default=0.965, metadata={"help": "Sophia's momentum EMA factor."})
    sophia_beta2: float = field(default=0.99, metadata={"help": "Sophia's curvature (g*g) EMA factor."})
    sophia_batch_tokens: int = field(
        default=5120, metadata={"help": "Sophia's batch-token constant b in min(|m|/(rho*b*h), 1)."}
    )
    zo_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the zeroth-order optimizer (default: learning_rate); scheduled like it."},
    )
    zo_mu: float = field(
        default=1e-3, metadata={"help": "ZO perturbation size mu, per weight (directions have E[z z^T] = I)."}
    )
    zo_num_directions: int = field(
        default=1, metadata={"help": "ZO directions q per step (2q forwards with central differences)."}
    )
    zo_direction: str = field(
        default="sphere",
        metadata={
            "help": "ZO direction law, all with E[z z^T] = I (unbiased estimate): sphere (radius sqrt(d)), gaussian "
            "or rademacher (+-1). Variance of the estimate (z^T g) z: E||.-g||^2 = (d-1)||g||^2 for rademacher and "
            "sphere, (d+1)||g||^2 for gaussian; per weight ||g||^2 - g_i^2 (rademacher) against ||g||^2 + g_i^2 "
            "(gaussian). rademacher is the cheapest to draw (~4x below a Gaussian per weight) and needs no norm sweep."
        },
    )
    zo_difference: str = field(
        default="central", metadata={"help": "ZO finite difference: central (f(+mu) - f(-mu))/2mu or forward."}
    )
    zo_exact_restore: bool = field(
        default=False,
        metadata={
            "help": "Restore the weights after the ±mu forwards bit for bit from a copy of the trainable weights "
            "(memory: one copy of them; cheap for LoRA or RMU). Off: restored in place, within one rounding step."
        },
    )
    zo_master_weights: bool = field(
        default=False,
        metadata={
            "help": "For a model loaded in bf16/fp16 (dtype: bfloat16) on one device: keep an fp32 master copy of the "
            "trainable weights; ZO perturbs them as cast(master +- mu z), restores cast(master) exactly and updates "
            "the master. Memory: 4 bytes per trainable weight (2x the bf16 weights: 28 GB for a full 7B model, 0.1 GB "
            "for LoRA or RMU's few layers). Without it ZO updates (~1e-6) mostly vanish below bf16's spacing (1e-4). "
            "Not needed with fp32 weights or under DeepSpeed ZeRO-2/3 bf16, whose fp32 masters are used directly."
        },
    )
    zo_stochastic_rounding: bool = field(
        default=False,
        metadata={
            "help": "For bf16 weights without masters: round each ZO update into bf16 stochastically (unbiased), no "
            "extra memory; combine with zo_exact_restore (one bf16 copy) to stop the +-mu restore from drifting. "
            "Stays further from the fp32 trajectory than zo_master_weights (see README, performance)."
        },
    )
    zo_cache_directions: bool = field(
        default=False,
        metadata={
            "help": "Keep each ZO direction z in bf16 from its first draw until the optimizer step, instead of "
            "regenerating it in every sweep (+mu, -2mu, restore and update): faster steps for 2 bytes per trainable "
            "weight per direction (270 MB for SmolLM2-135M, 14 GB for a full 7B model). z is then the bf16-rounded "
            "sample (exact for rademacher)."
        },
    )
    zo_beta1: float = field(default=0.9, metadata={"help": "First-moment factor of zo_adam / adazo."})
    zo_beta2: float = field(default=0.999, metadata={"help": "Second-moment factor of zo_adam / adazo."})
    zo_eps: float = field(default=1e-8, metadata={"help": "Epsilon of zo_adam / adazo."})
    zo_bias_correction: bool = field(
        default=True,
        metadata={"help": "Adam-style bias correction in adazo; off, the first step is ~32x the lr on every weight."},
    )
    zo_seed: int | None = field(
        default=None, metadata={"help": "Seed of the ZO directions (default: seed); combined with the global step."}
    )
    hybrid_fo_optimizer: str = field(
        default="adamw", metadata={"help": f"First-order half of `hybrid`: {', '.join(FIRST_ORDER_OPTIMIZERS)}."}
    )
    hybrid_zo_optimizer: str = field(
        default="adazo", metadata={"help": f"Zeroth-order half of `hybrid`: {', '.join(ZEROTH_ORDER_OPTIMIZERS)}."}
    )
    hybrid_fo_steps: int = field(
        default=20, metadata={"help": "Hybrid: first-order steps per FO phase (N). Phases alternate, FO first."}
    )
    hybrid_zo_steps: int | None = field(
        default=None,
        metadata={"help": "Hybrid: zeroth-order steps per ZO phase (default: hybrid_fo_steps); the run ends on ZO."},
    )
    smoothing_base_optimizer: str = field(
        default="adamw",
        metadata={"help": f"First-order optimizer that `sam` and `fo_rs` step: {', '.join(FIRST_ORDER_OPTIMIZERS)}."},
    )
    smoothing_scope: str = field(
        default="forget",
        metadata={
            "help": "What `sam` / `fo_rs` smooth: forget = the forget term only (the paper; the retain term's "
            "gradient is taken at w), loss = the whole training loss. A loss without a retain term is smoothed whole.",
            "choices": SMOOTHING_SCOPES,
        },
    )
    sam_rho: float = field(
        default=0.01, metadata={"help": "SAM radius rho: the gradient is taken at w + rho*g/||g|| (paper: 0.01)."}
    )
    fo_rs_sigma: float = field(
        default=1e-4, metadata={"help": "FO-RS perturbation size sigma, per weight: w + sigma*N(0, I) (paper: 1e-4)."}
    )
    fo_rs_samples: int = field(
        default=3, metadata={"help": "FO-RS Gaussian samples K whose gradients are averaged per step (paper: 3)."}
    )
    fo_rs_seed: int | None = field(
        default=None, metadata={"help": "Seed of the FO-RS noise (default: seed); combined with the global step."}
    )

    @property
    def hybrid_schedule(self) -> tuple[int, int]:
        """(FO steps, ZO steps) per hybrid period, resolved once (ZO steps default to FO steps)."""
        zo_steps = self.hybrid_fo_steps if self.hybrid_zo_steps is None else self.hybrid_zo_steps
        return self.hybrid_fo_steps, zo_steps

    @property
    def uses_zeroth_order(self) -> bool:
        """Whether the configured optimizer runs any ZO step."""
        family = optimizer_entry(self.optimizer).family
        return family is Family.ZEROTH_ORDER or (family is Family.HYBRID and self.hybrid_schedule[1] > 0)

    def check_optimizer_fields(self) -> None:
        """The one check of every optimizer field; raises ``ValueError`` in one line naming the field and the fix.

        Each registry entry checks its own fields (all of them, so a bad value fails even while another optimizer
        is chosen); the rules of the chosen optimizer's family follow. Reads the ``TrainingArguments`` fields it
        depends on (``learning_rate``, ``max_steps``, ``fp16``, ``deepspeed``), which both ``UnlearnConfig`` and the
        standalone ``OptimizerConfig`` have. Runs in their ``__post_init__``; a TRL config that mixes these fields
        in (``class C(DPOConfig, OptimizerArguments)``) has no hook for it, so
        ``OptimizerFactoryMixin.create_optimizer`` runs it there (see ``optimizer_fields_checked``).
        """
        from .zero import validate_deepspeed_for_zo

        def fail(message: str) -> None:
            raise ValueError(message)

        family = optimizer_entry(self.optimizer).family
        for check in dict.fromkeys(entry.check for entry in OPTIMIZERS.values() if entry.check):
            check(self)
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            fail(f"learning_rate={self.learning_rate!r} must be a finite number > 0")
        if family is Family.SMOOTHING and self.deepspeed:
            fail(
                f"optimizer={self.optimizer!r} runs extra backward passes that DeepSpeed does not allow; "
                "unset deepspeed"
            )
        if family is Family.HYBRID:
            check_hybrid_max_steps(self.max_steps, *self.hybrid_schedule)
        if self.uses_zeroth_order and self.fp16:
            fail(
                f"fp16=True cannot be combined with optimizer={self.optimizer!r}: its zeroth-order steps have no "
                "backward to loss-scale; set fp16=False and use bf16=True or fp32"
            )
        if self.uses_zeroth_order and self.zo_master_weights and self.zo_stochastic_rounding:
            fail(
                "zo_master_weights and zo_stochastic_rounding exclude each other; keep zo_master_weights (nearer fp32)"
            )
        if self.uses_zeroth_order:
            validate_deepspeed_for_zo(self)
        self._optimizer_fields_checked = True

    @property
    def optimizer_fields_checked(self) -> bool:
        return getattr(self, "_optimizer_fields_checked", False)


@dataclass
class OptimizerConfig(OptimizerArguments):
    """The optimizer fields plus the ``TrainingArguments`` fields the factory reads, for use without a Trainer.

    ``build_optimizer(model, optimizer="adazo", learning_rate=1e-3)`` builds one of these; inside a Trainer the
    method's config (an ``UnlearnConfig``) plays this role. Validated on construction.
    """

    learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate (TrainingArguments' default)."})
    weight_decay: float = field(default=0.0, metadata={"help": "Decoupled weight decay."})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam's first-moment factor."})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam's second-moment factor."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "Adam's epsilon."})
    seed: int = field(default=42, metadata={"help": "Seed (the ZO directions' default seed)."})
    max_steps: int = field(default=-1, metadata={"help": "Total steps; hybrid runs must end on a ZO phase."})
    fp16: bool = field(default=False, metadata={"help": "fp16 loss scaling (refused with ZO steps)."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision."})
    deepspeed: str | dict | None = field(default=None, metadata={"help": "DeepSpeed config (path or dict)."})

    def __post_init__(self):
        self.check_optimizer_fields()
