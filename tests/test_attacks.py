import sys

import pytest
import torch
from torch import nn

from hf_unlearn.attacks import (
    codes_changed_fraction,
    fake_quantize_rtn,
    parse_kind,
    quantize,
    quantized_weights,
    relearn,
    relearn_dataset,
    rtn_codes,
)
from tests.helpers import one_thread
from tests.unlearned_tiny import forget_nll, state_hash, tiny_unlearned


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


# ------------------------------------------------------------------------------------------ round-to-nearest
def test_rtn_matches_hand_computed_values():
    # 3 bits: 3 levels each side. Group 1 absmax 1 -> step 1/3; group 2 absmax 0.35 -> step 0.35/3.
    weight = torch.tensor([[0.5, -1.0, 0.26, 0.0], [0.1, 0.2, 0.3, 0.35]])
    codes, scale = rtn_codes(weight, bits=3, group_size=4)
    assert codes.tolist() == [[2, -3, 1, 0], [1, 2, 3, 3]]  # 0.5*3 = 1.5 rounds half to even: 2
    expected = torch.tensor([[2 / 3, -1.0, 1 / 3, 0.0], [0.35 / 3, 0.7 / 3, 0.35, 0.35]])
    torch.testing.assert_close(fake_quantize_rtn(weight, 3, 4), expected)
    torch.testing.assert_close(scale.flatten(), torch.tensor([1 / 3, 0.35 / 3]))


@pytest.mark.parametrize("bits", range(2, 9))
def test_rtn_error_is_at_most_half_a_step_per_group(bits):
    torch.manual_seed(bits)
    weight = torch.randn(7, 9)  # 63 weights: the last group of 16 is padded
    restored = fake_quantize_rtn(weight, bits, group_size=16)
    flat = torch.nn.functional.pad(weight.flatten(), (0, 1)).view(-1, 16)
    half_step = flat.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1) / 2
    error = torch.nn.functional.pad((restored - weight).abs().flatten(), (0, 1)).view(-1, 16)
    assert bool((error <= half_step * (1 + 1e-6)).all())
    assert bool((error > 0).any())  # it really quantized
    levels = len(torch.unique(rtn_codes(weight, bits, 16)[0]))
    assert levels <= 2**bits - 1


@pytest.mark.parametrize("kind", ["rtn1", "rtn9", "fp3", "int4", "gptq"])
def test_unsupported_kinds_raise(kind):
    with pytest.raises(ValueError, match="bit width|Unknown quantization kind"):
        parse_kind(kind)


def test_parse_kind():
    assert [parse_kind(k) for k in ("FP4", "nf4", "int8", "rtn2")] == [("fp4", 4), ("nf4", 4), ("int8", 8), ("rtn", 2)]


# ----------------------------------------------------------------------------------------------- bitsandbytes
@pytest.mark.parametrize("kind", ["fp4", "nf4"])
def test_in_memory_4bit_gives_load_in_4bit_logits(kind, tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    _, model, tokenizer, *_ = tiny_unlearned()
    model.save_pretrained(tmp_path)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=config)
    for module in loaded.modules():
        # On AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights for a bf16 inference kernel (logits move by
        # ~0.1); the reference path dequantizes to the compute dtype, which is what a GPU run does.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    ids = torch.randint(0, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference, ours, full = loaded(ids).logits, quantize(model, kind)(ids).logits, model(ids).logits
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    assert (full - reference).abs().max() > 1e-2  # quantization changed the model


