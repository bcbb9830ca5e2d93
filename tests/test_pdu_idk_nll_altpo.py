"""PDU, IdkNLL and AltPO: losses against hand computations that follow open-unlearning's formulas, PDU's multiplier
(per step, per epoch, across a resume), the IDK answer draw, AltPO's alternates command, and every optimizer / LoRA."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_unlearn.alternates import read_alternates
from hf_unlearn.data import ForgetRetainDataset, tokenize_qa
from hf_unlearn.trainers import AltPOConfig, IdkNLLConfig, PDUConfig, get_method
from hf_unlearn.trainers.refusals import default_idk_answers
from tests import test_trainers
from tests.test_trainers import (
    FORGET_IDS,
    answer_log_prob,
    config,
    fixed_batch,
    log_sigmoid,
    mean_token_nll,
    perturbed_model,
    weights,
)


# test_trainers' module fixtures: the memorising tiny model and its forget/retain data, built once for this module
module_one_thread = test_trainers.module_one_thread
qa_rows, tokenizer = test_trainers.qa_rows, test_trainers.tokenizer
memorised_path, datasets = test_trainers.memorised_path, test_trainers.datasets


@pytest.fixture(scope="module")
def alternates_file(tmp_path_factory, qa_rows):
    """Hand-written alternates: each forget question answered with another (retain) answer of the same model."""
    path = tmp_path_factory.mktemp("alternates") / "alternates.jsonl"
    rows = [
        {"question": f["question"], "answer": f["answer"], "alternate": r["answer"]}
        for f, r in zip(qa_rows["forget"], reversed(qa_rows["retain"]))
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


# ---- exact losses ---------------------------------------------------------------------------------------------


def logits_of(model, example) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([example["input_ids"]])).logits[0].double()


def test_pdu_loss_matches_open_unlearning_formula(tmp_path, memorised_path, datasets, tokenizer):
    """locuslab/open-unlearning src/trainer/unlearn/pdu.py: forget = mean (max logit − mean logit)², loss =
    γ·forget + λ·(retain NLL − ε). Ours takes the forget mean over answer positions only (docs/definitions.md)."""
    args = config(PDUConfig, tmp_path, gamma=1.3, alpha=0.7, retain_loss_eps=0.25)
    model = perturbed_model(memorised_path)
    trainer = get_method("pdu")(model, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
    forget, retain, batch = fixed_batch(datasets, tokenizer)
    with torch.no_grad():
        loss, parts = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    gaps = []
    for e in forget:
        logits = logits_of(model, e)
        for t in range(1, len(e["input_ids"])):
            if e["labels"][t] != -100:  # position t-1 predicts answer token t
                gaps.append((logits[t - 1].max() - logits[t - 1].mean()).item() ** 2)
    forget_term = sum(gaps) / len(gaps)
    retain_term = mean_token_nll(model, retain) - 0.25
    assert parts["loss/forget"].item() == pytest.approx(forget_term, rel=1e-5)
    assert parts["loss/retain"].item() == pytest.approx(retain_term, abs=1e-5)
    assert loss.item() == pytest.approx(1.3 * forget_term + 0.7 * retain_term, rel=1e-5)


def test_idk_nll_loss_matches_hand_computation(tmp_path, memorised_path, datasets, tokenizer, qa_rows):
    """IdkNLL (TOFU's IDK baseline; locuslab/open-unlearning has no src/trainer/unlearn file for it): mean NLL of the
    refusal tokens after each forget prompt + α·retain NLL, over refusal tokens."""
    args = config(IdkNLLConfig, tmp_path, gamma=1.0, alpha=0.4)
    model = perturbed_model(memorised_path)
    trainer = get_method("idk_nll")(model, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
    forget, retain, batch = fixed_batch(datasets, tokenizer)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    refusals = [
        tokenize_qa(tokenizer, qa_rows["forget"][i]["question"], args.idk_answers[trainer.refusals.choice(e["index"])])
        for i, e in zip(FORGET_IDS, forget)
    ]
    expected = mean_token_nll(model, refusals) + 0.4 * mean_token_nll(model, retain)
    assert loss == pytest.approx(expected, abs=1e-5)


def test_altpo_loss_matches_open_unlearning_dpo(
    tmp_path, memorised_path, datasets, tokenizer, qa_rows, alternates_file
):
    """locuslab/open-unlearning src/trainer/utils.py compute_dpo_loss (its DPO trainer, which AltPO runs with the
    alternates as the "win" side): −(2/β)·mean log σ(β·(win log-ratio − lose log-ratio)), + α·retain NLL."""
    args = config(AltPOConfig, tmp_path, beta=0.3, alpha=0.6, alternates_file=alternates_file)
    model = perturbed_model(memorised_path)
    trainer = get_method("altpo")(model, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
    forget, retain, batch = fixed_batch(datasets, tokenizer)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    ref = AutoModelForCausalLM.from_pretrained(memorised_path).eval()
    alternates = read_alternates(alternates_file)
    terms = []
    for i, e in zip(FORGET_IDS, forget):
        row = qa_rows["forget"][i]
        win = tokenize_qa(tokenizer, row["question"], alternates[(row["question"], row["answer"])])
        win_ratio = answer_log_prob(model, win)[0] - answer_log_prob(ref, win)[0]
        lose_ratio = answer_log_prob(model, e)[0] - answer_log_prob(ref, e)[0]
        terms.append(log_sigmoid(0.3 * (win_ratio - lose_ratio)))
    expected = -(2 / 0.3) * sum(terms) / len(terms) + 0.6 * mean_token_nll(model, retain)
    assert loss == pytest.approx(expected, abs=1e-5)


# ---- PDU's multiplier -----------------------------------------------------------------------------------------


def lambdas(trainer) -> list[float]:
    return [log["pdu/lambda"] for log in trainer.state.log_history if "loss" in log]


def test_pdu_multiplier_follows_the_dual_ascent_per_step(tmp_path, memorised_path, datasets, tokenizer):
    args = config(PDUConfig, tmp_path, max_steps=4, alpha=0.5, retain_loss_eps=0.05, dual_step_size=2.0)
    trainer = get_method("pdu")(memorised_path, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    value = 0.5
    for log in logs:  # each step's logged retain part is its constraint, retain NLL − ε
        value = max(0.0, value + 2.0 * log["loss/retain"])
        assert log["pdu/lambda"] == pytest.approx(value, rel=1e-6)
    assert trainer.retain_coefficient() == pytest.approx(value, rel=1e-6)
    assert any(log["loss/retain"] > 0 for log in logs)  # the forget term pushes retain NLL above ε: λ rises


def test_pdu_multiplier_stays_at_zero_while_the_constraint_holds(tmp_path, memorised_path, datasets, tokenizer):
    args = config(PDUConfig, tmp_path, max_steps=2, alpha=1.0, retain_loss_eps=100.0)
    trainer = get_method("pdu")(memorised_path, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
    trainer.train()
    assert lambdas(trainer) == [0.0, 0.0]


def test_pdu_multiplier_per_epoch_uses_the_epochs_retain_examples(tmp_path, memorised_path, datasets, tokenizer):
    """lr 1e-12: the weights stay those of the memorised model, so each epoch's constraint is computable by hand."""
    args = config(
        PDUConfig, tmp_path, max_steps=-1, num_train_epochs=2, learning_rate=1e-12, optimizer="sgd", alpha=0.3,
        retain_loss_eps=-0.5, dual_step_size=0.5, dual_update="epoch",
    )  # fmt: skip
    trainer = get_method("pdu")(memorised_path, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
    model = AutoModelForCausalLM.from_pretrained(memorised_path).eval()
    value, expected = 0.3, []
    pairs = ForgetRetainDataset(datasets["forget"], datasets["retain"], seed=0)
    for epoch in range(2):
        pairs.set_epoch(epoch)
        retain = [pairs[i]["retain"] for i in range(len(pairs))]
        value = max(0.0, value + 0.5 * (mean_token_nll(model, retain) + 0.5))
        expected.append(value)
    trainer.train()
    assert lambdas(trainer) == pytest.approx([0.3, expected[0]], rel=1e-6)  # one step per epoch, logged before its end
    assert trainer.retain_coefficient() == pytest.approx(expected[1], rel=1e-6)


def test_pdu_resume_continues_the_multiplier(tmp_path, memorised_path, datasets, tokenizer):
    common = {"max_steps": 4, "alpha": 0.5, "retain_loss_eps": 0.05, "save_strategy": "steps", "save_steps": 2}
    args = config(PDUConfig, tmp_path / "full", **common)
    full = get_method("pdu")(memorised_path, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
    full.train()
    saved = json.loads((tmp_path / "full" / "out" / "checkpoint-2" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["DualMultiplier"]["args"]["value"] == pytest.approx(lambdas(full)[1])
    args = config(PDUConfig, tmp_path / "resumed", **common)
    resumed = get_method("pdu")(memorised_path, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "out" / "checkpoint-2"))
    assert lambdas(resumed)[-2:] == pytest.approx(lambdas(full)[-2:], rel=1e-5)
    assert resumed.retain_coefficient() == pytest.approx(full.retain_coefficient(), rel=1e-5)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({}, "pdu needs retain_loss_eps"),
        ({"retain_loss_eps": 0.1, "dual_update": "batch"}, "dual_update must be one of step, epoch"),
        ({"retain_loss_eps": 0.1, "dual_step_size": 0.0}, "dual_step_size must be > 0"),
    ],
)
def test_pdu_bad_settings_fail_in_one_line(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        config(PDUConfig, tmp_path, **overrides)


def test_pdu_needs_retain_data_whatever_alpha(tmp_path, memorised_path, datasets, tokenizer):
    args = config(PDUConfig, tmp_path, alpha=0.0, retain_loss_eps=0.1)
    with pytest.raises(
        ValueError, match=r"pdu needs retain data, whatever alpha .* ForgetRetainDataset\(forget, retain\)"
    ):
        get_method("pdu")(memorised_path, args, train_dataset=ForgetRetainDataset(datasets["forget"]))


# ---- IdkNLL's answers -----------------------------------------------------------------------------------------


def test_idk_answers_ship_with_the_package_and_the_draw_is_seeded(tmp_path, memorised_path, datasets, tokenizer):
    answers = default_idk_answers()
    assert len(answers) == 20 and len(set(answers)) == 20 and "I don't know." in answers
    assert IdkNLLConfig(output_dir=str(tmp_path), use_cpu=True).idk_answers == answers

    def draws(seed):
        args = config(IdkNLLConfig, tmp_path, seed=seed)
        trainer = get_method("idk_nll")(
            memorised_path, args, train_dataset=datasets["pairs"], processing_class=tokenizer
        )
        return [trainer.refusals.choice(i) for i in range(50)]

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)
    assert len(set(draws(0))) > 10  # the draw spreads over the list
    with pytest.raises(ValueError, match="idk_answers must be a non-empty list"):
        IdkNLLConfig(output_dir=str(tmp_path), use_cpu=True, idk_answers=[" "])


# ---- AltPO's alternates -----------------------------------------------------------------------------------------


def test_altpo_needs_an_alternate_for_every_forget_question(tmp_path, memorised_path, datasets, tokenizer, qa_rows):
    with pytest.raises(ValueError, match="altpo needs alternates_file: generate it with `hf-unlearn alternates"):
        config(AltPOConfig, tmp_path)
    partial = tmp_path / "partial.jsonl"
    rows = [
        {"question": r["question"], "answer": r["answer"], "alternate": "Someone else."} for r in qa_rows["forget"]
    ]
    partial.write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    args = config(AltPOConfig, tmp_path, alternates_file=str(partial))
    with pytest.raises(ValueError, match=r"partial.jsonl has no alternate for forget example 3 "):
        get_method("altpo")(memorised_path, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
    partial.write_text(json.dumps({**rows[0], "alternate": ""}) + "\n")
    with pytest.raises(ValueError, match="row 1: question, answer and alternate must be text, alternate non-empty"):
        config(AltPOConfig, tmp_path, alternates_file=str(partial))


# ---- every optimizer and LoRA ---------------------------------------------------------------------------------


def method_args(method, tmp_path, alternates_file, **overrides):
    own = {
        "pdu": (PDUConfig, {"retain_loss_eps": 0.05}),
        "idk_nll": (IdkNLLConfig, {}),
        "altpo": (AltPOConfig, {"alternates_file": alternates_file}),
    }
    config_cls, fields = own[method]
    return config(config_cls, tmp_path, **fields, **overrides)


OPTIMIZERS = {
    "adamw": {"optimizer": "adamw", "learning_rate": 1e-3},
    "hybrid": {"optimizer": "hybrid", "learning_rate": 1e-3, "zo_learning_rate": 1e-2, "hybrid_fo_steps": 1},
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("method", ["pdu", "idk_nll", "altpo"])
def test_two_steps_move_every_trainable_weight(method, optimizer, tmp_path, memorised_path, datasets, tokenizer,
                                               alternates_file):  # fmt: skip
    args = method_args(method, tmp_path, alternates_file, max_steps=2, **OPTIMIZERS[optimizer])
    trainer = get_method(method)(memorised_path, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
    before = weights(trainer.model)
    trainer.train()
    after = weights(trainer.model)
    assert [n for n in before if torch.equal(before[n], after[n])] == []
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2 and all(math.isfinite(log["loss"]) for log in logs)
    if optimizer == "hybrid":
        assert [log["optim/phase"] for log in logs] == [0, 1]


@pytest.mark.parametrize("method", ["pdu", "idk_nll", "altpo"])
def test_lora_trains_the_adapter_only(method, tmp_path, memorised_path, datasets, tokenizer, alternates_file):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
    args = method_args(method, tmp_path, alternates_file, max_steps=2, learning_rate=1e-2)
    trainer = get_method(method)(
        memorised_path, args, train_dataset=datasets["pairs"], processing_class=tokenizer, peft_config=lora
    )
    assert trainer.ref_model is None  # AltPO's reference is the base model with the adapter disabled
    before = weights(trainer.model)
    adapter = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    after = weights(trainer.model)
    assert adapter and [n for n in adapter if torch.equal(before[n], after[n])] == []
    assert [n for n in before if n not in adapter and not torch.equal(before[n], after[n])] == []


@pytest.mark.parametrize("method", ["pdu", "idk_nll", "altpo"])
def test_gradient_accumulation_matches_full_batch(method, tmp_path, datasets, tokenizer, alternates_file, qa_rows):
    """Batch 4 × 1 and batch 2 × 2 see the same examples: the logged terms (IdkNLL: normalised over the window's
    refusal tokens; PDU: its constraint and λ) must not depend on the split. An untrained model, whose per-token NLLs
    vary, makes a per-micro-batch normalisation visible."""
    from hf_unlearn.tiny import build_tiny_model

    untrained = str(tmp_path / "untrained")
    build_tiny_model(tokenizer, "llama", seed=3).save_pretrained(untrained)
    keys = ["loss", "loss/forget", "loss/retain"] + (["pdu/lambda"] if method == "pdu" else [])
    histories = []
    for batch, accumulation in ((4, 1), (2, 2)):
        args = method_args(
            method, tmp_path / f"{batch}x{accumulation}", alternates_file, per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation, max_steps=4, optimizer="sgd", learning_rate=0.01,
            **({"dual_step_size": 0.1} if method == "pdu" else {}),
        )  # fmt: skip
        trainer = get_method(method)(untrained, args, train_dataset=datasets["pairs"], processing_class=tokenizer)
        trainer.train()
        histories.append([[e[k] for k in keys] for e in trainer.state.log_history if "loss" in e])
    assert len(histories[0]) == 4
    if method == "idk_nll":  # the first step's forget term, at the starting weights, over the window's refusal tokens
        model = AutoModelForCausalLM.from_pretrained(untrained).eval()
        answers = [args.idk_answers[trainer.refusals.choice(i)] for i in range(len(qa_rows["forget"]))]
        refusals = [tokenize_qa(tokenizer, r["question"], a) for r, a in zip(qa_rows["forget"], answers)]
        assert histories[1][0][1] == pytest.approx(mean_token_nll(model, refusals), rel=1e-5)
    assert [v for step in histories[0] for v in step] == pytest.approx(
        [v for step in histories[1] for v in step], rel=1e-5, abs=1e-5
    )
