import pytest
import torch

from hf_unlearn.loading import load_model_and_tokenizer
from hf_unlearn.tiny import ARCHITECTURES, tiny_model_and_tokenizer


TEXTS = ["Question: Who wrote the book?\nAnswer: Jane Doe wrote it in 1990."] * 8 + ["The fox jumps over the dog."] * 4


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_and_reload_give_identical_logits(tmp_path, arch):
    model, tokenizer = tiny_model_and_tokenizer(TEXTS, arch=arch, vocab_size=300, save_dir=tmp_path)
    reloaded, reloaded_tok = load_model_and_tokenizer(tmp_path)
    ids = tokenizer("Jane Doe wrote the book", return_tensors="pt").input_ids
    assert reloaded_tok("Jane Doe wrote the book", return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded.eval()(ids).logits)
    assert reloaded.config.model_type == arch


def test_tokenizer_special_tokens_and_chat_template():
    _, tokenizer = tiny_model_and_tokenizer(TEXTS, vocab_size=300)
    assert {tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token} == {"<pad>", "<s>", "</s>"}
    assert len({tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}) == 3
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|user|>Hi<|assistant|>"
    assert tokenizer.decode(tokenizer("Jane Doe wrote it.").input_ids) == "Jane Doe wrote it."


def test_same_seed_same_weights_and_unknown_arch():
    a, _ = tiny_model_and_tokenizer(TEXTS, vocab_size=300, seed=3)
    b, _ = tiny_model_and_tokenizer(TEXTS, vocab_size=300, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="llama, qwen2, gpt2"):
        tiny_model_and_tokenizer(TEXTS, arch="mamba")
