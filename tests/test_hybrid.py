"""FO-ZO hybrid: the phase schedule, its checkpointed state, bit-exact resumption, equivalence with AdamW, NPO."""

import pytest
import torch
from transformers import TrainerCallback

from hf_unlearn.optim.hybrid import HybridSchedule
from hf_unlearn.trainers import NPOTrainer
from hf_unlearn.trainers.callbacks import HybridScheduleCallback
from tests.helpers import one_thread
from tests.scripts.optim_fixtures import RandomTokens, ZOTrainer, tiny_llama, training_args, weights


@pytest.fixture(scope="module", autouse=True)
def module_one_thread():
    with one_thread():
        yield


class _StepRecorder(TrainerCallback):
    """Whether any parameter held a gradient at each optimizer step, and the weights after each step."""

    def __init__(self):
        self.had_grad, self.snapshots = [], []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.had_grad.append(any(p.grad is not None for p in model.parameters()))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.snapshots.append(weights(model))


def _hybrid_trainer(tmp_path, model=None, fo=2, zo=2, max_steps=8, recorder=None, **overrides):
    args = training_args(
        tmp_path, optimizer="hybrid", hybrid_fo_steps=fo, hybrid_zo_steps=zo, max_steps=max_steps,
        learning_rate=1e-2, zo_learning_rate=1e-3, **overrides,
    )  # fmt: skip
    callbacks = [HybridScheduleCallback()] + ([recorder] if recorder else [])
    model = tiny_llama() if model is None else model
    return ZOTrainer(model=model, args=args, train_dataset=RandomTokens(n=16), callbacks=callbacks)


def test_phases_alternate_fo_first_and_zo_steps_hold_no_gradients(tmp_path):
    recorder = _StepRecorder()
    trainer = _hybrid_trainer(tmp_path, recorder=recorder)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert [log["optim/phase"] for log in logs] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert recorder.had_grad == [True, True, False, False, True, True, False, False]
    assert ["zo/projected_grad" in log for log in logs] == [False, False, True, True] * 2
    assert trainer.optimizer.optimizer.phase == "zo"  # the run ended in a ZO phase
    # every step, FO or ZO, moved the weights
    snaps = [weights(tiny_llama())] + recorder.snapshots
    for before, after in zip(snaps, snaps[1:]):
        assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])


def test_bad_schedules_fail_at_train_start(tmp_path):
    with pytest.raises(ValueError, match="max_steps=6 must be a multiple of hybrid_fo_steps"):
        _hybrid_trainer(tmp_path, max_steps=6).train()
    args = training_args(tmp_path, optimizer="adamw", max_steps=2)
    trainer = ZOTrainer(
        model=tiny_llama(), args=args, train_dataset=RandomTokens(), callbacks=[HybridScheduleCallback()]
    )
    with pytest.raises(ValueError, match="needs optimizer='hybrid', got AdamW"):
        trainer.train()


def test_hybrid_with_zero_zo_steps_equals_adamw_exactly(tmp_path):
    common = {"max_steps": 5, "weight_decay": 0.01, "lr_scheduler_type": "linear", "learning_rate": 1e-2}
    hybrid = _hybrid_trainer(tmp_path / "h", fo=3, zo=0, **{k: v for k, v in common.items() if k != "learning_rate"})
    hybrid.train()
    args = training_args(tmp_path / "a", optimizer="adamw", **common)
    adamw = ZOTrainer(model=tiny_llama(), args=args, train_dataset=RandomTokens(n=16))
    adamw.train()
    assert type(adamw.optimizer.optimizer).__name__ == "AdamW"
    a, b = weights(hybrid.model), weights(adamw.model)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["lm_head.weight"], tiny_llama().lm_head.weight)


def test_resuming_mid_zo_phase_reproduces_the_run_bit_for_bit(tmp_path):
    # dropout exercises the RNG restore; steps 2-3 are ZO, so checkpoint-3 is in the middle of a ZO phase
    overrides = {"save_strategy": "steps", "save_steps": 3, "lr_scheduler_type": "linear"}
    full = _hybrid_trainer(tmp_path / "full", model=tiny_llama(attention_dropout=0.2), **overrides)
    full.train()
    resumed = _hybrid_trainer(tmp_path / "resumed", model=tiny_llama(attention_dropout=0.2), **overrides)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    a, b = weights(full.model), weights(resumed.model)
    assert all(torch.equal(a[n], b[n]) for n in a)
    fo_a, fo_b = full.optimizer.optimizer.fo, resumed.optimizer.optimizer.fo
    zo_a, zo_b = full.optimizer.optimizer.zo, resumed.optimizer.optimizer.zo
    for pa, pb in zip(zo_a.directions.params, zo_b.directions.params):
        assert torch.equal(zo_a.state[pa]["exp_avg_sq"], zo_b.state[pb]["exp_avg_sq"])
        assert torch.equal(fo_a.state[pa]["exp_avg"], fo_b.state[pb]["exp_avg"])
    assert zo_a.state[zo_a.directions.params[0]]["step"] == 4  # ZO steps 2, 3, 6, 7
    logs = lambda t: [(log["step"], log["loss"], log["optim/phase"]) for log in t.state.log_history if "loss" in log]  # noqa: E731
    assert logs(resumed)[-5:] == logs(full)[-5:]


