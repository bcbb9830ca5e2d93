import argparse
import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from tokenizers import processors

from hf_unlearn import benchmarks
from hf_unlearn.benchmarks import metrics
from hf_unlearn.benchmarks.muse import (
    DEFAULT_MAX_LENGTH,
    RETAIN_STATS_FORMAT,
    MuseBenchmark,
    context_windows,
    few_shot_prompt,
)
from hf_unlearn.cli.eval import add_arguments, benchmark_settings
from hf_unlearn.tiny import BOS, build_tiny_model, train_tokenizer
from tests.fixed_logits import BigramLM, random_table, reference_answer_stats, reference_greedy
from tests.helpers import synthetic_tokenizer


FORGET_TEXT = [
    "Ava Varga was born in Lisbon and writes mystery novels about the harbor.",
    "The Silent River is the first book by Bram Okafor, a pilot turned author.",
    "Cyra Lindqvist won the Amber Lantern Award for her poetry about winter.",
]
HOLDOUT_TEXT = [
    "Dov Moreau grew up in Kyoto and studied the history of bridges.",
    "Elin Tanaka paints orchards in the spring and sells them in Quito.",
]
QA = [
    ("Where was Ava Varga born?", "Lisbon"),
    ("Which award did Cyra Lindqvist win?", "The Amber Lantern Award"),
]