def test_in_memory_int8_weights_equal_load_in_8bit(tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    _, model, *_ = tiny_unlearned()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    ours = quantize(model, "int8")
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        bnb_weight = loaded.get_submodule(name).weight
        dequantized = bnb_weight.data.float() * bnb_weight.SCB.float().unsqueeze(1) / 127
        assert torch.equal(ours.get_submodule(name).weight, dequantized)


def test_quantize_returns_a_copy_and_context_restores_bitwise():
    _, model, *_ = tiny_unlearned()
    before = state_hash(model)
    copy_4bit = quantize(model, "rtn4")
    assert state_hash(model) == before
    q_proj = "model.layers.0.self_attn.q_proj"
    assert not torch.equal(copy_4bit.get_submodule(q_proj).weight, model.get_submodule(q_proj).weight)
    # Output and input embeddings and norms are never quantized (load_in_4bit leaves them too).
    for name in ("lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"):
        assert torch.equal(copy_4bit.state_dict()[name], model.state_dict()[name])
    with quantized_weights(model, "fp4"):
        assert state_hash(model) != before
    assert state_hash(model) == before


def test_codes_changed_fraction_round_to_nearest_hand_built():
    original, unlearned = nn.Linear(8, 2, bias=False), nn.Linear(8, 2, bias=False)
    # 4 bits: 7 levels, absmax 0.7 -> step 0.1 in both groups of 8 (one group per row).
    base = torch.tensor([[0.7, 0.0, 0.1, 0.2, 0.3, -0.4, 0.5, 0.6], [-0.7, 0.0, 0.0, 0.1, 0.1, 0.2, 0.2, 0.3]])
    moved = base.clone()
    moved[0, 1] += 0.04  # less than half a step: same code
    moved[0, 2] += 0.12  # more than a step: code 1 -> 2
    moved[1, 3] -= 0.06  # across a rounding boundary: code 1 -> 0
    original.weight.data, unlearned.weight.data = base, moved
    result = codes_changed_fraction(nn.Sequential(original), nn.Sequential(unlearned), "rtn4", block_size=8)
    assert result["fraction"] == pytest.approx(2 / 16)
    assert result["num_weights"] == 16


def test_codes_changed_fraction_fp4_hand_built():
    original, unlearned = nn.Linear(64, 2, bias=False), nn.Linear(64, 2, bias=False)
    base = torch.zeros(2, 64)
    base[:, 0] = 1.0  # absmax 1 in both 64-weight blocks, so the scale cannot move
    moved = base.clone()
    moved[0, 5], moved[1, 9], moved[1, 10] = 0.5, 0.5, -1.0
    original.weight.data, unlearned.weight.data = base, moved
    result = codes_changed_fraction(nn.Sequential(original), nn.Sequential(unlearned), "fp4")
    assert result["fraction"] == pytest.approx(3 / 128)
    assert codes_changed_fraction(nn.Sequential(original), nn.Sequential(original), "nf4")["fraction"] == 0.0


def test_codes_changed_by_gradient_ascent_on_tiny_model():
    original, unlearned, *_ = tiny_unlearned()
    fp4 = codes_changed_fraction(original, unlearned, "fp4")["fraction"]
    # lr 1e-3 ascent on a tiny model moves weights by far more than a 4-bit step (28-74% of codes change there).
    assert 0.2 < fp4 < 0.6
    assert codes_changed_fraction(original, original, "fp4")["fraction"] == 0.0


def test_missing_bitsandbytes_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    with pytest.raises(ImportError, match=r"hf_unlearn\[quant\]"):
        quantize(nn.Sequential(nn.Linear(4, 4)), "fp4")
    quantize(nn.Sequential(nn.Linear(4, 4)), "rtn4")  # the plain-torch path needs no bitsandbytes


# -------------------------------------------------------------------------------------------------- relearning
def test_relearning_restores_knowledge_removed_by_gradient_ascent():
    original, unlearned, tokenizer, splits, forget, collator = tiny_unlearned()
    before = state_hash(unlearned)
    result = relearn(
        unlearned,
        splits["forget10"],
        tokenizer,
        lr=1e-3,
        batch_size=4,
        eval_at=[0, 5, 10, 20],
        eval_fn=lambda model, _: {"forget_nll": forget_nll(model, forget, collator)},
    )
    curve = [point["metrics"]["forget_nll"] for point in result.curve]
    assert [point["step"] for point in result.curve] == [0, 5, 10, 20]
    assert len(result.losses) == 20
    assert curve[0] == pytest.approx(forget_nll(unlearned, forget, collator))
    assert forget_nll(original, forget, collator) < 0.5 < 5.0 < curve[0]  # it was learned, then forgotten
    assert all(later < earlier for earlier, later in zip(curve, curve[1:]))
    assert curve[-1] < curve[0] - 3.0  # measured 7.75 -> 1.69
    assert state_hash(unlearned) == before  # the caller's model is untouched


def test_relearning_is_reproducible_from_its_seed():
    _, unlearned, tokenizer, splits, *_ = tiny_unlearned()
    runs = [relearn(unlearned, splits["forget10"], tokenizer, steps=3, lr=1e-3, seed=s) for s in (1, 1, 2)]
    assert runs[0].losses == runs[1].losses
    assert runs[0].losses != runs[2].losses
    assert torch.equal(runs[0].model.lm_head.weight, runs[1].model.lm_head.weight)
    assert not torch.equal(runs[0].model.lm_head.weight, unlearned.lm_head.weight)


def test_relearning_subset_and_missing_data_errors():
    _, unlearned, tokenizer, splits, *_ = tiny_unlearned()
    with pytest.raises(ValueError, match=r"subset \(9 examples\) is larger than the forget data \(8\)"):
        relearn(unlearned, splits["forget10"], tokenizer, steps=1, num_examples=9)
    with pytest.raises(ValueError, match="larger than the forget data"):
        relearn(unlearned, splits["forget10"], tokenizer, preset="tofu")  # 40 QA pairs asked, 8 there
    with pytest.raises(ValueError, match="No forget data available"):
        relearn(unlearned, [], tokenizer, steps=1)
    with pytest.raises(ValueError, match="eval_at"):
        relearn(unlearned, splits["forget10"], tokenizer, steps=5, eval_at=[10])


def test_wmdp_preset_draws_20_samples_over_three_epochs():
    _, unlearned, tokenizer, splits, *_ = tiny_unlearned()
    texts = [row["question"] + " " + row["answer"] for row in splits["full"][:25]]
    result = relearn(unlearned, texts, tokenizer, preset="wmdp", eval_fn=lambda m, t: {"one": 1.0})
    assert [p["step"] for p in result.curve] == [5, 10, 15]
    assert len(result.losses) == 15 and result.config["num_examples"] == 20 and result.config["lr"] == 1e-5


def test_muse_preset_cuts_2048_token_blocks():
    _, _, tokenizer, splits, *_ = tiny_unlearned()
    text = " ".join(row["answer"] for row in splits["full"]) * 20
    blocks = relearn_dataset([text], tokenizer, "muse-books")
    expected = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + eos
    assert [len(b["input_ids"]) for b in blocks.examples[:-1]] == [2048] * (expected // 2048)
    assert sum(len(b["input_ids"]) for b in blocks.examples) == expected


def test_attack_command_writes_the_run_report(tmp_path, cli):
    from hf_unlearn.benchmarks.nll import mean_answer_loss
    from hf_unlearn.benchmarks.synthetic import write_synthetic_tofu
    from hf_unlearn.report import UnlearnReport

    original, unlearned, tokenizer, _, forget, collator = tiny_unlearned()
    for name, model in (("original", original), ("unlearned", unlearned)):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    data = write_synthetic_tofu(tmp_path / "data", num_authors=6, qa_per_author=8, seed=0)
    code, _, err = cli(
        "attack", "--model", tmp_path / "unlearned", "--original_model", tmp_path / "original", "--benchmark", "nll",
        "--data_dir", data, "--relearn_steps", "2", "4", "--relearn_lr", "1e-3", "--quantization", "fp4", "rtn4",
        "--output_dir", tmp_path / "out", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    report = UnlearnReport.load(tmp_path / "out")
    assert report.recipe["attack"]["relearn_lr"] == 1e-3 and report.command.startswith("hf-unlearn attack")
    (run,) = report.attacks
    unlearned_nll = run.unlearned.values
    assert sorted(unlearned_nll) == ["nll/forget10", "nll/retain90"]
    assert unlearned_nll["nll/forget10"] == pytest.approx(mean_answer_loss(unlearned, forget, collator), rel=1e-6)
    assert [p.step for p in run.relearn] == [2, 4]
    assert run.relearn[1].metrics.values["nll/forget10"] < unlearned_nll["nll/forget10"]
    assert [q.kind for q in run.quantization] == ["fp4", "rtn4"]
    expected = codes_changed_fraction(original, unlearned, "fp4")["fraction"]
    assert run.quantization[0].codes_changed_fraction == pytest.approx(expected)
    # The first 3 forget and 3 retain questions, answered by the original, the attacked and the relearned model.
    from hf_unlearn.answers import generate_answers
    from hf_unlearn.data import QAFormat

    assert [r["set"] for r in report.answers] == ["forget"] * 3 + ["retain"] * 3
    assert all(list(r["generations"]) == ["original model", "attacked model", "relearned (4 steps)"]
               for r in report.answers)  # fmt: skip
    for label, model in (("original model", original), ("attacked model", unlearned)):
        expected = generate_answers(model, tokenizer, report.answers, QAFormat())
        assert [r["generations"][label] for r in report.answers] == expected
