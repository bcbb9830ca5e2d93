"""SAM and FO-RS: hand-computed updates, the factory, and their extra passes inside Trainers (accumulation, DDP)."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import Trainer

from hf_unlearn.optim import (
    FORS,
    SAM,
    OptimizerArguments,
    OptimizerFactoryMixin,
    build_optimizer,
    derive_seed,
    validate_optimizer_args,
)
from hf_unlearn.trainers.smoothing import SmoothingMixin
from hf_unlearn.trainers.zeroth_order import ZerothOrderMixin
from tests.helpers import one_thread
from tests.scripts.optim_fixtures import RandomTokens, tiny_llama, training_args, weights


@pytest.fixture(scope="module", autouse=True)
def module_one_thread():
    with one_thread():
        yield


class _Quartic(nn.Module):
    """f(w) = Σ w⁴/4 over two tensors, so ∇f(w) = w³ and the global norm spans both."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor([[0.5], [3.0]], dtype=torch.float64))

    def forward(self):
        return (self.a**4).sum() / 4 + (self.b**4).sum() / 4


def _closure(model, opt):
    def closure():
        loss = model()
        loss.backward()
        return loss

    return closure


def test_sam_step_is_the_base_step_of_the_gradient_at_the_ascended_point():
    model = _Quartic()
    opt = build_optimizer(model, optimizer="sam", smoothing_base_optimizer="sgd", sam_rho=0.5, learning_rate=0.1)
    assert isinstance(opt, SAM) and type(opt.base) is torch.optim.SGD
    loss = opt.step(_closure(model, opt))
    w = [1.0, -2.0, 0.5, 3.0]
    g = [x**3 for x in w]  # 1, -8, 0.125, 27
    norm = math.sqrt(sum(x * x for x in g))
    ascended = [x + 0.5 * gx / norm for x, gx in zip(w, g)]
    expected = [x - 0.1 * y**3 for x, y in zip(w, ascended)]
    got = model.a.detach().tolist() + model.b.detach().flatten().tolist()
    assert got == pytest.approx(expected, rel=1e-12)
    assert float(loss.detach()) == pytest.approx(sum(x**4 for x in w) / 4)  # the loss at w, not at the ascended point
    # the base step used the perturbed gradient: plain SGD would have landed elsewhere
    assert got != pytest.approx([x - 0.1 * gx for x, gx in zip(w, g)], rel=1e-3)


def test_sam_wraps_any_first_order_base_signsgd_by_hand():
    model = _Quartic()
    opt = build_optimizer(model, optimizer="sam", smoothing_base_optimizer="signsgd", sam_rho=3.0, learning_rate=0.1)
    opt.step(_closure(model, opt))
    # ‖g‖ = √(1 + 64 + 1/64 + 729) ≈ 28.18; w + 3g/‖g‖: a[0] = 1.106, a[1] = -2.85, b = [0.513, 5.87]; all keep their
    # sign, so signSGD moves every weight by -0.1·sign(w)
    assert model.a.detach().tolist() == pytest.approx([0.9, -1.9])
    assert model.b.detach().flatten().tolist() == pytest.approx([0.4, 2.9])


def test_fo_rs_step_is_the_base_step_of_the_gradient_averaged_over_seeded_points():
    model = _Quartic()
    opt = build_optimizer(
        model, optimizer="fo_rs", smoothing_base_optimizer="sgd", fo_rs_sigma=0.3, fo_rs_samples=3,
        learning_rate=0.1, seed=7,
    )  # fmt: skip
    assert isinstance(opt, FORS) and opt.sample_seeds(0) == [derive_seed(7, 0, k) for k in range(3)]
    # tensors are numbered in the optimizer's order: the weight-decay group (2-D b) first, then a
    assert opt.params[0] is model.b and opt.params[1] is model.a
    w = [p.detach().clone() for p in opt.params]
    opt.step(_closure(model, opt))

    def noise(sample_seed, index, like):
        # N(0, I) per tensor from a generator seeded with hash(sample seed, tensor index)
        gen = torch.Generator().manual_seed(derive_seed(sample_seed, index))
        return torch.empty(like.numel(), dtype=like.dtype).normal_(generator=gen).view_as(like)

    for index, (p, w0) in enumerate(zip(opt.params, w)):
        grads = [(w0 + 0.3 * noise(derive_seed(7, 0, k), index, w0)) ** 3 for k in range(3)]
        torch.testing.assert_close(p.detach(), w0 - 0.1 * torch.stack(grads).mean(0), rtol=1e-12, atol=1e-12)
        # the noise mattered: σ = 0.3 on w³ moves the gradient far beyond rounding
        assert not torch.allclose(p.detach(), w0 - 0.1 * w0**3, atol=1e-3)
    # the next manual step draws new noise (its own step counter), and weights are restored bit for bit in between
    assert opt.sample_seeds(1) != opt.sample_seeds(0) and opt.state_dict()["manual_steps"] == 1