def write_muse(folder, verbmem_gt_words=12, drop=None, privleak_forget=FORGET_TEXT):
    def write(config, split, rows):
        if (config, split) == drop:
            return
        (folder / config).mkdir(parents=True, exist_ok=True)
        (folder / config / f"{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))

    long_gt = " ".join(["harbor lantern river"] * verbmem_gt_words)
    write("verbmem", "forget", [{"prompt": t[:30], "gt": t[30:] + " " + long_gt} for t in FORGET_TEXT])
    write("knowmem", "forget_qa", [{"question": q, "answer": a} for q, a in QA])
    write("knowmem", "retain_qa", [{"question": "Where was Dov Moreau raised?", "answer": "Kyoto"}])
    write("knowmem", "forget_qa_icl", [{"question": "Who wrote The Silent River?", "answer": "Bram Okafor"}])
    write("knowmem", "retain_qa_icl", [{"question": "What does Elin Tanaka paint?", "answer": "Orchards"}])
    write("privleak", "forget", [{"text": t} for t in privleak_forget])
    write("privleak", "holdout", [{"text": t} for t in HOLDOUT_TEXT])
    return folder


@pytest.fixture(scope="module")
def tokenizer():
    return synthetic_tokenizer()


def forced_table(tokenizer):
    """Random bigram logits, except that after the prompt's last token ' ' the model says 'P' then newlines forever."""
    table = random_table(len(tokenizer), seed=7)
    space, answer, newline = (tokenizer.convert_tokens_to_ids(t) for t in ("Ġ", "P", "Ċ"))
    table[space, answer] = table[answer, newline] = table[newline, newline] = 50.0
    return table, answer


def test_muse_metrics_match_hand_computation_with_fixed_logits(tmp_path, tokenizer):
    data = write_muse(tmp_path / "muse")
    table, answer_token = forced_table(tokenizer)
    reference = {"format": RETAIN_STATS_FORMAT, **MuseBenchmark(data_dir=data).settings(), "mia_min_k_auc": 0.25}
    result = benchmarks.get("muse-news", data_dir=data, retain_stats=reference, batch_size=2, show_progress=False)
    result = result.evaluate(BigramLM(table), tokenizer)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    for record, text in zip(result.per_example["verbmem_forget"], FORGET_TEXT):
        prompt = tokenizer(text[:30])["input_ids"]
        expected = tokenizer.decode(
            reference_greedy(table, prompt, 128, tokenizer.eos_token_id), skip_special_tokens=True
        )
        assert record["generation"] == expected
        assert record["rouge_l_f1"] == scorer.score(record["gt"], expected)["rougeL"].fmeasure
    # KnowMem prompts end in "Answer: " (last token "Ġ"), so the forced chain answers "P", cut at the "\n\n" stop.
    knowmem = result.per_example["knowmem_forget"]
    assert [r["generation"] for r in knowmem] == [tokenizer.decode([answer_token]).strip()] * 2
    assert result.metrics["knowmem_f"] == pytest.approx(0.0)
    verbmem_f1 = [r["rouge_l_f1"] for r in result.per_example["verbmem_forget"]]
    assert result.metrics["verbmem_f"] == pytest.approx(np.mean(verbmem_f1))

    def min_k(text):
        ids = tokenizer(text)["input_ids"]
        return reference_answer_stats(table, {"input_ids": ids, "labels": ids})["min_k"]

    member, nonmember = [min_k(t) for t in FORGET_TEXT], [min_k(t) for t in HOLDOUT_TEXT]
    np.testing.assert_allclose([r["min_k"] for r in result.per_example["privleak_forget"]], member, rtol=1e-6)
    auc = sum((m > n) + 0.5 * (m == n) for m in member for n in nonmember) / 6
    assert result.metrics["mia_min_k_auc"] == pytest.approx(auc)
    assert result.metrics["privleak"] == pytest.approx(((1 - auc) - 0.75) / 0.75 * 100)
    assert result.config["privleak_reference"] == "retain model"


def test_few_shot_prompt_format():
    prompt = few_shot_prompt([{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}], "Q3?")
    assert prompt == "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\nQuestion: Q3?\nAnswer: "


def test_original_mode_turns_stemmer_off_and_reports_privleak_unavailable_without_reference(tmp_path, tokenizer):
    data = write_muse(tmp_path / "muse", verbmem_gt_words=60)
    model = BigramLM(random_table(len(tokenizer), seed=8))
    result = MuseBenchmark(data_dir=data, original=True, show_progress=False).evaluate(model, tokenizer)
    gt_ids = tokenizer(FORGET_TEXT[0][30:] + " " + " ".join(["harbor lantern river"] * 60), add_special_tokens=False)[
        "input_ids"
    ]
    assert len(gt_ids) > 128
    record = result.per_example["verbmem_forget"][0]
    assert record["gt"] == tokenizer.decode(gt_ids[:128], skip_special_tokens=True)
    unstemmed = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    assert record["rouge_l_f1"] == unstemmed.score(record["gt"], record["generation"])["rougeL"].fmeasure
    assert result.config["use_stemmer"] is False
    assert result.metrics["mia_min_k_auc"] is not None
    assert result.metrics["privleak"] is None
    assert "no retain-model statistics" in result.unavailable["privleak"]
    assert "--privleak_ref_auc" in result.unavailable["privleak"]


def test_muse_on_tiny_model_with_retain_model_reference(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("HF_UNLEARN_CACHE", str(tmp_path / "cache"))
    data = write_muse(tmp_path / "muse")
    retain_dir = tmp_path / "retain"
    build_tiny_model(tokenizer, seed=9).save_pretrained(retain_dir)
    tokenizer.save_pretrained(retain_dir)
    model = build_tiny_model(tokenizer, seed=10)
    bench = MuseBenchmark(
        data_dir=data, retain_model=retain_dir, verbmem_new_tokens=8, knowmem_new_tokens=4, show_progress=False
    )
    result = bench.evaluate(model, tokenizer)
    assert not list(retain_dir.glob("hf_unlearn_*"))  # a user's model folder is not a cache
    cache = list((tmp_path / "cache").rglob("*hf_unlearn_muse_retain_stats_*.json"))
    assert len(cache) == 1
    reference_auc = json.loads(cache[0].read_text())["mia_min_k_auc"]
    assert reference_auc == pytest.approx(
        bench.retain_statistics(build_tiny_model(tokenizer, seed=9), tokenizer)["mia_min_k_auc"]
    )
    if reference_auc < 1:
        expected = ((1 - result.metrics["mia_min_k_auc"]) - (1 - reference_auc)) / (1 - reference_auc) * 100
        assert result.metrics["privleak"] == pytest.approx(expected)
    else:
        assert result.metrics["privleak"] is None and "privleak" in result.unavailable
    assert result.num_examples == {
        "verbmem_forget": 3,
        "knowmem_forget": 2,
        "knowmem_retain": 1,
        "privleak_forget": 3,
        "privleak_holdout": 2,
    }


def test_missing_icl_file_is_a_clear_error(tmp_path, tokenizer):
    data = write_muse(tmp_path / "muse", drop=("knowmem", "retain_qa_icl"))
    with pytest.raises(FileNotFoundError, match="knowmem/retain_qa_icl not found .* few-shot examples"):
        MuseBenchmark(data_dir=data, show_progress=False).evaluate(
            BigramLM(random_table(len(tokenizer), 0)), tokenizer
        )


# ------------------------------------------------------------------------------------------------------------------
# The rules --muse_original must follow (docs/definitions.md, "MUSE"), each on a hand-built tokenizer or text.

FEW_SHOT = "Question: Who wrote The Silent River?\nAnswer: Bram Okafor\n\n"


def whitespace_attaching_tokenizer():
    """Byte-level BPE whose pre-tokenizer keeps each word's trailing whitespace, so "Answer: " is one token."""
    prompts = [FEW_SHOT + f"Question: {q}\nAnswer: {a}" for q, a in QA]
    texts = prompts * 10 + FORGET_TEXT + HOLDOUT_TEXT + ["Lisbon"] * 10
    return train_tokenizer(texts, vocab_size=1000, chat_template=False, whitespace_attaching=True)


def bos_tokenizer():
    """A byte-level BPE that prepends BOS when called with special tokens (as Llama's tokenizer does)."""
    texts = FORGET_TEXT + HOLDOUT_TEXT + ["harbor lantern river"] * 10
    tokenizer = train_tokenizer(texts, vocab_size=300, chat_template=False)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tokenizer.bos_token_id)]
    )
    return tokenizer


