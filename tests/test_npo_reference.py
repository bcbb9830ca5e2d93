"""NPO's cached reference: the policy's own log-likelihoods before the first update, with no second model loaded."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_unlearn.benchmarks.synthetic import make_synthetic_tofu
from hf_unlearn.data import DataCollatorForUnlearning, ForgetRetainDataset, QADataset
from hf_unlearn.tiny import build_tiny_model, train_tokenizer
from hf_unlearn.trainers import NPOConfig, NPOTrainer
from hf_unlearn.trainers.losses import sequence_log_prob


FORGET_SIZE = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    rows = make_synthetic_tofu(num_authors=3, qa_per_author=4)["full"]
    tokenizer = train_tokenizer([r["question"] + " " + r["answer"] for r in rows], vocab_size=300)
    path = tmp_path_factory.mktemp("model")
    build_tiny_model(tokenizer, "llama", seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    forget = QADataset(rows[:FORGET_SIZE], tokenizer)
    pairs = ForgetRetainDataset(forget, QADataset(rows[FORGET_SIZE:], tokenizer), seed=0)
    return str(path), tokenizer, pairs


@pytest.fixture
def loads(monkeypatch):
    """Every model `AutoModelForCausalLM.from_pretrained` builds, in order."""
    built = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        built.append(original(cls, *args, **kwargs))
        return built[-1]

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    return built


def npo_config(tmp_path, **overrides) -> NPOConfig:
    values = {
        "output_dir": str(tmp_path / "out"), "report_to": "none", "save_strategy": "no", "use_cpu": True,
        "per_device_train_batch_size": 3, "per_device_eval_batch_size": 4, "max_steps": 2, "learning_rate": 1e-2,
        "lr_scheduler_type": "constant", "logging_steps": 1, "disable_tqdm": True, "seed": 0,
    }  # fmt: skip
    return NPOConfig(**{**values, **overrides})


def reference_values(model, tokenizer, forget, batch_size: int) -> torch.Tensor:
    """log π_ref(y|x) of every forget example from a separately loaded model, in the trainer's batches."""
    collator = DataCollatorForUnlearning(tokenizer)
    values = []
    with torch.no_grad():
        for start in range(0, len(forget), batch_size):
            batch = collator([{**forget[i], "index": i} for i in range(start, min(start + batch_size, len(forget)))])
            values.append(sequence_log_prob(model.eval(), batch))
    return torch.cat(values)


CASES = {
    "adamw": {},
    "zo_first": {"optimizer": "zo_sgd", "zo_learning_rate": 1e-4},  # the first step perturbs the weights: not seen
    "lora": {},
}


@pytest.mark.parametrize("case", list(CASES))
def test_cached_reference_is_the_starting_policy_and_loads_one_model(case, setup, loads, tmp_path):
    path, tokenizer, pairs = setup
    peft_config = None
    if case == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = NPOTrainer(
        path, npo_config(tmp_path, **CASES[case]), train_dataset=pairs, processing_class=tokenizer,
        peft_config=peft_config,
    )  # fmt: skip
    assert len(loads) == 1 and trainer.ref_model is None  # the policy alone
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if n in before)

    reference = AutoModelForCausalLM.from_pretrained(path)  # counted too: a second model, built only here
    assert len(loads) == 2
    expected = reference_values(reference, tokenizer, pairs.forget, batch_size=4)
    assert trainer.ref_cache.shape == (FORGET_SIZE,)
    assert torch.equal(trainer.ref_cache, expected)  # bit for bit: CPU, fp32, the same batches


@pytest.mark.parametrize(
    "overrides", [{"ref_log_probs": "online"}, {"retain_loss": "kl"}, {"ref_model_path": "MODEL"}], ids=str
)
def test_reference_model_is_loaded_where_it_is_needed(overrides, setup, loads, tmp_path):
    path, tokenizer, pairs = setup
    overrides = {k: path if v == "MODEL" else v for k, v in overrides.items()}
    trainer = NPOTrainer(path, npo_config(tmp_path, **overrides), train_dataset=pairs, processing_class=tokenizer)
    assert len(loads) == 2 and trainer.ref_model is not None
    trainer.train()
    if trainer.args.ref_log_probs == "cached":  # computed from the loaded reference: the same values
        assert torch.equal(trainer.ref_cache, reference_values(loads[1], tokenizer, pairs.forget, batch_size=4))


def test_resumed_run_keeps_the_starting_policys_values(setup, tmp_path):
    path, tokenizer, pairs = setup
    args = npo_config(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    first = NPOTrainer(path, args, train_dataset=pairs, processing_class=tokenizer)
    first.train()
    resumed = NPOTrainer(path, args, train_dataset=pairs, processing_class=tokenizer)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    assert torch.equal(resumed.ref_cache, first.ref_cache)
