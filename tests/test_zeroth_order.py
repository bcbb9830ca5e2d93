"""Zeroth-order engine (seeded directions, finite differences) and ZerothOrderMixin on a tiny Llama."""

import math

import pytest
import torch
from torch import nn

from hf_unlearn.optim import ZOSGD, SeededDirections, build_optimizer, derive_seed
from hf_unlearn.optim.zo import projected_gradients
from tests.scripts.optim_fixtures import RandomTokens, ZOTrainer, tiny_llama, training_args, weights


def _params(*shapes, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]


def test_sphere_directions_have_norm_sqrt_d():
    params = _params((3, 4), (5,), (2, 2, 2))
    engine = SeededDirections(params, "sphere")
    assert engine.dim == 25
    for seed in range(5):
        sq = sum(float(engine.direction(seed, i).double().pow(2).sum()) for i in range(3))
        assert math.sqrt(sq) == pytest.approx(5.0, rel=1e-6)


def test_directions_are_regenerated_from_a_private_generator():
    params = _params((4, 3), (6,))
    global_state = torch.get_rng_state()
    for kind in ("sphere", "gaussian", "rademacher"):
        engine = SeededDirections(params, kind)
        first = engine.direction(7, 0)
        assert torch.equal(first, engine.direction(7, 0))
        assert not torch.equal(first, engine.direction(8, 0))
        assert not torch.equal(engine.direction(7, 1)[:6], engine.direction(7, 0).flatten()[:6])
    rademacher = SeededDirections(params, "rademacher").direction(3, 0)
    assert set(rademacher.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG was never touched


def _quadratic(d=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(d, d, generator=gen, dtype=torch.float64)
    a = m @ m.T + torch.eye(d, dtype=torch.float64)
    b = torch.randn(d, generator=gen, dtype=torch.float64)
    theta = nn.Parameter(torch.randn(d, generator=gen, dtype=torch.float64))

    def f():
        return 0.5 * theta @ a @ theta + b @ theta

    return theta, f, (a @ theta + b).detach()


@pytest.mark.parametrize("kind", ["sphere", "gaussian", "rademacher"])
def test_zo_estimate_is_unbiased_on_a_quadratic(kind):
    theta, f, grad = _quadratic()
    opt = ZOSGD([theta], lr=1.0, mu=1e-2, direction=kind, difference="forward")
    samples = []
    for seed in range(3000):
        c, _ = projected_gradients(opt, f, [seed])
        samples.append(c[0] * opt.directions.direction(seed, 0))
        opt.directions.release()
    samples = torch.stack(samples)
    standard_error = samples.std(0) / math.sqrt(len(samples))
    assert float(standard_error.max()) < 0.1 * float(grad.norm())  # the test has the power to see a bias
    assert torch.all((samples.mean(0) - grad).abs() <= 4 * standard_error)


def test_central_differences_are_exact_on_linear_and_quadratic_functions():
    theta, f, grad = _quadratic()
    opt = ZOSGD([theta], lr=0.5, mu=1e-3, num_directions=3, direction="sphere")
    seeds = [11, 12, 13]
    c, loss = projected_gradients(opt, f, seeds)
    # central differences of a quadratic are exactly the directional derivative zᵀ∇f
    expected = torch.stack([opt.directions.direction(s, 0) @ grad for s in seeds])
    torch.testing.assert_close(c, expected, rtol=1e-8, atol=1e-9)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0], dtype=torch.float64)
    c_linear, _ = projected_gradients(opt, lambda: w @ theta, seeds)
    torch.testing.assert_close(c_linear, torch.stack([opt.directions.direction(s, 0) @ w for s in seeds]))
    # the loss reported with central differences is the mean of f(θ±μz) = f(θ) + O(μ²)
    assert float(loss) == pytest.approx(f().item(), abs=1e-4)
    before = theta.detach().clone()
    for s, value in zip(seeds, c_linear.tolist()):
        opt.record(s, value / 3)
    opt.step()
    step = sum(opt.directions.direction(s, 0) * (opt.directions.direction(s, 0) @ w) for s in seeds) / 3
    torch.testing.assert_close(theta.data, before - 0.5 * step)


