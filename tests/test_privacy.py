"""Membership-inference attacks and exact memorization, each against a hand computation of open-unlearning's formula.

The hand computations below follow locuslab/open-unlearning, one file per attack:

* LOSS: ``src/evals/metrics/mia/loss.py`` (``evaluate_probability``'s ``avg_loss``);
* zlib: ``src/evals/metrics/mia/zlib.py`` (``avg_loss / len(zlib.compress(text))``, the text decoded from the
  labelled tokens without special tokens: ``utils.py::extract_target_texts_from_processed_data``);
* Min-K%: ``src/evals/metrics/mia/min_k.py``; Min-K%++: ``src/evals/metrics/mia/min_k_plus_plus.py``;
* GradNorm: ``src/evals/metrics/mia/gradnorm.py`` (``backward`` of the mean token NLL, mean of per-tensor p-norms);
* Reference: ``src/evals/metrics/mia/reference.py`` (target ``avg_loss`` minus the reference model's);
* the AUC: ``src/evals/metrics/mia/utils.py::mia_auc`` (``roc_auc_score`` with forget 0, holdout 1, loss-signed
  scores); privleak: ``src/evals/metrics/privacy.py::privleak``;
* exact memorization: ``src/evals/metrics/memorization.py::exact_memorization``.

One deliberate difference: open-unlearning's token-wise helpers (``tokenwise_logprobs``,
``tokenwise_vocab_logprobs``) drop the last labelled token (the closing EOS) for Min-K%, Min-K%++, GradNorm and
exact memorization, while its LOSS, zlib and Reference keep it. We score the same tokens, EOS included, in every
attack (as our Min-K% and extraction strength always have), so the hand computations here take every labelled
token (``docs/definitions.md``).
"""

import math
import zlib

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForCausalLM

from hf_unlearn.benchmarks import privacy as mia
from hf_unlearn.benchmarks.muse import MuseBenchmark
from hf_unlearn.benchmarks.tofu import TofuBenchmark
from hf_unlearn.data import tokenize_qa
from hf_unlearn.report import UnlearnReport
from hf_unlearn.tiny import build_tiny_model
from tests.test_muse_eval import write_muse


K = 0.4


def hand_scores(model, tokenizer, input_ids, labels, reference_model=None) -> dict[str, float]:
    """open-unlearning's per-example attack statistics, signed as there (higher = less likely a member)."""
    ids = torch.tensor([input_ids])
    positions = [t for t in range(len(input_ids) - 1) if labels[t + 1] != -100]
    targets = torch.tensor([labels[t + 1] for t in positions])

    def avg_loss(lm):
        with torch.no_grad():
            logp = torch.log_softmax(lm(input_ids=ids).logits[0].double(), dim=-1)
        return -logp[positions, targets].mean().item()

    with torch.no_grad():
        all_logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)[positions]
    token_logp = all_logp[torch.arange(len(positions)), targets]
    num_k = max(1, int(len(positions) * K))
    # Min-K%++: z-scores against the mean and variance of log p under the model's own distribution.
    mu = (all_logp.exp() * all_logp).sum(-1)
    sigma = ((all_logp.exp() * all_logp.square()).sum(-1) - mu.square()).clamp(min=1e-6)
    z = ((token_logp - mu) / sigma.sqrt()).numpy()
    # GradNorm: backward of the mean token NLL, then the mean over parameter tensors of each gradient's 2-norm.
    model.zero_grad()
    logits = model(input_ids=ids).logits[0]
    (-torch.log_softmax(logits, dim=-1)[positions, targets].mean()).backward()
    grad_norm = torch.stack([p.grad.norm(p=2) for p in model.parameters() if p.grad is not None]).mean().item()
    model.zero_grad()
    text = tokenizer.decode([label for label in labels if label != -100], skip_special_tokens=True)
    loss = avg_loss(model)
    scores = {
        "loss": loss,
        "zlib": loss / len(zlib.compress(text.encode("utf-8"))),
        "min_k": -np.mean(np.sort(token_logp.numpy())[:num_k]),
        "min_k_plus_plus": -np.mean(sorted(z)[:num_k]),
        "gradnorm": grad_norm,
        "exact_memorization": (all_logp.argmax(-1) == targets).double().mean().item(),
    }
    if reference_model is not None:
        scores["reference"] = loss - avg_loss(reference_model)
    return scores


