"""Config fields of the optimizer hierarchy, as a dataclass mixin for ``UnlearnConfig(TrainingArguments)``.

First-order hyperparameters reuse ``TrainingArguments``' own fields (``learning_rate``, ``weight_decay``,
``adam_beta1``, ``adam_beta2``, ``adam_epsilon``, ``seed``); the fields below add what the Trainer's ``optim`` enum
cannot express.
"""

from __future__ import annotations

from dataclasses import dataclass, field


FIRST_ORDER_OPTIMIZERS = ("adamw", "sgd", "signsgd", "signadam", "qadam", "adamw_8bit", "sophia")
ZEROTH_ORDER_OPTIMIZERS = ("zo_sgd", "zo_adam", "adazo")
KNOWN_OPTIMIZERS = FIRST_ORDER_OPTIMIZERS + ZEROTH_ORDER_OPTIMIZERS + ("hybrid",)


@dataclass
class OptimizerArguments:
    """Optimizer choice and hyperparameters (every field has a default, so it mixes into TrainingArguments)."""

    optimizer: str = field(
        default="adamw",
        metadata={"help": f"Unlearning optimizer, one of {', '.join(KNOWN_OPTIMIZERS)}.", "choices": KNOWN_OPTIMIZERS},
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
        metadata={"help": "ZO direction law: sphere (radius sqrt(d)), gaussian or rademacher."},
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
