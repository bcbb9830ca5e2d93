"""Optimizer hierarchy: hand-computed updates on small tensors, the factory and its input validation."""

import json
import math

import pytest
import torch
from torch import nn

from hf_unlearn.optim import (
    ZOSGD,
    AdaZO,
    HybridOptimizer,
    OptimizerArguments,
    QAdam,
    SignAdam,
    SignSGD,
    SophiaG,
    ZOAdam,
    build_optimizer,
    quantize_direction,
    validate_optimizer_args,
)


def _param(values):
    return nn.Parameter(torch.tensor(values, dtype=torch.float64))


def _step(opt, p, grad):
    p.grad = torch.tensor(grad, dtype=p.dtype)
    opt.step()


def test_quantizer_levels_by_hand():
    m = torch.tensor([0.9, -0.2, 0.4, -1.0])
    assert torch.equal(quantize_direction(m, 1), torch.tensor([1.0, -1.0, 1.0, -1.0]))
    # 2 bits: L = 1, levels {-1, 0, 1}·absmax
    assert torch.equal(quantize_direction(m, 2), torch.tensor([1.0, 0.0, 0.0, -1.0]))
    # 3 bits: L = 3, m·3 = [2.7, -0.6, 1.2, -3] rounds to [3, -1, 1, -3]
    torch.testing.assert_close(quantize_direction(m, 3), torch.tensor([1.0, -1 / 3, 1 / 3, -1.0]))
    assert torch.equal(quantize_direction(torch.zeros(3), 4), torch.zeros(3))
    with pytest.raises(ValueError, match="bits"):
        quantize_direction(m, 9)


def test_signsgd_by_hand():
    p = _param([1.0, -2.0, 0.5])
    opt = SignSGD([p], lr=0.1, weight_decay=0.5)
    _step(opt, p, [0.3, -0.1, 0.0])
    # θ(1 - 0.05) - 0.1·sign(g)
    torch.testing.assert_close(p.data, torch.tensor([0.85, -1.8, 0.475], dtype=torch.float64))


def test_signadam_by_hand_two_steps():
    p = _param([0.0, 0.0])
    opt = SignAdam([p], lr=0.1, beta1=0.5)
    _step(opt, p, [1.0, -2.0])  # m = [0.5, -1]
    torch.testing.assert_close(p.data, torch.tensor([-0.1, 0.1], dtype=torch.float64))
    _step(opt, p, [-3.0, 2.0])  # m = [0.25 - 1.5, -0.5 + 1] = [-1.25, 0.5]
    torch.testing.assert_close(p.data, torch.tensor([0.0, 0.0], dtype=torch.float64))
    _step(opt, p, [0.0, -2.0])  # m = [-0.625, -0.75]
    torch.testing.assert_close(p.data, torch.tensor([0.1, 0.1], dtype=torch.float64))


def test_qadam_one_bit_is_signadam():
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(5, 3)), None
    b = nn.Parameter(a.detach().clone())
    qadam = QAdam([a], lr=0.01, betas=(0.8, 0.9), bits=1, weight_decay=0.1)
    signadam = SignAdam([b], lr=0.01, beta1=0.8, weight_decay=0.1)
    for _ in range(4):
        g = torch.randn(5, 3)
        a.grad, b.grad = g.clone(), g.clone()
        qadam.step()
        signadam.step()
    assert torch.equal(a.data, b.data)


def test_qadam_two_bits_by_hand():
    b1, b2, lr, eps = 0.5, 0.75, 0.1, 0.0
    p = _param([0.0, 0.0, 0.0])
    opt = QAdam([p], lr=lr, betas=(b1, b2), eps=eps, bits=2)
    _step(opt, p, [4.0, 1.0, -2.0])
    # step 1: Adam direction = g/|g| = [1, 1, -1]; 2-bit absmax quantizer keeps it
    torch.testing.assert_close(p.data, torch.tensor([-0.1, -0.1, 0.1], dtype=torch.float64))
    _step(opt, p, [-4.0, 1.0, 0.0])
    # m = [0, 1, -1]·0.5... by hand: m = 0.5·[2, 0.5, -1] + 0.5·[-4, 1, 0] = [-1, 0.75, -0.5]
    # v = 0.75·0.25·[16, 1, 4] + 0.25·[16, 1, 0] = [7, 0.4375, 0.75]
    m_hat = torch.tensor([-1.0, 0.75, -0.5], dtype=torch.float64) / (1 - b1**2)
    v_hat = torch.tensor([7.0, 0.4375, 0.75], dtype=torch.float64) / (1 - b2**2)
    d = m_hat / v_hat.sqrt()  # ≈ [-0.3780, 1.1339, -0.5774]: absmax 1.1339, 2 bits -> [0, +s, -s]
    s = d.abs().max()
    expected = torch.tensor([-0.1, -0.1, 0.1], dtype=torch.float64) - lr * torch.stack([0 * s, s, -s])
    torch.testing.assert_close(p.data, expected)