def hand_auc(forget: list[dict], holdout: list[dict], attack: str) -> float:
    labels = [0] * len(forget) + [1] * len(holdout)
    return roc_auc_score(labels, [s[attack] for s in forget + holdout])


def hand_privleak(auc: float, reference_auc: float) -> float:
    score, ref = 1 - auc, 1 - reference_auc
    return (score - ref) / (ref + 1e-10) * 100


def ours_signed(records, attack):
    """Our member-signed scores turned back into open-unlearning's loss-like sign."""
    return [-s for s in mia.member_scores(records, attack)]


def check_suite(result, forget_hand, holdout_hand, retain_forget_hand, retain_holdout_hand, forget, holdout):
    attacks = ("loss", "zlib", "min_k", "min_k_plus_plus", "gradnorm", "reference")
    table = {}
    for attack in attacks:
        for records, hand in ((forget, forget_hand), (holdout, holdout_hand)):
            np.testing.assert_allclose(
                ours_signed(records, attack), [h[attack] for h in hand], rtol=1e-5, atol=1e-6, err_msg=attack
            )
        auc = hand_auc(forget_hand, holdout_hand, attack)
        ref_auc = 0.5 if attack == "reference" else hand_auc(retain_forget_hand, retain_holdout_hand, attack)
        auc_key = "mia_min_k_auc" if attack == "min_k" else f"mia_{attack}_auc"
        leak_key = "privleak" if attack == "min_k" else f"privleak_{attack}"
        assert result.metrics[auc_key] == pytest.approx(auc), attack
        if ref_auc == 1.0:  # open-unlearning would divide by its 1e-10 guard; we report why there is no value
            assert result.metrics[leak_key] is None and "AUC is 1" in result.unavailable[leak_key]
            print(f"{attack}: AUC ours {result.metrics[auc_key]!r} hand {auc!r}; the retain AUC is 1: no privleak")
            continue
        assert result.metrics[leak_key] == pytest.approx(hand_privleak(auc, ref_auc), abs=1e-6), attack
        table[attack] = (result.metrics[auc_key], auc, result.metrics[leak_key], hand_privleak(auc, ref_auc))
        ours = ours_signed(forget, attack) + ours_signed(holdout, attack)
        gap = max(abs(o - h[attack]) for o, h in zip(ours, forget_hand + holdout_hand))
        print(f"{attack}: AUC ours {table[attack][0]!r} hand {auc!r}; privleak ours {table[attack][2]!r} hand "
              f"{table[attack][3]!r}; largest per-example score gap {gap:.1e}")  # fmt: skip
    return table


@pytest.mark.parametrize("target_kind", ["random", "memorised"])
def test_tofu_privacy_suite_matches_open_unlearning_formulas(
    target_kind, request, tiny_model_dir, synthetic_data_dir, tokenizer
):
    if target_kind == "memorised":
        target = AutoModelForCausalLM.from_pretrained(request.getfixturevalue("memorised_model_dir")).eval()
    else:
        target = build_tiny_model(tokenizer, seed=3)
    retain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    settings = {"data_dir": synthetic_data_dir, "max_new_tokens": 4, "batch_size": 3, "show_progress": False}
    stats = TofuBenchmark(privacy=True, **settings).retain_statistics(retain, tokenizer)
    benchmark = TofuBenchmark(privacy=True, retain_stats=stats, **settings)
    result = benchmark.evaluate(target, tokenizer)

    def hand(model, set_name, reference=None):
        out = []
        for row in benchmark.load_rows(set_name):
            example = tokenize_qa(tokenizer, row["question"], row["answer"])
            out.append(hand_scores(model, tokenizer, example["input_ids"], example["labels"], reference))
        return out

    forget, holdout = result.per_example["forget"], result.per_example["holdout"]
    table = check_suite(
        result,
        hand(target, "forget", retain),
        hand(target, "holdout", retain),
        hand(retain, "forget", retain),
        hand(retain, "holdout", retain),
        forget,
        holdout,
    )
    # Exact memorization beside extraction strength, per example and as the forget-set mean.
    em = [h["exact_memorization"] for h in hand(target, "forget")]
    np.testing.assert_allclose([r["exact_memorization"] for r in forget], em, rtol=1e-12)
    assert result.metrics["forget_exact_memorization"] == pytest.approx(np.mean(em))
    print(f"exact memorization: ours {result.metrics['forget_exact_memorization']!r} hand {np.mean(em)!r}")
    assert result.unavailable == {}
    if target_kind == "memorised":  # it recognises its training answers: LOSS separates them perfectly
        assert table["loss"][0] == 1.0 and table["loss"][2] == pytest.approx(-100.0)
        assert result.metrics["forget_exact_memorization"] > 0.9
    else:
        assert 0.0 < table["loss"][0] < 1.0


