"""Grouped decode attention: the runs of rows it picks, its values against sdpa's, and greedy text against HF."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hf_unlearn.benchmarks import decode_attention
from hf_unlearn.benchmarks.decode_attention import GROUPED_SDPA, decode_groups, grouped_sdpa_forward
from hf_unlearn.tiny import build_tiny_model
from tests.test_eval_engine import QUESTIONS, SYSTEM, lone_generations


def test_rows_split_where_skipping_their_padding_outweighs_one_more_call():
    # 1 KiB a row-column; one more call is worth 160 row-columns (GROUP_WORTH_BYTES = 160 KiB).
    # One run: 4 * 256 + 160 = 1184. Two: (2 * 256 + 160) + (2 * 66 + 160) = 964. Three: 1114.
    assert decode_groups([0, 0, 190, 200], [True] * 4, 256, 1024) == [(0, 2, 0), (2, 4, 190)]
    # A finished row is left out: (2 * 256 + 160) + (1 * 56 + 160) = 888.
    assert decode_groups([0, 0, 190, 200], [True, True, False, True], 256, 1024) == [(0, 2, 0), (3, 4, 200)]
    assert decode_groups([0, 3, 0, 1], [True] * 4, 256, 1024) is None  # plain sdpa: nothing worth skipping
    assert decode_groups([10, 12, 11], [True] * 3, 256, 1) == [(0, 3, 10)]  # a call costs too much to split


def test_grouped_attention_equals_sdpa_on_the_rows_it_covers():
    torch.manual_seed(0)
    rows, heads, kv_heads, width, dim = 6, 4, 2, 40, 8
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = heads // kv_heads, True
    query = torch.randn(rows, heads, 1, dim)
    key, value = torch.randn(rows, kv_heads, width, dim), torch.randn(rows, kv_heads, width, dim)
    first = [0, 3, 20, 22, 30, 35]
    mask = (torch.arange(width)[None, :] >= torch.tensor(first)[:, None])[:, None, None, :]
    alive = [True, True, True, False, True, True]
    groups = decode_groups(first, alive, width, column_bytes=decode_attention.GROUP_WORTH_BYTES // 4)
    assert len(groups) > 1 and all(stop <= 3 or start >= 4 for start, stop, _ in groups)  # the finished row left out
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=dim**-0.5)
    got, _ = grouped_sdpa_forward(module, query, key, value, mask, scaling=dim**-0.5, decode_groups=groups)
    live = torch.tensor(alive)
    torch.testing.assert_close(got[live], expected[live], rtol=1e-6, atol=1e-6)
    assert not got[~live].any()


@pytest.mark.parametrize("with_system", [False, True], ids=["plain", "shared_prefix"])
def test_grouped_decoding_gives_hf_generate_text_and_restores_the_model(
    tokenizer, monkeypatch, with_system, single_thread
):
    """With every split worth it, rows joining and leaving decode in runs that skip columns, the shared prefix's
    included (each row's columns are a suffix of the cache), and the text is HF generate's, prompt by prompt."""
    from hf_unlearn.benchmarks.engine import generate_greedy
    from hf_unlearn.data import QAFormat, tokenize_prompt

    monkeypatch.setattr(decode_attention, "GROUP_WORTH_BYTES", 0)
    qa_format = QAFormat(system_prompt=SYSTEM) if with_system else None
    questions = QUESTIONS + ["Name a book.", "Why?", "When was it written?"]
    prompts = [tokenize_prompt(tokenizer, q, qa_format) for q in questions]
    caps = [45, 3, 70, 1, 12, 38]
    model = build_tiny_model(tokenizer, arch="llama", seed=3).eval()
    seen = []
    model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs.get("decode_groups")), with_kwargs=True)
    got = generate_greedy(model, tokenizer, prompts, caps, batch_size=3, show_progress=False)
    assert any(groups and any(first > 0 for _, _, first in groups) for groups in seen)
    assert model.config._attn_implementation == "sdpa"
    assert got == lone_generations(model, tokenizer, prompts, caps)


def test_the_model_gets_its_attention_back_when_generation_fails(tokenizer):
    model = build_tiny_model(tokenizer, arch="llama", seed=3).eval()
    with pytest.raises(RuntimeError, match="stop"), decode_attention.grouped_decoding(model):
        assert model.config._attn_implementation == GROUPED_SDPA
        raise RuntimeError("stop")
    assert model.config._attn_implementation == "sdpa"


def test_a_prefilled_batch_behind_a_shared_prefix_keeps_each_rows_columns_as_a_suffix(tokenizer):
    """Left padding would sit between the prefix's columns and a row's own; moved in front, a row's columns start
    where its padding ends, so a run of rows can skip it. The next token is the same either way."""
    from hf_unlearn.benchmarks.engine import _GreedyBatch
    from hf_unlearn.benchmarks.kv_cache import SharedPrefix
    from hf_unlearn.data import QAFormat, tokenize_prompt

    model = build_tiny_model(tokenizer, arch="llama", seed=3).eval()
    prompts = [tokenize_prompt(tokenizer, q, QAFormat(system_prompt=SYSTEM)) for q in QUESTIONS]
    with torch.inference_mode():
        shared = SharedPrefix.build(model, prompts, growing=True)
        batch = _GreedyBatch.prefill(model, prompts, [0, 1, 2], tokenizer.pad_token_id, shared)
        alone = [int(model(input_ids=torch.tensor([p])).logits[0, -1].argmax()) for p in prompts]
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    expected = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    assert torch.equal(batch.mask, expected)
    assert batch.last.tolist() == alone


def test_grouped_decoding_applies_to_sdpa_on_a_cpu_through_the_attention_interface_only(tokenizer, monkeypatch):
    from hf_unlearn.benchmarks.decode_attention import takes_grouped_decoding

    model = build_tiny_model(tokenizer, arch="llama", seed=3).eval()
    cpu = torch.device("cpu")
    assert takes_grouped_decoding(model, cpu)
    assert not takes_grouped_decoding(model, torch.device("cuda"))
    monkeypatch.setattr(type(model), "_supports_attention_backend", False)
    assert not takes_grouped_decoding(model, cpu)  # attention layers of its own would never see the groups
    monkeypatch.undo()
    model.config._attn_implementation = "eager"
    assert not takes_grouped_decoding(model, cpu)


def test_runs_hold_at_most_max_group_rows_rows():
    from hf_unlearn.benchmarks.decode_attention import MAX_GROUP_ROWS

    rows = 2 * MAX_GROUP_ROWS + 5
    groups = decode_groups([7] * rows, [True] * rows, 100, 1)
    assert sorted(stop - start for start, stop, _ in groups) == [5, MAX_GROUP_ROWS, MAX_GROUP_ROWS]  # three calls
    assert [start for start, _, _ in groups] == [0, groups[0][1], groups[1][1]]  # every row, in order
    assert all(first == 7 for _, _, first in groups)


def test_a_cache_with_sliding_window_layers_decodes_ungrouped_and_as_hf_generate(
    tokenizer, monkeypatch, single_thread
):
    """Sliding-window layers keep their own (shorter) columns, which the batch's runs do not describe: such a batch
    decodes with plain sdpa, whatever grouping would save."""
    from hf_unlearn.benchmarks.engine import generate_greedy
    from hf_unlearn.data import tokenize_prompt

    monkeypatch.setattr(decode_attention, "GROUP_WORTH_BYTES", 0)
    model = build_tiny_model(
        tokenizer, arch="qwen2", seed=3, use_sliding_window=True, sliding_window=6, max_window_layers=1
    ).eval()
    assert "sliding_attention" in model.config.layer_types
    seen = []
    model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs.get("decode_groups")), with_kwargs=True)
    prompts = [tokenize_prompt(tokenizer, q) for q in QUESTIONS + ["Name a book.", "Why?"]]
    caps = [30, 3, 40, 1, 12]
    got = generate_greedy(model, tokenizer, prompts, caps, batch_size=2, show_progress=False)
    assert not any(seen)
    assert got == lone_generations(model, tokenizer, prompts, caps)
