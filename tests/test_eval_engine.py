"""The evaluation engine's fast paths (shared prompts, labelled-position logits) against one-example references.

The references run each example alone, unpadded, through the whole model and compute every statistic in float64
from the full ``[seq, vocab]`` log-softmax, token by token. The engine runs in float32 with other shapes (a prompt
forwarded once into a KV cache, continuations on top of it, the output head on scored positions only), so values
agree to float32 rounding: per-token log-probabilities to ~1e-6, hence the tolerances below.
"""

import math

import numpy as np
import pytest
import torch

from hf_unlearn.benchmarks.engine import score_examples
from hf_unlearn.data import tokenize_qa
from hf_unlearn.tiny import build_tiny_model


QUESTIONS = [
    "Where was Ava Varga born?",
    "What genre does Bram Okafor write, and which of his books sold best?",
    "Who?",
]
ANSWERS = [
    "An answer of some length here.",
    "No.",
    "A much longer answer that goes on and on for quite a while, really it does.",
    "Yes, in Lagos.",
    "Perhaps.",
]


def reference_stats(model, example, k=0.4):
    """Statistics of one example from a lone unpadded forward, in float64."""
    ids, labels = example["input_ids"], example["labels"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    positions = [t for t in range(len(ids) - 1) if labels[t + 1] != -100]
    token_logp = [logp[t, labels[t + 1]].item() for t in positions]
    correct = [logp[t].argmax().item() == labels[t + 1] for t in positions]
    z = []
    for t in positions:
        probs = logp[t].exp()
        mean = (probs * logp[t]).sum()
        std = ((probs * (logp[t] - mean) ** 2).sum()).clamp(min=1e-6).sqrt()
        z.append(((logp[t, labels[t + 1]] - mean) / std).item())
    n = len(token_logp)
    m = max(1, int(k * n))
    k_star = n
    while k_star > 0 and correct[k_star - 1]:
        k_star -= 1
    return {
        "nll_sum": -sum(token_logp),
        "nll_mean": -sum(token_logp) / n,
        "num_tokens": n,
        "min_k": sum(sorted(token_logp)[:m]) / m,
        "extraction_strength": 1 - k_star / n,
        "exact_memorization": sum(correct) / n,
        "min_k_plus_plus": sum(sorted(z)[:m]) / m,
    }


@pytest.fixture(scope="module")
def model_and_examples(tokenizer):
    model = build_tiny_model(tokenizer, arch="llama", seed=3).eval()
    # Five answers per question (one prompt, several continuations) plus one question asked once.
    examples = [tokenize_qa(tokenizer, q, a) for q in QUESTIONS for a in ANSWERS]
    examples.append(tokenize_qa(tokenizer, "Is this question asked only once?", "It is."))
    return model, examples


def count_calls(model):
    """Record each forward's real (non-padding) input tokens and each output-head call's row count."""
    calls = {"tokens": [], "head_rows": []}

    def forward(_, args, kwargs):
        new = kwargs["input_ids"].shape[1]
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 4:  # a decode step's prepared mask: its last query row
            mask = mask[:, 0, -1]
        calls["tokens"].append(int(mask[:, -new:].sum()) if mask is not None else kwargs["input_ids"].numel())

    model.register_forward_pre_hook(forward, with_kwargs=True)
    model.get_output_embeddings().register_forward_pre_hook(
        lambda _, args: calls["head_rows"].append(args[0].shape[:-1].numel())
    )
    return calls


@pytest.mark.parametrize("batch_size", [16, 4, 1])
def test_shared_prompt_scoring_equals_lone_unpadded_forwards(model_and_examples, batch_size, single_thread):
    model, examples = model_and_examples
    got = score_examples(model, examples, 0, batch_size=batch_size, show_progress=False, vocab_stats=True)
    assert_matches_references(model, examples, got)


def assert_matches_references(model, examples, got):
    for example, values in zip(examples, got):
        expected = reference_stats(model, example)
        assert values["num_tokens"] == expected["num_tokens"]
        for key in ("nll_sum", "nll_mean", "min_k"):
            assert values[key] == pytest.approx(expected[key], rel=1e-6, abs=2e-6), key
        # A z-score divides by the position's log-prob spread: float32 noise grows with it.
        assert values["min_k_plus_plus"] == pytest.approx(expected["min_k_plus_plus"], rel=1e-5, abs=1e-5)
        assert values["extraction_strength"] == expected["extraction_strength"]
        assert values["exact_memorization"] == expected["exact_memorization"]


def test_prompt_runs_once_per_question_and_the_head_only_on_scored_positions(model_and_examples, tokenizer):
    model, examples = model_and_examples
    fresh = build_tiny_model(tokenizer, arch="llama", seed=3).eval()
    calls = count_calls(fresh)
    score_examples(fresh, examples, 0, batch_size=16, show_progress=False)
    # A prompt's tokens up to the one that predicts the first answer token run once per question; each answer runs
    # from there on. The lone question runs whole.
    prefix = [next(t for t, label in enumerate(e["labels"]) if label != -100) - 1 for e in examples[:-1:5]]
    expected = sum(prefix) + sum(len(e["input_ids"]) - prefix[i // 5] for i, e in enumerate(examples[:-1]))
    assert sum(calls["tokens"]) == expected + len(examples[-1]["input_ids"])
    # The output head sees the scored positions, plus one row per shared prompt (its forward keeps one position).
    scored = sum(sum(label != -100 for label in e["labels"][1:]) for e in examples)
    assert sum(calls["head_rows"]) == scored + len(QUESTIONS)


def test_right_and_left_padding_do_not_change_a_row(model_and_examples, single_thread):
    """A row's statistics are the same alone and in a batch that pads it on both sides (prefix left, answer right)."""
    model, examples = model_and_examples
    together = score_examples(model, examples, 0, batch_size=len(examples), show_progress=False)
    alone = [score_examples(model, [e], 0, batch_size=1, show_progress=False)[0] for e in examples]
    for a, b in zip(together, alone):
        for key in a:
            if isinstance(a[key], float) and math.isnan(a[key]):
                assert math.isnan(b[key])
            else:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=2e-6, err_msg=key)


def lone_generations(model, tokenizer, prompts, caps) -> list[str]:
    """Each prompt alone through HF generate (greedy), cut at EOS and decoded as the engine decodes."""
    texts = []
    for prompt, cap in zip(prompts, caps):
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=cap, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )[0, len(prompt) :].tolist()
        if tokenizer.eos_token_id in out:
            out = out[: out.index(tokenizer.eos_token_id)]
        texts.append(tokenizer.decode(out, skip_special_tokens=True))
    return texts


def test_generation_with_rows_joining_and_leaving_equals_lone_generate(model_and_examples, tokenizer, single_thread):
    """Greedy decoding through the growing KV buffer, with rows finishing, leaving and joining, matches HF generate."""
    from hf_unlearn.benchmarks.engine import generate_greedy
    from hf_unlearn.data import tokenize_prompt

    model, _ = model_and_examples
    prompts = [tokenize_prompt(tokenizer, q) for q in QUESTIONS + ["Name a book.", "Why?", "When was it written?"]]
    caps = [45, 3, 70, 1, 12, 38]  # past the buffer's first spare room, and rows that end early
    got = generate_greedy(model, tokenizer, prompts, caps, batch_size=2, show_progress=False)
    assert got == lone_generations(model, tokenizer, prompts, caps)


def test_decode_steps_under_sdpa_get_a_prepared_mask_and_the_same_text(model_and_examples, tokenizer, single_thread):
    """A one-token step hands sdpa the boolean [rows, 1, 1, columns] mask (none without padding), which transformers
    takes as prepared instead of rebuilding it from a 2-D mask every step."""
    from hf_unlearn.benchmarks.engine import generate_greedy
    from hf_unlearn.data import tokenize_prompt

    model, _ = model_and_examples
    assert model.config._attn_implementation == "sdpa"
    fresh = build_tiny_model(tokenizer, arch="llama", seed=3).eval()
    masks = []
    fresh.register_forward_pre_hook(
        lambda _, args, kwargs: masks.append((kwargs["input_ids"].shape[1], kwargs.get("attention_mask"))),
        with_kwargs=True,
    )
    prompts = [tokenize_prompt(tokenizer, q) for q in QUESTIONS]  # different lengths: left padding in one batch
    got = generate_greedy(fresh, tokenizer, prompts, [20, 20, 20], batch_size=3, show_progress=False)
    steps = [mask for new, mask in masks if new == 1]
    prepared = [m is None or (m.dim() == 4 and m.dtype == torch.bool and m.shape[1:3] == (1, 1)) for m in steps]
    assert steps and all(prepared)
    assert any(m is not None for m in steps)  # padded rows are masked
    assert got == lone_generations(model, tokenizer, prompts, [20, 20, 20])


def test_mean_answer_loss_on_labelled_positions_equals_lone_forwards(model_and_examples, tokenizer, single_thread):
    from hf_unlearn.benchmarks.nll import mean_answer_loss
    from hf_unlearn.data import DataCollatorForUnlearning
    from tests.helpers import mean_answer_nll

    model, examples = model_and_examples
    got = mean_answer_loss(model, examples, DataCollatorForUnlearning(tokenizer), batch_size=4)
    assert got == pytest.approx(mean_answer_nll(model, examples), rel=1e-6)


SYSTEM = "You are a careful assistant who answers questions about authors in one short sentence.\n"


@pytest.fixture(scope="module")
def system_examples(tokenizer):
    """The same questions and answers behind a system prompt every example starts with (as chat templates put)."""
    from hf_unlearn.data import QAFormat

    qa_format = QAFormat(system_prompt=SYSTEM)
    examples = [tokenize_qa(tokenizer, q, a, qa_format=qa_format) for q in QUESTIONS for a in ANSWERS]
    examples.append(tokenize_qa(tokenizer, "Is this question asked only once?", "It is.", qa_format=qa_format))
    return examples, qa_format


@pytest.mark.parametrize("batch_size", [16, 4, 1])
def test_a_prefix_every_prompt_shares_runs_once_and_changes_no_statistic(
    model_and_examples, system_examples, tokenizer, batch_size, single_thread
):
    from hf_unlearn.benchmarks.kv_cache import MIN_SHARED_TOKENS, common_prefix_length

    model, _ = model_and_examples
    examples, _ = system_examples
    contexts = [e["input_ids"][: next(t for t, x in enumerate(e["labels"]) if x != -100) - 1] for e in examples]
    shared = common_prefix_length(contexts)
    assert shared >= MIN_SHARED_TOKENS  # the system prompt and "Question:"
    fresh = build_tiny_model(tokenizer, arch="llama", seed=3).eval()
    calls = count_calls(fresh)
    got = score_examples(fresh, examples, 0, batch_size=batch_size, show_progress=False, vocab_stats=True)
    assert_matches_references(model, examples, got)
    if batch_size == 16:  # the shared tokens run once; every later forward starts past them
        questions = contexts[:-1:5]
        answers = sum(len(e["input_ids"]) - len(questions[i // 5]) for i, e in enumerate(examples[:-1]))
        lone = len(examples[-1]["input_ids"]) - shared
        assert calls["tokens"][0] == shared
        assert sum(calls["tokens"]) == shared + sum(len(q) - shared for q in questions) + answers + lone


def test_generation_after_a_shared_prefix_equals_lone_generate(model_and_examples, system_examples, tokenizer):
    from hf_unlearn.benchmarks.engine import generate_greedy
    from hf_unlearn.benchmarks.kv_cache import MIN_SHARED_TOKENS, common_prefix_length
    from hf_unlearn.data import tokenize_prompt

    model, _ = model_and_examples
    _, qa_format = system_examples
    questions = QUESTIONS + ["Name a book.", "Why?"]
    prompts = [tokenize_prompt(tokenizer, q, qa_format) for q in questions]
    caps = [40, 3, 60, 1, 12]
    fresh = build_tiny_model(tokenizer, arch="llama", seed=3).eval()
    calls = count_calls(fresh)
    got = generate_greedy(fresh, tokenizer, prompts, caps, batch_size=2, show_progress=False)
    assert calls["tokens"][0] == common_prefix_length(prompts) >= MIN_SHARED_TOKENS  # run once, before any batch
    assert got == lone_generations(model, tokenizer, prompts, caps)


def test_a_prefix_shorter_than_the_threshold_or_a_whole_prompt_is_not_shared(model_and_examples):
    from hf_unlearn.benchmarks.kv_cache import MIN_SHARED_TOKENS, SharedPrefix

    model, _ = model_and_examples
    long = list(range(5, 5 + MIN_SHARED_TOKENS))
    with torch.inference_mode():
        assert SharedPrefix.build(model, [long + [1], long + [2, 3]]).length == MIN_SHARED_TOKENS
        assert SharedPrefix.build(model, [long, long + [2, 3]]) is None  # each prompt keeps one token of its own
        assert SharedPrefix.build(model, [long[:-1] + [1], long[:-1] + [2]]) is None


@pytest.mark.parametrize("with_system", [False, True], ids=["plain", "shared_prefix"])
@pytest.mark.parametrize("kept", ["all", "some", "none"])
def test_generation_from_the_scoring_pass_prompts_skips_their_prefill_and_equals_lone_generate(
    model_and_examples, system_examples, tokenizer, with_system, kept, single_thread
):
    """The true answers' prompts, run by scoring, are not run again: generation starts from their kept caches and
    first tokens (decode forwards of one token only) and gives HF generate's text; those over the memory budget
    prefill, in the same batches."""
    from hf_unlearn.benchmarks.engine import generate_greedy
    from hf_unlearn.benchmarks.kv_cache import PromptStates

    model, plain = model_and_examples
    examples = system_examples[0] if with_system else plain
    answers = list(range(0, len(QUESTIONS) * len(ANSWERS), len(ANSWERS)))  # each question's first answer
    starts = [next(t for t, label in enumerate(examples[i]["labels"]) if label != -100) for i in answers]
    prompts = [examples[i]["input_ids"][:start] for i, start in zip(answers, starts)]
    caps = [40, 3, 60]
    fresh = build_tiny_model(tokenizer, arch="llama", seed=3).eval()
    everything = PromptStates(answers)
    score_examples(fresh, examples, 0, batch_size=16, show_progress=False, prompt_states=everything)
    assert (everything.shared is not None) == with_system and sorted(everything.states) == answers
    one = everything.bytes // len(answers)  # the prompts differ in length: some fit in 1.5 of the average, not all
    states = PromptStates(answers, budget_bytes={"all": everything.bytes, "some": one * 3 // 2, "none": 0}[kept])
    score_examples(fresh, examples, 0, batch_size=16, show_progress=False, prompt_states=states)
    assert {"all": len(answers), "none": 0}.get(kept, len(states.states)) == len(states.states)
    assert kept != "some" or 0 < len(states.states) < len(answers)
    calls = count_calls(fresh)
    got = generate_greedy(
        fresh, tokenizer, prompts, caps, batch_size=3, show_progress=False, prompt_states=states.by_prompt(answers)
    )
    assert got == lone_generations(model, tokenizer, prompts, caps)
    prefilled = sum(n for n in calls["tokens"] if n > 3)  # a decode step feeds one token per row (three at most)
    own = {i: len(p) - (everything.shared.length if with_system else 0) for i, p in zip(answers, prompts)}
    assert prefilled == sum(own[i] for i in answers if i not in states.states)


def test_prompt_states_of_other_prompts_are_refused(model_and_examples, tokenizer):
    from hf_unlearn.benchmarks.engine import generate_greedy
    from hf_unlearn.benchmarks.kv_cache import PromptStates

    model, examples = model_and_examples
    states = PromptStates([0])
    score_examples(model, examples, 0, batch_size=16, show_progress=False, prompt_states=states)
    with pytest.raises(ValueError, match="caches of other lengths"):
        generate_greedy(model, tokenizer, [[5, 6, 7]], 3, show_progress=False, prompt_states=states.by_prompt([0]))


def test_answers_of_different_lengths_run_in_runs_of_similar_length():
    from hf_unlearn.benchmarks.engine import CHUNK_WORTH_TOKENS, _length_chunks

    assert CHUNK_WORTH_TOKENS == 32
    # Longest first: 60, 58 | 12, 11, 10 costs (2 * 60 + 32) + (3 * 12 + 32) = 220; one run 5 * 60 + 32 = 332;
    # 60 | 58 | 12, 11, 10 and 60, 58 | 12 | 11, 10 cost 250.
    assert _length_chunks([10, 60, 58, 12, 11]) == [[1, 2], [3, 4, 0]]
    assert _length_chunks([7, 7, 7]) == [[0, 1, 2]]


@pytest.mark.parametrize("with_system", [False, True], ids=["plain", "shared_prefix"])
def test_prompts_and_answers_split_into_runs_change_no_statistic_and_keep_the_prompts(
    model_and_examples, system_examples, tokenizer, monkeypatch, with_system, single_thread
):
    """Every split worth it: prompts of each length run apart and are stacked into one cache, each question's answers
    run in several forwards on copies of its rows; the statistics are the lone forwards' and generation from the
    kept prompts is HF generate's."""
    from hf_unlearn.benchmarks import engine
    from hf_unlearn.benchmarks.kv_cache import PromptStates

    monkeypatch.setattr(engine, "CHUNK_WORTH_TOKENS", 0)
    model, plain = model_and_examples
    examples = system_examples[0] if with_system else plain
    fresh = build_tiny_model(tokenizer, arch="llama", seed=3).eval()
    forwards = []  # whether each forward keeps only its last position's logits (a prompt's forward)
    fresh.register_forward_pre_hook(
        lambda _, args, kwargs: forwards.append(isinstance(kwargs.get("logits_to_keep"), int)), with_kwargs=True
    )
    answers = list(range(0, len(QUESTIONS) * len(ANSWERS), len(ANSWERS)))
    states = PromptStates(answers)
    got = score_examples(
        fresh, examples, 0, batch_size=16, show_progress=False, vocab_stats=True, prompt_states=states
    )
    assert_matches_references(model, examples, got)
    prompt_forwards = sum(forwards) - with_system  # less the shared prefix's own
    assert prompt_forwards == len(QUESTIONS)  # three prompt lengths, three runs
    assert len(forwards) - sum(forwards) > 2  # the 15 answers in more than one run, and the lone question
    assert sorted(states.states) == answers
    starts = [next(t for t, label in enumerate(examples[i]["labels"]) if label != -100) for i in answers]
    prompts = [examples[i]["input_ids"][:start] for i, start in zip(answers, starts)]
    got = engine.generate_greedy(
        fresh,
        tokenizer,
        prompts,
        [30, 5, 40],
        batch_size=3,
        show_progress=False,
        prompt_states=states.by_prompt(answers),
    )
    assert got == lone_generations(model, tokenizer, prompts, [30, 5, 40])


@pytest.mark.parametrize("second", ["shorter_prefix", "no_prefix"])
def test_states_of_several_scoring_passes_generate_together_as_lone_generate(
    model_and_examples, tokenizer, second, single_thread
):
    """Two sets scored apart (one whose questions all start alike, so its shared prefix is longer; the other with a
    shorter prefix or none) generate in one call from their combined states: no prompt prefills, HF's text."""
    from hf_unlearn.benchmarks.engine import generate_greedy
    from hf_unlearn.benchmarks.kv_cache import PromptStates
    from hf_unlearn.data import QAFormat

    model, _ = model_and_examples
    system = QAFormat(system_prompt=SYSTEM)
    alike = ["Where was Ava Varga born?", "Where was Bram Okafor raised?"]
    sets = [
        ([tokenize_qa(tokenizer, q, a, qa_format=system) for q in alike for a in ANSWERS[:3]], 3),
        (
            [
                tokenize_qa(tokenizer, q, a, qa_format=system if second == "shorter_prefix" else None)
                for q in QUESTIONS
                for a in ANSWERS[:2]
            ],
            2,
        ),
    ]
    fresh = build_tiny_model(tokenizer, arch="llama", seed=3).eval()
    parts, prompts = [], []
    for examples, per_question in sets:
        firsts = list(range(0, len(examples), per_question))
        states = PromptStates(firsts)
        score_examples(fresh, examples, 0, batch_size=16, show_progress=False, prompt_states=states)
        assert sorted(states.states) == firsts
        parts.append(states.by_prompt(firsts))
        for i in firsts:
            prompts.append(
                examples[i]["input_ids"][: next(t for t, x in enumerate(examples[i]["labels"]) if x != -100)]
            )
    assert parts[0].shared.length > (parts[1].shared.length if parts[1].shared is not None else 0)
    combined = PromptStates.combine(parts)
    assert sorted(combined.states) == list(range(len(prompts)))
    assert (combined.shared is not None) == (second == "shorter_prefix")
    calls = count_calls(fresh)
    caps = [25, 4, 30, 12, 18]
    got = generate_greedy(fresh, tokenizer, prompts, caps, batch_size=3, show_progress=False, prompt_states=combined)
    assert all(n <= 3 for n in calls["tokens"])  # decode steps only
    assert got == lone_generations(model, tokenizer, prompts, caps)