def test_sophia_by_hand():
    p = _param([1.0, -1.0])
    opt = SophiaG([p], lr=0.1, betas=(0.9, 0.99), rho=5.0, weight_decay=0.1, batch_tokens=10)
    _step(opt, p, [0.2, -0.4])
    # m = [0.02, -0.04], h = [4e-4, 1.6e-3]; ratio = |m|/(50·h) = [1.0, 0.5]; θ(1 - 0.01) - 0.1·sign(m)·ratio
    torch.testing.assert_close(p.data, torch.tensor([0.89, -0.94], dtype=torch.float64))


def _zo_param(seed=0):
    torch.manual_seed(seed)
    return nn.Parameter(torch.randn(6, dtype=torch.float64))


def test_zo_sgd_update_is_minus_lr_c_z():
    p = _zo_param()
    before = p.detach().clone()
    opt = ZOSGD([p], lr=0.5, mu=1e-3, direction="gaussian")
    opt.record(11, 0.25)
    opt.record(11, 0.5)  # same seed: projected gradients add up (gradient accumulation)
    opt.record(12, -1.0)
    z11, z12 = opt.directions.direction(11, 0), opt.directions.direction(12, 0)
    opt.step()
    torch.testing.assert_close(p.data, before - 0.5 * (0.75 * z11 - 1.0 * z12))
    with pytest.raises(RuntimeError, match="no recorded projected gradient"):
        opt.step()


def test_zo_sgd_sphere_step_without_a_prior_perturbation():
    # the sphere's norm is computed lazily, in step() itself here; it must not clobber the direction being applied
    params = [nn.Parameter(torch.zeros(3, 2, dtype=torch.float64)), nn.Parameter(torch.zeros(5, dtype=torch.float64))]
    opt = ZOSGD(params, lr=1.0, mu=1e-3, direction="sphere")
    opt.record(9, 1.0)
    opt.step()
    expected = ZOSGD([nn.Parameter(torch.zeros_like(p)) for p in params], lr=1.0, mu=1e-3).directions
    for i, p in enumerate(params):
        torch.testing.assert_close(p.data, -expected.direction(9, i))
    assert float(sum(p.data.pow(2).sum() for p in params)) == pytest.approx(11.0)  # |z|² = d


def test_adazo_without_bias_correction_first_step_is_32_lr_and_warns():
    p = _zo_param()
    before = p.detach().clone()
    with pytest.warns(UserWarning, match="bias correction"):
        opt = AdaZO([p], lr=1e-3, betas=(0.9, 0.999), eps=0.0, bias_correction=False, mu=1e-3)
    opt.record(3, 2.0)
    z = opt.directions.direction(3, 0)
    opt.step()
    # m = 0.1·c·z, v = 0.001·m², m/√v = sign(cz)/√0.001: every weight moves lr/√(1-β2) ≈ 31.6·lr
    torch.testing.assert_close(p.data - before, -1e-3 / math.sqrt(0.001) * torch.sign(z))


def test_adazo_with_bias_correction_by_hand_two_steps():
    b1, b2, lr = 0.9, 0.999, 1e-2
    p = _zo_param()
    x = p.detach().clone()
    opt = AdaZO([p], lr=lr, betas=(b1, b2), eps=0.0, bias_correction=True, mu=1e-3, direction="rademacher")
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    for t, (seed, c) in enumerate([(5, 2.0), (6, -0.5)], start=1):
        opt.record(seed, c)
        g = c * opt.directions.direction(seed, 0)
        opt.step()
        m = b1 * m + (1 - b1) * g
        m_hat = m / (1 - b1**t)
        v = b2 * v + (1 - b2) * m_hat**2  # the second moment tracks the (corrected) momentum
        x = x - lr * m_hat / (v / (1 - b2**t)).sqrt()
        if t == 1:  # first step: exactly lr per weight
            torch.testing.assert_close((p.data - _zo_param()).abs(), torch.full_like(x, lr))
        torch.testing.assert_close(p.data, x)