def test_the_schedule_is_the_optimizers_own_and_a_function_of_the_step(tmp_path):
    schedule = HybridSchedule(3, 2)
    assert [schedule.phase_at(s) for s in range(6)] == ["fo", "fo", "fo", "zo", "zo", "fo"]
    # the trainer's hybrid carries hybrid_fo_steps / hybrid_zo_steps from the config: no callback holds a copy
    trainer = _hybrid_trainer(tmp_path, fo=3, zo=2, max_steps=5)
    trainer.create_optimizer()
    hybrid = trainer.optimizer
    assert hybrid.schedule == (3, 2) and hybrid.phase == "fo"
    assert [hybrid.begin_step(s) for s in (2, 3, 4, 5, 8)] == ["fo", "zo", "zo", "fo", "zo"]


def test_hybrid_npo_unlearning_with_the_unlearn_trainer(tmp_path):
    from hf_unlearn.trainers import NPOConfig
    from tests.scripts.optim_fixtures import FORGET_SIZE, npo_dataset, save_npo_model

    path = save_npo_model(tmp_path / "model")
    args = NPOConfig(
        output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
        per_device_train_batch_size=FORGET_SIZE // 2, gradient_accumulation_steps=2, max_steps=4, logging_steps=1,
        learning_rate=1e-2, optimizer="hybrid", hybrid_fo_steps=2, zo_learning_rate=1e-3, beta=0.1, seed=0,
    )  # fmt: skip
    recorder = _StepRecorder()
    trainer = NPOTrainer(
        model=path, args=args, train_dataset=npo_dataset(path),
        callbacks=[HybridScheduleCallback(), recorder],
    )  # fmt: skip
    trainer.train()
    assert recorder.had_grad == [True, True, False, False]
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert [log["optim/phase"] for log in logs] == [0, 0, 1, 1]
    assert all(torch.isfinite(torch.tensor(log["zo/projected_grad"])) for log in logs[2:])
    assert ["grad_norm" in log for log in logs] == [True, True, False, False]  # no fake 0 norm for ZO steps
    # the ZO phase moved the weights the FO phase had left
    name = "model.layers.1.mlp.down_proj.weight"
    assert not torch.equal(recorder.snapshots[1][name], recorder.snapshots[3][name])
    # NPO's forget loss starts at (2/β)·log 2 ≈ 13.86 (model = reference)
    assert logs[0]["loss/forget"] == pytest.approx(2 / 0.1 * 0.693147, rel=1e-4)
    # both phases log the parts (a ZO step: their mean over the ±μ forwards), and they add up to the logged loss
    for log in logs:
        assert log["loss"] == pytest.approx(log["loss/forget"] + args.alpha * log["loss/retain"], rel=1e-4)


@pytest.mark.parametrize("optimizer", ["hybrid", "adazo", "adamw", "sam"])
def test_the_step_strategy_is_chosen_once_when_the_optimizer_is_created(tmp_path, monkeypatch, optimizer):
    import hf_unlearn.trainers.smoothing as smoothing_module
    import hf_unlearn.trainers.zeroth_order as zo_module
    from hf_unlearn.trainers.smoothing import SmoothingMixin

    class SmoothingZOTrainer(SmoothingMixin, ZOTrainer):
        pass

    walks = []
    for module, name in ((zo_module, "unwrap_optimizer"), (smoothing_module, "smoothing_optimizer_of")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda o, original=original: walks.append(o) or original(o))
    args = training_args(
        tmp_path, optimizer=optimizer, hybrid_fo_steps=2, max_steps=4, gradient_accumulation_steps=2,
        per_device_train_batch_size=2, learning_rate=1e-2, zo_learning_rate=1e-3,
    )  # fmt: skip
    callbacks = [HybridScheduleCallback()] if optimizer == "hybrid" else []
    trainer = SmoothingZOTrainer(model=tiny_llama(), args=args, train_dataset=RandomTokens(n=16), callbacks=callbacks)
    trainer.train()
    # 8 micro-batches, and the chain was walked once per mixin that asks (smoothing first, then ZO), when the optimizer
    # was created: never per micro-batch
    assert len(walks) == (1 if optimizer == "sam" else 2)
    assert trainer.state.global_step == 4


def test_the_training_step_is_two_super_calls_deep():
    """Only the trainer's logging wrapper and TrainingStepMixin define training_step above the Trainer's own: the
    step strategy is a function picked once, not a chain of mixins that each decide again."""
    from transformers import Trainer

    from hf_unlearn.trainers import UnlearnTrainer
    from hf_unlearn.trainers.step import TrainingStepMixin

    defining = [cls for cls in UnlearnTrainer.__mro__ if "training_step" in vars(cls)]
    assert defining == [UnlearnTrainer, TrainingStepMixin, Trainer]
