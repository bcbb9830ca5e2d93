import json

import numpy as np
import pytest
from rouge_score import rouge_scorer

from hf_unlearn import benchmarks
from hf_unlearn.benchmarks.muse import RETAIN_STATS_FORMAT, MuseBenchmark, few_shot_prompt
from hf_unlearn.tiny import build_tiny_model
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


def write_muse(folder, verbmem_gt_words=12, drop=None):
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
    write("privleak", "forget", [{"text": t} for t in FORGET_TEXT])
    write("privleak", "holdout", [{"text": t} for t in HOLDOUT_TEXT])
    return folder


@pytest.fixture(scope="module")
def tokenizer():
    return synthetic_tokenizer()


def forced_table(tokenizer):
    """Random bigram logits, except that after ':' the model says ' P' then newlines forever."""
    table = random_table(len(tokenizer), seed=7)
    colon, answer, newline = (tokenizer.convert_tokens_to_ids(t) for t in (":", "ĠP", "Ċ"))
    table[colon, answer] = table[answer, newline] = table[newline, newline] = 50.0
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
    # KnowMem prompts end in "Answer:", so the forced chain answers "P" and the "\n\n" stop string cuts the rest.
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
    assert prompt == "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\nQuestion: Q3?\nAnswer:"


def test_original_mode_cuts_ground_truth_to_128_tokens_and_turns_stemmer_off(tmp_path, tokenizer):
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
    assert result.metrics["privleak"] == pytest.approx(((1 - result.metrics["mia_min_k_auc"]) - 0.5) / 0.5 * 100)
    assert "no retain-model statistics" in result.config["privleak_reference"]


def test_muse_on_tiny_model_with_retain_model_reference(tmp_path, tokenizer):
    data = write_muse(tmp_path / "muse")
    retain_dir = tmp_path / "retain"
    build_tiny_model(tokenizer, seed=9).save_pretrained(retain_dir)
    tokenizer.save_pretrained(retain_dir)
    model = build_tiny_model(tokenizer, seed=10)
    bench = MuseBenchmark(
        data_dir=data, retain_model=retain_dir, verbmem_new_tokens=8, knowmem_new_tokens=4, show_progress=False
    )
    result = bench.evaluate(model, tokenizer)
    cache = list(retain_dir.glob("hf_unlearn_muse_retain_stats_*.json"))
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
