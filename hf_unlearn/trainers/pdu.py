"""PDU (Entesari et al. 2025): unlearning as constrained optimisation, the retain loss held under ε by a
primal-dual multiplier λ that gradient ascent on the constraint updates during training."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from hf_unlearn.configs import UnlearnConfig, check_positive
from hf_unlearn.data import IGNORE_INDEX
from hf_unlearn.modeling import answer_mask, answer_token_nll, eval_mode, model_inputs
from hf_unlearn.paper import Paper
from hf_unlearn.trainers.base import UnlearnTrainer
from hf_unlearn.trainers.losses import SideCounts


DUAL_UPDATES = ("step", "epoch")


@dataclass
class PDUConfig(UnlearnConfig):
    """PDU hyperparameters: the retain bound ε, the dual step size η and when λ is updated; `alpha` is λ's start."""

    alpha: float = field(
        default=1.0,
        metadata={"help": "Starting value of the multiplier λ on the retain constraint (retain NLL − ε); >= 0."},
    )
    retain_loss_eps: float | None = field(
        default=None,
        metadata={
            "help": "Required. ε, the bound the mean retain answer NLL must stay under: λ grows while it is above, "
            "shrinks (to 0 at least) while it is below. E.g. the starting model's retain NLL plus a margin."
        },
    )
    dual_step_size: float = field(
        default=1.0, metadata={"help": "η in λ ← max(0, λ + η·(retain NLL − ε)); must be > 0."}
    )
    dual_update: str = field(
        default="step",
        metadata={
            "help": "When λ is updated: 'step' (after every optimizer step, with that step's retain NLL) or 'epoch' "
            "(after every epoch, with the retain NLL of that epoch's retain examples at the epoch's final weights)."
        },
    )

    def __post_init__(self):
        if self.retain_loss_eps is None:
            raise ValueError(
                "pdu needs retain_loss_eps (ε, the retain NLL bound), e.g. retain_loss_eps: 0.5 in the recipe or "
                "--retain_loss_eps 0.5."
            )
        check_positive("dual_step_size", self.dual_step_size)
        if self.dual_update not in DUAL_UPDATES:
            raise ValueError(f"dual_update must be one of {', '.join(DUAL_UPDATES)}, got {self.dual_update!r}.")
        if self.retain_loss != "nll":
            raise ValueError("retain_loss must be 'nll' for pdu: its constraint is the retain answer NLL.")
        super().__post_init__()