def test_muse_privacy_suite_matches_open_unlearning_formulas(tmp_path, tokenizer):
    data = write_muse(tmp_path / "muse")
    target, retain = build_tiny_model(tokenizer, seed=3), build_tiny_model(tokenizer, seed=4)
    settings = {"data_dir": data, "batch_size": 2, "verbmem_new_tokens": 4, "knowmem_new_tokens": 4}
    stats = MuseBenchmark(privacy=True, show_progress=False, **settings).retain_statistics(retain, tokenizer)
    result = MuseBenchmark(privacy=True, retain_stats=stats, show_progress=False, **settings).evaluate(
        target, tokenizer
    )
    benchmark = MuseBenchmark(**settings)

    def hand(model, split, reference=retain):
        out = []
        for row in benchmark.rows("privleak", split):
            ids = tokenizer(row["text"])["input_ids"]
            out.append(hand_scores(model, tokenizer, ids, ids, reference))
        return out

    check_suite(
        result,
        hand(target, "forget"),
        hand(target, "holdout"),
        hand(retain, "forget"),
        hand(retain, "holdout"),
        result.per_example["privleak_forget"],
        result.per_example["privleak_holdout"],
    )


def test_default_evaluation_runs_no_privacy_pass(synthetic_data_dir, tokenizer, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("GradNorm ran without privacy=True")

    monkeypatch.setattr(mia, "gradient_norm", refuse)
    model = build_tiny_model(tokenizer, seed=3)
    result = TofuBenchmark(data_dir=synthetic_data_dir, max_new_tokens=2, batch_size=4, show_progress=False).evaluate(
        model, tokenizer
    )
    assert not any(key.startswith("mia_") and key != "mia_min_k_auc" for key in result.metrics)
    forget = result.per_example["forget"][0]
    assert "exact_memorization" in forget and "min_k_plus_plus" not in forget and "gradnorm" not in forget
    assert "forget_exact_memorization" in result.metrics


def test_gradient_norm_leaves_grad_buffers_and_mode_alone(tokenizer):
    model = build_tiny_model(tokenizer, seed=5).train()
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    example = tokenize_qa(tokenizer, "Where was Ava Varga born?", "In Lisbon.")
    value = mia.gradient_norm(model, example["input_ids"], example["labels"])
    assert math.isfinite(value) and value > 0
    assert model.training
    assert all(torch.equal(param.grad, torch.ones_like(param)) for param in model.parameters())
    with torch.inference_mode():  # as inside an evaluation callback
        assert mia.gradient_norm(model, example["input_ids"], example["labels"]) == pytest.approx(value, rel=1e-6)


def test_gradient_norm_over_windows_is_the_gradient_of_the_mean_over_all_windows(tokenizer):
    """A text longer than the context: windows (0, 8, 1) and (4, n, 8) score tokens 1..7 and 8..n-1 once each."""
    model = build_tiny_model(tokenizer, seed=5)
    ids = tokenizer("Ava Varga was born in Lisbon and writes mystery novels about the harbor.")["input_ids"]
    windows = [(0, 8, 1), (4, len(ids), 8)]
    model.zero_grad()
    first = torch.log_softmax(model(input_ids=torch.tensor([ids[:8]])).logits[0], dim=-1)
    second = torch.log_softmax(model(input_ids=torch.tensor([ids[4:]])).logits[0], dim=-1)
    nll = -first[torch.arange(7), torch.tensor(ids[1:8])].sum()
    nll = nll - second[torch.arange(3, len(ids) - 5), torch.tensor(ids[8:])].sum()
    (nll / (len(ids) - 1)).backward()
    expected = torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]).mean().item()
    model.zero_grad()
    assert mia.gradient_norm(model, ids, ids, windows=windows) == pytest.approx(expected, rel=1e-5)