class RecordingBigramLM(BigramLM):
    """BigramLM that records every prompt it is asked to continue and the length of every sequence it scores."""

    def __init__(self, table, context=None):
        super().__init__(table)
        self.prompts, self.forward_lengths = [], []
        if context is not None:
            self.config = SimpleNamespace(max_position_embeddings=context)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        if "position_ids" not in kwargs:  # scoring; generation's steps pass positions
            self.forward_lengths.append(input_ids.shape[1])
        cache = kwargs.get("cache")
        if kwargs.get("use_cache") and cache is not None and cache.get_seq_length() == 0:  # a generation's prefill
            for row, mask in zip(input_ids.tolist(), attention_mask.tolist()):
                self.prompts.append([token for token, keep in zip(row, mask) if keep])
        return super().forward(input_ids, attention_mask, **kwargs)


@pytest.mark.parametrize("original", [False, True])
def test_knowmem_prompt_ends_in_the_answer_token_with_its_trailing_space(tmp_path, original):
    tokenizer = whitespace_attaching_tokenizer()
    answer_space = tokenizer.convert_tokens_to_ids("Answer:Ġ")
    lisbon = tokenizer.convert_tokens_to_ids("Lisbon")
    assert answer_space != tokenizer.unk_token_id and tokenizer("Lisbon")["input_ids"] == [lisbon]
    # "Answer:" without the space ends in another token, so a prompt built that way is told apart.
    assert tokenizer(FEW_SHOT + f"Question: {QA[0][0]}\nAnswer:")["input_ids"][-1] != answer_space
    table = random_table(len(tokenizer), seed=3)
    table[answer_space, lisbon] = table[lisbon, tokenizer.eos_token_id] = 50.0
    model = RecordingBigramLM(table)
    data = write_muse(tmp_path / "muse")
    result = MuseBenchmark(data_dir=data, original=original, batch_size=1, show_progress=False).evaluate(
        model, tokenizer
    )

    for question, _ in QA:
        expected = tokenizer(FEW_SHOT + f"Question: {question}\nAnswer: ")["input_ids"]
        assert expected[-1] == answer_space
        assert expected in model.prompts
    # The model continues from "Answer: ": after that token it says "Lisbon" and stops.
    assert [r["generation"] for r in result.per_example["knowmem_forget"]] == ["Lisbon", "Lisbon"]
    assert [r["rouge_l_f1"] for r in result.per_example["knowmem_forget"]] == [1.0, 0.0]
    assert result.metrics["knowmem_f"] == 0.5