def test_perturb_and_restore_returns_the_weights_up_to_rounding():
    params = _params((64, 64), (64,))
    before = [p.detach().clone() for p in params]
    opt = ZOSGD(params, lr=1.0, mu=1e-3)
    opt.perturb_(5, 1.0)
    z = [opt.directions.direction(5, i) for i in range(2)]
    for p, b, zi in zip(params, before, z):
        torch.testing.assert_close(p.data, b + 1e-3 * zi)  # the perturbation really is +μz
    opt.perturb_(5, -2.0)
    opt.perturb_(5, 1.0)
    for p, b, zi in zip(params, before, z):
        # three fp32 roundings (+μz, −2μz, +μz), each at most half an ulp of a value ≤ |θ| + |μz|: the weights come
        # back within 1.5·eps·(|θ| + |μz|), and in-place restoring cannot do better without a copy of the weights
        bound = 1.5 * torch.finfo(torch.float32).eps * (b.abs() + 1e-3 * zi.abs()) * (1 + 1e-6)
        assert torch.all((p.data - b).abs() <= bound)
        assert float((p.data != b).float().mean()) < 0.6


@pytest.mark.parametrize("difference", ["central", "forward"])
def test_exact_restore_returns_the_weights_bit_for_bit_in_fp32(difference):
    params = _params((64, 64), (64,))
    before = [p.detach().clone() for p in params]
    opt = ZOSGD(params, lr=1.0, mu=1e-3, difference=difference, exact_restore=True)
    seen = []

    def loss_fn():
        seen.append([p.detach().clone() for p in params])
        return sum((p.double() ** 2).sum() for p in params)

    c, _ = projected_gradients(opt, loss_fn, seeds=[5, 6])
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # bit for bit, every weight
    z = [opt.directions.direction(5, i) for i in range(2)]
    perturbed = seen[0] if difference == "central" else seen[1]  # forward differences evaluate f(θ) first
    for q, b, zi in zip(perturbed, before, z):
        torch.testing.assert_close(q, b + 1e-3 * zi)  # the forward really saw θ+μz
    if difference == "central":
        for q, b, zi in zip(seen[1], before, z):
            torch.testing.assert_close(q, b - 1e-3 * zi)  # and θ−μz
    assert torch.isfinite(c).all() and len(c) == 2


def test_only_trainable_parameters_are_perturbed():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    before = weights(model)
    opt = build_optimizer(model, optimizer="zo_sgd", learning_rate=0.1)
    opt.perturb_(1, 1.0)
    after = weights(model)
    assert torch.equal(after["0.weight"], before["0.weight"]) and torch.equal(after["0.bias"], before["0.bias"])
    assert not torch.equal(after["1.weight"], before["1.weight"])