def test_plain_step_without_the_extra_passes_fails_clearly():
    model = _Quartic()
    for name in ("sam", "fo_rs"):
        opt = build_optimizer(model, optimizer=name)
        model().backward()
        expected = f"optimizer='{name}' needs extra forward/backward passes.*step\\(closure"
        with pytest.raises(RuntimeError, match=expected):
            opt.step()
    assert model.a.detach().tolist() == [1.0, -2.0]  # nothing moved


def test_state_dict_round_trip_and_scheduler_drive_the_base():
    model = _Quartic()
    opt = build_optimizer(model, optimizer="sam", learning_rate=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert opt.base.param_groups[0]["lr"] == 0.05  # one set of groups: the base optimizer's
    opt.step(_closure(model, opt))
    sched.step()
    state = opt.state_dict()
    fresh = build_optimizer(_Quartic(), optimizer="sam", learning_rate=0.1)
    fresh.load_state_dict(state)
    assert state["rho"] == 0.01 and fresh.base.state_dict()["state"][0]["step"] == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sam_rho": 0.0}, "sam_rho=0.0 must be a finite number > 0"),
        ({"fo_rs_sigma": -1e-4}, "fo_rs_sigma=-0.0001 must be a finite number > 0"),
        ({"fo_rs_samples": 0}, "fo_rs_samples=0 must be an integer >= 1"),
        ({"smoothing_base_optimizer": "adazo"}, "smoothing_base_optimizer='adazo': choose one of adamw"),
        ({"optimizer": "sam", "deepspeed": "ds.json"}, "optimizer='sam' runs extra backward passes"),
    ],
)
def test_bad_smoothing_fields_fail_in_one_line(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_optimizer_args(**fields)


class SmoothTrainer(SmoothingMixin, ZerothOrderMixin, OptimizerFactoryMixin, Trainer):
    """A plain Trainer with the smoothing mixin (as a TRL trainer would take it)."""


def _train(tmp_path, batch: int, accumulation: int, **overrides) -> dict:
    args = training_args(
        tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, max_steps=2,
        smoothing_base_optimizer="sgd", learning_rate=0.5, max_grad_norm=0.0, **overrides,
    )  # fmt: skip
    trainer = SmoothTrainer(model=tiny_llama(), args=args, train_dataset=RandomTokens(n=8))
    trainer.train()
    return weights(trainer.model)


def _manual(batches, **overrides) -> dict:
    """The same run with step(closure): mean token NLL of each window's batches."""
    model = tiny_llama()
    opt = build_optimizer(model, smoothing_base_optimizer="sgd", learning_rate=0.5, **overrides)
    for window in batches:

        def closure(window=window):
            # each micro-batch holds the same number of tokens, so the window's mean is the mean of the means
            loss = sum(model(**b).loss for b in window) / len(window)
            loss.backward()
            return loss

        opt.step(closure)
    return weights(model)


def _trainer_batches(tmp_path, batch: int, accumulation: int) -> list[list[dict]]:
    args = training_args(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation)
    loader = iter(SmoothTrainer(model=tiny_llama(), args=args, train_dataset=RandomTokens(n=8)).get_train_dataloader())
    batches = [next(loader) for _ in range(2 * accumulation)]
    return [batches[i : i + accumulation] for i in range(0, len(batches), accumulation)]


@pytest.mark.parametrize(
    "overrides",
    [{"optimizer": "sam", "sam_rho": 0.5}, {"optimizer": "fo_rs", "fo_rs_sigma": 0.05, "seed": 0}],
    ids=["sam", "fo_rs"],
)
def test_trainer_steps_equal_step_closure_and_accumulation_is_exact(tmp_path, overrides):
    one_batch = _train(tmp_path / "4x1", 4, 1, **overrides)
    accumulated = _train(tmp_path / "2x2", 2, 2, **overrides)
    # the Trainer's global step numbers FO-RS noise like step(closure)'s own counter does
    reference = _manual(_trainer_batches(tmp_path / "b", 4, 1), **overrides)
    start = weights(tiny_llama())
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.allclose(one_batch[name], start[name], atol=1e-4)
    for n in one_batch:
        torch.testing.assert_close(one_batch[n], reference[n], rtol=0, atol=1e-6)
        torch.testing.assert_close(accumulated[n], one_batch[n], rtol=0, atol=1e-6)
    if overrides["optimizer"] == "sam":
        # the rule is exact, not per micro-batch: ascending along each micro-batch's own gradient lands elsewhere
        per_micro_batch = _manual_sam_per_micro_batch(_trainer_batches(tmp_path / "c", 2, 2), rho=0.5)
        assert max(float((per_micro_batch[n] - accumulated[n]).abs().max()) for n in start) > 1e-4


@pytest.mark.parametrize("optimizer", ["sam", "fo_rs"])
def test_resuming_reproduces_the_run_bit_for_bit(tmp_path, optimizer):
    # AdamW base: its moments travel inside the wrapper's state dict; FO-RS noise follows the global step
    def run(out, resume=None):
        args = training_args(
            out, optimizer=optimizer, max_steps=4, save_strategy="steps", save_steps=2, fo_rs_sigma=0.05,
            sam_rho=0.5, learning_rate=1e-2,
        )  # fmt: skip
        trainer = SmoothTrainer(model=tiny_llama(), args=args, train_dataset=RandomTokens(n=16))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-2"))
    a, b = weights(full.model), weights(resumed.model)
    assert all(torch.equal(a[n], b[n]) for n in a)
    base = resumed.optimizer.optimizer.base
    assert type(base).__name__ == "AdamW" and base.state[base.param_groups[0]["params"][0]]["step"] == 4


def _manual_sam_per_micro_batch(windows, rho) -> dict:
    model = tiny_llama()
    params = list(model.parameters())
    for window in windows:
        total = [torch.zeros_like(p) for p in params]
        for b in window:
            grads = torch.autograd.grad(model(**b).loss / len(window), params)
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            with torch.no_grad():
                saved = [p.clone() for p in params]
                for p, g in zip(params, grads):
                    p.add_(g, alpha=rho / float(norm))
            for t, g in zip(total, torch.autograd.grad(model(**b).loss / len(window), params)):
                t.add_(g)
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
        with torch.no_grad():
            for p, t in zip(params, total):
                p.sub_(0.5 * t)
    return weights(model)


def test_sam_npo_in_the_unlearn_trainer_logs_the_loss_at_w(tmp_path):
    from hf_unlearn.trainers import NPOConfig, NPOTrainer
    from tests.scripts.optim_fixtures import FORGET_SIZE, npo_dataset, save_npo_model

    path = save_npo_model(tmp_path / "model")
    args = NPOConfig(
        output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
        per_device_train_batch_size=FORGET_SIZE // 2, gradient_accumulation_steps=2, max_steps=3, logging_steps=1,
        learning_rate=1e-2, optimizer="sam", sam_rho=0.05, beta=0.1, seed=0,
    )  # fmt: skip
    trainer = NPOTrainer(model=path, args=args, train_dataset=npo_dataset(path))
    start = weights(trainer.model)
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, SAM)
    logs = [log for log in trainer.state.log_history if "loss" in log]
    # NPO's forget loss at w = reference is (2/β)·log 2 exactly: the perturbed passes are not mixed into the log
    assert logs[0]["loss/forget"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-5)
    for log in logs:
        assert log["loss"] == pytest.approx(log["loss/forget"] + args.alpha * log["loss/retain"], rel=1e-4)
    assert logs[-1]["loss/forget"] < logs[0]["loss/forget"]
    name = "model.layers.1.mlp.down_proj.weight"
    assert not torch.equal(weights(trainer.model)[name], start[name])


