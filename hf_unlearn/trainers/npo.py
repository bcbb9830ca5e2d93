"""NPO (Zhang et al. 2024): a bounded, reference-relative version of gradient ascent on sequence log-likelihoods."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hf_unlearn.configs import UnlearnConfig, check_positive
from hf_unlearn.trainers.base import Paper, UnlearnTrainer
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
            "update, keyed by example index; 'online': a reference forward every step (for data that changes)."
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
        return True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ref_cache: torch.Tensor | None = None

    def forget_loss(self, model, forget, counts):
        log_ratio = sequence_log_prob(model, forget) - self.reference_log_probs(model, forget)
        return -(2 / self.args.beta) * F.logsigmoid(-self.args.beta * log_ratio).sum() / counts.sequences

    def reference_log_probs(self, model, forget) -> torch.Tensor:
        """log π_ref(y|x) of a forget batch: looked up by `index` when cached, else a reference forward."""
        if self.args.ref_log_probs == "online":
            with torch.no_grad(), self.reference(model) as ref:
                return sequence_log_prob(ref, forget)
        if self.ref_cache is None:
            self.ref_cache = self.precompute_reference_log_probs(model)
            if not super().needs_reference(self.args):
                self.ref_model = None  # the cache is all NPO needed it for: free a whole model's memory
        return self.ref_cache[forget["index"]]

    @torch.no_grad()
    def precompute_reference_log_probs(self, model=None) -> torch.Tensor:
        """Reference log-likelihood of every forget example, indexed like `train_dataset.forget` (computed once).

        Every process computes the whole (small, fixed) forget set, so all ranks agree without communication and
        all run the same forwards, which ZeRO-3's parameter gathering requires.
        """
        forget_set = getattr(self.train_dataset, "forget", None)
        if forget_set is None:
            raise ValueError(
                "ref_log_probs='cached' needs train_dataset.forget (ForgetRetainDataset); set ref_log_probs='online'."
            )
        model = self.model_wrapped if model is None else model
        size = self.args.per_device_eval_batch_size
        values = []
        with self.reference(model) as ref:
            for start in range(0, len(forget_set), size):
                items = [{**forget_set[i], "index": i} for i in range(start, min(start + size, len(forget_set)))]
                batch = self._prepare_inputs(self.data_collator(items))
                values.append(sequence_log_prob(ref, batch))
        return torch.cat(values)