def test_privacy_suite_adds_only_the_gradnorm_forwards(synthetic_data_dir, tokenizer):
    """LOSS, zlib and Min-K%++ reuse the scoring pass; with the retain statistics given, Reference needs no forward:
    the only extra forwards are GradNorm's, one per forget and holdout example."""
    settings = {"data_dir": synthetic_data_dir, "max_new_tokens": 2, "batch_size": 4, "show_progress": False}
    stats = TofuBenchmark(privacy=True, **settings).retain_statistics(build_tiny_model(tokenizer, seed=4), tokenizer)
    plain_stats = {key: value for key, value in stats.items() if key not in ("privacy", "mia_auc")}

    def forwards(**kwargs):
        model = build_tiny_model(tokenizer, seed=3)
        calls = []
        model.register_forward_pre_hook(lambda module, args: calls.append(1))
        result = TofuBenchmark(**settings, **kwargs).evaluate(model, tokenizer)
        return len(calls), result

    plain, _ = forwards(retain_stats=plain_stats)
    private, result = forwards(privacy=True, retain_stats=stats)
    assert private - plain == result.num_examples["forget"] + result.num_examples["holdout"]


def test_retain_statistics_without_privacy_make_privleaks_unavailable(synthetic_data_dir, tokenizer):
    settings = {"data_dir": synthetic_data_dir, "max_new_tokens": 2, "batch_size": 4, "show_progress": False}
    model = build_tiny_model(tokenizer, seed=3)
    plain = TofuBenchmark(**settings).retain_statistics(build_tiny_model(tokenizer, seed=4), tokenizer)
    result = TofuBenchmark(privacy=True, retain_stats=plain, **settings).evaluate(model, tokenizer)
    assert result.metrics["privleak_loss"] is None and result.metrics["mia_reference_auc"] is None
    assert "privacy" in result.unavailable["privleak_loss"]
    assert result.metrics["mia_loss_auc"] is not None  # the AUC itself needs no retain model


def test_cli_privacy_flag_is_refused_for_wmdp(cli, tiny_model_dir, tmp_path):
    argv = ["eval", "--model", tiny_model_dir, "--benchmark", "wmdp", "--privacy", "--output_dir", tmp_path]
    code, _, stderr = cli(*argv)
    assert code != 0 and "--privacy applies to TOFU and MUSE" in stderr
    assert not any(tmp_path.iterdir())


def test_cli_privacy_on_the_retain_model_itself_leaks_nothing(
    cli, tiny_model_dir, synthetic_data_dir, tmp_path, monkeypatch
):
    """`hf-unlearn eval --privacy` with the model as its own retain model: every privleak is 0, Reference's AUC 1/2."""
    monkeypatch.setenv("HF_UNLEARN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    code, stdout, stderr = cli(
        "eval", "--model", tiny_model_dir, "--benchmark", "tofu", "--data_dir", synthetic_data_dir, "--privacy",
        "--retain_model", tiny_model_dir, "--max_new_tokens", "2", "--output_dir", out, "--no_progress",
    )  # fmt: skip
    assert code == 0, stderr
    values = UnlearnReport.load(out).evaluations["evaluated_model"].values
    for attack in ("loss", "zlib", "min_k_plus_plus", "gradnorm", "reference"):
        assert values[f"privleak_{attack}"] == pytest.approx(0.0, abs=1e-9), attack
        assert f"privleak_{attack}" in stdout
    assert values["privleak"] == pytest.approx(0.0, abs=1e-9)
    assert values["mia_reference_auc"] == 0.5


