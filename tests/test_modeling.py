"""The answer NLL every objective trains on: the output head on answer positions only, same values and gradients."""

import pytest
import torch

from hf_unlearn.data import pad_batch, tokenize_qa
from hf_unlearn.modeling import answer_token_nll, token_nll
from hf_unlearn.tiny import build_tiny_model


PAIRS = [
    ("Where was Ava Varga born?", "In a small town by the sea, in 1961."),
    ("What genre does Bram Okafor write?", "Crime."),
    ("Who?", "Nobody you would know, and that is all I will say about it."),
]


def batch_of(tokenizer):
    examples = [tokenize_qa(tokenizer, q, a) for q, a in PAIRS]
    return pad_batch(examples, tokenizer.pad_token_id, padding_side="right")


def full_head_nll(model, batch):
    """The reference: the head over every position, then the NLL at the labelled ones."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    return token_nll(model(**inputs).logits, batch["labels"])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_answer_nll_and_its_gradient_equal_the_full_head_ones(arch, tokenizer):
    model = build_tiny_model(tokenizer, arch=arch, seed=1).double()
    batch = batch_of(tokenizer)
    values, grads = [], []
    for compute in (answer_token_nll, full_head_nll):
        model.zero_grad(set_to_none=True)
        nll = compute(model, batch)
        (nll.sum() * 0.7 + nll[0].sum()).backward()
        values.append(nll.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert values[0].shape == (3, batch["labels"].shape[1] - 1)
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=1e-10)
    assert (values[0][batch["labels"][:, 1:] == -100] == 0).all()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_the_output_head_runs_on_answer_positions_only(tokenizer):
    model = build_tiny_model(tokenizer, arch="llama", seed=1)
    batch = batch_of(tokenizer)
    rows = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(i[0].shape))
    try:
        answer_token_nll(model, batch)
    finally:
        handle.remove()
    answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
    assert rows == [torch.Size([answer_tokens, model.config.hidden_size])]
    assert answer_tokens < batch["labels"].numel() / 2  # the prompts and padding are most of the batch


def test_a_model_without_logits_to_keep_is_scored_from_every_position(tokenizer):
    class NoLogitsToKeep(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    model = build_tiny_model(tokenizer, arch="llama", seed=2)
    batch = batch_of(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(answer_token_nll(NoLogitsToKeep(model), batch), full_head_nll(model, batch))