def _grad_diff_trainer(tmp_path, model_path, dataset, batch: int, accumulation: int, max_steps: int, **overrides):
    from hf_unlearn.trainers import GradDiffConfig, GradDiffTrainer

    args = GradDiffConfig(
        output_dir=str(tmp_path), report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
        per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, max_steps=max_steps,
        logging_steps=1, learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0,
        smoothing_base_optimizer="sgd", seed=0, alpha=1.0, **overrides,
    )  # fmt: skip
    return GradDiffTrainer(model=model_path, args=args, train_dataset=dataset)


def _hand_smoothed_gradient(trainer, batch, optimizer: str, scope: str) -> list[torch.Tensor]:
    """GradDiff's smoothed gradient from the definitions: forget term f = −mean forget NLL, retain r = mean NLL."""
    from hf_unlearn.trainers.losses import SideCounts, answer_token_nll

    model = trainer.model
    fors = build_optimizer(
        model, trainer.args, decay_parameter_names=trainer.get_decay_parameter_names(model)
    )  # the trainer's parameter order, which numbers the FO-RS noise tensors
    params = fors.params

    def f():
        return -answer_token_nll(model, batch["forget"]).sum() / SideCounts.of(batch["forget"]).tokens

    def r():
        return answer_token_nll(model, batch["retain"]).sum() / SideCounts.of(batch["retain"]).tokens

    def grad(fn):
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, torch.autograd.grad(fn(), params))]

    smoothed = f if scope == "forget" else (lambda: f() + r())
    at_w = [torch.zeros_like(p) for p in params] if scope == "loss" else grad(r)
    saved = [p.detach().clone() for p in params]
    if optimizer == "sam":
        g = grad(smoothed)
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in g])))
        with torch.no_grad():
            for p, x in zip(params, g):
                p.add_(x, alpha=trainer.args.sam_rho / norm)
        perturbed = [grad(smoothed)]
    else:
        perturbed = []
        for seed in [derive_seed(0, 0, k) for k in range(trainer.args.fo_rs_samples)]:
            fors.noise.perturb_(seed, trainer.args.fo_rs_sigma)
            perturbed.append(grad(smoothed))
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)
    return [a + torch.stack(list(gs)).mean(0) for a, *gs in zip(at_w, *perturbed)], params


