"""Tiny causal LMs and tokenizers built on the spot, so tests and the embedded demo never touch the Hub."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)


PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"

# A minimal chat format: role markers are single special tokens, so the prompt/answer boundary is one token.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}" + EOS + ""
    "{% else %}{{ message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)

ARCHITECTURES = ("llama", "qwen2", "gpt2")


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, chat_template: bool = True, whitespace_attaching: bool = False
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` (pad/bos/eos/unk, optional chat template).

    `whitespace_attaching=True` keeps each word's trailing whitespace in the word's piece (so ``"Answer: "`` can
    be one token), as some real tokenizers do: the case where prompt formatting decides which tokens a model saw.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    if whitespace_attaching:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(r"\S+\s*|\s+"), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, EOS, UNK, USER, ASSISTANT]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT],
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(tokenizer: PreTrainedTokenizerFast, arch: str = "llama", **overrides):
    """A config for a ~100k-parameter model of the given architecture, sized to the tokenizer."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}.")
    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if arch == "gpt2":
        base = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512, "tie_word_embeddings": False}
        return GPT2Config(**{**ids, **base, **overrides})
    base = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
    }
    config_cls = LlamaConfig if arch == "llama" else Qwen2Config
    return config_cls(**{**ids, **base, **overrides})


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast, arch: str = "llama", seed: int = 0, **overrides
) -> PreTrainedModel:
    """A randomly initialised tiny causal LM (fp32, eval mode), reproducible from `seed`."""
    import torch

    config = tiny_config(tokenizer, arch, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def tiny_model_and_tokenizer(
    texts: Iterable[str],
    arch: str = "llama",
    vocab_size: int = 512,
    seed: int = 0,
    save_dir: str | Path | None = None,
    **overrides,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Train a tokenizer on `texts`, build a tiny model for it, and optionally save both to `save_dir`."""
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    model = build_tiny_model(tokenizer, arch=arch, seed=seed, **overrides)
    if save_dir is not None:
        model.save_pretrained(save_dir)
        tokenizer.save_pretrained(save_dir)
    return model, tokenizer
