"""The `evaluate` modules shipped in hf_unlearn/evaluate_metrics give the benchmark's own numbers, loaded offline."""

import json

import evaluate
import pytest

from hf_unlearn import benchmarks
from hf_unlearn.benchmarks.privacy import ATTACKS, member_scores
from hf_unlearn.evaluate_metrics import MODULES, path
from hf_unlearn.report import UnlearnReport
from hf_unlearn.tiny import build_tiny_model


@pytest.fixture(scope="module")
def load(tmp_path_factory):
    """``evaluate.load`` of our module folders, offline, with evaluate's module copies in a temporary folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_EVALUATE_OFFLINE", "1")
        patch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path_factory.mktemp("modules"))
        cache = tmp_path_factory.mktemp("metric_cache")
        yield lambda name: evaluate.load(path(name), cache_dir=str(cache), keep_in_memory=True)


def test_modules_equal_the_tofu_benchmark_on_the_same_inputs(load, synthetic_data_dir, tokenizer):
    settings = {"data_dir": synthetic_data_dir, "max_new_tokens": 2, "batch_size": 4, "show_progress": False}
    retain_stats = benchmarks.get("tofu", privacy=True, **settings).retain_statistics(
        build_tiny_model(tokenizer, seed=4), tokenizer
    )
    result = benchmarks.get("tofu", privacy=True, retain_stats=retain_stats, **settings).evaluate(
        build_tiny_model(tokenizer, seed=3), tokenizer
    )
    records, values = result.per_example, result.metrics

    truth_ratio = load("truth_ratio")
    for set_name, correct_key, aggregation in (
        ("forget", "paraphrased_nll_mean", "forget"),
        ("retain", "paraphrased_nll_mean", "utility"),
        ("real_authors", "nll_mean", "utility"),
        ("world_facts", "nll_mean", "utility"),
    ):
        rows = records[set_name]
        got = truth_ratio.compute(
            correct_nll_mean=[r[correct_key] for r in rows],
            perturbed_nll_mean=[r["perturbed_nll_mean"] for r in rows],
            aggregation=aggregation,
        )
        assert got["truth_ratio"] == values[f"{set_name}_truth_ratio"], set_name
        assert got["truth_ratios"] == [r["truth_ratio"] for r in rows]

    forget_quality = load("forget_quality").compute(
        predictions=[r["truth_ratio"] for r in records["forget"]], references=retain_stats["forget_truth_ratio"]
    )
    assert forget_quality["forget_quality"] == values["forget_quality"]

    mia_auc, privleak = load("mia_auc"), load("privleak")
    labels = [1] * len(records["forget"]) + [0] * len(records["holdout"])
    for attack in ATTACKS:
        scores = member_scores(records["forget"] + records["holdout"], attack)
        auc_key = "mia_min_k_auc" if attack == "min_k" else f"mia_{attack}_auc"
        leak_key = "privleak" if attack == "min_k" else f"privleak_{attack}"
        assert mia_auc.compute(predictions=scores, references=labels)["auc"] == values[auc_key], attack
        reference_auc = retain_stats["mia_min_k_auc"] if attack == "min_k" else retain_stats["mia_auc"][attack]
        if values[leak_key] is None:
            continue
        got = privleak.compute(predictions=scores, references=labels, reference_auc=reference_auc)
        assert got == {"auc": values[auc_key], "privleak": values[leak_key]}, attack
    assert result.unavailable == {}


def test_truth_ratio_module_loaded_offline_equals_the_cli(load, cli, tiny_model_dir, synthetic_data_dir, tmp_path):
    out = tmp_path / "eval"
    code, _, stderr = cli(
        "eval", "--model", tiny_model_dir, "--benchmark", "tofu", "--data_dir", synthetic_data_dir,
        "--max_new_tokens", "2", "--output_dir", out, "--no_progress",
    )  # fmt: skip
    assert code == 0, stderr
    cli_value = UnlearnReport.load(out).evaluations["evaluated_model"].values["forget_truth_ratio"]
    forget = json.loads((out / "tofu_per_example.json").read_text())["splits"]["forget"]
    module = load("truth_ratio")
    got = module.compute(
        correct_nll_mean=[r["paraphrased_nll_mean"] for r in forget],
        perturbed_nll_mean=[r["perturbed_nll_mean"] for r in forget],
    )
    assert got["truth_ratio"] == cli_value
    print(f"truth ratio: evaluate module {got['truth_ratio']!r}, hf-unlearn eval {cli_value!r}")


def test_modules_refuse_bad_input_with_the_fix(load):
    with pytest.raises(ValueError, match="reference_auc"):
        load("privleak").compute(predictions=[0.1, 0.2], references=[1, 0])
    with pytest.raises(ValueError, match="1 \\(forget\\) or 0 \\(holdout\\)"):
        load("mia_auc").compute(predictions=[0.1, 0.2], references=[1, 2])
    with pytest.raises(ValueError, match="aggregation"):
        load("truth_ratio").compute(correct_nll_mean=[1.0], perturbed_nll_mean=[[2.0]], aggregation="mean")
    with pytest.raises(ValueError, match="choose one of"):
        path("rouge")
    assert set(MODULES) == {"truth_ratio", "forget_quality", "mia_auc", "privleak"}


def test_vocabulary_statistics_reuse_one_log_softmax_and_change_no_log_probability():
    """With Min-K%++ asked for, the token log-probabilities come from the same log-softmax as its z-scores: equal,
    bit for bit, to the cross-entropy path's; the z-scores match a float64 reference."""
    import torch

    from hf_unlearn.benchmarks.metrics import labelled_token_values

    torch.manual_seed(0)
    logits, targets = torch.randn(6, 50) * 3, torch.randint(0, 50, (6,))
    plain, predicted, _ = labelled_token_values(logits, targets)
    logprobs, predicted_too, z = labelled_token_values(logits, targets, vocab_stats=True)
    assert torch.equal(logprobs, plain) and torch.equal(predicted, predicted_too)
    logp = torch.log_softmax(logits.double(), dim=-1)
    mean = (logp.exp() * logp).sum(-1)
    std = (logp.exp() * (logp - mean[:, None]) ** 2).sum(-1).sqrt()
    expected = (logp.gather(-1, targets[:, None]).squeeze(-1) - mean) / std
    torch.testing.assert_close(z, expected, rtol=1e-5, atol=1e-5)
