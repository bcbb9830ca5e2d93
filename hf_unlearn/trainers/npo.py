"""NPO (Zhang et al. 2024): a bounded, reference-relative version of gradient ascent on sequence log-likelihoods."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from hf_unlearn.configs import UnlearnConfig, check_positive
from hf_unlearn.modeling import eval_mode
from hf_unlearn.paper import Paper
from hf_unlearn.trainers.base import UnlearnTrainer
from hf_unlearn.trainers.losses import sequence_log_prob


REF_LOG_PROBS = ("cached", "online")


@dataclass
class NPOConfig(UnlearnConfig):
    """NPO hyperparameters; defaults follow TOFU/MUSE (β = 0.1; WMDP used 0.0225)."""

    beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature β; must be > 0."})
    ref_log_probs: str = field(
        default="cached",
        metadata={
            "help": "'cached': reference log-likelihoods of the fixed forget set computed once before the first "
            "update, keyed by example index, from the policy itself (its starting point is the reference; no second "
            "model is loaded unless ref_model_path names another one); 'online': a reference forward every step "
            "on a reloaded reference model (for data that changes)."
        },
    )

    def __post_init__(self):
        check_positive("beta", self.beta)
        if self.ref_log_probs not in REF_LOG_PROBS:
            raise ValueError(f"ref_log_probs must be one of {', '.join(REF_LOG_PROBS)}, got {self.ref_log_probs!r}.")
        super().__post_init__()


class NPOTrainer(UnlearnTrainer):
    """Loss = −(2/β)·mean log σ(−β·(log π_θ(y|x) − log π_ref(y|x))) on forget answers, + α·retain."""

    _name = "npo"
    _paper = Paper(
        title="Negative Preference Optimization: From Catastrophic Collapse to Effective Unlearning",
        authors="Zhang, Ruiqi and Lin, Licong and Bai, Yu and Mei, Song",
        year=2024,
        arxiv="2404.05868",
        key="zhang2024negative",
    )
    config_class = NPOConfig

    @classmethod
    def needs_reference(cls, args) -> bool:
        """A second model only for online mode, a KL retain term, or a reference other than the starting policy."""
        return args.ref_log_probs == "online" or args.ref_model_path is not None or super().needs_reference(args)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ref_cache: torch.Tensor | None = None
        if self.args.ref_log_probs == "cached":
            self.add_callback(CachedReferenceLogProbs())

    def training_step(self, model, inputs, num_items_in_batch=None):
        # Before the first micro-batch's forward: no update and no ZO perturbation has touched the weights yet, and
        # every rank gets here together (ZeRO-3 gathers parameters in each of these forwards).
        if self.args.ref_log_probs == "cached" and self.ref_cache is None:
            self.ref_cache = self._restored_or_computed_cache(model)
        return super().training_step(model, inputs, num_items_in_batch)

    def forget_loss(self, model, forget, counts):
        log_ratio = sequence_log_prob(model, forget) - self.reference_log_probs(model, forget)
        return -(2 / self.args.beta) * F.logsigmoid(-self.args.beta * log_ratio).sum() / counts.sequences

    def reference_log_probs(self, model, forget) -> torch.Tensor:
        """log π_ref(y|x) of a forget batch: looked up by `index` when cached, else a reference forward."""
        if self.args.ref_log_probs == "online":
            with torch.no_grad(), self.reference(model) as ref:
                return sequence_log_prob(ref, forget)
        if self.ref_cache is None:  # a direct compute_loss call, outside train(): the weights are the starting ones
            self.ref_cache = self.precompute_reference_log_probs(model)
        return self.ref_cache[forget["index"]]

    def _restored_or_computed_cache(self, model) -> torch.Tensor:
        if self.state.global_step == 0 or self.ref_model is not None:
            cache = self.precompute_reference_log_probs(model)
        else:
            # Resumed: the policy has moved, so the values of its starting point come from the checkpoint.
            saved = self.state.stateful_callbacks.get(CachedReferenceLogProbs.__name__) or {}
            values = (saved.get("args") or {}).get("values")
            if values is None:
                raise ValueError(
                    f"Resumed at step {self.state.global_step} from a checkpoint without cached reference "
                    "log-likelihoods; set ref_log_probs=online or ref_model_path=<the original model>."
                )
            cache = torch.tensor(values, dtype=torch.float32, device=self.args.device)
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, CachedReferenceLogProbs):
                callback.values = cache.tolist()
        return cache

    @torch.no_grad()
    def precompute_reference_log_probs(self, model=None) -> torch.Tensor:
        """Reference log-likelihood of every forget example, indexed like `train_dataset.forget` (computed once).

        The reference is the loaded reference model when there is one, else the policy as it is now (called before
        the first update, that is its starting point; a fresh LoRA adapter is the identity). Every process
        computes the whole (small, fixed) forget set, so all ranks agree without communication and all run the
        same forwards, which ZeRO-3's parameter gathering requires.
        """
        forget_set = getattr(self.train_dataset, "forget", None)
        if forget_set is None:
            raise ValueError(
                "ref_log_probs='cached' needs train_dataset.forget (ForgetRetainDataset); set ref_log_probs='online'."
            )
        model = self.model_wrapped if model is None else model
        size = self.args.per_device_eval_batch_size
        values = []
        reference = self.reference(model) if self.ref_model is not None else contextlib.nullcontext(model)
        with reference as ref, eval_mode(ref, inference=False):  # the reference is deterministic: no dropout
            for start in range(0, len(forget_set), size):
                items = [{**forget_set[i], "index": i} for i in range(start, min(start + size, len(forget_set)))]
                batch = self._prepare_inputs(self.data_collator(items))
                with self.compute_loss_context_manager():  # the precision the policy's own forwards run in
                    values.append(sequence_log_prob(ref, batch).float())
        return torch.cat(values)


class CachedReferenceLogProbs(TrainerCallback, ExportableState):
    """Carries NPO's cached reference log-likelihoods into checkpoints: a resumed run cannot recompute them from a
    policy that has already moved."""

    def __init__(self, values: list[float] | None = None):
        self.values = values

    def state(self) -> dict:
        return {"args": {"values": self.values}, "attributes": {}}