def test_zo_adam_matches_torch_adamw_fed_the_estimate():
    p = _zo_param()
    q = nn.Parameter(p.detach().clone())
    zo = ZOAdam([p], lr=0.01, betas=(0.9, 0.99), weight_decay=0.1, mu=1e-3, direction="sphere")
    ref = torch.optim.AdamW([q], lr=0.01, betas=(0.9, 0.99), weight_decay=0.1, eps=1e-8)
    for seed, c in [(1, 0.3), (2, -2.0), (3, 1.0)]:
        zo.record(seed, c)
        q.grad = c * zo.directions.direction(seed, 0)
        zo.step()
        ref.step()
    torch.testing.assert_close(p.data, q.data)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.norm = nn.LayerNorm(2)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("adamw", torch.optim.AdamW),
        ("sgd", torch.optim.SGD),
        ("signsgd", SignSGD),
        ("signadam", SignAdam),
        ("qadam", QAdam),
        ("sophia", SophiaG),
        ("zo_sgd", ZOSGD),
        ("zo_adam", ZOAdam),
        ("adazo", AdaZO),
        ("hybrid", HybridOptimizer),
    ],
)
def test_factory_builds_each_name(name, cls):
    model = _Tiny()
    opt = build_optimizer(model, optimizer=name, learning_rate=1e-3, weight_decay=0.1)
    assert type(opt) is cls
    # weight decay only on the 2-D weight; biases and norm weights are exempt
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(model.lin.weight)] == 0.1
    assert decays[id(model.lin.bias)] == decays[id(model.norm.weight)] == 0.0
    assert sum(len(g["params"]) for g in opt.param_groups) == 4


def test_factory_skips_frozen_parameters_and_reads_an_args_object():
    model = _Tiny()
    model.norm.requires_grad_(False)
    args = OptimizerArguments(optimizer="adazo", zo_mu=2e-3, zo_num_directions=3)
    args.learning_rate = 0.02
    opt = build_optimizer(model, args, zo_direction="gaussian")
    assert opt.settings.mu == 2e-3 and opt.settings.num_directions == 3 and opt.directions.kind == "gaussian"
    assert opt.param_groups[0]["lr"] == 0.02
    assert {id(p) for p in opt.directions.params} == {id(model.lin.weight), id(model.lin.bias)}


def test_adamw_8bit_builds_and_steps():
    pytest.importorskip("bitsandbytes")
    p = nn.Parameter(torch.zeros(4096))
    opt = build_optimizer([p], optimizer="adamw_8bit", learning_rate=1e-2)
    p.grad = torch.ones(4096)
    opt.step()
    assert opt.state[p]["state1"].dtype == torch.uint8  # 8-bit moments
    torch.testing.assert_close(p.data, torch.full((4096,), -1e-2), rtol=0, atol=1e-4)


def test_hybrid_dispatches_by_phase_and_scales_zo_lr_with_the_scheduler():
    p = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = build_optimizer([p], optimizer="hybrid", hybrid_fo_optimizer="sgd", hybrid_zo_optimizer="zo_sgd",
                          learning_rate=0.1, zo_learning_rate=0.01, hybrid_fo_steps=1)  # fmt: skip
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    p.grad = torch.ones(4, dtype=torch.float64)
    opt.step()  # FO: SGD, lr 0.1
    torch.testing.assert_close(p.data, torch.full((4,), -0.1, dtype=torch.float64))
    sched.step()  # lr 0.05 for FO, hence 0.005 for ZO
    assert opt.begin_step(1) == "zo" and opt.phase == "zo"  # the optimizer's own schedule: 1 FO step, 1 ZO step
    opt.zo.record(7, 2.0)
    z = opt.zo.directions.direction(7, 0)
    opt.step()  # the gradient is ignored in a ZO step
    torch.testing.assert_close(p.data, torch.full((4,), -0.1, dtype=torch.float64) - 0.005 * 2.0 * z)
    state = opt.state_dict()
    assert state["phase"] == "zo" and set(state) >= {"fo", "zo"}
    with pytest.raises(AttributeError):  # nothing sets the phase from outside: it follows the schedule
        opt.phase = "fo"
    assert opt.begin_step(2) == "fo"


def test_hybrid_state_dict_round_trip():
    p = nn.Parameter(torch.randn(3, dtype=torch.float64))
    opt = build_optimizer([p], optimizer="hybrid", learning_rate=0.1, hybrid_fo_steps=1)
    p.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    opt.begin_step(1)
    opt.zo.record(1, 0.5)
    opt.step()
    saved = opt.state_dict()
    q = nn.Parameter(p.detach().clone())
    other = build_optimizer([q], optimizer="hybrid", learning_rate=0.1)
    other.load_state_dict(saved)
    assert other.phase == "zo"
    torch.testing.assert_close(other.zo.state[q]["exp_avg"], opt.zo.state[p]["exp_avg"])
    torch.testing.assert_close(other.fo.state[q]["exp_avg_sq"], opt.fo.state[p]["exp_avg_sq"])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"optimizer": "lion"}, "optimizer='lion' is unknown; choose one of: adamw, sgd"),
        ({"zo_num_directions": 0}, "zo_num_directions=0 must be an integer >= 1"),
        ({"zo_mu": 0.0}, "zo_mu=0.0 must be"),
        ({"zo_mu": -1e-3}, "zo_mu=-0.001 must be"),
        ({"optimizer": "hybrid", "hybrid_fo_steps": 0}, "hybrid_fo_steps=0 must be an integer >= 1"),
        ({"hybrid_zo_steps": -1}, "hybrid_zo_steps=-1 must be"),
        ({"qadam_bits": 0}, "qadam_bits=0 must be an integer in 1..8"),
        ({"qadam_bits": 9}, "qadam_bits=9 must be an integer in 1..8"),
        ({"optimizer": "adazo", "fp16": True}, "fp16=True cannot be combined with optimizer='adazo'"),
        ({"optimizer": "hybrid", "fp16": True}, "backward to loss-scale; set fp16=False"),
        ({"zo_direction": "uniform"}, "zo_direction='uniform': choose one of sphere, gaussian, rademacher"),
        ({"optimizer": "hybrid", "hybrid_fo_steps": 20, "max_steps": 50}, "use max_steps=40"),
    ],
)
def test_bad_input_fails_in_one_line_naming_the_field(fields, message):
    with pytest.raises(ValueError, match="^[^\n]*$") as err:
        validate_optimizer_args(**fields)
    assert message in str(err.value)


