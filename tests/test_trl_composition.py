"""hf_unlearn's optimizers inside TRL's trainers: the FO-ZO hybrid runs in `SFTTrainer` and `DPOTrainer`.

The composition is the one README_TRL.md documents: the trainer class gets `ZerothOrderMixin` and
`OptimizerFactoryMixin`, its config gets `OptimizerArguments`' fields, and `HybridScheduleCallback` alternates phases.
"""

from dataclasses import dataclass

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from hf_unlearn.optim import OptimizerArguments, OptimizerFactoryMixin
from hf_unlearn.optim.hybrid import HybridOptimizer, unwrap_optimizer
from hf_unlearn.tiny import build_tiny_model, train_tokenizer
from hf_unlearn.trainers.callbacks import HybridScheduleCallback
from hf_unlearn.trainers.zeroth_order import ZerothOrderMixin


trl = pytest.importorskip("trl")

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "birds fly over the sea", "fish swim in the lake"]
HYBRID = {
    "optimizer": "hybrid", "hybrid_fo_steps": 1, "max_steps": 4, "learning_rate": 1e-3, "zo_learning_rate": 1e-3,
    "zo_bias_correction": True, "per_device_train_batch_size": 4, "lr_scheduler_type": "constant", "use_cpu": True,
    "report_to": "none", "save_strategy": "no", "disable_tqdm": True, "logging_steps": 1,
}  # fmt: skip


@dataclass
class HybridSFTConfig(trl.SFTConfig, OptimizerArguments):
    pass


class HybridSFTTrainer(ZerothOrderMixin, OptimizerFactoryMixin, trl.SFTTrainer):
    pass


@dataclass
class HybridDPOConfig(trl.DPOConfig, OptimizerArguments):
    pass


class HybridDPOTrainer(ZerothOrderMixin, OptimizerFactoryMixin, trl.DPOTrainer):
    pass


class StepRecorder(TrainerCallback):
    """Per optimizer step: its hybrid phase, whether any weight changed, and whether any `.grad` existed after it."""

    def __init__(self, model, schedule: HybridScheduleCallback):
        self.model, self.schedule, self.steps = model, schedule, []

    def _weights(self):
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def on_step_begin(self, args, state, control, **kwargs):
        self.before = self._weights()
        self.phase = self.schedule.hybrid.phase  # the schedule callback runs first: the step's phase

    def on_step_end(self, args, state, control, **kwargs):
        after = self._weights()
        changed = sorted(n for n in after if not torch.equal(after[n], self.before[n]))
        self.steps.append({"phase": self.phase, "changed": changed, "total": len(after)})


def tiny():
    tokenizer = train_tokenizer(TEXTS, vocab_size=100)
    return build_tiny_model(tokenizer, "llama"), tokenizer


def check_hybrid_run(trainer, recorder, model):
    trainer.train()
    assert isinstance(unwrap_optimizer(trainer.optimizer), HybridOptimizer)
    assert [s["phase"] for s in recorder.steps] == ["fo", "zo", "fo", "zo"]
    for step in recorder.steps:  # both phases move every trainable weight (ZO along its seeded direction)
        assert len(step["changed"]) == step["total"] > 0, step["phase"]
    phases = [log["optim/phase"] for log in trainer.state.log_history if "optim/phase" in log]
    assert phases == [0.0, 1.0, 0.0, 1.0]
    zo_logs = [log for log in trainer.state.log_history if log.get("optim/phase") == 1.0]
    assert all("zo/projected_grad" in log and "grad_norm" not in log for log in zo_logs)


def test_hybrid_fo_zo_runs_inside_sft_trainer(tmp_path):
    model, tokenizer = tiny()
    args = HybridSFTConfig(output_dir=str(tmp_path), **HYBRID)
    schedule = HybridScheduleCallback()
    recorder = StepRecorder(model, schedule)
    trainer = HybridSFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"text": TEXTS}), processing_class=tokenizer,
        callbacks=[schedule, recorder],
    )  # fmt: skip
    check_hybrid_run(trainer, recorder, model)


def test_hybrid_fo_zo_runs_inside_dpo_trainer(tmp_path):
    model, tokenizer = tiny()
    pairs = {
        "prompt": ["the cat", "a dog", "birds fly", "fish swim"],
        "chosen": [" sat on the mat", " ran in the park", " over the sea", " in the lake"],
        "rejected": [" ran in the park", " over the sea", " in the lake", " sat on the mat"],
    }
    reference = build_tiny_model(tokenizer, "llama")  # the same seed: a copy of the policy before training
    args = HybridDPOConfig(output_dir=str(tmp_path), beta=0.1, **HYBRID)
    schedule = HybridScheduleCallback()
    recorder = StepRecorder(model, schedule)
    trainer = HybridDPOTrainer(
        model=model, ref_model=reference, args=args, train_dataset=Dataset.from_dict(pairs),
        processing_class=tokenizer, callbacks=[schedule, recorder],
    )  # fmt: skip
    check_hybrid_run(trainer, recorder, model)
    # ZO perturbs the policy only: DPO's frozen reference stays what the policy was before training
    fresh = build_tiny_model(tokenizer, "llama").state_dict()
    for name, value in trainer.ref_model.state_dict().items():
        assert torch.equal(value, fresh[name]), name


def test_build_optimizer_hands_any_first_order_optimizer_to_a_plain_sft_trainer(tmp_path):
    from hf_unlearn.optim import build_optimizer

    model, tokenizer = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = trl.SFTConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, lr_scheduler_type="constant",
        use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    optimizer = build_optimizer(model, optimizer="signadam", learning_rate=1e-3)
    trainer = trl.SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"text": TEXTS}), processing_class=tokenizer,
        optimizers=(optimizer, None),
    )  # fmt: skip
    trainer.train()
    # signAdam's first step moves every weight with a gradient by exactly lr (the sign of its momentum)
    moved = [(p.detach() - before[n]).abs() for n, p in model.named_parameters() if n != "model.embed_tokens.weight"]
    for delta in moved:
        torch.testing.assert_close(delta, torch.full_like(delta, 1e-3), rtol=1e-4, atol=1e-8)