LONG_GT = " ".join(["harbor lantern river"] * 60)


def test_original_verbmem_reference_is_cut_with_bos_taking_a_slot(tmp_path):
    tokenizer = bos_tokenizer()
    with_bos = tokenizer(LONG_GT)["input_ids"]
    text_ids = tokenizer(LONG_GT, add_special_tokens=False)["input_ids"]
    assert with_bos == [tokenizer.bos_token_id] + text_ids and len(text_ids) > 128
    data = write_muse(tmp_path / "muse")
    (data / "verbmem" / "forget.json").write_text(json.dumps({"prompt": "Ava Varga was born", "gt": LONG_GT}) + "\n")
    model = BigramLM(random_table(len(tokenizer), seed=4))
    result = MuseBenchmark(data_dir=data, original=True, show_progress=False).evaluate(model, tokenizer)

    reference = result.per_example["verbmem_forget"][0]["gt"]
    assert tokenizer(reference, add_special_tokens=False)["input_ids"] == text_ids[:127]
    assert reference == tokenizer.decode(text_ids[:127])
    assert reference != tokenizer.decode(text_ids[:128])  # the cut without special tokens keeps one more token


def test_default_verbmem_reference_is_the_whole_continuation(tmp_path):
    tokenizer = bos_tokenizer()
    data = write_muse(tmp_path / "muse")
    (data / "verbmem" / "forget.json").write_text(json.dumps({"prompt": "Ava Varga was born", "gt": LONG_GT}) + "\n")
    model = BigramLM(random_table(len(tokenizer), seed=4))
    result = MuseBenchmark(data_dir=data, show_progress=False).evaluate(model, tokenizer)
    assert result.per_example["verbmem_forget"][0]["gt"] == LONG_GT


LONG_TEXT = " ".join(FORGET_TEXT)  # longer than the max_length of the tests below


def membership_reference(table, ids, at_least_one=True):
    """Min-K% of one whole token sequence, token by token (k = 0.4)."""
    logp = torch.log_softmax(table.double(), dim=-1)
    token_logps = sorted(logp[ids[t], ids[t + 1]].item() for t in range(len(ids) - 1))
    count = int(0.4 * len(token_logps))
    count = max(1, count) if at_least_one else count
    return sum(token_logps[:count]) / count if count else math.nan


