"""`UnlearnConfig`: the `TrainingArguments` every unlearning method shares (loss weights, retain loss, reference).

Each method subclasses it with a dataclass of its own hyperparameters (`hf_unlearn.trainers.<method>`), so every
knob shows in `--help`, in the saved args and in the model card. Bad values fail in `__post_init__`, before any
weight is loaded, with one line naming the field and the accepted values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from hf_unlearn.distributed import resolve_cpu_bf16, resolve_cpu_launch
from hf_unlearn.errors import UserInputError
from hf_unlearn.optim.args import OptimizerArguments


RETAIN_LOSSES = ("nll", "kl")


@dataclass
class UnlearnConfig(TrainingArguments, OptimizerArguments):
    """Training arguments shared by every unlearning method: loss = `gamma`·forget + `alpha`·retain.

    The optimizer fields (`optimizer`, `zo_*`, `hybrid_*`, ...) come from `hf_unlearn.optim.args.OptimizerArguments`.
    """

    gamma: float = field(default=1.0, metadata={"help": "Weight of the forget loss (γ); must be > 0."})
    alpha: float = field(
        default=1.0,
        metadata={"help": "Weight of the retain loss (α); 0 trains on the forget set alone and needs no retain data."},
    )
    retain_loss: str = field(
        default="nll",
        metadata={
            "help": "Retain term: 'nll' (answer cross-entropy on retain data) or 'kl' (per-token KL(model ‖ "
            "frozen reference) on retain answers; needs a reference model)."
        },
    )
    ref_model_path: str | None = field(
        default=None,
        metadata={
            "help": "Where to load the frozen reference model from; default: the path the trained model was loaded "
            "from. Ignored under peft, where the reference is the base model with the adapter disabled."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Write into an output_dir that already holds files (an earlier run's, say). Off: such a folder is "
            "refused before anything loads, unless resume_from_checkpoint resumes the run whose checkpoints it holds."
        },
    )
    divergence_guard: bool = field(
        default=True,
        metadata={
            "help": "Stop training at the first step whose loss, gradient norm or ZO projected gradient is not "
            "finite (or whose forget loss passes divergence_max_forget_loss), before that step updates the weights; "
            "the last checkpoint stays the last good one and no final model is saved."
        },
    )
    divergence_max_forget_loss: float | None = field(
        default=None,
        metadata={
            "help": "With divergence_guard: also stop when |loss/forget| of a step exceeds this bound, e.g. 50 for "
            "gradient ascent / grad_diff, whose forget loss (minus the answer NLL) falls without limit when the "
            "model collapses. Unset: no bound."
        },
    )
    divergence_max_update_ratio: float | None = field(
        default=1.0,
        metadata={
            "help": "With divergence_guard: after every optimizer step (the last one included, which no loss "
            "follows) stop when a trainable weight is not finite, or when the step changed the L2 norm of the "
            "trainable weights by more than this fraction of it: | ||w_t|| - ||w_t-1|| | > ratio * ||w_t-1||. The "
            "change of the norm is a lower bound of the update's size ||w_t - w_t-1||, so an update past the bound "
            "that leaves the norm as it was passes. Default 1.0 (a step that doubles the weights' norm or more); "
            "unset: only the finite check."
        },
    )
    metric_for_best_model: str | None = field(
        default=None,
        metadata={
            "help": "With eval_strategy (which evaluates the data source's benchmark during training): the metric "
            "that picks the best evaluation and, with load_best_model_at_end, the checkpoint kept: a benchmark metric "
            "(forget_quality, model_utility, forget_prob, ...) or a combination (mean(forget_quality, model_utility), "
            "model_utility - forget_prob, abs(privleak)). greater_is_better follows from it (docs/recipes.md)."
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep every column: unlearning batches are nested {'forget': ..., 'retain': ...} dicts."},
    )

    def __post_init__(self):
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value}; e.g. {name}=1.")
        # Trainer reads max_steps=0 as "one step" and trains 0 epochs into a saved, untouched model with a report:
        # either is a run that does nothing while saying it unlearned.
        if self.max_steps == 0 or self.max_steps < -1:
            raise UserInputError(
                f"max_steps={self.max_steps} trains nothing; give a number of steps >= 1, or -1 to train for "
                "num_train_epochs."
            )
        if self.max_steps == -1 and not (math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0):
            raise UserInputError(
                f"num_train_epochs={self.num_train_epochs} trains nothing; give a number > 0 (or set max_steps)."
            )
        bound = self.divergence_max_forget_loss
        if bound is not None and not 0 < bound < math.inf:
            raise ValueError(f"divergence_max_forget_loss must be a finite number > 0 (or unset), got {bound}.")
        ratio = self.divergence_max_update_ratio
        if ratio is not None and not 0 < ratio < math.inf:
            raise ValueError(f"divergence_max_update_ratio must be a finite number > 0 (or unset), got {ratio}.")
        if self.gamma <= 0:
            raise ValueError(f"gamma (forget weight) must be > 0, got {self.gamma}.")
        if self.alpha < 0:
            raise ValueError(f"alpha (retain weight) must be >= 0, got {self.alpha}.")
        if self.retain_loss not in RETAIN_LOSSES:
            raise ValueError(f"retain_loss must be one of {', '.join(RETAIN_LOSSES)}, got {self.retain_loss!r}.")
        resolve_cpu_bf16(self)
        resolve_cpu_launch(self)
        self.check_best_model_selection()
        super().__post_init__()
        self.check_optimizer_fields()

    def check_best_model_selection(self) -> None:
        """Parse `metric_for_best_model` (a metric or a combination, `hf_unlearn.benchmarks.selection`) and set
        `greater_is_better` from it; a given `greater_is_better` that contradicts the metric is an error."""
        if self.metric_for_best_model is None:
            return
        from hf_unlearn.benchmarks.selection import parse_selection

        selection = parse_selection(self.metric_for_best_model)
        if self.greater_is_better is None:
            self.greater_is_better = selection.greater_is_better
        elif bool(self.greater_is_better) != selection.greater_is_better:
            better = "higher" if selection.greater_is_better else "lower"
            raise ValueError(
                f"greater_is_better={self.greater_is_better} contradicts metric_for_best_model="
                f"{self.metric_for_best_model!r}, which is better {better}; drop greater_is_better (it follows the "
                "metric)."
            )


def check_positive(name: str, value: float) -> None:
    """One-line error for a hyperparameter that must be strictly positive."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}.")


def check_non_negative(name: str, value: float) -> None:
    """One-line error for a hyperparameter that must be zero or positive."""
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}.")