class PDUTrainer(UnlearnTrainer):
    """Loss = γ·mean over forget answer tokens of (max logit − mean logit)² + λ·(retain NLL − ε).

    λ starts at `alpha` and, after each optimizer step (or epoch), becomes max(0, λ + η·(retain NLL − ε)), with the
    retain NLL of that step's whole accumulation window and all processes, so every process holds the same λ. λ is
    logged as `pdu/lambda` and travels in checkpoints (`DualMultiplier`), so a resumed run continues it.
    """

    _name = "pdu"
    _paper = Paper(
        title="Constrained Entropic Unlearning: A Primal-Dual Framework for Large Language Models",
        authors="Entesari, Taha and Hatami, Arman and Khaziev, Rinat and Ramakrishna, Anil and Fazlyab, Mahyar",
        year=2025,
        arxiv="2506.05314",
        key="entesari2025constrained",
    )
    config_class = PDUConfig

    @classmethod
    def uses_retain(cls, args) -> bool:
        return True  # the constraint is evaluated even while λ is 0

    @classmethod
    def needs_reference(cls, args) -> bool:
        return False

    @classmethod
    def check_train_data(cls, train_dataset, args) -> None:
        item = train_dataset[0] if hasattr(train_dataset, "__getitem__") else None
        if item is not None and "forget" in item and "retain" not in item:
            raise ValueError(
                "pdu needs retain data, whatever alpha (its constraint is the retain NLL): pass "
                "ForgetRetainDataset(forget, retain)."
            )
        if args.dual_update == "epoch" and not (hasattr(train_dataset, "__len__") and item is not None):
            raise ValueError(
                "pdu with dual_update=epoch scores the epoch's retain examples: pass a map-style dataset."
            )
        super().check_train_data(train_dataset, args)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(DualMultiplier(self.args.alpha))
        self._retain_parts: list[torch.Tensor] | None = None

    @property
    def multiplier(self) -> DualMultiplier:
        """The callback holding λ (looked up each time: a resume may replace it with the checkpoint's copy)."""
        callback = next(cb for cb in self.callback_handler.callbacks if isinstance(cb, DualMultiplier))
        callback.trainer = self
        return callback

    def retain_coefficient(self) -> float:
        return self.multiplier.value

    def forget_loss(self, model, forget, counts):
        logits = model(**model_inputs(forget)).logits[:, :-1].float()
        gap = logits.max(dim=-1).values - logits.mean(dim=-1)
        return (gap.square() * answer_mask(forget["labels"])).sum() / counts.tokens

    def retain_loss(self, model, retain, counts):
        """The constraint value, retain NLL − ε: this batch's share of the window's mean minus its share of ε."""
        tokens = (retain["labels"][:, 1:] != IGNORE_INDEX).sum()
        value = (answer_token_nll(model, retain).sum() - self.args.retain_loss_eps * tokens) / counts.tokens
        if self._retain_parts is not None and self._step_parts is not None:  # not during SAM's extra passes
            self._retain_parts.append(value.detach())
        return value

    def training_step(self, model, inputs, num_items_in_batch=None):
        # The constraint of a micro-batch is the mean over its forwards (one, or ZO's ±μ pair), as its logged part.
        self._retain_parts = []
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            if self._retain_parts:
                self.multiplier.pending = self.multiplier.pending + torch.stack(self._retain_parts).mean().double()
            self._retain_parts = None

    def step_constraint(self) -> float:
        """The finished step's retain NLL − ε, over its accumulation window and all processes (one all-reduce)."""
        pending = torch.as_tensor(self.multiplier.pending, dtype=torch.float64, device=self.args.device)
        self.multiplier.pending = 0.0
        return self.accelerator.reduce(pending.reshape(1), reduction="mean").item()

    @torch.no_grad()
    def epoch_constraint(self) -> float:
        """Mean retain answer NLL − ε over the retain examples paired in this epoch, at the current weights.

        Every process scores all of them (as many as forget examples), so all agree without communication and run
        the same forwards, which ZeRO-3's parameter gathering requires.
        """
        dataset = self.train_dataset
        items = [dataset[i]["retain"] for i in range(len(dataset))]
        size = self.args.per_device_eval_batch_size
        total, tokens = 0.0, 0.0
        model = self.model_wrapped  # the engine under DeepSpeed, as NPO's reference pass
        with eval_mode(model, inference=False):
            for start in range(0, len(items), size):
                batch = self._prepare_inputs(self.data_collator(items[start : start + size]))
                with self.compute_loss_context_manager():
                    total += answer_token_nll(model, batch).double().sum().item()
                tokens += SideCounts.of(batch).tokens
        return total / tokens - self.args.retain_loss_eps

    def update_multiplier(self, constraint: float) -> None:
        multiplier = self.multiplier
        multiplier.value = max(0.0, multiplier.value + self.args.dual_step_size * constraint)


class DualMultiplier(TrainerCallback, ExportableState):
    """PDU's multiplier λ: updated after each step or epoch, logged as `pdu/lambda`, saved in checkpoints."""

    def __init__(self, value: float = 0.0):
        self.value = float(value)
        self.pending = 0.0  # this process's retain constraint summed over the current step's micro-batches
        self.trainer: PDUTrainer | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            return
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if not saved:
            raise ValueError(
                f"Resumed pdu at step {state.global_step} from a checkpoint without its multiplier λ "
                "(DualMultiplier); resume from a checkpoint that pdu wrote, or start a new run."
            )
        self.value = float(saved["args"]["value"])

    def on_step_end(self, args, state, control, **kwargs):
        if args.dual_update == "step":
            self.trainer.update_multiplier(self.trainer.step_constraint())
        else:
            self.pending = 0.0

    def on_epoch_end(self, args, state, control, **kwargs):
        if args.dual_update == "epoch":
            self.trainer.update_multiplier(self.trainer.epoch_constraint())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        logs["pdu/lambda"] = self.value
        # Trainer.log stored a copy of `logs` in log_history before calling on_log: keep the two consistent.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1]["pdu/lambda"] = self.value

    def state(self) -> dict:
        return {"args": {"value": self.value}, "attributes": {}}