class _AscentTrainer(ZOTrainer):
    """Gradient ascent (negated mean token CE) that records the mode of every loss evaluation."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.calls.append((model.training, torch.is_grad_enabled()))
        return -model(**inputs).loss


def test_zo_step_matches_a_hand_computed_update(tmp_path):
    model, reference = tiny_llama(), tiny_llama()
    data = RandomTokens(n=4)
    args = training_args(
        tmp_path, optimizer="zo_sgd", max_steps=1, learning_rate=0.1, zo_mu=1e-3, train_sampling_strategy="sequential"
    )
    trainer = _AscentTrainer(model=model, args=args, train_dataset=data)
    trainer.calls = []
    trainer.train()
    assert trainer.calls == [(False, False), (False, False)]  # 2 forwards, eval mode, no autograd
    assert all(p.grad is None for p in model.parameters())

    # by hand, on a copy: f(θ±μz) with the seed the mixin derives from (seed, global step 0, direction 0)
    ref_opt = build_optimizer(reference, args, decay_parameter_names=trainer.get_decay_parameter_names(reference))
    batch = {k: torch.stack([data[i][k] for i in range(4)]) for k in ("input_ids", "attention_mask", "labels")}
    reference.eval()
    seed = derive_seed(0, 0, 0)
    with torch.no_grad():
        ref_opt.perturb_(seed, 1.0)
        plus = -reference(**batch).loss.double()
        ref_opt.perturb_(seed, -2.0)
        minus = -reference(**batch).loss.double()
        ref_opt.perturb_(seed, 1.0)
    c = float((plus - minus) / 2e-3)
    assert trainer.optimizer.optimizer.last_projected_grad == pytest.approx(c, rel=1e-9)
    start = weights(tiny_llama())
    for index, p in enumerate(ref_opt.directions.params):
        name = next(n for n, q in reference.named_parameters() if q is p)
        expected = start[name] - 0.1 * c * ref_opt.directions.direction(seed, index)
        torch.testing.assert_close(dict(model.named_parameters())[name].data, expected, rtol=0, atol=1e-6)


class _Float64LossTrainer(ZOTrainer):
    """Token cross-entropy in fp64 (the model's own loss upcasts to fp32 only), normalised one of two ways."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        labels = inputs["labels"][:, 1:]
        nll = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), reduction="sum")
        if self.loss_is_scaled_for_ga:
            return nll / num_items_in_batch  # already normalised over the accumulation window
        return nll / labels.numel()  # per micro-batch mean: the Trainer's rule divides it by the accumulation steps


@pytest.mark.parametrize("scaled_for_ga", [False, True])
def test_gradient_accumulation_equals_the_large_batch(tmp_path, scaled_for_ga):
    runs = {}
    for bs, ga in [(4, 1), (2, 2)]:
        model = tiny_llama().double()
        args = training_args(
            tmp_path / f"{bs}", optimizer="adazo", max_steps=3, per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga, learning_rate=1e-3,
        )  # fmt: skip
        trainer = _Float64LossTrainer(model=model, args=args, train_dataset=RandomTokens(n=12))
        trainer.loss_is_scaled_for_ga = scaled_for_ga
        trainer.train()
        runs[ga] = (weights(model), [log["loss"] for log in trainer.state.log_history if "loss" in log])
    assert runs[1][0].keys() == runs[2][0].keys()
    for name in runs[1][0]:
        torch.testing.assert_close(runs[2][0][name], runs[1][0][name], rtol=0, atol=1e-10)
    assert runs[2][1] == pytest.approx(runs[1][1], rel=1e-6)
    assert runs[1][0]["lm_head.weight"].ne(tiny_llama().double().lm_head.weight).any()  # the weights did move


def test_lr_scheduler_keeps_stepping_through_zo_steps(tmp_path):
    args = training_args(tmp_path, optimizer="zo_adam", max_steps=4, learning_rate=1e-2, lr_scheduler_type="linear")
    trainer = ZOTrainer(model=tiny_llama(), args=args, train_dataset=RandomTokens())
    trainer.train()
    lrs = [log["learning_rate"] for log in trainer.state.log_history if "learning_rate" in log]
    assert lrs == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])
    assert trainer.optimizer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


