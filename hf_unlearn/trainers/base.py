"""`UnlearnTrainer`: a `transformers.Trainer` whose loss is γ·forget + α·retain on `{"forget", "retain"}` batches.

Methods subclass it and override `forget_loss` (and `retain_loss` when their retain term is not NLL/KL); the
combination, gradient-accumulation normalisation, the frozen reference model and the `loss/forget` and
`loss/retain` logs live here, reached only through public Trainer hooks.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedModel, Trainer
from transformers.utils import is_peft_available

from hf_unlearn.configs import UnlearnConfig
from hf_unlearn.data import DataCollatorForUnlearning
from hf_unlearn.loading import load_model, load_tokenizer
from hf_unlearn.modeling import answer_token_nll, eval_mode, model_inputs
from hf_unlearn.optim.factory import OptimizerFactoryMixin
from hf_unlearn.paper import Paper
from hf_unlearn.trainers.callbacks import DivergenceGuardCallback, HybridScheduleCallback, PairingEpochCallback
from hf_unlearn.trainers.evaluation import BenchmarkEvaluationMixin
from hf_unlearn.trainers.losses import BatchCounts, SideCounts, token_kl
from hf_unlearn.trainers.smoothing import SmoothingMixin
from hf_unlearn.trainers.zeroth_order import ZerothOrderMixin


def is_peft_model(model) -> bool:
    if not is_peft_available():
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def wrap_with_peft(model: PreTrainedModel, peft_config):
    """Wrap `model` in the adapter `peft_config` describes; only the adapter stays trainable."""
    if not is_peft_available():
        raise ImportError("A peft_config was given but peft is not installed; pip install 'hf_unlearn[peft]'.")
    from peft import get_peft_model

    if is_peft_model(model):
        raise ValueError("The model already has a peft adapter; pass either a peft model or a peft_config, not both.")
    return get_peft_model(model, peft_config)


class UnlearnTrainer(BenchmarkEvaluationMixin, SmoothingMixin, ZerothOrderMixin, OptimizerFactoryMixin, Trainer):
    """Base class of the unlearning objectives.

    The optimizer is `args.optimizer`, built by `hf_unlearn.optim.build_optimizer`; zeroth-order and hybrid
    optimizers need no other class (the step strategy is chosen once, when the optimizer is created), and a hybrid run
    gets a `HybridScheduleCallback` (which tells the optimizer the step; its schedule is the optimizer's own) unless
    one is passed. `sam` and `fo_rs`
    run their extra passes through `SmoothingMixin`.

    Args:
        model: a path or Hub id, a `PreTrainedModel`, or a peft model.
        args: the method's config (a subclass of `UnlearnConfig`).
        train_dataset: items `{"forget": ..., "retain": ...}`, e.g. `hf_unlearn.data.ForgetRetainDataset`.
        eval_dataset: plain QA items, whose answer NLL evaluation reports as `eval_loss`; or a `Benchmark`
            (`hf_unlearn.benchmarks.get("tofu", ...)`), whose metrics it reports as `eval_<metric>`, which
            `eval_strategy` then runs during training and `metric_for_best_model` selects on.
        processing_class: the tokenizer; loaded from `model` when that is a path.
        peft_config: a peft config (e.g. `LoraConfig`); the model is wrapped and only the adapter trains.
        model_config_checked: the caller already ran `check_model_config` on this model's config.
        trust_remote_code: let the models this trainer loads (`model` given as a path, the reference) run their
            repository's code; off by default. Every load goes through `hf_unlearn.loading` (safetensors only).

    The frozen reference (KL retain, RMU, online NPO) is the model loaded again from `args.ref_model_path` or the
    model's own path, never a deep copy; under peft it is the same model with the adapter disabled. Cached NPO
    needs none: its reference values are the policy's own before the first update.
    """

    _name = "unlearn"
    _paper: Paper | None = None
    config_class = UnlearnConfig
    # compute_loss divides by counts taken over the whole accumulation window, so Trainer must not divide again.
    loss_is_scaled_for_ga = True
    # weights of the forget and retain terms in compute_loss; SmoothingMixin changes them for its passes
    _term_weights = (1.0, 1.0)

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: UnlearnConfig,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        data_collator=None,
        peft_config=None,
        model_config_checked: bool = False,
        trust_remote_code: bool = False,
        **kwargs,
    ):
        if not isinstance(args, self.config_class):
            raise TypeError(
                f"{self._name} takes args of type {self.config_class.__name__}, got {type(args).__name__}."
            )
        self.check_train_data(train_dataset, args)
        self.trust_remote_code = trust_remote_code
        model_path = model if isinstance(model, str) else _loaded_from(model)
        if not model_config_checked:  # the recipe pipeline checks before tokenising its data
            self.check_model_config(
                AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
                if isinstance(model, str)
                else model.config,
                args,
            )
        if isinstance(model, str):
            model = load_model(model, trust_remote_code=trust_remote_code)
        # Loaded before Trainer.__init__, like the policy: afterwards ZeRO-3's zero.Init would read a DeepSpeed
        # config whose batch sizes Trainer has already filled in for its own engine.
        ref = None
        if self.needs_reference(args) and peft_config is None and not is_peft_model(model):
            ref = self._load_reference(args.ref_model_path or model_path, model.dtype)
        if peft_config is not None:
            model = wrap_with_peft(model, peft_config)
        if processing_class is None and isinstance(model_path, str) and model_path:
            processing_class = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
        if data_collator is None:
            if processing_class is None:
                raise ValueError(f"{self._name}: no tokenizer path known; pass processing_class.")
            data_collator = DataCollatorForUnlearning(processing_class)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self.ref_model = None if ref is None else self._prepare_reference(ref)
        self._log_sums: dict[str, torch.Tensor] = defaultdict(float)
        self._step_parts: dict[str, list[torch.Tensor]] | None = None
        self._logged_steps: set[int] = set()  # the steps summed in _log_sums (not a step range: resume-proof)
        # The training loss summed over micro-batches in step order, on this process; a resumed run starts from the
        # checkpoint's sum (hf_unlearn.resume), so its train_loss is the whole run's, added in the same order.
        self.training_loss_sum = 0.0
        if hasattr(train_dataset, "set_epoch"):
            self.add_callback(PairingEpochCallback(train_dataset))
        callbacks = self.callback_handler.callbacks
        if args.optimizer == "hybrid" and not any(isinstance(cb, HybridScheduleCallback) for cb in callbacks):
            self.add_callback(HybridScheduleCallback())
        self.divergence_guard = next((cb for cb in callbacks if isinstance(cb, DivergenceGuardCallback)), None)
        if self.divergence_guard is None and args.divergence_guard:
            self.divergence_guard = DivergenceGuardCallback.from_args(args)
            self.add_callback(self.divergence_guard)

    # ---- what a method declares --------------------------------------------------------------------------------

    @classmethod
    def uses_retain(cls, args: UnlearnConfig) -> bool:
        """Whether the loss has a retain term (and so the data must carry retain examples)."""
        return args.alpha > 0

    @classmethod
    def needs_reference(cls, args: UnlearnConfig) -> bool:
        """Whether the loss reads a frozen reference model."""
        return cls.uses_retain(args) and args.retain_loss == "kl"

    @classmethod
    def check_model_config(cls, config, args: UnlearnConfig) -> None:
        """Checks that need only the model's config; run before any weight is loaded."""

    def retain_coefficient(self) -> float:
        """The weight of the retain term: `alpha`, or a value the method updates during training (PDU's λ)."""
        return self.args.alpha

    def forget_loss(self, model, forget: dict[str, torch.Tensor], counts: SideCounts) -> torch.Tensor:
        """The method's forget term, a sum over the batch divided by the window's `counts`."""
        raise NotImplementedError(f"{type(self).__name__} must define forget_loss.")

    def retain_loss(self, model, retain: dict[str, torch.Tensor], counts: SideCounts) -> torch.Tensor:
        """Answer NLL per retain token, or per-token KL(model ‖ reference) when `retain_loss="kl"`."""
        if self.args.retain_loss == "nll":
            return answer_token_nll(model, retain).sum() / counts.tokens
        logits = model(**model_inputs(retain)).logits
        with torch.no_grad(), self.reference(model) as ref:
            ref_logits = ref(**model_inputs(retain)).logits
        return token_kl(logits, ref_logits, retain["labels"]) / counts.tokens

    # ---- checks ------------------------------------------------------------------------------------------------

    @classmethod
    def check_train_data(cls, train_dataset, args: UnlearnConfig) -> None:
        if train_dataset is None:
            raise ValueError(f"{cls._name} needs forget data: pass train_dataset=ForgetRetainDataset(forget, retain).")
        if not hasattr(train_dataset, "__getitem__"):
            return  # an iterable dataset cannot be peeked at without consuming it; the collator sees it later
        item = train_dataset[0]
        if "forget" not in item:
            raise ValueError(f"{cls._name} needs forget data: items must be {{'forget': ..., 'retain': ...}}.")
        if cls.uses_retain(args) and "retain" not in item:
            raise ValueError(
                f"{cls._name} with alpha={args.alpha} needs retain data: pass ForgetRetainDataset(forget, retain) "
                "or set alpha=0."
            )

    # ---- reference model ---------------------------------------------------------------------------------------

    def _load_reference(self, path: str | None, dtype: torch.dtype):
        if not path:
            raise ValueError(
                f"{self._name} needs a reference model but the model has no path to reload from: set ref_model_path."
            )
        return load_model(path, dtype=dtype, trust_remote_code=self.trust_remote_code).eval().requires_grad_(False)

    def _prepare_reference(self, ref):
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            return prepare_deepspeed(ref, self.accelerator)
        if self.is_fsdp_enabled:
            from trl.models import prepare_fsdp

            return prepare_fsdp(ref, self.accelerator)
        return self.accelerator.prepare_model(ref, evaluation_mode=True)

    @contextlib.contextmanager
    def reference(self, model) -> Iterator[Any]:
        """The frozen reference to run forwards on: the reloaded model, or `model` with its adapter disabled."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        unwrapped = self.accelerator.unwrap_model(model)
        if not is_peft_model(unwrapped):
            raise RuntimeError(f"{self._name} asked for a reference model but none was prepared.")
        with eval_mode(model, inference=False), unwrapped.disable_adapter():  # deterministic: no dropout
            yield model

    # ---- Trainer hooks -----------------------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """Count forget/retain units over the whole accumulation window (all processes), for exact normalisation."""
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batch_samples and "forget" in batch_samples[0]:
            num_items = self._window_counts(batch_samples, device)
        return batch_samples, num_items

    def _window_counts(self, batch_samples: list[dict], device: torch.device) -> BatchCounts:
        sides = {}
        for side in ("forget", "retain"):
            if side not in batch_samples[0]:
                sides[side] = None
                continue
            total = sum(SideCounts.tensor_of(batch[side]) for batch in batch_samples).to(device)
            # DDP averages gradients over processes, so each process normalises by its share of the global count.
            total = self.accelerator.gather(total.unsqueeze(0)).sum(0) / self.accelerator.num_processes
            sides[side] = SideCounts(*total.tolist())
        return BatchCounts(sides["forget"], sides["retain"])

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """γ·forget + α·retain on unlearning batches; the mean answer NLL on plain (evaluation) batches.

        `num_items_in_batch` is the `BatchCounts` of the accumulation window (from `get_batch_samples`); when it is
        not one (a direct call), the batch's own counts are used and, inside `train`, the loss is divided by the
        number of accumulation steps as Trainer would.
        """
        if "forget" not in inputs:
            token_nll = answer_token_nll(model, inputs)
            loss = token_nll.sum() / SideCounts.of(inputs).tokens
            return (loss, {"loss": loss}) if return_outputs else loss
        scale = 1.0
        counts = num_items_in_batch
        if not isinstance(counts, BatchCounts):
            counts = BatchCounts.of(inputs)
            if self.is_in_train:
                scale = 1.0 / self.current_gradient_accumulation_steps
        forget_weight, retain_weight = self._term_weights
        parts, loss = {}, 0.0
        if forget_weight:
            parts["loss/forget"] = self.forget_loss(model, inputs["forget"], counts.forget) * scale
            loss = forget_weight * self.args.gamma * parts["loss/forget"]
        if self.uses_retain(self.args) and retain_weight:
            if "retain" not in inputs:
                raise ValueError(f"{self._name} with alpha={self.args.alpha} got a batch without retain data.")
            parts["loss/retain"] = self.retain_loss(model, inputs["retain"], counts.retain) * scale
            loss = loss + retain_weight * self.retain_coefficient() * parts["loss/retain"]
        if self._step_parts is not None:
            for key, value in parts.items():
                self._step_parts[key].append(value.detach())
        return (loss, parts) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Log each loss part as its mean over the step's forwards: one in a FO step, the ±μ ones in a ZO step."""
        self._step_parts = defaultdict(list)
        loss = None
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
            return loss
        finally:
            if self.divergence_guard is not None:  # raises before the step's update when a value is not finite
                self.divergence_guard.observe(self.state.global_step + 1, loss, self._step_parts, self.args)
            if loss is not None:
                self.training_loss_sum += float(loss)
            if self._step_parts:
                self._logged_steps.add(self.state.global_step)
            for key, values in self._step_parts.items():
                self._log_sums[key] = self._log_sums[key] + torch.stack(values).mean()
            self._step_parts = None

    def training_loss_total(self) -> float:
        """The training loss summed over the run's steps, averaged over processes (a collective: every process
        calls it); the report's train_loss is this over global_step."""
        value = torch.tensor([self.training_loss_sum], dtype=torch.float64, device=self.args.device)
        return self.accelerator.gather(value).mean().item()

    def loss_terms(self, forget: float, other: float):
        """Context in which `compute_loss` returns forget·γ·forget_term + other·α·retain_term (for SmoothingMixin).

        None when the loss has no retain term: the whole loss is then the forget term.
        """
        if not self.uses_retain(self.args):
            return None

        @contextlib.contextmanager
        def weighted():
            saved, self._term_weights = self._term_weights, (forget, other)
            try:
                yield
            finally:
                self._term_weights = saved

        return weighted()

    @contextlib.contextmanager
    def extra_pass(self):
        """SAM's passes at perturbed weights: the logged loss parts stay those at the unperturbed weights."""
        parts, self._step_parts = self._step_parts, None
        try:
            yield
        finally:
            self._step_parts = parts

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        """Evaluation loss only (answer NLL); logits are not gathered."""
        if "forget" in inputs:
            raise ValueError(
                "Evaluation takes plain QA batches (input_ids, attention_mask, labels), not forget/retain pairs; "
                "pass eval_dataset=QADataset(...)."
            )
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean `loss/forget` and `loss/retain` since the last training log to each training log."""
        if "loss" in logs and self._log_sums:
            steps = max(len(self._logged_steps), 1)
            for key, total in self._log_sums.items():
                value = torch.as_tensor(total, device=self.args.device, dtype=torch.float64).reshape(1)
                logs[key] = self.accelerator.gather(value).mean().item() / steps
            self._log_sums.clear()
            self._logged_steps.clear()
        super().log(logs, start_time)


def _loaded_from(model) -> str | None:
    """The path or Hub id a (possibly peft-wrapped) model was loaded from, if any."""
    base = model.get_base_model() if is_peft_model(model) else model
    return getattr(base.config, "_name_or_path", None) or None
