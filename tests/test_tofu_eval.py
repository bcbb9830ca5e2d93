import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from scipy import stats

from hf_unlearn import benchmarks
from hf_unlearn.benchmarks.engine import generate_greedy, score_examples
from hf_unlearn.benchmarks.synthetic import write_synthetic_tofu
from hf_unlearn.benchmarks.tofu import TofuBenchmark
from hf_unlearn.data import tokenize_prompt, tokenize_qa
from hf_unlearn.report import UnlearnReport
from hf_unlearn.tiny import build_tiny_model
from tests.fixed_logits import BigramLM, random_table, reference_answer_stats, reference_greedy
from tests.helpers import synthetic_tokenizer


GENERATION = 12


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return write_synthetic_tofu(tmp_path_factory.mktemp("tofu"), num_authors=10, qa_per_author=4, seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    return synthetic_tokenizer()


def bench(data_dir, **kwargs):
    defaults = {
        "forget_split": "forget10",
        "data_dir": data_dir,
        "max_new_tokens": GENERATION,
        "batch_size": 3,
        "show_progress": False,
    }
    return TofuBenchmark(**{**defaults, **kwargs})


def expected_records(table, tokenizer, benchmark, set_name, cap=GENERATION):
    """Per-example values of a BigramLM, recomputed one example and one token at a time."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    out = []
    for row in benchmark.load_rows(set_name):

        def stats_of(answer, row=row):
            return reference_answer_stats(table, tokenize_qa(tokenizer, row["question"], answer))

        answer = stats_of(row["answer"])
        record = {"prob": math.exp(-answer["nll_mean"]), **answer}
        if set_name != "holdout":
            prompt = tokenize_prompt(tokenizer, row["question"])
            budget = cap(prompt) if callable(cap) else cap
            generated = tokenizer.decode(
                reference_greedy(table, prompt, budget, tokenizer.eos_token_id), skip_special_tokens=True
            )
            record["generation"] = generated
            record["rouge_l_recall"] = scorer.score(row["answer"], generated)["rougeL"].recall
            wrong = [stats_of(a)["nll_mean"] for a in row["perturbed_answer"]]
            correct = (
                stats_of(row["paraphrased_answer"])["nll_mean"] if "paraphrased_answer" in row else answer["nll_mean"]
            )
            # TR = geometric mean of wrong probabilities / correct probability.
            record["truth_ratio"] = math.prod(math.exp(-w) for w in wrong) ** (1 / len(wrong)) / math.exp(-correct)
            p_wrong = sum(math.exp(-w) for w in wrong)
            record["normalised_prob"] = record["prob"] / (record["prob"] + p_wrong)
        out.append(record)
    return out


def pairwise_auc(members, nonmembers):
    wins = sum((m > n) + 0.5 * (m == n) for m in members for n in nonmembers)
    return wins / (len(members) * len(nonmembers))


def test_tofu_metrics_match_hand_computation_with_fixed_logits(synthetic_dir, tokenizer):
    table, retain_table = random_table(len(tokenizer), seed=0), random_table(len(tokenizer), seed=1)
    benchmark = bench(synthetic_dir)
    reference_stats = benchmark.retain_statistics(BigramLM(retain_table), tokenizer)
    result = bench(synthetic_dir, retain_stats=reference_stats).evaluate(BigramLM(table), tokenizer)

    expected = {s: expected_records(table, tokenizer, benchmark, s) for s in benchmarks.tofu.SETS}
    for set_name, rows in expected.items():
        got = result.per_example[set_name]
        assert len(got) == len(rows) == result.num_examples[set_name]
        for key in rows[0]:
            if key == "normalised_prob" and set_name in ("forget", "retain"):
                continue
            values = [g[key] for g in got]
            if key == "generation":
                assert values == [r[key] for r in rows]
            else:
                np.testing.assert_allclose(values, [r[key] for r in rows], rtol=1e-6, atol=1e-9, err_msg=key)

    # Retain-model reference: truth ratios of the other table.
    retain_tr = [r["truth_ratio"] for r in expected_records(retain_table, tokenizer, benchmark, "forget")]
    np.testing.assert_allclose(reference_stats["forget_truth_ratio"], retain_tr, rtol=1e-6)

    m = result.metrics
    tr = {s: np.array([r["truth_ratio"] for r in expected[s]]) for s in expected if s != "holdout"}
    assert m["forget_truth_ratio"] == pytest.approx(np.mean(np.minimum(tr["forget"], 1 / tr["forget"])))
    for s in ("retain", "real_authors", "world_facts"):
        assert m[f"{s}_truth_ratio"] == pytest.approx(np.mean(np.maximum(0, 1 - tr[s])))
        assert m[f"{s}_rouge_l_recall"] == pytest.approx(np.mean([r["rouge_l_recall"] for r in expected[s]]))
    assert m["retain_prob"] == pytest.approx(np.mean([r["prob"] for r in expected["retain"]]))
    assert m["world_facts_prob"] == pytest.approx(np.mean([r["normalised_prob"] for r in expected["world_facts"]]))
    nine = [
        m[f"{s}_{k}"]
        for s in ("retain", "real_authors", "world_facts")
        for k in ("prob", "rouge_l_recall", "truth_ratio")
    ]
    assert m["model_utility"] == pytest.approx(stats.hmean(nine))
    assert m["forget_quality"] == pytest.approx(stats.ks_2samp(tr["forget"], retain_tr).pvalue)
    member = [r["min_k"] for r in expected["forget"]]
    auc = pairwise_auc(member, [r["min_k"] for r in expected["holdout"]])
    ref_auc = pairwise_auc(
        [r["min_k"] for r in expected_records(retain_table, tokenizer, benchmark, "forget")],
        [r["min_k"] for r in expected_records(retain_table, tokenizer, benchmark, "holdout")],
    )
    assert m["mia_min_k_auc"] == pytest.approx(auc)
    assert m["privleak"] == pytest.approx(((1 - auc) - (1 - ref_auc)) / (1 - ref_auc) * 100)
    assert m["forget_extraction_strength"] == pytest.approx(
        np.mean([r["extraction_strength"] for r in expected["forget"]])
    )
    assert result.unavailable == {}


def test_legacy_mode_caps_prompt_plus_generation_at_200_tokens(synthetic_dir, tokenizer):
    table = random_table(len(tokenizer), seed=2)
    table[:, tokenizer.eos_token_id] = table.min(dim=1).values - 1.0  # never stop early: the cap decides the length
    benchmark = bench(synthetic_dir, legacy=True)
    assert benchmark.max_examples == 300 and benchmark.name == "tofu-legacy"
    result = benchmark.evaluate(BigramLM(table), tokenizer)
    expected = expected_records(table, tokenizer, benchmark, "world_facts", cap=lambda prompt: 200 - len(prompt))
    assert [r["generation"] for r in result.per_example["world_facts"]] == [r["generation"] for r in expected]
    assert result.config["max_total_tokens"] == 200


def test_batched_scoring_and_generation_equal_single_example_runs(tokenizer):
    model = build_tiny_model(tokenizer, arch="llama", seed=3)
    questions = ["Where was Ava Varga born?", "What genre does Bram Okafor write?", "Who wrote '1984'?"]
    examples = [tokenize_qa(tokenizer, q, "An answer of some length here.") for q in questions]
    batched = score_examples(model, examples, tokenizer.pad_token_id, batch_size=3, show_progress=False)
    for example, got in zip(examples, batched):
        ids = torch.tensor([example["input_ids"]])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        labels = example["labels"]
        total = -sum(logp[t, labels[t + 1]].item() for t in range(len(labels) - 1) if labels[t + 1] != -100)
        assert got["nll_sum"] == pytest.approx(total, abs=1e-4)
    prompts = [tokenize_prompt(tokenizer, q) for q in questions]
    together = generate_greedy(model, tokenizer, prompts, [5, 8, 3], batch_size=3, show_progress=False)
    alone = [
        generate_greedy(model, tokenizer, [p], cap, batch_size=1, show_progress=False)[0]
        for p, cap in zip(prompts, [5, 8, 3])
    ]
    assert together == alone
    reference = model.generate(
        torch.tensor([prompts[1]]), max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    new = reference[0, len(prompts[1]) :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    assert together[1] == tokenizer.decode(new, skip_special_tokens=True)


def test_tofu_end_to_end_on_real_data_with_cached_retain_statistics(tmp_path, monkeypatch, real_tofu_dir):
    TOFU_DIR = real_tofu_dir
    from hf_unlearn.benchmarks.tofu_data import load_tofu
    from hf_unlearn.tiny import tiny_model_and_tokenizer

    texts = [r["question"] + " " + r["answer"] for r in load_tofu("forget01", TOFU_DIR)]
    retain_dir = tmp_path / "retain"
    tiny_model_and_tokenizer(texts, vocab_size=300, seed=1, save_dir=retain_dir)
    model, tok = tiny_model_and_tokenizer(texts, vocab_size=300, seed=0)
    kwargs = {
        "forget_split": "forget01",
        "data_dir": TOFU_DIR,
        "max_examples": 4,
        "max_new_tokens": 4,
        "show_progress": False,
        "retain_model": retain_dir,
    }
    monkeypatch.setenv("HF_UNLEARN_CACHE", str(tmp_path / "cache"))
    result = benchmarks.get("tofu", **kwargs).evaluate(model, tok)

    assert not list(retain_dir.glob("hf_unlearn_*"))  # a user's model folder is not a cache
    caches = list((tmp_path / "cache").rglob("*hf_unlearn_tofu_retain_stats_*.json"))
    assert len(caches) == 1
    cached = json.loads(caches[0].read_text())
    assert len(cached["forget_truth_ratio"]) == 4 == result.num_examples["forget"]
    unlearned_tr = [r["truth_ratio"] for r in result.per_example["forget"]]
    assert result.metrics["forget_quality"] == pytest.approx(
        stats.ks_2samp(unlearned_tr, cached["forget_truth_ratio"]).pvalue
    )
    # Second run reads the cache instead of loading the retain model again.
    monkeypatch.setattr(TofuBenchmark, "retain_statistics", lambda *a: pytest.fail("cache not used"))
    again = benchmarks.get("tofu", **kwargs).evaluate(model, tok)
    assert again.metrics["forget_quality"] == result.metrics["forget_quality"]
    # Row 0 of real forget01: prob is exp(-mean CE) of its tokenised answer under the model.
    example = tokenize_qa(tok, result.per_example["forget"][0]["question"], result.per_example["forget"][0]["answer"])
    logp = torch.log_softmax(model(input_ids=torch.tensor([example["input_ids"]])).logits[0].double(), -1)
    ce = [
        -logp[t, example["labels"][t + 1]].item()
        for t in range(len(example["labels"]) - 1)
        if example["labels"][t + 1] != -100
    ]
    assert result.per_example["forget"][0]["prob"] == pytest.approx(math.exp(-sum(ce) / len(ce)), rel=1e-4)
    assert result.num_examples == {"forget": 4, "retain": 4, "real_authors": 4, "world_facts": 4, "holdout": 4}


def test_missing_retain_statistics_make_forget_quality_unavailable(synthetic_dir, tokenizer, tmp_path):
    model = BigramLM(random_table(len(tokenizer), seed=0))
    result = bench(synthetic_dir).evaluate(model, tokenizer)
    assert result.metrics["forget_quality"] is None
    assert "retain_model" in result.unavailable["forget_quality"]
    assert result.metrics["privleak"] == pytest.approx(((1 - result.metrics["mia_min_k_auc"]) - 0.5) / 0.5 * 100)
    missing = tmp_path / "none.json"
    result = bench(synthetic_dir, retain_stats=missing).evaluate(model, tokenizer)
    assert f"{missing} not found" in result.unavailable["forget_quality"]
    report = UnlearnReport()
    report.add_evaluation("after_training", result)
    report.save(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "unlearn_report.json").read_text())["evaluations"]["after_training"]
    assert saved["values"]["forget_quality"] is None and "not found" in saved["unavailable"]["forget_quality"]


def test_bad_input_messages(synthetic_dir, tokenizer, tmp_path):
    model = BigramLM(random_table(len(tokenizer), seed=0))
    rows = [json.loads(line) for line in (synthetic_dir / "forget10_perturbed.json").read_text().splitlines()]
    rows[1]["perturbed_answer"] = []
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in synthetic_dir.glob("*.json"):
        (broken / f.name).write_text(f.read_text())
    (broken / "forget10_perturbed.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="forget10_perturbed row 1 .* has no perturbed answers"):
        bench(broken).evaluate(model, tokenizer)

    tokenizer.save_pretrained(tmp_path / "tok")
    no_pad = type(tokenizer).from_pretrained(tmp_path / "tok")
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="tokenizer has no pad token"):
        bench(synthetic_dir).evaluate(model, no_pad)


def test_eval_cli_writes_summary_and_per_example_json(synthetic_dir, tokenizer, tmp_path, capsys):
    from hf_unlearn.cli import main

    model_dir = tmp_path / "model"
    model = build_tiny_model(tokenizer, arch="qwen2", seed=4)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    code = main(
        [
            "eval",
            "--model",
            str(model_dir),
            "--benchmark",
            "tofu",
            "--data_dir",
            str(synthetic_dir),
            "--max_new_tokens",
            "6",
            "--max_examples",
            "3",
            "--no_progress",
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    evaluated = UnlearnReport.load(model_dir / "eval").evaluations["evaluated_model"]
    summary = {
        "metrics": evaluated.values,
        "unavailable": evaluated.unavailable,
        "num_examples": evaluated.num_examples,
    }
    per_example = json.loads((model_dir / "eval" / "tofu_per_example.json").read_text())
    assert summary["num_examples"] == {"forget": 3, "retain": 3, "real_authors": 3, "world_facts": 3, "holdout": 3}
    assert summary["metrics"]["forget_quality"] is None and "forget_quality" in summary["unavailable"]
    # Summary numbers are the aggregates of the saved per-example values.
    forget = per_example["splits"]["forget"]
    assert summary["metrics"]["forget_prob"] == pytest.approx(np.mean([r["prob"] for r in forget]))
    assert summary["metrics"]["forget_rouge_l_recall"] == pytest.approx(np.mean([r["rouge_l_recall"] for r in forget]))
    nine = [
        summary["metrics"][f"{s}_{k}"]
        for s in ("retain", "real_authors", "world_facts")
        for k in ("prob", "rouge_l_recall", "truth_ratio")
    ]
    assert summary["metrics"]["model_utility"] == pytest.approx(stats.hmean(nine) if min(nine) > 0 else 0.0)
    assert ["model_utility", f"{summary['metrics']['model_utility']:.4f}"] in [
        line.split() for line in table.split("\n")
    ]


def test_summary_model_utility_truth_ratio_aggregations_from_records():
    from hf_unlearn.benchmarks.tofu import summarise

    def rows(probs, ratios, generations, key="prob"):
        return [
            {
                "answer": "alpha beta",
                "generation": g,
                key: p,
                "truth_ratio": t,
                "extraction_strength": 0.5,
                "exact_memorization": p / 2,
                "min_k": -1.0,
            }
            for p, t, g in zip(probs, ratios, generations)
        ]

    records = {
        "forget": rows([0.9, 0.7], [0.5, 4.0], ["alpha beta", "alpha"]),
        "retain": rows([0.8, 0.6], [0.5, 0.25], ["alpha beta", "beta"]),
        "real_authors": rows([0.5, 0.3], [0.8, 2.0], ["alpha", "alpha beta"], key="normalised_prob"),
        "world_facts": rows([0.4, 0.2], [0.1, 0.3], ["beta", "beta"], key="normalised_prob"),
        "holdout": [{"min_k": -2.0}, {"min_k": -0.5}],
    }
    reference = {"forget_truth_ratio": [1.0, 2.0, 3.0], "mia_min_k_auc": 0.75}
    values, unavailable = summarise(records, reference, None)
    # Forget TR: mean(min(TR, 1/TR)) = (0.5 + 0.25) / 2; others: mean(max(0, 1 - TR)).
    assert values["forget_truth_ratio"] == pytest.approx(0.375)
    nine = [0.7, 0.75, 0.625, 0.4, 0.75, 0.1, 0.3, 0.5, 0.8]  # {prob, ROUGE recall, TR} x {retain, real, world}
    assert [
        values[f"{s}_{k}"]
        for s in ("retain", "real_authors", "world_facts")
        for k in ("prob", "rouge_l_recall", "truth_ratio")
    ] == pytest.approx(nine)
    assert values["model_utility"] == pytest.approx(9 / sum(1 / v for v in nine))
    assert values["forget_quality"] == pytest.approx(stats.ks_2samp([0.5, 4.0], [1.0, 2.0, 3.0]).pvalue)
    assert values["forget_exact_memorization"] == pytest.approx((0.45 + 0.35) / 2)
    # Both forget scores (-1) beat holdout -2 and lose to -0.5: AUC 0.5; privleak vs reference 0.75.
    assert values["mia_min_k_auc"] == pytest.approx(0.5)
    assert values["privleak"] == pytest.approx((0.5 - 0.25) / 0.25 * 100)
    assert unavailable == {}


def _sharded_worker(rank, world_size, port, data_dir, out_dir):
    import torch.distributed as dist

    from hf_unlearn.benchmarks.sharding import process_info

    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        assert process_info() == (rank, world_size)
        tok = synthetic_tokenizer()
        model = BigramLM(random_table(len(tok), seed=0))
        calls = []
        original_forward = model.forward
        model.forward = lambda **kw: calls.append(kw["input_ids"].shape[0]) or original_forward(**kw)
        result = bench(data_dir).evaluate(model, tok)
        Path(out_dir, f"rank{rank}.json").write_text(
            json.dumps({"per_example": result.per_example, "metrics": result.metrics, "scored": sum(calls)})
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_evaluation_shards_and_gathers_the_same_result(synthetic_dir, tokenizer, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children inherit the imported libraries (spawn re-imports them for ~10 s per process).
    args = (2, port, str(synthetic_dir), str(tmp_path))
    mp.start_processes(_sharded_worker, args=args, nprocs=2, join=True, start_method="fork")
    model = BigramLM(random_table(len(tokenizer), seed=0))
    calls = []
    original_forward = model.forward
    model.forward = lambda **kw: calls.append(kw["input_ids"].shape[0]) or original_forward(**kw)
    single = bench(synthetic_dir).evaluate(model, tokenizer)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    expected = json.loads(json.dumps({"per_example": single.per_example, "metrics": single.metrics}))
    for got in ranks:
        assert got["metrics"] == pytest.approx(expected["metrics"])
        assert got["per_example"] == expected["per_example"]
    # No sequence is scored twice: the ranks split the single process's work between them.
    assert ranks[0]["scored"] > 0 and ranks[1]["scored"] > 0
    assert ranks[0]["scored"] + ranks[1]["scored"] == sum(calls)
