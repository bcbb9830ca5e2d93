"""Unlearning objectives: losses against hand computations, short training runs, NPO caching, accumulation, LoRA."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerState

from hf_unlearn.benchmarks.synthetic import make_synthetic_tofu
from hf_unlearn.data import DataCollatorForUnlearning, ForgetRetainDataset, QADataset, tokenize_qa
from hf_unlearn.tiny import build_tiny_model, train_tokenizer
from hf_unlearn.trainers import (
    CEUConfig,
    GradAscentConfig,
    GradDiffConfig,
    IdkDPOConfig,
    NPOConfig,
    RMUConfig,
    SatImpConfig,
    SimNPOConfig,
    UNDIALConfig,
    WGAConfig,
    get_method,
)
from hf_unlearn.trainers.callbacks import PairingEpochCallback
from tests.helpers import memorise, one_thread


FORGET_SIZE = 4


@pytest.fixture(scope="module", autouse=True)
def module_one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def qa_rows():
    rows = make_synthetic_tofu(num_authors=4, qa_per_author=4)["full"]
    return {"forget": rows[-FORGET_SIZE:], "retain": rows[:-FORGET_SIZE]}


@pytest.fixture(scope="module")
def tokenizer(qa_rows):
    rows = qa_rows["forget"] + qa_rows["retain"]
    return train_tokenizer([r["question"] + " " + r["answer"] for r in rows], vocab_size=300)


@pytest.fixture(scope="module")
def memorised_path(tmp_path_factory, tokenizer, qa_rows):
    """A tiny llama fine-tuned until it reproduces every forget and retain answer (mean answer NLL < 0.01)."""
    model = memorise(build_tiny_model(tokenizer, "llama"), tokenizer, qa_rows["forget"] + qa_rows["retain"])
    path = tmp_path_factory.mktemp("memorised")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def datasets(qa_rows, tokenizer):
    forget = QADataset(qa_rows["forget"], tokenizer)
    retain = QADataset(qa_rows["retain"], tokenizer)
    return {"forget": forget, "retain": retain, "pairs": ForgetRetainDataset(forget, retain, seed=0)}


def config(cls, tmp_path, **overrides):
    defaults = {
        "output_dir": str(tmp_path / "out"),
        "report_to": "none",
        "save_strategy": "no",
        "per_device_train_batch_size": FORGET_SIZE,
        "max_steps": 20,
        "learning_rate": 1e-3,
        "weight_decay": 0.0,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "seed": 0,
        "use_cpu": True,
        "disable_tqdm": True,
    }
    return cls(**{**defaults, **overrides})


# ---- hand-computed references: one unpadded example at a time, float64 log-softmax, explicit indexing -------------


def answer_log_prob(model, example) -> tuple[float, int]:
    """(summed log-prob of the labelled tokens, their count) for one tokenised example."""
    ids = torch.tensor([example["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    total, count = 0.0, 0
    for t in range(1, len(example["input_ids"])):
        if example["labels"][t] != -100:
            total += logp[t - 1, example["input_ids"][t]].item()
            count += 1
    return total, count


def mean_token_nll(model, examples) -> float:
    stats = [answer_log_prob(model, e) for e in examples]
    return -sum(s for s, _ in stats) / sum(n for _, n in stats)


def token_kl(model, ref, examples) -> float:
    total, count = 0.0, 0
    for e in examples:
        ids = torch.tensor([e["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            ref_logp = torch.log_softmax(ref(input_ids=ids).logits[0].double(), -1)
        for t in range(1, len(e["input_ids"])):
            if e["labels"][t] != -100:
                total += (logp[t - 1].exp() * (logp[t - 1] - ref_logp[t - 1])).sum().item()
                count += 1
    return total / count


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def layer_output(model, example, layer: int) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([example["input_ids"]]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0].double()  # hidden_states[0] is the embedding output


def perturbed_model(path):
    """The memorised model moved away from its reference, so θ ≠ ref in every reference-relative loss."""
    model = AutoModelForCausalLM.from_pretrained(path)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


FORGET_IDS, RETAIN_IDS = [0, 1, 3], [2, 5, 7]  # unequal answer lengths, so padding and per-token means matter


def fixed_batch(datasets, tokenizer):
    forget = [{**datasets["forget"][i], "index": i} for i in FORGET_IDS]
    retain = [datasets["retain"][i] for i in RETAIN_IDS]
    return (
        forget,
        retain,
        DataCollatorForUnlearning(tokenizer)([{"forget": f, "retain": r} for f, r in zip(forget, retain)]),
    )


def expected_loss(method, args, model, ref, forget, retain, trainer, forget_rows) -> float:
    if method in ("grad_ascent", "grad_diff"):
        forget_term = -mean_token_nll(model, forget)
    elif method == "npo":
        ratios = [answer_log_prob(model, e)[0] - answer_log_prob(ref, e)[0] for e in forget]
        forget_term = -(2 / args.beta) * sum(log_sigmoid(-args.beta * r) for r in ratios) / len(ratios)
    elif method == "simnpo":
        means = [s / n for s, n in (answer_log_prob(model, e) for e in forget)]
        forget_term = -(2 / args.beta) * sum(log_sigmoid(-args.beta * m - args.margin) for m in means) / len(means)
    elif method == "idk_dpo":
        margins = []
        for e, row in zip(forget, (forget_rows[i] for i in FORGET_IDS)):
            idk = args.idk_answers[trainer.refusals.choice(e["index"])]
            preferred = tokenize_qa(trainer.processing_class, row["question"], idk)
            chosen = answer_log_prob(model, preferred)[0] - answer_log_prob(ref, preferred)[0]
            rejected = answer_log_prob(model, e)[0] - answer_log_prob(ref, e)[0]
            margins.append(chosen - rejected)
        forget_term = -sum(log_sigmoid(args.beta * m) for m in margins) / len(margins)
    elif method == "rmu":
        generator = torch.Generator().manual_seed(args.seed)
        u = torch.rand(model.config.hidden_size, generator=generator).double()
        target = args.steering_coeff * u / u.norm()
        errors = [((layer_output(model, e, args.layer) - target) ** 2) for e in forget]
        forget_term = sum(x.sum().item() for x in errors) / sum(x.numel() for x in errors)
        errors = [(layer_output(model, e, args.layer) - layer_output(ref, e, args.layer)) ** 2 for e in retain]
        retain_term = sum(x.sum().item() for x in errors) / sum(x.numel() for x in errors)
        return args.gamma * forget_term + args.alpha * retain_term
    if args.alpha == 0:
        return args.gamma * forget_term
    retain_term = mean_token_nll(model, retain) if args.retain_loss == "nll" else token_kl(model, ref, retain)
    return args.gamma * forget_term + args.alpha * retain_term


LOSS_CASES = [
    ("grad_ascent", GradAscentConfig, {"gamma": 1.5}),
    ("grad_diff", GradDiffConfig, {"gamma": 1.0, "alpha": 0.7}),
    ("grad_diff", GradDiffConfig, {"alpha": 2.0, "retain_loss": "kl"}),
    ("npo", NPOConfig, {"beta": 0.5, "alpha": 0.3, "ref_log_probs": "cached"}),
    ("npo", NPOConfig, {"beta": 0.5, "alpha": 0.0, "ref_log_probs": "online"}),
    ("simnpo", SimNPOConfig, {"beta": 2.5, "margin": 0.1, "alpha": 0.5}),
    ("rmu", RMUConfig, {"layer": 0, "trainable_layers": [0], "steering_coeff": 3.0, "alpha": 5.0}),
    ("idk_dpo", IdkDPOConfig, {"beta": 0.3, "alpha": 0.4}),
]


@pytest.mark.parametrize("method,config_cls,overrides", LOSS_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_loss_matches_hand_computation(
    method, config_cls, overrides, tmp_path, memorised_path, datasets, tokenizer, qa_rows
):
    if overrides.get("ref_log_probs") == "cached":
        # cached NPO's default reference is the policy itself (ratio 0 here); name one that differs from it
        overrides = {**overrides, "ref_model_path": memorised_path}
    args = config(config_cls, tmp_path, **overrides)
    model = perturbed_model(memorised_path)
    trainer = get_method(method)(model, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
    forget, retain, batch = fixed_batch(datasets, tokenizer)
    ref = AutoModelForCausalLM.from_pretrained(memorised_path).eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    assert loss == pytest.approx(
        expected_loss(method, args, model, ref, forget, retain, trainer, qa_rows["forget"]), abs=1e-5
    )


# ---- 20 steps on the memorising model --------------------------------------------------------------------------

# case: (config class, overrides, minimum rise of the forget answer NLL, bound on the retain answer NLL after 20 steps;
# the memorised model starts with both NLLs below 0.01). Gradient ascent has no retain term: its bound only says the
# retain answers are not destroyed as fast as the forget answers. RMU's bound is loose too: forget and retain
# questions share templates here, so a 2-layer model cannot steer one without moving the other much.
TRAIN_CASES = {
    "grad_ascent": (GradAscentConfig, {"learning_rate": 3e-4}, 1.0, 2.0),
    "grad_diff": (GradDiffConfig, {"learning_rate": 5e-4}, 1.0, 0.5),
    "grad_diff_kl": (GradDiffConfig, {"learning_rate": 5e-4, "retain_loss": "kl"}, 1.0, 0.5),
    "npo": (NPOConfig, {"learning_rate": 2e-3, "beta": 0.1}, 1.0, 0.5),
    "simnpo": (SimNPOConfig, {"learning_rate": 2e-3}, 1.0, 0.5),
    "rmu": (
        RMUConfig,
        {"learning_rate": 1e-2, "layer": 0, "trainable_layers": [0], "steering_coeff": 20.0, "alpha": 1.0},
        1.0,
        1.5,
    ),
    "idk_dpo": (IdkDPOConfig, {"learning_rate": 7e-3}, 1.0, 0.5),
    "undial": (UNDIALConfig, {"learning_rate": 5e-3, "alpha": 1.0}, 1.0, 0.5),
    "ce_u": (CEUConfig, {"learning_rate": 5e-3, "alpha": 1.0}, 1.0, 0.5),
    "satimp": (SatImpConfig, {"learning_rate": 1e-2, "alpha": 1.0}, 1.0, 0.5),
    "wga": (WGAConfig, {"learning_rate": 5e-3}, 1.0, 0.5),
}


def weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_twenty_steps_forget_and_keep(case, tmp_path, memorised_path, datasets, tokenizer):
    config_cls, overrides, forget_rise, retain_bound = TRAIN_CASES[case]
    args = config(config_cls, tmp_path, **overrides)
    method = case.removesuffix("_kl")
    trainer = get_method(method)(memorised_path, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
    model = trainer.model
    forget_before = mean_token_nll(model, datasets["forget"])
    assert mean_token_nll(model, datasets["retain"]) < 0.01
    before = weights(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if method == "rmu":
        assert trainable == {"model.layers.0.mlp.down_proj.weight"}
    trainer.train()
    model.eval()
    forget_after = mean_token_nll(model, datasets["forget"])
    retain_after = mean_token_nll(model, datasets["retain"])
    after = weights(model)
    assert [n for n in trainable if torch.equal(before[n], after[n])] == []
    assert [n for n in before if n not in trainable and not torch.equal(before[n], after[n])] == []
    assert forget_after > forget_before + forget_rise
    assert retain_after < retain_bound


def loss_history(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_npo_cached_reference_equals_online(tmp_path, memorised_path, datasets, tokenizer):
    runs = {}
    for mode in ("cached", "online"):
        args = config(NPOConfig, tmp_path / mode, learning_rate=2e-3, alpha=1.0, ref_log_probs=mode, max_steps=8)
        trainer = get_method("npo")(memorised_path, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
        trainer.train()
        runs[mode] = (loss_history(trainer), weights(trainer.model), trainer.ref_cache)
        # with an NLL retain term the cache is all a cached run needs from the reference: its memory is freed
        assert (trainer.ref_model is None) == (mode == "cached")
    (cached_losses, cached_weights, cache), (online_losses, online_weights, no_cache) = runs["cached"], runs["online"]
    assert no_cache is None and cache.shape == (FORGET_SIZE,)
    reference = AutoModelForCausalLM.from_pretrained(memorised_path).eval()
    expected = [answer_log_prob(reference, datasets["forget"][i])[0] for i in range(FORGET_SIZE)]
    assert cache.tolist() == pytest.approx(expected, abs=1e-4)
    assert len(cached_losses) == 8 and cached_losses == pytest.approx(online_losses, abs=1e-5)
    assert max(cached_losses) - min(cached_losses) > 1e-2  # the runs moved: equal trajectories are not both flat
    for name, value in cached_weights.items():
        torch.testing.assert_close(value, online_weights[name], atol=1e-5, rtol=0)


@pytest.mark.parametrize("method,config_cls", [("grad_diff", GradDiffConfig), ("npo", NPOConfig)])
def test_gradient_accumulation_matches_full_batch(method, config_cls, tmp_path, datasets, tokenizer):
    """Batch 4 × 1 step and batch 2 × 2 accumulation see the same examples; unequal answer lengths make the
    per-token mean differ between micro-batches, so only window-wide normalisation gives equal losses. An untrained
    model is used: its per-token NLLs vary far more than a memorising model's, which makes that difference visible."""
    untrained = str(tmp_path / "untrained")
    build_tiny_model(tokenizer, "llama", seed=3).save_pretrained(untrained)
    histories = []
    for batch, accumulation in ((4, 1), (2, 2)):
        args = config(
            config_cls,
            tmp_path / f"{batch}x{accumulation}",
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=5,
            optimizer="sgd",  # Adam's per-weight normalisation would amplify fp32 summation-order noise
            learning_rate=0.05,
        )
        trainer = get_method(method)(untrained, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
        trainer.train()
        histories.append(
            [(e["loss"], e["loss/forget"], e["loss/retain"]) for e in trainer.state.log_history if "loss" in e]
        )
    assert len(histories[0]) == 5
    assert [total for total, forget, retain in histories[0]] == pytest.approx(
        [forget + retain for total, forget, retain in histories[0]], abs=1e-5
    )  # the logged parts are the logged loss split by term (γ = α = 1)
    assert [v for step in histories[0] for v in step] == pytest.approx(
        [v for step in histories[1] for v in step], abs=1e-5
    )


LORA_CASES = {
    "grad_ascent": (GradAscentConfig, {}),
    "grad_diff": (GradDiffConfig, {"retain_loss": "kl"}),
    "npo": (NPOConfig, {}),
    "simnpo": (SimNPOConfig, {}),
    "rmu": (RMUConfig, {"layer": 1, "trainable_layers": [1], "steering_coeff": 20.0, "alpha": 1.0}),
    "idk_dpo": (IdkDPOConfig, {}),
    "undial": (UNDIALConfig, {}),
    "ce_u": (CEUConfig, {}),
    "satimp": (SatImpConfig, {}),
    "wga": (WGAConfig, {"retain_loss": "kl"}),
}


@pytest.mark.parametrize("method", list(LORA_CASES))
def test_lora_trains_adapter_only(method, tmp_path, memorised_path, datasets, tokenizer):
    from peft import LoraConfig

    config_cls, overrides = LORA_CASES[method]
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
    args = config(config_cls, tmp_path, learning_rate=1e-2, max_steps=10 if method == "npo" else 3, **overrides)
    trainer = get_method(method)(
        memorised_path, args, train_dataset=datasets["pairs"], processing_class=tokenizer, peft_config=lora
    )
    assert trainer.ref_model is None  # any reference is the base model with the adapter disabled
    before = weights(trainer.model)
    adapter = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert adapter and all("lora_" in n for n in adapter)
    forget_before = mean_token_nll(trainer.model.eval(), datasets["forget"])
    trainer.train()
    after = weights(trainer.model)
    assert [n for n in adapter if torch.equal(before[n], after[n])] == []
    assert [n for n in before if n not in adapter and not torch.equal(before[n], after[n])] == []
    if method == "npo":
        assert mean_token_nll(trainer.model.eval(), datasets["forget"]) > forget_before + 0.5
        reference = AutoModelForCausalLM.from_pretrained(memorised_path).eval()
        expected = [answer_log_prob(reference, datasets["forget"][i])[0] for i in range(FORGET_SIZE)]
        assert trainer.ref_cache.tolist() == pytest.approx(expected, abs=1e-4)


def test_evaluation_reports_answer_nll(tmp_path, memorised_path, datasets, tokenizer):
    model = perturbed_model(memorised_path)
    args = config(GradDiffConfig, tmp_path, per_device_eval_batch_size=len(datasets["retain"]))
    trainer = get_method("grad_diff")(
        model, args, train_dataset=datasets["pairs"], eval_dataset=datasets["retain"], processing_class=tokenizer
    )
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == pytest.approx(mean_token_nll(model, datasets["retain"]), abs=1e-5)


def test_config_parses_from_command_line(tmp_path):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(RMUConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--layer", "3", "--trainable_layers", "1", "2", "--alpha", "5"]
    )
    assert (args.layer, args.trainable_layers, args.alpha, args.remove_unused_columns) == (3, [1, 2], 5.0, False)


# ---- bad input: one-line errors, before any weight is loaded --------------------------------------------------


@pytest.fixture
def no_weight_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match="known methods: grad_ascent, grad_diff, npo, simnpo, rmu, idk_dpo"):
        get_method("gradient_descent")
    assert get_method("Grad-Diff") is get_method("grad_diff")