def test_the_mixin_composes_with_trl_sft_trainer(tmp_path):
    from dataclasses import dataclass

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from hf_unlearn.optim import OptimizerArguments, OptimizerFactoryMixin
    from hf_unlearn.tiny import build_tiny_model, train_tokenizer
    from hf_unlearn.trainers.zeroth_order import ZerothOrderMixin

    @dataclass
    class ZOSFTConfig(SFTConfig, OptimizerArguments):
        pass

    class ZOSFTTrainer(ZerothOrderMixin, OptimizerFactoryMixin, SFTTrainer):
        pass

    texts = ["the cat sat on the mat", "a dog ran in the park", "birds fly over the sea", "fish swim in the lake"]
    tokenizer = train_tokenizer(texts, vocab_size=100)
    model = build_tiny_model(tokenizer, "llama")
    before = weights(model)
    args = ZOSFTConfig(
        output_dir=str(tmp_path), optimizer="adazo", max_steps=1, per_device_train_batch_size=4, report_to="none",
        use_cpu=True, learning_rate=1e-3, lr_scheduler_type="constant", disable_tqdm=True, save_strategy="no",
    )  # fmt: skip
    trainer = ZOSFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}), processing_class=tokenizer
    )
    trainer.train()
    assert all(p.grad is None for p in model.parameters())
    # bias-corrected AdaZO's first step moves every trainable weight by exactly lr
    for name, value in weights(model).items():
        torch.testing.assert_close((value - before[name]).abs(), torch.full_like(value, 1e-3), rtol=1e-3, atol=1e-7)


def test_deepspeed_from_an_accelerate_config_is_checked_when_the_optimizer_is_built(tmp_path, monkeypatch):
    """`accelerate launch --config_file zero2.yaml` never sets args.deepspeed: the engine's own config is checked."""
    from types import SimpleNamespace

    from accelerate.state import AcceleratorState

    trainer = ZOTrainer(
        model=tiny_llama(), args=training_args(tmp_path, optimizer="adazo"), train_dataset=RandomTokens(n=4)
    )
    plugin = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": 2}, "fp16": {"enabled": True}})
    monkeypatch.setattr(AcceleratorState, "deepspeed_plugin", property(lambda self: plugin), raising=False)
    with pytest.raises(ValueError, match="no backward to loss-scale: use bf16, not fp16"):
        trainer.create_optimizer()
    # bf16 needs the fp32 master partitions of ZeRO-2/3
    plugin.deepspeed_config.update({"fp16": {"enabled": False}, "bf16": {"enabled": True}})
    plugin.deepspeed_config["zero_optimization"]["stage"] = 1
    with pytest.raises(ValueError, match="set zero_optimization.stage to 2 or 3"):
        trainer.create_optimizer()
    plugin.deepspeed_config["zero_optimization"]["stage"] = 2
    assert type(trainer.create_optimizer()).__name__ == "AdaZO"


def test_rademacher_directions_are_fair_independent_signs():
    # 31 signs come from each random word: sizes around multiples of 31 exercise the word-aligned and tail paths
    params = _params((5,), (31,), (2, 33), (4000,))
    engine = SeededDirections(params, "rademacher")
    draws = torch.stack([engine.direction(seed, 0) for seed in range(4000)]).double()  # 4000 draws of a 5-vector
    assert set(draws.unique().tolist()) == {-1.0, 1.0}
    n = len(draws)
    assert float(draws.mean(0).abs().max()) < 4 / math.sqrt(n)  # E[z] = 0
    second = draws.T @ draws / n  # E[z zᵀ] = I: unit diagonal exactly, off-diagonal within sampling error
    assert torch.equal(second.diagonal(), torch.ones(5, dtype=torch.float64))
    assert float((second - torch.eye(5, dtype=torch.float64)).abs().max()) < 4 / math.sqrt(n)
    assert torch.equal(draws.pow(4).mean(0), torch.ones(5, dtype=torch.float64))  # E[z⁴] = 1 (Gaussian: 3)
    # every one of the 31 bit positions of a random word is a fair sign (none stuck, e.g. int32's top bit)
    long = torch.stack([engine.direction(seed, 3)[: 31 * 129].view(129, 31) for seed in range(40)]).double()
    assert float(long.mean((0, 1)).abs().max()) < 4 / math.sqrt(40 * 129)
    # neighbouring signs of one word are uncorrelated
    assert abs(float((long[..., 1:] * long[..., :-1]).mean())) < 4 / math.sqrt(40 * 129 * 30)
    # the same signs whatever the dtype z is drawn in (fp32 writes the bits in place, others convert)
    for dtype in (torch.float64, torch.bfloat16):
        other = SeededDirections(_params((5,), (31,), (2, 33), (4000,), dtype=dtype), "rademacher")
        for i in range(4):
            assert torch.equal(other.direction(9, i).float(), engine.direction(9, i))