ZERO = {"train_batch_size": "auto"}


@pytest.mark.parametrize(
    ("deepspeed", "message"),
    [
        ({**ZERO, "zero_optimization": {"stage": 2}, "fp16": {"enabled": True}}, "use bf16, not fp16"),
        ({**ZERO, "zero_optimization": {"stage": 1}, "bf16": {"enabled": True}}, "stage to 2 or 3"),
        ({**ZERO, "zero_optimization": {"stage": 0}, "bf16": {"enabled": True}}, "stage to 2 or 3"),
        ({**ZERO, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}, "offload_optimizer"),
    ],
)
def test_unsupported_deepspeed_setups_fail_before_training(deepspeed, message):
    with pytest.raises(ValueError, match="^[^\n]*$") as err:
        validate_optimizer_args(optimizer="hybrid", deepspeed=deepspeed)
    assert message in str(err.value)
    validate_optimizer_args(optimizer="adamw", deepspeed=deepspeed)  # first order only: DeepSpeed's business


def test_exact_restore_is_refused_under_zero3_only():
    zero3 = {**ZERO, "zero_optimization": {"stage": 3}}
    with pytest.raises(ValueError, match="unset it under ZeRO-3"):
        validate_optimizer_args(optimizer="adazo", deepspeed=zero3, zo_exact_restore=True)
    validate_optimizer_args(
        optimizer="adazo", deepspeed={**ZERO, "zero_optimization": {"stage": 2}}, zo_exact_restore=True
    )


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_bf16_passes_validation_and_master_options_are_refused_under_it(stage):
    bf16 = {**ZERO, "zero_optimization": {"stage": stage}, "bf16": {"enabled": True}}
    validate_optimizer_args(optimizer="hybrid", deepspeed=bf16)
    with pytest.raises(ValueError, match="duplicates the fp32 masters DeepSpeed ZeRO keeps"):
        validate_optimizer_args(optimizer="hybrid", deepspeed=bf16, zo_master_weights=True)


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_fp32_passes_validation(tmp_path, stage):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({**ZERO, "zero_optimization": {"stage": stage}, "bf16": {"enabled": "auto"}}))
    assert validate_optimizer_args(optimizer="adazo", deepspeed=str(path)).uses_zeroth_order


def test_valid_corner_cases_pass_validation():
    assert validate_optimizer_args(optimizer="hybrid", hybrid_zo_steps=0, fp16=True).hybrid_schedule == (20, 0)
    assert validate_optimizer_args(optimizer="hybrid", hybrid_fo_steps=5, max_steps=30).hybrid_schedule == (5, 5)


def test_a_trl_style_config_with_the_optimizer_fields_is_checked_when_the_optimizer_is_built(tmp_path):
    from dataclasses import dataclass

    from transformers import TrainingArguments

    from hf_unlearn.optim import OptimizerArguments

    @dataclass
    class MixedConfig(TrainingArguments, OptimizerArguments):  # TrainingArguments' __post_init__ runs, not ours
        pass

    args = MixedConfig(output_dir=str(tmp_path), optimizer="adazo", zo_mu=-1.0, use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="zo_mu=-1.0 must be a finite number > 0"):
        build_optimizer(torch.nn.Linear(2, 2), args)


def test_zo_optimizer_built_directly_checks_with_the_config_gates_wording():
    with pytest.raises(ValueError, match=r"^zo_mu=-0.001 must be a finite number > 0 \(try 1e-3\)$"):
        build_optimizer(nn.Linear(2, 2), optimizer="zo_sgd", zo_mu=-1e-3)
    with pytest.raises(ValueError, match=r"^zo_mu=-0.001 must be a finite number > 0 \(try 1e-3\)$"):
        ZOSGD(nn.Linear(2, 2).parameters(), lr=0.1, mu=-1e-3)