@pytest.mark.parametrize("scope", ["forget", "loss"])
@pytest.mark.parametrize(
    "overrides",
    [{"optimizer": "sam", "sam_rho": 0.5}, {"optimizer": "fo_rs", "fo_rs_sigma": 0.05}],
    ids=["sam", "fo_rs"],
)
def test_forget_scope_smooths_only_the_forget_term_by_hand(tmp_path, scope, overrides):
    from tests.scripts.optim_fixtures import FORGET_SIZE, npo_dataset, save_npo_model

    path = save_npo_model(tmp_path / "model")
    dataset = npo_dataset(path)
    trainer = _grad_diff_trainer(
        tmp_path / "run", path, dataset, FORGET_SIZE, 1, 1, smoothing_scope=scope, **overrides
    )
    batch = next(iter(trainer.get_train_dataloader()))
    expected, params = _hand_smoothed_gradient(trainer, batch, overrides["optimizer"], scope)
    before = [p.detach().clone() for p in params]
    trainer.train()
    for p, w, g in zip(params, before, expected):
        torch.testing.assert_close(p.detach(), w - 0.5 * g, rtol=0, atol=2e-6)
    # the other scope is a different update: the test tells them apart
    other, _ = _hand_smoothed_gradient(
        trainer, batch, overrides["optimizer"], "loss" if scope == "forget" else "forget"
    )
    assert max(float((a - b).abs().max()) for a, b in zip(expected, other)) > 1e-3
    # 4x1 equals 2x2 on the split path too (two steps)
    runs = [
        _grad_diff_trainer(tmp_path / f"ga{ga}", path, dataset, FORGET_SIZE // ga, ga, 2, smoothing_scope=scope,
                           **overrides)
        for ga in (1, 2)
    ]  # fmt: skip
    for run in runs:
        run.train()
    a, b = weights(runs[0].model), weights(runs[1].model)
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=2e-6)