def test_rademacher_estimates_have_less_variance_than_gaussian_ones():
    """Per weight, Var[(zᵀg) z_i] = ‖g‖² − g_i² for ±1 signs and ‖g‖² + g_i² for a Gaussian (the docs' figures)."""
    g = torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64)
    expected = {"rademacher": g.pow(2).sum() - g.pow(2), "gaussian": g.pow(2).sum() + g.pow(2)}
    theta = _params((3,), dtype=torch.float64)
    for kind, variance in expected.items():
        engine = SeededDirections(theta, kind)
        z = torch.stack([engine.direction(seed, 0) for seed in range(6000)])
        estimates = (z @ g).unsqueeze(1) * z
        torch.testing.assert_close(estimates.mean(0), g, rtol=0, atol=0.2)  # unbiased
        torch.testing.assert_close(estimates.var(0), variance, rtol=0.12, atol=0)


def _bf16_rounded(engine: SeededDirections, seed: int, kind: str) -> list[torch.Tensor]:
    """z under zo_cache_directions, by hand: the raw sample rounded to bf16, the sphere normalised after rounding."""
    raw = [engine.sample(seed, i).to(torch.bfloat16).double() for i in range(len(engine.params))]
    if kind != "sphere":
        return raw
    norm = math.sqrt(sum(float(r.pow(2).sum()) for r in raw))
    return [r * math.sqrt(engine.dim) / norm for r in raw]


@pytest.mark.parametrize("kind", ["sphere", "gaussian", "rademacher"])
def test_cached_directions_are_the_bf16_sample_and_are_drawn_once(kind, monkeypatch):
    params = _params((6, 7), (40,))
    cached, plain = SeededDirections(params, kind, cache=True), SeededDirections(params, kind)
    draws = []
    original = SeededDirections._generator
    monkeypatch.setattr(SeededDirections, "_generator", lambda self, device: draws.append(1) or original(self, device))
    first = [cached.direction(3, i) for i in range(2)]
    expected = _bf16_rounded(plain, 3, kind)
    draws.clear()
    for _ in range(3):  # every later sweep reads the cache: the same values, no generation
        assert all(torch.equal(cached.direction(3, i), z) for i, z in enumerate(first))
        cached.perturb_(3, 1e-3)
    assert draws == []
    for z, want in zip(first, expected):
        torch.testing.assert_close(z.double(), want, rtol=1e-6, atol=0)
    if kind == "rademacher":  # ±1 is exact in bf16: caching changes nothing
        assert all(torch.equal(z, plain.direction(3, i)) for i, z in enumerate(first))
    cached.release()  # the next use of the seed draws again (into the kept buffers)
    draws.clear()
    assert all(torch.equal(cached.direction(3, i), z) for i, z in enumerate(first)) and len(draws) == 2


