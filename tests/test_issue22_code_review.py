"""Issue 22, group 11: bugs found by reading the code, each with the test that was missing. A sweep on MUSE and on
WMDP data; `attack --benchmark muse`; cards and reports without machine paths; the optimizer's paper cited; one
model loader with the safetensors-only and trust_remote_code policy."""

import json
from pathlib import Path

import pytest

from hf_unlearn.cli import main


ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def corpus_file(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def text_source(source, tmp_path):
    """Forget/retain corpora and the evaluation folder of a MUSE- or WMDP-shaped run; its recipe and forget metric."""
    from tests.test_muse_eval import FORGET_TEXT, HOLDOUT_TEXT, write_muse
    from tests.test_wmdp_eval import QUESTIONS, write_jsonl

    forget = corpus_file(tmp_path / "forget.jsonl", FORGET_TEXT)
    retain = corpus_file(tmp_path / "retain.jsonl", HOLDOUT_TEXT)
    if source == "muse":
        return forget, retain, write_muse(tmp_path / "muse"), "muse_news_npo_hybrid.yaml", "knowmem_f"
    eval_dir = tmp_path / "wmdp"
    eval_dir.mkdir()
    for name in ("wmdp_bio", "wmdp_cyber"):
        write_jsonl(eval_dir / f"{name}.json", QUESTIONS)
    write_jsonl(eval_dir / "mmlu.json", QUESTIONS, "high_school_us_history")  # lm-eval's mmlu needs each subject
    return forget, retain, eval_dir, "wmdp_rmu_hybrid.yaml", "wmdp_bio_acc"


@pytest.mark.parametrize("source", ["muse", "wmdp"])
def test_sweep_on_muse_and_wmdp_data_compares_their_forget_metric(source, tiny_model_dir, tmp_path):
    forget, retain, eval_dir, recipe, metric = text_source(source, tmp_path)
    out = tmp_path / "sweep"
    argv = ["sweep", RECIPES / recipe, "--optimizers", "adamw", "--seeds", "1", "--output_dir", out,
            "--model_name_or_path", tiny_model_dir, "--forget_file", forget, "--retain_file", retain,
            "--data_dir", eval_dir, "--max_steps", "2", "--max_length", "32", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--relearn_steps", "1", "--relearn_batch_size", "2",
            "--quantization", "rtn4", "--disable_tqdm", "true", "--use_cpu", "true", "--bf16", "false"]  # fmt: skip
    if source == "wmdp":
        argv += ["--layer", "1", "--trainable_layers", "0", "1"]
    assert main([str(a) for a in argv]) == 0
    report = json.loads((out / "sweep_report.json").read_text())
    assert report["forget_metric"] == metric
    headers = [c["header"] for c in report["columns"]]
    assert metric in headers and f"{metric} after relearn 1" in headers
    cell = report["cells"][0]
    assert cell["unlearned"][metric] is not None
    assert (Path(cell["output_dir"]) / "unlearn_relearning.png").is_file()  # the relearning plot is drawn


def test_attack_on_muse_evaluates_muse_and_relearns_on_its_forget_texts(cli, tiny_model_dir, tmp_path, monkeypatch):
    from hf_unlearn.attacks import robustness
    from tests.test_muse_eval import FORGET_TEXT, write_muse

    seen = []
    real = robustness.robustness_checks

    def spy(model, tokenizer, eval_fn, relearn_data, *args, **kwargs):
        seen.append([row["text"] for row in relearn_data])
        return real(model, tokenizer, eval_fn, relearn_data, *args, **kwargs)

    monkeypatch.setattr(robustness, "robustness_checks", spy)
    out = tmp_path / "attack"
    code, _, stderr = cli(
        "attack", "--model", tiny_model_dir, "--benchmark", "muse", "--data_dir", write_muse(tmp_path / "muse"),
        "--relearn_steps", "1", "--relearn_batch_size", "2", "--quantization", "--output_dir", out, "--device", "cpu",
    )  # fmt: skip
    assert code == 0, stderr
    assert seen == [FORGET_TEXT]  # MUSE's forget texts, not TOFU's forget split
    report = json.loads((out / "unlearn_report.json").read_text())
    (run,) = report["attacks"]
    assert report["benchmark"] == "muse" and run["relearn"][-1]["metrics"]["values"]["knowmem_f"] is not None
    assert run["label"] == f"{Path(tiny_model_dir).name} (post hoc)"


def test_attack_on_wmdp_without_forget_texts_is_refused_before_loading(cli, tiny_model_dir, tmp_path, monkeypatch):
    import hf_unlearn.loading

    monkeypatch.setattr(hf_unlearn.loading, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("loaded"))
    code, _, stderr = cli("attack", "--model", tiny_model_dir, "--benchmark", "wmdp", "--output_dir", tmp_path / "o")
    assert code == 2 and "--benchmark wmdp ships no forget texts" in stderr and "--relearn_data" in stderr, stderr
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, synthetic_data_dir, tmp_path_factory):
    """A 2-step hybrid NPO run given absolute paths for everything, with its card."""
    out = tmp_path_factory.mktemp("card") / "npo_run"
    argv = ["run", RECIPES / "demo.yaml", "--model_name_or_path", Path(tiny_model_dir).resolve(),
            "--data_source", "tofu", "--data_dir", Path(synthetic_data_dir).resolve(), "--output_dir", out.resolve(),
            "--max_steps", "2", "--hybrid_fo_steps", "1", "--hybrid_zo_steps", "1", "--max_length", "64",
            "--disable_tqdm", "true"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    return out


def test_card_and_report_name_no_folder_of_this_machine(finished_run, tiny_model_dir):
    from hf_unlearn.report_render import _LOCAL_PATH

    card = (finished_run / "README.md").read_text()
    report = json.loads((finished_run / "unlearn_report.json").read_text())
    markdown = (finished_run / "unlearn_report.md").read_text()
    for text in (card, report["command"], markdown, *report["datasets"]):
        assert not _LOCAL_PATH.findall(text), _LOCAL_PATH.findall(text)
    root = str(Path(tiny_model_dir).resolve().parents[1])  # pytest's temporary root on this machine
    assert root not in card and root not in markdown and root not in report["command"]
    name = Path(tiny_model_dir).name
    assert f"`{name}` after unlearning" in card and f"--model_name_or_path {name}" in report["command"]
    metadata = card.split("---")[1]
    assert "datasets:" not in metadata  # a local TOFU copy is no Hub dataset


def test_card_datasets_metadata_lists_hub_ids_only():
    from hf_unlearn.model_card import card_data
    from hf_unlearn.report import UnlearnReport

    assert card_data(UnlearnReport(benchmark="tofu", datasets=["locuslab/TOFU"])).datasets == ["locuslab/TOFU"]
    assert card_data(UnlearnReport(benchmark="muse-news")).datasets == ["muse-bench/MUSE-News"]
    local = UnlearnReport(benchmark="tofu", datasets=["/data/copies/tofu"])
    assert local.datasets == ["tofu"] and card_data(local).datasets is None


@pytest.mark.parametrize(
    ("optimizer", "config", "cited"),
    [
        ("hybrid", {"hybrid_fo_optimizer": "adamw"}, ["2510.00761"]),
        ("hybrid", {"hybrid_fo_optimizer": "sophia"}, ["2510.00761", "2404.18239"]),
        ("adazo", {}, ["2510.00761"]),
        ("signadam", {}, ["2510.00761"]),
        ("qadam", {}, ["2510.00761"]),
        ("sophia", {}, ["2510.00761", "2404.18239"]),
        ("adamw", {}, []),
    ],
)
def test_card_cites_the_optimizers_paper(optimizer, config, cited):
    from hf_unlearn.model_card import build_model_card
    from hf_unlearn.report import UnlearnReport

    report = UnlearnReport(
        method="npo", optimizer=optimizer, config=config, papers=["Zhang et al. (arXiv:2404.05868)"]
    )
    card = str(build_model_card(report))
    found = [arxiv for arxiv in ("2510.00761", "2404.18239") if f"arxiv.org/abs/{arxiv}" in card]
    assert found == cited and "arxiv.org/abs/2404.05868" in card  # the method's paper stays
    assert ("lang2025downgrade" in card) == ("2510.00761" in cited) and ("jia2024soul" in card) == (len(cited) == 2)


def test_a_real_runs_card_cites_downgrade_to_upgrade(finished_run):
    card = (finished_run / "README.md").read_text()
    assert "Downgrade to Upgrade" in card and "arxiv.org/abs/2510.00761" in card and "arxiv.org/abs/2404.05868" in card


def test_no_model_is_loaded_outside_the_loader():
    import re

    pattern = re.compile(r"(AutoModel\w*|\w+ForCausalLM|PreTrainedModel)\.from_pretrained\(")
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "hf_unlearn").rglob("*.py")
        if path.name != "loading.py" and pattern.search(path.read_text())
    ]
    assert offenders == []


