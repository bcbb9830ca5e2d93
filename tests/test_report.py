"""UnlearnReport, model card and push: compute counts vs hand counts, card metadata vs report, upload allow-list,
no token leaks, atomic writes, JSON round trip."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from hf_unlearn.attacks.robustness import RobustnessConfig, robustness_checks
from hf_unlearn.benchmarks.base import BenchmarkResult
from hf_unlearn.compute import ComputeAccountingCallback
from hf_unlearn.hub import HubPushError, check_push_possible, files_to_upload, push_to_hub
from hf_unlearn.io import atomic_write_json, atomic_write_text
from hf_unlearn.model_card import build_model_card, write_card
from hf_unlearn.report import UnlearnReport
from hf_unlearn.report_render import loss_figure
from hf_unlearn.report_schema import AFTER, BEFORE, SCHEMA_VERSION, Metrics
from hf_unlearn.trainers import NPOConfig, NPOTrainer
from tests.helpers import mean_answer_nll, one_thread
from tests.scripts.optim_fixtures import npo_dataset, save_npo_model


FAKE_TOKEN = "hf_FakeTokenThatMustNeverBeWritten0123456789"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def module_one_thread():
    with one_thread():
        yield


def npo_config(output_dir, **overrides) -> NPOConfig:
    values = {
        "output_dir": str(output_dir), "report_to": "none", "save_strategy": "no", "logging_steps": 1, "seed": 0,
        "use_cpu": True, "disable_tqdm": True, "learning_rate": 1e-3, "lr_scheduler_type": "constant",
        "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "zo_num_directions": 2,
        "ref_log_probs": "online",
    }  # fmt: skip
    return NPOConfig(**{**values, **overrides})


def tiny_eval_fn(dataset):
    """Forget/retain answer NLL, one example at a time (a stand-in for a benchmark's metrics)."""

    def evaluate(model, tokenizer):
        forget_nll = mean_answer_nll(model, dataset.forget)
        return {"forget_prob": math.exp(-forget_nll), "forget_nll": forget_nll,
                "retain_nll": mean_answer_nll(model, dataset.retain)}  # fmt: skip

    return evaluate


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """NPO + hybrid (1 FO step, 1 ZO step) on a tiny llama, evaluated, attacked, saved with its report and card."""
    tmp = tmp_path_factory.mktemp("run")
    base_path = save_npo_model(tmp / "base")
    dataset = npo_dataset(base_path)
    out = tmp / "out"
    args = npo_config(out, optimizer="hybrid", hybrid_fo_steps=1, hybrid_zo_steps=1, max_steps=2)
    trainer = NPOTrainer(model=base_path, args=args, train_dataset=dataset)
    accounting = ComputeAccountingCallback.for_trainer(trainer)
    tokenizer = trainer.processing_class
    eval_fn = tiny_eval_fn(dataset)
    # Metadata only: the data is the synthetic TOFU-format set, the base model a local folder named as a Hub id.
    report = UnlearnReport(
        base_model="example-org/tiny-llama", benchmark="tofu", datasets=["locuslab/TOFU"],
        command="hf-unlearn run recipes/tofu_npo_hybrid.yaml --max_steps 2",
        recipe={"method": "npo", "optimizer": "hybrid", "max_steps": 2},
    )  # fmt: skip
    report.add_evaluation(BEFORE, eval_fn(trainer.model.eval(), tokenizer))
    with report.timed("train"):
        train_output = trainer.train()
    report.record_training(trainer, train_output)
    model = trainer.model.eval()
    after = eval_fn(model, tokenizer)
    report.add_evaluation(
        AFTER,
        BenchmarkResult(
            "tofu", {**after, "forget_quality": None}, unavailable={"forget_quality": "no retain model was given"},
            config={"forget_split": "forget01"}, num_examples={"forget": 4}, runtime_s=0.5,
        ),
    )  # fmt: skip
    original = AutoModelForCausalLM.from_pretrained(base_path)
    checks = RobustnessConfig(
        relearn_steps=[1, 2], relearn_batch_size=2, relearn_lr=1e-3, quantization=["rtn4", "rtn8"]
    )
    with report.timed("attacks"):
        results = robustness_checks(model, tokenizer, eval_fn, dataset.forget, checks, original_model=original)
    report.add_attacks(results, global_step=trainer.state.global_step)
    trainer.save_model(str(out))
    tokenizer.save_pretrained(out)
    report.save(out)
    write_card(out)
    return SimpleNamespace(out=out, report=report, accounting=accounting, trainer=trainer)


# ---- compute accounting ----------------------------------------------------------------------------------------


def test_compute_accounting_equals_hand_count_for_fo_and_zo_steps(finished_run):
    # Hand count. Each step: 2 micro-batches (batch 2 × accumulation 2). NPO's loss on one micro-batch runs the
    # model on the forget half and on the retain half (retain_loss="nll") and, with ref_log_probs="online", the
    # reference on the forget half.
    # FO step: 2 micro-batches × 2 model forwards = 4; 2 reference forwards; both model forwards of each
    #   micro-batch are differentiated: 4 backwards.
    # ZO step: central differences with q=2 directions = 4 loss evaluations per micro-batch, each 2 model forwards
    #   and 1 reference forward: 2 × 4 × 2 = 16 forwards, 2 × 4 = 8 reference forwards, no backward.
    fo = {"steps": 1, "micro_batches": 2, "forwards": 4, "reference_forwards": 2, "backwards": 4}
    zo = {"steps": 1, "micro_batches": 2, "forwards": 16, "reference_forwards": 8, "backwards": 0}
    assert [h["phase"] for h in finished_run.accounting.history] == ["fo", "zo"]
    assert finished_run.report.compute["fo"] == fo
    assert finished_run.report.compute["zo"] == zo
    assert finished_run.report.compute["num_processes"] == 1


def test_compute_accounting_counts_the_cached_reference_pass_once(tmp_path):
    # adazo, 1 step of 1 micro-batch of 2 pairs; ref_log_probs="cached" computes the reference log-probs of the
    # 4 forget examples once, in one batch (per_device_eval_batch_size=8) at the start of the first step, with the
    # policy itself (no second model is loaded): 1 more model forward in step 1, no reference-model forward.
    # q=2 central differences: 4 loss evaluations × (forget + retain) = 8 model forwards, no backward.
    base_path = save_npo_model(tmp_path / "base")
    args = npo_config(tmp_path / "out", optimizer="adazo", max_steps=2, gradient_accumulation_steps=1,
                      ref_log_probs="cached")  # fmt: skip
    trainer = NPOTrainer(model=base_path, args=args, train_dataset=npo_dataset(base_path))
    accounting = ComputeAccountingCallback.for_trainer(trainer)
    trainer.train()
    step = {"steps": 1, "micro_batches": 1, "backwards": 0, "reference_forwards": 0}
    assert accounting.history == [
        {"step": 1, "phase": "zo", **step, "forwards": 9},
        {"step": 2, "phase": "zo", **step, "forwards": 8},
    ]
    # forwards outside optimizer steps are not counted, and the hooks are gone after training
    trainer.model(**{k: torch.tensor([v]) for k, v in npo_dataset(base_path).forget[0].items() if k != "labels"})
    assert accounting.to_dict()["zo"]["forwards"] == 17


# ---- report ----------------------------------------------------------------------------------------------------


def test_report_files_and_json_round_trip(finished_run):
    out, report = finished_run.out, finished_run.report
    for name in ("unlearn_report.json", "unlearn_report.md", "unlearn_recipe.yaml", "README.md"):
        assert (out / name).is_file(), name
    for name in ("unlearn_losses.png", "unlearn_relearning.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    document = json.loads((out / "unlearn_report.json").read_text())
    assert document["schema_version"] == SCHEMA_VERSION
    loaded = UnlearnReport.load(out)
    assert loaded == report
    assert loaded.to_json() == report.to_json()
    assert loaded.evaluations[AFTER].unavailable == {"forget_quality": "no retain model was given"}
    assert document["evaluations"][AFTER]["values"]["forget_quality"] is None
    assert [p.step for p in loaded.attacks[0].relearn] == [1, 2]
    assert [q.kind for q in loaded.attacks[0].quantization] == ["rtn4", "rtn8"]
    assert all(0 <= q.codes_changed_fraction <= 1 for q in loaded.attacks[0].quantization)
    assert loaded.method == "npo" and loaded.optimizer == "hybrid" and loaded.seed == 0
    assert loaded.optimizer_schedule["hybrid_fo_steps"] == 1 and loaded.optimizer_schedule["zo_num_directions"] == 2
    assert {"hf_unlearn", "torch", "transformers", "trl", "accelerate"} <= set(loaded.versions)
    assert [e["optim/phase"] for e in loaded.training_log] == [0.0, 1.0]
    assert {"loss/forget", "loss/retain"} <= set(loaded.training_log[0])
    assert set(loaded.wall_time_s) == {"train", "attacks"}
    markdown = (out / "unlearn_report.md").read_text()
    assert "| quantized rtn4 |" in markdown and "`forget_quality` (after_training): unavailable" in markdown


def test_a_metric_is_a_number_or_unavailable_with_a_reason():
    metrics = Metrics({"a": 0.5, "b": float("nan"), "c": None}, unavailable={"d": "no retain model"})
    assert metrics.values == {"a": 0.5, "b": None, "c": None, "d": None}
    assert metrics.unavailable == {"b": "the evaluator returned nan", "c": "the evaluator returned no value",
                                   "d": "no retain model"}  # fmt: skip
    with pytest.raises(ValueError, match="'a' has a value"):
        Metrics({"a": 0.5}, unavailable={"a": "why"})
    with pytest.raises(TypeError, match="'a' must be a number"):
        Metrics({"a": "0.5"})
    text = UnlearnReport(evaluations={AFTER: metrics}).to_json()
    assert "NaN" not in text and json.loads(text)["evaluations"][AFTER]["values"]["b"] is None


def test_report_from_a_newer_schema_is_refused():
    data = UnlearnReport().to_dict()
    with pytest.raises(ValueError, match="schema_version 2; this hf_unlearn reads up to 1"):
        UnlearnReport.from_dict({**data, "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ValueError, match="Unknown unlearn report field"):
        UnlearnReport.from_dict({**data, "surprise": 1})


def test_loss_plot_shades_each_logged_step_by_its_phase(finished_run):
    figure = loss_figure(finished_run.report)
    spans = [patch for patch in figure.axes[0].patches if patch.get_gid() in ("fo", "zo")]
    assert [(s.get_gid(), s.get_x(), s.get_x() + s.get_width()) for s in spans] == [("fo", 0, 1), ("zo", 1, 2)]
    assert [line.get_label() for line in figure.axes[0].lines] == ["loss/forget", "loss/retain"]


def test_paper_records_accept_strings_and_structured_records():
    report = UnlearnReport(papers="A et al. 2024, One (2404.05868); B et al. 2023, Two (2305.18290)")
    assert [p["arxiv_id"] for p in report.papers] == ["2404.05868", "2305.18290"]
    bibtex = "@article{npo, title={Negative Preference Optimization}}"
    structured = UnlearnReport(papers={"title": "NPO", "arxiv_id": "2404.05868", "bibtex": bibtex})
    body = str(build_model_card(structured))
    assert "NPO ([arXiv:2404.05868](https://arxiv.org/abs/2404.05868))" in body
    assert "```bibtex\n" + bibtex in body


# ---- model card ------------------------------------------------------------------------------------------------


def test_card_metadata_parsed_by_huggingface_hub_matches_the_report(finished_run):
    report = finished_run.report
    card = ModelCard.load(finished_run.out / "README.md")
    data = card.data
    assert data.base_model == "example-org/tiny-llama"
    assert data.library_name == "hf_unlearn"
    assert data.tags == ["unlearning", "hf_unlearn", "npo", "hybrid"]
    assert data.datasets == ["locuslab/TOFU"]
    expected = {("after_training", k): v for k, v in report.evaluations[AFTER].values.items() if v is not None}
    run = report.attacks[-1]
    for point in run.relearn:
        expected.update({(f"relearn_{point.step}", k): v for k, v in point.metrics.values.items()})
    for attack in run.quantization:
        expected.update({(attack.kind, k): v for k, v in attack.metrics.values.items()})
        expected[(attack.kind, "codes_changed_fraction")] = attack.codes_changed_fraction
    parsed = {(r.metric_config, r.metric_type): r.metric_value for r in data.eval_results}
    assert parsed == pytest.approx(expected, rel=0, abs=0)
    assert ("after_training", "forget_quality") not in parsed  # unavailable: a reason in the body, no number
    body = card.text
    assert "`forget_quality` (after_training): unavailable, no retain model was given" in body
    assert "https://arxiv.org/abs/2404.05868" in body  # NPO's paper
    assert "Hybrid FO-ZO: 1 first-order steps (adamw) then 1 zeroth-order steps" in body
    assert "| quantized rtn4 |" in body and "| relearned 2 steps |" in body
    assert report.command in body


def test_card_command_rebuilds_readme_from_the_report(finished_run, tmp_path, capsys):
    folder = tmp_path / "copy"
    folder.mkdir()
    (folder / "unlearn_report.json").write_text((finished_run.out / "unlearn_report.json").read_text())
    card = _command_module("card")
    assert card.main(SimpleNamespace(output_dir=str(folder))) == 0
    assert (folder / "README.md").read_text() == (finished_run.out / "README.md").read_text()
    assert "Wrote" in capsys.readouterr().out


def _command_module(name: str):
    return importlib.import_module(f"hf_unlearn.cli.{name}")


# ---- push ------------------------------------------------------------------------------------------------------


class CapturingApi:
    """Stands in for HfApi: records the calls, uploads nothing."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        CapturingApi.calls.append(("init", args, kwargs))

    def create_repo(self, repo_id, **kwargs):
        CapturingApi.calls.append(("create_repo", repo_id, kwargs))
        return SimpleNamespace(url=f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        CapturingApi.calls.append(("upload_folder", kwargs))


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Online mode with no stored login (the token file points into tmp_path)."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(huggingface_hub, "HfApi", CapturingApi)
    CapturingApi.calls = []


def _run_copy(finished_run, tmp_path) -> Path:
    """The finished run's folder plus what a real output folder also holds and must not be uploaded."""
    folder = tmp_path / "out"
    folder.mkdir()
    for path in finished_run.out.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    (folder / "checkpoint-1").mkdir()
    (folder / "checkpoint-1" / "model.safetensors").write_bytes(b"old")
    (folder / "data").mkdir()
    (folder / "data" / "forget01.json").write_text("{}")
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "tofu_per_example.json").write_text("{}")
    return folder


def _uploaded(folder: Path, upload_kwargs: dict) -> set[str]:
    """What upload_folder uploads: huggingface_hub's own filter applied to the folder's files."""
    from huggingface_hub.utils import filter_repo_objects

    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return set(filter_repo_objects(files, allow_patterns=upload_kwargs["allow_patterns"]))


def test_push_uploads_exactly_the_allow_list_and_never_the_token(finished_run, tmp_path, online, monkeypatch, caplog,
                                                                 capsys):  # fmt: skip
    folder = _run_copy(finished_run, tmp_path)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    caplog.set_level(logging.DEBUG)
    push = _command_module("push")
    args = SimpleNamespace(output_dir=str(folder), hub_model_id="me/tiny-npo", private=True, token=None,
                           commit_message=None)  # fmt: skip
    assert push.main(args) == 0
    (_, create_id, create), (_, upload) = [c for c in CapturingApi.calls if c[0] != "init"]
    assert create_id == "me/tiny-npo" and create["private"] is True and create["token"] == FAKE_TOKEN
    assert upload["repo_id"] == "me/tiny-npo" and upload["token"] == FAKE_TOKEN
    tokenizer_files = set(files_to_upload(finished_run.out)) & {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    }  # fmt: skip
    assert "tokenizer.json" in tokenizer_files
    assert _uploaded(folder, upload) == {
        "model.safetensors", "config.json", "generation_config.json", "README.md", "unlearn_report.json",
        "unlearn_report.md", "unlearn_recipe.yaml", "unlearn_losses.png", "unlearn_relearning.png", *tokenizer_files,
    }  # fmt: skip
    assert ModelCard.load(folder / "README.md").data.model_name == "me/tiny-npo"
    assert UnlearnReport.load(folder).hub_model_id == "me/tiny-npo"
    for path in folder.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path
    captured = capsys.readouterr()
    assert FAKE_TOKEN not in captured.out + captured.err + caplog.text
    assert "Pushed" in captured.out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_offline_or_tokenless_push_fails_in_one_line_and_leaves_the_model(finished_run, tmp_path, online, monkeypatch):
    folder = _run_copy(finished_run, tmp_path)
    before = _snapshot(folder)
    with pytest.raises(HubPushError) as error:
        push_to_hub(folder, "me/tiny-npo")
    message = str(error.value)
    assert "\n" not in message and "hf auth login" in message and "HF_TOKEN" in message
    assert f"hf-unlearn push {folder} --hub_model_id me/tiny-npo" in message

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    with pytest.raises(HubPushError, match="^Cannot push to the Hub while HF_HUB_OFFLINE=1: unset HF_HUB_OFFLINE"):
        push_to_hub(folder, "me/tiny-npo", token=FAKE_TOKEN)
    assert FAKE_TOKEN not in str(error.value)
    assert _snapshot(folder) == before
    assert CapturingApi.calls == []


def test_check_push_possible_at_parse_time(online, monkeypatch):
    with pytest.raises(HubPushError, match="needs hub_model_id"):
        check_push_possible(None, FAKE_TOKEN)
    with pytest.raises(HubPushError, match="'a/b/c' is not a Hub repo id"):
        check_push_possible("a/b/c", FAKE_TOKEN)
    with pytest.raises(HubPushError, match="without a token: run `hf auth login` or set HF_TOKEN"):
        check_push_possible("me/model")
    check_push_possible("me/model", FAKE_TOKEN)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    check_push_possible("me/model")
    assert CapturingApi.calls == []  # reaches no server


# ---- atomic writes ---------------------------------------------------------------------------------------------


def test_atomic_write_keeps_the_previous_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "unlearn_report.json"
    atomic_write_text(path, "previous")

    def failing_fsync(fd):  # the data is half on its way to disk when the disk fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, "new " * 10_000)
    monkeypatch.undo()
    with pytest.raises(UnicodeEncodeError):  # fails midway through the text
        atomic_write_text(path, "ascii first, then é", encoding="ascii")
    with pytest.raises(ValueError, match="Out of range float"):  # not JSON: fails before touching the file
        atomic_write_json(path, {"metric": float("nan")})
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["unlearn_report.json"]  # no temporary file left behind
    atomic_write_text(path, "new")
    assert path.read_text() == "new"


def test_json_safe_has_one_rule_for_non_finite_numbers(tmp_path):
    """One conversion for reports, evaluations and checkpoints: NaN and ±inf become null (unavailable), never a
    number or a string; enums by value, tuples as lists, unknown objects as their text."""
    import enum

    from hf_unlearn.benchmarks.base import BenchmarkResult
    from hf_unlearn.io import json_safe

    class Kind(enum.Enum):
        FO = "fo"

    value = {"nan": float("nan"), "inf": float("inf"), "ninf": -math.inf, "kind": Kind.FO, "pair": (1, 2.5),
             "path": Path("/x/y"), 3: None}  # fmt: skip
    assert json_safe(value) == {"nan": None, "inf": None, "ninf": None, "kind": "fo", "pair": [1, 2.5],
                                "path": "/x/y", "3": None}  # fmt: skip
    result = BenchmarkResult("tofu", {"forget_prob": float("nan"), "model_utility": 0.5})
    assert result.summary()["metrics"] == {"forget_prob": None, "model_utility": 0.5}
    report = UnlearnReport(config={"max_grad_norm": float("inf")}, training={"train_loss": float("nan")})
    document = json.loads(report.to_json())
    assert document["config"] == {"max_grad_norm": None} and document["training"] == {"train_loss": None}