@pytest.mark.parametrize(
    ("kind", "cache"), [("sphere", False), ("gaussian", False), ("rademacher", False), ("sphere", True),
                        ("rademacher", True)],
)  # fmt: skip
def test_each_direction_variant_steps_by_the_hand_computed_update(tmp_path, kind, cache):
    model, reference = tiny_llama(), tiny_llama()
    data = RandomTokens(n=4)
    args = training_args(
        tmp_path, optimizer="zo_sgd", max_steps=1, learning_rate=0.1, zo_mu=1e-3, train_sampling_strategy="sequential",
        zo_direction=kind, zo_cache_directions=cache,
    )  # fmt: skip
    trainer = _AscentTrainer(model=model, args=args, train_dataset=data)
    trainer.calls = []
    trainer.train()
    assert trainer.optimizer.optimizer.settings.cache_directions is cache

    # by hand: z from an uncached engine's raw samples (bf16-rounded and renormalised when cached), θ±μz written
    # into a copy, c = (f(θ+μz) − f(θ−μz)) / 2μ, θ ← θ − lr·c·z
    name_of = {id(p): n for n, p in model.named_parameters()}
    names = [name_of[id(p)] for p in trainer.optimizer.optimizer.directions.params]  # z's tensor order
    params = [dict(reference.named_parameters())[n] for n in names]
    plain = SeededDirections(params, kind)
    seed = derive_seed(0, 0, 0)
    if cache:
        z = [t.float().view_as(p) for t, p in zip(_bf16_rounded(plain, seed, kind), params)]
    else:
        z = [plain.direction(seed, i) for i in range(len(params))]
    batch = {k: torch.stack([data[i][k] for i in range(4)]) for k in ("input_ids", "attention_mask", "labels")}
    start = [p.detach().clone() for p in params]
    reference.eval()
    losses = []
    with torch.no_grad():
        for sign in (1.0, -1.0):
            for p, s, zi in zip(params, start, z):
                p.copy_(s + sign * 1e-3 * zi)
            losses.append(-reference(**batch).loss.double())
    c = float((losses[0] - losses[1]) / 2e-3)
    assert trainer.optimizer.optimizer.last_projected_grad == pytest.approx(c, rel=1e-5)
    trained = dict(model.named_parameters())
    for name, s, zi in zip(names, start, z):
        torch.testing.assert_close(trained[name].data, s - 0.1 * c * zi, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind", ["sphere", "rademacher"])
@pytest.mark.parametrize("cache", [False, True])
def test_exact_restore_is_bit_for_bit_with_every_direction_variant(kind, cache):
    params = _params((64, 64), (64,))
    before = [p.detach().clone() for p in params]
    opt = ZOSGD(params, lr=1.0, mu=1e-3, direction=kind, cache_directions=cache, exact_restore=True)
    seen = []

    def loss_fn():
        seen.append([p.detach().clone() for p in params])
        return sum((p.double() ** 2).sum() for p in params)

    projected_gradients(opt, loss_fn, seeds=[5])
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # bit for bit, every weight
    z = [opt.directions.direction(5, i) for i in range(2)]
    for sign, snapshot in zip((1.0, -1.0), seen):
        for q, b, zi in zip(snapshot, before, z):
            torch.testing.assert_close(q, b + sign * 1e-3 * zi)  # the forwards saw θ±μz along the step's z


def test_zo_settings_are_one_validated_object_built_from_the_config():
    from hf_unlearn.optim import OptimizerArguments
    from hf_unlearn.optim.zo import ZOSettings

    args = OptimizerArguments(optimizer="zo_sgd", zo_mu=2e-3, zo_direction="rademacher", zo_cache_directions=True)
    args.seed = 5
    settings = ZOSettings.from_args(args)
    assert settings == ZOSettings(mu=2e-3, direction="rademacher", cache_directions=True, seed=5)
    opt = ZOSGD(_params((3,)), lr=0.1, settings=settings)
    assert opt.settings is settings and opt.directions.cache and opt.directions.kind == "rademacher"
    with pytest.raises(ValueError, match="zo_mu=0 must be a finite number > 0"):
        ZOSettings(mu=0)
    with pytest.raises(ValueError, match="exclude each other"):
        ZOSGD(_params((3,)), lr=0.1, master_weights=True, stochastic_rounding=True)
    with pytest.raises(TypeError, match="either as settings= or as keywords"):
        ZOSGD(_params((3,)), lr=0.1, settings=settings, mu=1e-3)
