"""AltPO (Mekala et al. 2024): DPO that prefers an alternate answer, generated beforehand by the model itself, over
the forget answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from hf_unlearn.configs import UnlearnConfig, check_positive
from hf_unlearn.data import pad_batch, tokenize_qa
from hf_unlearn.paper import Paper
from hf_unlearn.trainers.base import UnlearnTrainer
from hf_unlearn.trainers.losses import sequence_log_prob


@dataclass
class AltPOConfig(UnlearnConfig):
    """AltPO hyperparameters: DPO β and the file of alternate answers (`hf-unlearn alternates` writes it)."""

    beta: float = field(default=0.1, metadata={"help": "DPO inverse temperature β; must be > 0."})
    alternates_file: str | None = field(
        default=None,
        metadata={
            "help": "Required. JSON Lines of {question, answer, alternate}, one per forget example, as `hf-unlearn "
            "alternates --model M --data_dir D --forget_split S --output FILE` writes it."
        },
    )

    def __post_init__(self):
        check_positive("beta", self.beta)
        if not self.alternates_file:
            raise ValueError(
                "altpo needs alternates_file: generate it with `hf-unlearn alternates --model M --data_dir D "
                "--forget_split S --output FILE`, then set alternates_file: FILE."
            )
        from hf_unlearn.alternates import read_alternates

        read_alternates(self.alternates_file)  # a malformed file fails now, before any weight loads
        super().__post_init__()


class AltPOTrainer(UnlearnTrainer):
    """Loss = −(2/β)·mean log σ(β·[(log π_θ(ỹ) − log π_ref(ỹ)) − (log π_θ(y) − log π_ref(y))]) + α·retain.

    ỹ is the forget question's alternate answer, tokenised like a QA example of the forget set (same QA format and
    max_length), y the forget answer; log-likelihoods are summed over answer tokens (eos included).
    """

    _name = "altpo"
    _paper = Paper(
        title="Alternate Preference Optimization for Unlearning Factual Knowledge in Large Language Models",
        authors="Mekala, Anmol and Dorna, Vineeth and Dubey, Shreya and Lalwani, Abhishek and Koleczek, David and "
        "Rungta, Mukund and Hasan, Sadid and Lobo, Elita",
        year=2024,
        arxiv="2409.13474",
        key="mekala2024alternate",
    )
    config_class = AltPOConfig

    @classmethod
    def needs_reference(cls, args) -> bool:
        return True

    @classmethod
    def check_train_data(cls, train_dataset, args) -> None:
        super().check_train_data(train_dataset, args)
        forget = getattr(train_dataset, "forget", None)
        if not hasattr(forget, "pairs"):
            raise ValueError(
                "altpo matches alternates to forget questions: pass train_dataset=ForgetRetainDataset(QADataset(...))."
            )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.alternate_examples = self.tokenised_alternates()

    def tokenised_alternates(self) -> list[dict[str, list[int]]]:
        """Each forget example's alternate, as a QA example of the forget set's format, in forget-set order."""
        from hf_unlearn.alternates import read_alternates

        forget, path = self.train_dataset.forget, self.args.alternates_file
        alternates = read_alternates(path)
        examples = []
        for index, (question, answer) in enumerate(forget.pairs):
            alternate = alternates.get((question, answer))
            if alternate is None:
                raise ValueError(
                    f"{Path(path).name} has no alternate for forget example {index} ({question!r}); generate the "
                    "file for this forget split with `hf-unlearn alternates`."
                )
            example = tokenize_qa(self.processing_class, question, alternate, forget.max_length, forget.qa_format)
            example.pop("prompt_mismatch")
            examples.append(example)
        return examples

    def preferred_batch(self, forget) -> dict[str, torch.Tensor]:
        rows = [self.alternate_examples[int(i)] for i in forget["index"]]
        batch = pad_batch(rows, self.processing_class.pad_token_id)
        return {k: v.to(forget["input_ids"].device) for k, v in batch.items()}

    def forget_loss(self, model, forget, counts):
        preferred = self.preferred_batch(forget)
        chosen, rejected = sequence_log_prob(model, preferred), sequence_log_prob(model, forget)
        with torch.no_grad(), self.reference(model) as ref:
            ref_chosen, ref_rejected = sequence_log_prob(ref, preferred), sequence_log_prob(ref, forget)
        margin = (chosen - ref_chosen) - (rejected - ref_rejected)
        beta = self.args.beta
        return -(2 / beta) * F.logsigmoid(beta * margin).sum() / counts.sequences