def _privacy_worker(rank, world_size, port, data_dir, stats_file, out_dir):
    import json
    import os

    import torch.distributed as dist

    from tests.helpers import synthetic_tokenizer

    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        tok = synthetic_tokenizer()
        settings = {"data_dir": data_dir, "max_new_tokens": 2, "batch_size": 4, "show_progress": False}
        result = TofuBenchmark(privacy=True, retain_stats=stats_file, **settings).evaluate(
            build_tiny_model(tok, seed=3), tok
        )
        path = os.path.join(out_dir, f"rank{rank}.json")
        with open(path, "w") as handle:
            json.dump({"metrics": result.metrics, "forget": result.per_example["forget"]}, handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_privacy_suite_equals_one_process(synthetic_data_dir, tokenizer, tmp_path):
    """Each rank attacks its shard (GradNorm included) and every rank ends with the single process's numbers."""
    import json
    import socket

    import torch.multiprocessing as mp

    settings = {"data_dir": synthetic_data_dir, "max_new_tokens": 2, "batch_size": 4, "show_progress": False}
    stats = TofuBenchmark(privacy=True, **settings).retain_statistics(build_tiny_model(tokenizer, seed=4), tokenizer)
    stats_file = tmp_path / "retain_stats.json"
    stats_file.write_text(json.dumps(stats))
    single = TofuBenchmark(privacy=True, retain_stats=stats, **settings).evaluate(
        build_tiny_model(tokenizer, seed=3), tokenizer
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (2, port, str(synthetic_data_dir), str(stats_file), str(tmp_path))
    mp.start_processes(_privacy_worker, args=args, nprocs=2, join=True, start_method="fork")
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for key, value in single.metrics.items():
            assert got["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-8), key
        for mine, theirs in zip(got["forget"], single.per_example["forget"]):
            assert mine["gradnorm"] == pytest.approx(theirs["gradnorm"], rel=1e-5)
            assert mine["min_k_plus_plus"] == pytest.approx(theirs["min_k_plus_plus"], rel=1e-5)


def test_eval_cli_passes_privacy_to_tofu_and_muse():
    import argparse

    from hf_unlearn.cli.eval import add_arguments, benchmark_settings

    parser = add_arguments(argparse.ArgumentParser())
    for benchmark in ("tofu", "tofu-legacy", "muse"):
        base = ["--model", "m", "--benchmark", benchmark]
        assert benchmark_settings(parser.parse_args(base + ["--privacy"]))["privacy"] is True
        assert benchmark_settings(parser.parse_args(base))["privacy"] is False


def test_muse_privacy_reads_texts_longer_than_the_context_in_windows(tmp_path, tokenizer):
    """A bigram model has no context, so windowed Min-K%++ and GradNorm equal the whole-text values by hand."""
    from tests.fixed_logits import random_table
    from tests.test_muse_eval import FORGET_TEXT, LONG_TEXT, RecordingBigramLM

    data = write_muse(tmp_path / "muse", privleak_forget=FORGET_TEXT + [LONG_TEXT])
    table = random_table(len(tokenizer), seed=5)
    model = RecordingBigramLM(table, context=16)
    model.table.requires_grad_(True)
    result = MuseBenchmark(data_dir=data, privacy=True, privleak_ref_auc=0.5, show_progress=False).evaluate(
        model, tokenizer
    )
    record = result.per_example["privleak_forget"][-1]
    assert record["windows"] > 1 and max(model.forward_lengths) <= 16
    ids = tokenizer(LONG_TEXT)["input_ids"]
    logp = torch.log_softmax(table[ids[:-1]], dim=-1)
    targets = torch.tensor(ids[1:])
    token_logp = logp[torch.arange(len(targets)), targets]
    mu = (logp.exp() * logp).sum(-1)
    sigma = ((logp.exp() * logp.square()).sum(-1) - mu.square()).clamp(min=1e-6)
    z = sorted(((token_logp - mu) / sigma.sqrt()).tolist())
    assert record["min_k_plus_plus"] == pytest.approx(np.mean(z[: max(1, int(0.4 * len(z)))]), rel=1e-5)
    weights = table.clone().requires_grad_(True)
    nll = -torch.log_softmax(weights[ids[:-1]], dim=-1)[torch.arange(len(targets)), targets].mean()
    (grad,) = torch.autograd.grad(nll, weights)
    assert record["gradnorm"] == pytest.approx(grad.norm().item(), rel=1e-5)
    # privleak_ref_auc serves Min-K% only: the other attacks say what they need.
    assert result.metrics["privleak_loss"] is None and "retain model" in result.unavailable["privleak_loss"]
    assert result.metrics["privleak"] is not None