def test_the_mixin_composes_with_trl_sft_trainer(tmp_path):
    from dataclasses import dataclass

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from hf_unlearn.tiny import build_tiny_model, train_tokenizer

    @dataclass
    class SmoothSFTConfig(SFTConfig, OptimizerArguments):
        pass

    class SmoothSFTTrainer(SmoothingMixin, OptimizerFactoryMixin, SFTTrainer):
        pass

    texts = ["the cat sat on the mat", "a dog ran in the park", "birds fly over the sea", "fish swim in the lake"]
    tokenizer = train_tokenizer(texts, vocab_size=100)

    def run(name, **overrides):
        model = build_tiny_model(tokenizer, "llama")
        args = SmoothSFTConfig(
            output_dir=str(tmp_path / name), smoothing_base_optimizer="sgd", max_steps=1,
            per_device_train_batch_size=4, report_to="none", use_cpu=True, learning_rate=0.5, max_grad_norm=0.0,
            lr_scheduler_type="constant", disable_tqdm=True, save_strategy="no", **overrides,
        )  # fmt: skip
        dataset = Dataset.from_dict({"text": texts})
        SmoothSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer).train()
        return weights(model)

    # SFT computes its own loss (fused head): with a vanishing perturbation SAM and FO-RS must reduce to the plain
    # base step exactly, so the extra passes carry TRL's loss normalisation unchanged; a real one changes the step
    sgd = run("sgd", optimizer="sgd")
    for name, vanishing, real in [
        ("sam", {"sam_rho": 1e-12}, {"sam_rho": 0.5}),
        ("fo_rs", {"fo_rs_sigma": 1e-12}, {"fo_rs_sigma": 0.05}),
    ]:
        tiny, smoothed = run(f"{name}_0", optimizer=name, **vanishing), run(name, optimizer=name, **real)
        for n in sgd:
            torch.testing.assert_close(tiny[n], sgd[n], rtol=0, atol=1e-6)
        assert max(float((smoothed[n] - sgd[n]).abs().max()) for n in sgd) > 1e-4, name


@pytest.mark.slow
def test_ddp_sam_and_fo_rs_match_one_process_with_the_same_global_batch(tmp_path):
    from tests.scripts.optim_fixtures import save_npo_model
    from tests.test_distributed_optim import _run

    script = str(Path(__file__).parent / "scripts" / "smoothing_npo_run.py")
    model_path = save_npo_model(tmp_path / "model")
    ddp = [model_path, str(tmp_path / "ddp"), "1", "2"]  # batch 1 x 2 accumulation steps x 2 processes
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    _run(lambda port: [*launcher, "--master_port", str(port), script, *ddp], timeout=400)
    _run(lambda port: [sys.executable, script, model_path, str(tmp_path / "single"), "4", "1"], timeout=400)
    plain = torch.load(tmp_path / "single" / "sgd_rank0.pt")
    for optimizer in ("sam", "fo_rs"):
        rank0, rank1 = (torch.load(tmp_path / "ddp" / f"{optimizer}_rank{r}.pt") for r in (0, 1))
        single = torch.load(tmp_path / "single" / f"{optimizer}_rank0.pt")
        assert all(torch.equal(rank0[n], rank1[n]) for n in rank0)  # replicas identical
        gap = max(float((rank0[n] - single[n]).abs().max()) for n in single)
        # what smoothing changed relative to plain SGD on the same batches; a perturbation drawn per process (local
        # SAM ascent, per-rank noise) would move the DDP result by a fraction of this of order one
        effect = max(float((single[n] - plain[n]).abs().max()) for n in single)
        assert gap < 1e-6 and gap < effect / 1000, (optimizer, gap, effect)
        logs = json.loads((tmp_path / "ddp" / f"{optimizer}_logs0.json").read_text())
        assert len(logs) == 3