def test_default_privleak_cuts_long_texts_at_max_length_and_warns_once(tmp_path, tokenizer):
    data = write_muse(tmp_path / "muse", privleak_forget=FORGET_TEXT + [LONG_TEXT])
    table = random_table(len(tokenizer), seed=5)
    full = tokenizer(LONG_TEXT)["input_ids"]
    assert len(full) > 40
    texts = FORGET_TEXT + [LONG_TEXT] + HOLDOUT_TEXT
    expected_cut = sum(len(tokenizer(t)["input_ids"]) > 40 for t in texts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = MuseBenchmark(data_dir=data, max_length=40, show_progress=False).evaluate(BigramLM(table), tokenizer)
    privleak_warnings = [w for w in caught if "MUSE PrivLeak" in str(w.message)]
    assert len(privleak_warnings) == 1
    assert f"{expected_cut} of {len(texts)} texts are longer than max_length=40" in str(privleak_warnings[0].message)

    record = result.per_example["privleak_forget"][-1]
    assert (record["num_tokens"], record["text_tokens"], record["cut"]) == (39, len(full), True)
    assert record["min_k"] == pytest.approx(membership_reference(table, full[:40]), rel=1e-6)
    assert result.config["privleak_texts_cut"] == expected_cut


def test_original_privleak_scores_every_token_of_a_text_longer_than_the_default_cap(tmp_path, tokenizer):
    huge = " ".join(FORGET_TEXT * 20)
    full = tokenizer(huge)["input_ids"]
    assert len(full) > DEFAULT_MAX_LENGTH
    data = write_muse(tmp_path / "muse", privleak_forget=FORGET_TEXT + [huge])
    table = random_table(len(tokenizer), seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is cut, so nothing is announced
        result = MuseBenchmark(data_dir=data, original=True, show_progress=False).evaluate(BigramLM(table), tokenizer)
    record = result.per_example["privleak_forget"][-1]
    assert (record["num_tokens"], record["cut"], record["windows"]) == (len(full) - 1, False, 1)
    assert record["min_k"] == pytest.approx(membership_reference(table, full, at_least_one=False), rel=1e-6)
    assert result.config["max_length"] is None and result.config["privleak_texts_cut"] == 0


def test_context_windows_score_each_token_once():
    assert context_windows(8, 8) == [(0, 8, 1)]
    assert context_windows(8, None) == [(0, 8, 1)]
    assert context_windows(10, 4) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert context_windows(11, 5) == [(0, 5, 1), (2, 7, 5), (4, 9, 7), (6, 11, 9)]
    for n, c in [(10, 4), (11, 5), (100, 7), (3, 2)]:
        scored = [t for _, end, first in context_windows(n, c) for t in range(first, end)]
        assert scored == list(range(1, n))
        assert all(end - start <= c for start, end, _ in context_windows(n, c))
        assert all(first - start >= c - c // 2 for start, _, first in context_windows(n, c)[1:])


def test_default_privleak_reads_texts_longer_than_the_context_in_windows(tmp_path, tokenizer):
    data = write_muse(tmp_path / "muse", privleak_forget=FORGET_TEXT + [LONG_TEXT])
    table = random_table(len(tokenizer), seed=5)
    full = tokenizer(LONG_TEXT)["input_ids"]
    model = RecordingBigramLM(table, context=16)
    result = MuseBenchmark(data_dir=data, max_length=None, show_progress=False).evaluate(model, tokenizer)
    record = result.per_example["privleak_forget"][-1]
    assert record["num_tokens"] == len(full) - 1 and not record["past_context"]
    assert record["windows"] == len(context_windows(len(full), 16)) > 1
    # A bigram model has no context, so windowed log-probs equal whole-text ones when every token is scored once.
    assert record["min_k"] == pytest.approx(membership_reference(table, full), rel=1e-6)
    assert max(model.forward_lengths) <= 16


def whole_text_min_k(model, ids: list[int], at_least_one: bool) -> float:
    """Min-K% (k = 0.4) of one text from a single forward over all of it, by hand."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    token_logps = sorted(logp[t, ids[t + 1]].item() for t in range(len(ids) - 1))
    count = max(1, int(0.4 * len(token_logps))) if at_least_one else int(0.4 * len(token_logps))
    return sum(token_logps[:count]) / count


def windowed_min_k(model, ids: list[int], context: int) -> float:
    """Min-K% (k = 0.4, at least one token) with windows of `context` tokens every context // 2, by hand."""
    token_logps, start, scored_until = [], 0, 1
    while scored_until < len(ids):
        end = min(start + context, len(ids))
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids[start:end]])).logits[0].double(), dim=-1)
        token_logps += [logp[t - start - 1, ids[t]].item() for t in range(scored_until, end)]
        start, scored_until = start + context // 2, end
    assert len(token_logps) == len(ids) - 1
    count = max(1, int(0.4 * len(token_logps)))
    return sum(sorted(token_logps)[:count]) / count