def test_trainer_and_reference_loads_keep_the_policy(tiny_model_dir, synthetic_data_dir, tmp_path, monkeypatch):
    import shutil

    import torch
    import transformers
    from safetensors.torch import load_file

    from hf_unlearn import GradDiffConfig, GradDiffTrainer
    from hf_unlearn.benchmarks.tofu_data import load_tofu
    from hf_unlearn.data import ForgetRetainDataset, QADataset
    from hf_unlearn.loading import load_tokenizer

    calls = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, path, *args, **kwargs):
        calls.append(kwargs)
        return real(cls, path, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = QADataset(load_tofu("forget10", synthetic_data_dir), tokenizer, max_length=64)
    dataset = ForgetRetainDataset(rows, rows)

    def config(**extra):
        return GradDiffConfig(output_dir=str(tmp_path / "out"), retain_loss="kl", report_to="none", use_cpu=True,
                              max_steps=1, **extra)  # fmt: skip

    GradDiffTrainer(str(tiny_model_dir), config(), train_dataset=dataset)  # the model and its reference, reloaded
    assert len(calls) == 2
    assert all(c["use_safetensors"] is True and c["trust_remote_code"] is False for c in calls), calls
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(OSError, match="safetensors"):  # a pickled reference is never unpickled
        GradDiffTrainer(str(tiny_model_dir), config(ref_model_path=str(pickled)), train_dataset=dataset)


def test_loader_policy_for_every_format(monkeypatch):
    import transformers

    from hf_unlearn.loading import load_model

    calls = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda path, **kw: calls.append(kw))
    load_model("some/model", dtype="float32", revision="main")
    load_model("some/folder", gguf_file="model.Q4_K_M.gguf")  # GGUF: a data format, read as such
    assert calls[0] == {"dtype": __import__("torch").float32, "revision": "main", "use_safetensors": True,
                        "trust_remote_code": False}  # fmt: skip
    assert calls[1] == {"gguf_file": "model.Q4_K_M.gguf", "trust_remote_code": False}
    with pytest.raises(ValueError, match="safetensors only"):
        load_model("some/model", use_safetensors=False)