def test_rmu_layer_out_of_range(tmp_path, memorised_path, datasets, no_weight_loading):
    args = config(RMUConfig, tmp_path, layer=5, trainable_layers=[4, 5])
    with pytest.raises(ValueError, match=r"layer=5 is out of range: the model has 2 decoder layers \(0..1\)"):
        get_method("rmu")(memorised_path, args, train_dataset=datasets["pairs"])


def test_rmu_pattern_matching_nothing(tmp_path, memorised_path, datasets, no_weight_loading):
    args = config(RMUConfig, tmp_path, layer=1, trainable_layers=[1], trainable_pattern=r"mlp\.no_such_proj")
    with pytest.raises(ValueError, match=r"matches no parameter of layers \[1\]; names: .*mlp.down_proj.weight"):
        get_method("rmu")(memorised_path, args, train_dataset=datasets["pairs"])


@pytest.mark.parametrize(
    "config_cls,field,value,message",
    [
        (NPOConfig, "beta", 0.0, "beta must be > 0, got 0.0"),
        (SimNPOConfig, "beta", -1.0, "beta must be > 0, got -1.0"),
        (IdkDPOConfig, "beta", 0.0, "beta must be > 0, got 0.0"),
        (NPOConfig, "ref_log_probs", "sometimes", "ref_log_probs must be one of cached, online"),
        (GradDiffConfig, "retain_loss", "mse", "retain_loss must be one of nll, kl"),
        (GradDiffConfig, "gamma", 0.0, "gamma .* must be > 0"),
        (GradAscentConfig, "alpha", 1.0, "alpha must be 0 for grad_ascent"),
        (RMUConfig, "trainable_layers", [8], r"trainable_layers must lie in 0..layer=7"),
        (RMUConfig, "retain_loss", "kl", "retain_loss must be 'nll' for rmu"),
    ],
)
def test_bad_hyperparameters(config_cls, field, value, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        config(config_cls, tmp_path, **{field: value})


def test_missing_data(tmp_path, memorised_path, datasets, no_weight_loading):
    with pytest.raises(ValueError, match="npo needs forget data"):
        get_method("npo")(memorised_path, config(NPOConfig, tmp_path), train_dataset=None)
    forget_only = ForgetRetainDataset(datasets["forget"])
    with pytest.raises(ValueError, match="grad_diff with alpha=1.0 needs retain data"):
        get_method("grad_diff")(memorised_path, config(GradDiffConfig, tmp_path), train_dataset=forget_only)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_rmu_finds_layers_and_matches_hand_computation_on_every_architecture(arch, tmp_path, datasets, tokenizer):
    """Decoder layers are found without architecture names (gpt2 calls them `transformer.h`, its MLP `c_proj`)."""
    from hf_unlearn.trainers.rmu import decoder_layers

    path = str(tmp_path / arch)
    build_tiny_model(tokenizer, arch, seed=2).save_pretrained(path)
    args = config(RMUConfig, tmp_path, layer=0, trainable_layers=[0], steering_coeff=4.0, alpha=2.0)
    trainer = get_method("rmu")(path, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
    blocks = trainer.model.transformer.h if arch == "gpt2" else trainer.model.model.layers
    assert decoder_layers(trainer.model) is blocks
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    down = blocks[0].mlp.c_proj.weight if arch == "gpt2" else blocks[0].mlp.down_proj.weight
    assert len(trainable) == 1 and trainable[0] is down
    forget, retain, batch = fixed_batch(datasets, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    assert loss == pytest.approx(expected_loss("rmu", args, model, model, forget, retain, trainer, None), abs=1e-5)


def test_pairing_reshuffles_every_epoch_through_the_trainer(tmp_path, memorised_path, datasets, tokenizer):
    """Under DDP accelerate does not reach the dataset's set_epoch; the trainer's own callback must."""
    pairs = ForgetRetainDataset(datasets["forget"], datasets["retain"], seed=0)
    seen = []
    original_set_epoch = pairs.set_epoch
    pairs.set_epoch = lambda epoch: (seen.append(epoch), original_set_epoch(epoch))
    args = config(GradDiffConfig, tmp_path, max_steps=-1, num_train_epochs=3)
    trainer = get_method("grad_diff")(memorised_path, args, train_dataset=pairs, processing_class=tokenizer)
    callback = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, PairingEpochCallback))
    trainer.train()
    assert {0, 1, 2} <= set(seen) and pairs.epoch == 2
    seen.clear()
    callback.on_epoch_begin(args, TrainerState(epoch=1.9999999999), None)  # float error at an epoch boundary
    callback.on_epoch_begin(args, TrainerState(epoch=2.5), None)  # resumed mid-epoch
    assert seen == [2, 2]


def test_npo_keeps_its_reference_when_the_kl_retain_term_needs_it(tmp_path, memorised_path, datasets, tokenizer):
    args = config(NPOConfig, tmp_path, retain_loss="kl", max_steps=2)
    trainer = get_method("npo")(memorised_path, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
    trainer.train()
    assert trainer.ref_cache is not None and trainer.ref_model is not None
    assert all(math.isfinite(log["loss/retain"]) for log in trainer.state.log_history if "loss/retain" in log)


@pytest.mark.parametrize(
    ("optimizer", "overrides"),
    [
        ("sophia", {"sophia_rho": 0.04}),
        ("signsgd", {}),
        ("qadam", {"qadam_bits": 4}),
        ("adamw_8bit", {}),
    ],
)
def test_each_first_order_grade_unlearns_inside_the_trainer(
    optimizer, overrides, tmp_path, memorised_path, datasets, tokenizer
):
    if optimizer == "adamw_8bit":
        pytest.importorskip("bitsandbytes")
    args = config(NPOConfig, tmp_path, max_steps=4, optimizer=optimizer, learning_rate=1e-2, **overrides)
    trainer = get_method("npo")(memorised_path, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
    before = weights(trainer.model)
    forget_before = mean_token_nll(trainer.model, datasets["forget"])
    trainer.train()
    trainer.model.eval()
    assert type(trainer.optimizer.optimizer).__name__ == {
        "sophia": "SophiaG", "signsgd": "SignSGD", "qadam": "QAdam", "adamw_8bit": "AdamW8bit"
    }[optimizer]  # fmt: skip
    after = weights(trainer.model)
    assert all(not torch.equal(before[n], after[n]) for n, p in trainer.model.named_parameters() if p.ndim == 2)
    assert mean_token_nll(trainer.model, datasets["forget"]) > forget_before  # four steps already unlearn
