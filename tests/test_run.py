"""The recipe runner end to end: a hybrid NPO run on a tiny model, evaluated and attacked, from a recipe file."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_unlearn.answers import generate_answers
from hf_unlearn.benchmarks.synthetic import write_synthetic_tofu
from hf_unlearn.cli import main
from hf_unlearn.data import QAFormat
from hf_unlearn.report import UnlearnReport
from hf_unlearn.tiny import build_tiny_model, train_tokenizer
from tests.helpers import synthetic_splits


DEMO_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    data_dir = write_synthetic_tofu(folder / "data", num_authors=10, qa_per_author=4)
    rows = synthetic_splits()
    tokenizer = train_tokenizer([r["question"] + " " + r["answer"] for r in rows["full"]], vocab_size=400)
    model = build_tiny_model(tokenizer, hidden_size=32, intermediate_size=64)
    model.save_pretrained(folder / "original")
    tokenizer.save_pretrained(folder / "original")
    return folder, data_dir


def test_hybrid_recipe_trains_evaluates_and_attacks(original, capsys):
    folder, data_dir = original
    out = folder / "npo_hybrid"
    flags = ["--model_name_or_path", str(folder / "original"), "--data_source", "tofu", "--data_dir", str(data_dir)]
    flags += ["--output_dir", str(out), "--max_steps", "4", "--hybrid_fo_steps", "1", "--hybrid_zo_steps", "1"]
    flags += ["--robustness", "true", "--relearn_steps", "1", "2", "--quantization", "rtn4"]
    flags += ["--eval_max_new_tokens", "4", "--report_codes_changed", "true", "--disable_tqdm", "true"]
    assert main(["run", str(DEMO_RECIPE), *flags]) == 0

    report = UnlearnReport.load(out)
    assert (report.method, report.optimizer, report.benchmark) == ("npo", "hybrid", "tofu")
    assert report.command.startswith("hf-unlearn run ") and "--max_steps 4" in report.command
    before = AutoModelForCausalLM.from_pretrained(folder / "original").state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not (out / "robustness.json").exists() and not (out / "run_summary.json").exists()  # one report

    (run,) = report.attacks
    assert run.global_step == 4 and [p.step for p in run.relearn] == [1, 2]
    (rtn4,) = run.quantization
    assert rtn4.kind == "rtn4" and 0 < rtn4.codes_changed_fraction <= 1
    for metrics in (report.evaluations["before_training"], run.unlearned, run.relearn[-1].metrics, rtn4.metrics):
        assert 0 <= metrics.get("forget_prob") <= 1 and "model_utility" in metrics.values
    assert report.evaluations["after_training"].values == run.unlearned.values
    assert report.compute["zo"]["steps"] == 2 and report.compute["zo"]["backwards"] == 0  # ZO steps: no backward
    card = (out / "README.md").read_text()
    assert "model-index" in card and "arxiv.org/abs/2404.05868" in card
    assert "forget_prob" in capsys.readouterr().out

    # Sample answers: the first 3 forget and 3 retain questions, answered by the model before unlearning, after it
    # and after the largest relearning budget; regenerated here from the saved models, they must match.
    assert [r["set"] for r in report.answers] == ["forget"] * 3 + ["retain"] * 3
    assert report.answers[0]["question"] == synthetic_splits()["forget10"][0]["question"]
    labels = ["before unlearning", "after unlearning", "relearned (2 steps)"]
    assert all(list(r["generations"]) == labels for r in report.answers)
    tokenizer = AutoTokenizer.from_pretrained(out)
    for label, path in (("before unlearning", folder / "original"), ("after unlearning", out)):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        assert [r["generations"][label] for r in report.answers] == generate_answers(
            model, tokenizer, report.answers, QAFormat()
        )
    assert "## Sample answers" in card and report.answers[0]["question"] in card
    assert "## Sample answers" in (out / "unlearn_report.md").read_text()


def test_bad_recipe_fails_before_any_weight_is_read(original, monkeypatch, capsys):
    folder, data_dir = original

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    base = ["run", str(DEMO_RECIPE), "--model_name_or_path", str(folder / "original"), "--data_dir", str(data_dir)]
    for flags, message in (
        (["--max_steps", "30"], "max_steps=30 must be a multiple"),
        (["--fp16", "true", "--use_cpu", "false"], "fp16=True cannot be combined"),
    ):
        assert main([*base, *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(ValueError, match="max_steps=30 must be a multiple"):  # --debug: the traceback, raised
        main([*base, "--max_steps", "30", "--debug"])


def test_rmu_recipe_trains_on_raw_text_corpora(original, tmp_path):
    folder, _ = original
    forget, retain = tmp_path / "forget.jsonl", tmp_path / "retain.jsonl"
    forget.write_text("".join(json.dumps({"text": f"Ava Varga was born in Oslo in {y}."}) + "\n" for y in range(8)))
    retain.write_text("".join(json.dumps({"text": f"The capital of France is Paris {i}."}) + "\n" for i in range(8)))
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "wmdp_rmu_hybrid.yaml"
    out = tmp_path / "rmu"
    flags = ["--model_name_or_path", str(folder / "original"), "--forget_file", str(forget)]
    flags += ["--retain_file", str(retain), "--output_dir", str(out), "--max_length", "16", "--layer", "1"]
    flags += ["--trainable_layers", "1", "--max_steps", "2", "--hybrid_fo_steps", "1", "--alpha", "10"]
    flags += ["--learning_rate", "1e-2", "--zo_learning_rate", "1e-2", "--use_cpu", "true", "--disable_tqdm", "true"]
    assert main(["run", str(recipe), *flags]) == 0
    before = AutoModelForCausalLM.from_pretrained(folder / "original").state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"model.layers.1.mlp.down_proj.weight"}  # RMU's selection, through both FO and ZO steps


# ---- MUSE- and WMDP-style recipes: raw corpora, evaluated and attacked in-run with their own benchmark ----------


def corpus_file(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.mark.parametrize("source", ["muse", "wmdp"])
def test_text_recipes_train_evaluate_and_attack_with_their_own_benchmark(source, original, tmp_path):
    from tests.test_muse_eval import FORGET_TEXT, HOLDOUT_TEXT, write_muse
    from tests.test_wmdp_eval import QUESTIONS, write_jsonl

    folder, _ = original
    forget = corpus_file(tmp_path / "forget.jsonl", FORGET_TEXT)
    retain = corpus_file(tmp_path / "retain.jsonl", HOLDOUT_TEXT)
    if source == "muse":
        eval_dir = write_muse(tmp_path / "muse")
        recipe, expected = "muse_news_npo_hybrid.yaml", "knowmem_f"
    else:
        eval_dir = tmp_path / "wmdp"
        eval_dir.mkdir()
        for name in ("wmdp_bio", "wmdp_cyber", "mmlu"):
            write_jsonl(eval_dir / f"{name}.json", QUESTIONS, subject="anatomy" if name == "mmlu" else None)
        recipe, expected = "wmdp_rmu_hybrid.yaml", "wmdp_bio_acc"
    out = tmp_path / "out"
    flags = ["--model_name_or_path", folder / "original", "--forget_file", forget, "--retain_file", retain]
    flags += ["--data_dir", eval_dir, "--output_dir", out, "--max_steps", "2", "--hybrid_fo_steps", "1"]
    flags += ["--max_length", "32", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1"]
    flags += ["--robustness", "true", "--relearn_steps", "1", "--relearn_batch_size", "2", "--quantization", "rtn4"]
    flags += ["--disable_tqdm", "true", "--use_cpu", "true", "--bf16", "false"]
    if source == "wmdp":
        flags += ["--layer", "1", "--trainable_layers", "0", "1"]
    assert main(["run", str(DEMO_RECIPE.parent / recipe), *map(str, flags)]) == 0
    (run,) = UnlearnReport.load(out).attacks
    for metrics in (run.unlearned, run.relearn[-1].metrics, run.quantization[0].metrics):
        assert expected in metrics.values, sorted(metrics.values)
    assert (out / "model.safetensors").is_file()


def test_lora_recipe_with_reference_path_zo_seed_retain_split_and_template(original, tmp_path):
    folder, data_dir = original
    out = tmp_path / "lora"
    flags = ["--model_name_or_path", folder / "original", "--data_source", "tofu", "--data_dir", data_dir]
    flags += ["--output_dir", out, "--max_steps", "2", "--hybrid_fo_steps", "1", "--lora_r", "4"]
    flags += ["--ref_model_path", folder / "original", "--zo_seed", "3", "--retain_split", "retain95"]
    flags += ["--qa_template", "Q: {question}\nA:", "--disable_tqdm", "true", "--learning_rate", "1e-2"]
    assert main(["run", str(DEMO_RECIPE), *map(str, flags)]) == 0
    report = UnlearnReport.load(out)
    assert report.recipe["retain_split"] == "retain95" and report.recipe["qa_template"] == "Q: {question}\nA:"
    assert report.config["zo_seed"] == 3 and report.config["ref_model_path"] == str(folder / "original")
    adapter = out / "adapter_model.safetensors"
    assert adapter.is_file() and not (out / "model.safetensors").exists()  # only the adapter was trained and saved
    from safetensors.torch import load_file

    assert all("lora_" in name for name in load_file(adapter))