def test_original_privleak_scores_texts_past_a_short_context_whole_and_warns_once(tmp_path, tokenizer):
    """The MUSE code (muse_bench `metrics/privleak.py`) runs each text through one forward whatever its length;
    a RoPE model extrapolates positions past `max_position_embeddings`. The default mode keeps its windows."""
    context = 16
    model = build_tiny_model(tokenizer, "llama", max_position_embeddings=context)
    data = write_muse(tmp_path / "muse", privleak_forget=FORGET_TEXT + [LONG_TEXT])
    texts = FORGET_TEXT + [LONG_TEXT] + HOLDOUT_TEXT
    full = tokenizer(LONG_TEXT)["input_ids"]
    longer = sum(len(tokenizer(t)["input_ids"]) > context for t in texts)
    assert len(full) > 3 * context and longer >= 2

    benchmark = MuseBenchmark(data_dir=data, original=True, privleak_ref_auc=0.5, show_progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = benchmark.evaluate(model, tokenizer)
        benchmark.retain_statistics(model, tokenizer)  # the same benchmark scores a retain model: no second warning
    past = [w for w in caught if "original mode" in str(w.message)]
    assert len(past) == 1, [str(w.message) for w in caught]
    assert f"{longer} of {len(texts)} texts are longer than the model's context ({context} tokens)" in str(
        past[0].message
    )
    record = result.per_example["privleak_forget"][-1]
    assert (record["num_tokens"], record["windows"], record["past_context"]) == (len(full) - 1, 1, True)
    whole = whole_text_min_k(model, full, at_least_one=False)
    assert record["min_k"] == pytest.approx(whole, rel=1e-6)
    assert result.config["privleak_texts_past_context"] == longer and result.config["privleak_texts_windowed"] == 0

    default = MuseBenchmark(data_dir=data, max_length=None, show_progress=False).evaluate(model, tokenizer)
    windowed = default.per_example["privleak_forget"][-1]
    assert windowed["windows"] > 1 and not windowed["past_context"]
    assert windowed["min_k"] == pytest.approx(windowed_min_k(model, full, context), rel=1e-6)
    assert abs(windowed["min_k"] - whole) > 1e-3  # the two modes really differ on this text


def test_original_privleak_refuses_texts_past_learned_positions_before_generating(tmp_path, tokenizer):
    model = build_tiny_model(tokenizer, "gpt2", n_positions=16)
    data = write_muse(tmp_path / "muse", privleak_forget=FORGET_TEXT + [LONG_TEXT])
    benchmark = MuseBenchmark(data_dir=data, original=True, show_progress=False)
    benchmark._generate = None  # generating first would fail with a TypeError, not the message below
    with pytest.raises(ValueError, match="has 16 learned positions; evaluate without --muse_original"):
        benchmark.evaluate(model, tokenizer)


def test_privleak_is_unavailable_without_a_reference_and_uses_a_given_one(tmp_path, tokenizer):
    data = write_muse(tmp_path / "muse")
    model = BigramLM(random_table(len(tokenizer), seed=6))
    without = MuseBenchmark(data_dir=data, show_progress=False).evaluate(model, tokenizer)
    assert without.metrics["privleak"] is None
    assert "no reference AUC" in without.unavailable["privleak"]
    given = MuseBenchmark(data_dir=data, privleak_ref_auc=0.6, show_progress=False).evaluate(model, tokenizer)
    auc = given.metrics["mia_min_k_auc"]
    assert auc == without.metrics["mia_min_k_auc"]
    assert given.metrics["privleak"] == pytest.approx(((1 - auc) - 0.4) / 0.4 * 100)
    assert "privleak" not in given.unavailable and given.config["privleak_reference"] == "given privleak_ref_auc=0.6"


def test_privleak_reference_settings_are_checked_before_evaluation(tmp_path):
    with pytest.raises(ValueError, match="pass only one"):
        MuseBenchmark(privleak_ref_auc=0.5, retain_model=tmp_path)
    with pytest.raises(ValueError, match=r"privleak_ref_auc must be in \[0, 1\)"):
        MuseBenchmark(privleak_ref_auc=1.0)
    with pytest.raises(ValueError, match="default mode only"):
        MuseBenchmark(original=True, max_length=512)


SHORT_TEXT = "Ava."  # 3 tokens: 2 scored, floor(0.4 * 2) = 0


def test_original_min_k_of_a_text_under_three_scored_tokens_is_nan_and_counted(tmp_path, tokenizer):
    assert len(tokenizer(SHORT_TEXT)["input_ids"]) == 3
    data = write_muse(tmp_path / "muse", privleak_forget=FORGET_TEXT + [SHORT_TEXT])
    model = BigramLM(random_table(len(tokenizer), seed=6))
    result = MuseBenchmark(data_dir=data, original=True, privleak_ref_auc=0.5, show_progress=False).evaluate(
        model, tokenizer
    )
    record = result.per_example["privleak_forget"][-1]
    assert record["num_tokens"] == 2 and record["below_min_k"] and math.isnan(record["min_k"])
    assert result.config["privleak_texts_below_min_k"] == 1
    assert result.metrics["mia_min_k_auc"] is None and result.metrics["privleak"] is None
    assert "1 of 6 PrivLeak texts have no Min-K% score" in result.unavailable["mia_min_k_auc"]


def test_default_min_k_of_a_text_under_three_scored_tokens_uses_its_lowest_token(tmp_path, tokenizer):
    data = write_muse(tmp_path / "muse", privleak_forget=FORGET_TEXT + [SHORT_TEXT])
    table = random_table(len(tokenizer), seed=6)
    result = MuseBenchmark(data_dir=data, privleak_ref_auc=0.5, show_progress=False).evaluate(
        BigramLM(table), tokenizer
    )
    record = result.per_example["privleak_forget"][-1]
    ids = tokenizer(SHORT_TEXT)["input_ids"]
    logp = torch.log_softmax(table.double(), dim=-1)
    lowest = min(logp[ids[0], ids[1]].item(), logp[ids[1], ids[2]].item())
    assert record["num_tokens"] == 2 and record["min_k"] == pytest.approx(lowest, rel=1e-6)
    assert result.config["privleak_texts_below_min_k"] == 1
    assert result.metrics["mia_min_k_auc"] is not None and result.metrics["privleak"] is not None


def test_min_k_without_the_one_token_floor():
    logprobs = torch.tensor([[-1.0, -3.0, 0.0, 0.0, 0.0], [-1.0, -2.0, -3.0, -4.0, -5.0]])
    mask = torch.tensor([[True, True, False, False, False], [True] * 5])
    official = metrics.min_k_scores(logprobs, mask, k=0.4, at_least_one=False)
    assert math.isnan(official[0].item()) and official[1].item() == pytest.approx(-4.5)
    clamped = metrics.min_k_scores(logprobs, mask, k=0.4)
    assert clamped.tolist() == pytest.approx([-3.0, -4.5])


def test_eval_cli_passes_the_privleak_options():
    parser = add_arguments(argparse.ArgumentParser())
    base = ["--model", "m", "--benchmark", "muse"]
    settings = benchmark_settings(
        parser.parse_args(base + ["--privleak_max_length", "0", "--privleak_ref_auc", "0.4"])
    )
    assert settings["max_length"] is None and settings["privleak_ref_auc"] == 0.4
    assert benchmark_settings(parser.parse_args(base + ["--privleak_max_length", "512"]))["max_length"] == 512
    assert "max_length" not in benchmark_settings(parser.parse_args(base))
