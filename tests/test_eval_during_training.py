"""Evaluation during training: `eval_strategy` runs the recipe's benchmark, `metric_for_best_model` (a metric or a
combination) picks the best evaluation, `load_best_model_at_end` keeps that checkpoint, the report holds the curve."""

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hf_unlearn.benchmarks.selection import METRIC_DIRECTIONS, SOURCE_METRICS, parse_selection
from hf_unlearn.benchmarks.sources import TofuSource
from hf_unlearn.cli import main
from hf_unlearn.data import ForgetRetainDataset
from hf_unlearn.report import UnlearnReport
from hf_unlearn.report_schema import EVAL_PLOT
from hf_unlearn.tiny import build_tiny_model
from hf_unlearn.trainers import get_method
from tests.helpers import one_thread, synthetic_tokenizer


ROOT = Path(__file__).resolve().parents[1]
SELECTION = "mean(forget_quality, model_utility)"


@pytest.fixture(scope="module")
def original(tmp_path_factory, synthetic_data_dir):
    """A tiny untrained Llama; it also serves as the retain model forget quality reads."""
    folder = tmp_path_factory.mktemp("evaltrain")
    tokenizer = synthetic_tokenizer()
    build_tiny_model(tokenizer, hidden_size=32, intermediate_size=64).save_pretrained(folder / "original")
    tokenizer.save_pretrained(folder / "original")
    return folder, synthetic_data_dir


# ---- the selection expression ----------------------------------------------------------------------------------

VALUES = {"forget_quality": 0.2, "model_utility": 0.6, "forget_prob": 0.1, "privleak": -3.0, "forget_truth_ratio": 0.5}


@pytest.mark.parametrize(
    "text, names, greater, value",
    [
        ("forget_quality", ["forget_quality"], True, 0.2),
        ("eval_forget_prob", ["forget_prob"], False, 0.1),  # Trainer's own prefix is accepted
        (SELECTION, ["forget_quality", "model_utility"], True, (0.2 + 0.6) / 2),
        ("hmean(forget_quality, model_utility)", ["forget_quality", "model_utility"], True, 2 / (1 / 0.2 + 1 / 0.6)),
        ("model_utility - forget_prob", ["model_utility", "forget_prob"], True, 0.6 - 0.1),
        ("0.7 * model_utility + 0.3*forget_truth_ratio", ["model_utility", "forget_truth_ratio"], True, 0.57),
        ("-forget_prob", ["forget_prob"], True, -0.1),
        ("min(forget_prob, 2 * forget_prob)", ["forget_prob"], False, 0.1),
        ("abs(privleak)", ["privleak"], False, 3.0),
        ("(model_utility + forget_quality) / 2", ["model_utility", "forget_quality"], True, 0.4),
    ],
)
def test_selection_reads_its_metrics_in_their_direction(text, names, greater, value):
    selection = parse_selection(text)
    assert selection.names == names and selection.greater_is_better is greater
    assert selection(VALUES) == pytest.approx(value)


def test_selection_of_an_unavailable_metric_is_nan_so_never_best():
    assert math.isnan(parse_selection(SELECTION)({"forget_quality": None, "model_utility": 0.5}))
    assert math.isnan(parse_selection(SELECTION)({"forget_quality": math.nan, "model_utility": 0.5}))


@pytest.mark.parametrize(
    "text, message",
    [
        ("forget_qualty", "unknown metric 'forget_qualty'; known metrics: forget_extraction_strength, forget_prob"),
        ("mean(model_utility, forget_prob)", "better higher with one that is better lower"),
        ("privleak", "select on abs(privleak)"),
        ("mia_min_k_auc", "select on abs(privleak)"),
        ("model_utility * forget_quality", "takes a number on one side"),
        ("median(model_utility)", "unknown function 'median'; functions: mean, hmean, min, max, abs"),
        ("__import__(os)", "unknown function '__import__'"),
        ("open('x')", 'unexpected "\'"'),
        ("model_utility; 1", "unexpected ';'"),
        ("model_utility +", "ends too early"),
        ("3", "reads no metric"),
    ],
)
def test_bad_selection_fails_in_one_line_naming_the_fix(text, message):
    with pytest.raises(ValueError, match="metric_for_best_model=") as error:
        parse_selection(text)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_config_sets_greater_is_better_from_the_metric_and_refuses_a_contradiction(tmp_path):
    config_class = get_method("grad_diff").config_class
    common = {"output_dir": str(tmp_path), "use_cpu": True, "report_to": "none"}
    assert config_class(**common, metric_for_best_model="forget_prob").greater_is_better is False
    assert config_class(**common, metric_for_best_model=SELECTION).greater_is_better is True
    assert config_class(**common, metric_for_best_model="loss").greater_is_better is False  # a plain eval_dataset's
    with pytest.raises(ValueError, match="contradicts metric_for_best_model='forget_prob', which is better lower"):
        config_class(**common, metric_for_best_model="forget_prob", greater_is_better=True)
    with pytest.raises(ValueError, match="known metrics: "):
        config_class(**common, metric_for_best_model="mean(forget_quality, utility)")


def test_every_source_metric_has_a_direction():
    assert {name for names in SOURCE_METRICS.values() for name in names} <= set(METRIC_DIRECTIONS)


# ---- recipes: bad input fails before any weight loads -----------------------------------------------------------


def test_recipe_selection_is_checked_against_the_source_before_any_weight_loads(original, monkeypatch, capsys):
    folder, data_dir = original

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    base = ["run", "--method", "grad_diff", "--model_name_or_path", folder / "original", "--data_dir", data_dir]
    base += ["--output_dir", folder / "refused", "--eval_strategy", "steps", "--eval_steps", "2", "--use_cpu", "true"]
    for flags, message in (
        (["--metric_for_best_model", "forget_qualty"], "unknown metric 'forget_qualty'; known metrics: "),
        (["--metric_for_best_model", "knowmem_r"], "unknown metric 'knowmem_r'"),  # MUSE's, not TOFU's
        (["--metric_for_best_model", SELECTION], "reads forget_quality, which needs the retain model's statistics"),
        (["--load_best_model_at_end", "true", "--save_steps", "2"], "metric_for_best_model=loss (Trainer's default"),
    ):
        assert main([str(a) for a in base + flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (folder / "refused").exists()


# ---- a run that evaluates every 2 steps and keeps the best checkpoint --------------------------------------------


def test_run_evaluates_every_n_steps_and_keeps_the_best_checkpoint(original, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_UNLEARN_CACHE", str(tmp_path / "cache"))  # the retain model's statistics
    folder, data_dir = original
    out = folder / "best"
    flags = ["run", "--method", "grad_diff", "--model_name_or_path", folder / "original", "--data_dir", data_dir]
    flags += [
        "--retain_model",
        folder / "original",
        "--output_dir",
        out,
        "--max_steps",
        "6",
        "--learning_rate",
        "1e-2",
    ]
    flags += ["--per_device_train_batch_size", "4", "--max_length", "128", "--eval_max_new_tokens", "4"]
    flags += ["--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2"]
    flags += ["--load_best_model_at_end", "true", "--metric_for_best_model", SELECTION, "--logging_steps", "1"]
    flags += ["--disable_tqdm", "true", "--report_to", "none", "--use_cpu", "true", "--seed", "0"]
    with one_thread():
        assert main([str(f) for f in flags]) == 0

    report = UnlearnReport.load(out)
    assert [entry["step"] for entry in report.evaluation_curve] == [2, 4, 6]
    combined = []
    for entry in report.evaluation_curve:
        values = entry["values"]
        assert {"forget_prob", "forget_quality", "model_utility", SELECTION} <= set(values)
        assert values[SELECTION] == pytest.approx((values["forget_quality"] + values["model_utility"]) / 2)
        combined.append(values[SELECTION])
    best_step = report.evaluation_curve[combined.index(max(combined))]["step"]
    assert best_step != 6, "the test needs a best step other than the last to tell the kept model from the final one"
    assert report.best_model == {
        "metric": SELECTION, "greater_is_better": True, "step": best_step, "value": max(combined),
        "checkpoint": f"checkpoint-{best_step}", "loaded_at_end": True,
    }  # fmt: skip
    saved = load_file(out / "model.safetensors")
    kept = load_file(out / f"checkpoint-{best_step}" / "model.safetensors")
    last = load_file(out / "checkpoint-6" / "model.safetensors")
    assert saved.keys() == kept.keys() and all(torch.equal(saved[k], kept[k]) for k in saved)
    assert any(not torch.equal(saved[k], last[k]) for k in saved)
    assert (out / EVAL_PLOT).read_bytes()[:4] == b"\x89PNG"
    markdown = (out / "unlearn_report.md").read_text()
    assert "## Evaluation during training" in markdown and f"step {best_step}, value" in markdown
    assert f"![{EVAL_PLOT}]({EVAL_PLOT})" in markdown
    assert "## Evaluation during training" in (out / "README.md").read_text()  # the model card shows it too
    assert UnlearnReport.from_json(report.to_json()).best_model == report.best_model  # the schema reads it back


def test_evaluating_during_training_leaves_the_trained_weights_unchanged(tmp_path, synthetic_data_dir):
    """Benchmark evaluation between steps must not move the training run (random stream, modes): the final weights
    of a run evaluated after every step equal those of the same run unevaluated."""
    tokenizer = synthetic_tokenizer()
    source = TofuSource(data_dir=synthetic_data_dir, max_length=128, max_new_tokens=4)
    benchmark = source.benchmark(tokenizer, show_progress=False)
    trainer_class = get_method("grad_diff")

    def train(evaluate: bool):
        torch.manual_seed(0)
        # Dropout draws random numbers in training mode: evaluation must neither shift them nor leave eval mode on.
        model = build_tiny_model(tokenizer, hidden_size=32, intermediate_size=64, attention_dropout=0.1)
        config = trainer_class.config_class(
            output_dir=str(tmp_path / str(evaluate)), max_steps=3, learning_rate=1e-2, per_device_train_batch_size=2,
            eval_strategy="steps" if evaluate else "no", eval_steps=1, save_strategy="no", report_to="none",
            use_cpu=True, seed=0, disable_tqdm=True,
        )  # fmt: skip
        dataset = ForgetRetainDataset(source.forget_dataset(tokenizer), source.retain_dataset(tokenizer), seed=0)
        trainer = trainer_class(
            model=model, args=config, train_dataset=dataset, eval_dataset=benchmark if evaluate else None,
            processing_class=tokenizer,
        )  # fmt: skip
        trainer.train()
        return trainer

    with one_thread():
        evaluated, plain = train(True), train(False)
    steps = [log["step"] for log in evaluated.state.log_history if "eval_forget_prob" in log]
    assert steps == [1, 2, 3]
    weights, reference = evaluated.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(weights[k], reference[k]) for k in weights)
    assert evaluated.model.training  # handed back in training mode after each evaluation
    metrics = evaluated.evaluate()
    direct = benchmark.evaluate(evaluated.model.eval(), tokenizer).metrics
    assert metrics["eval_forget_prob"] == direct["forget_prob"]
    assert metrics["eval_model_utility"] == direct["model_utility"]
    assert math.isnan(metrics["eval_forget_quality"])  # no retain model: unavailable, never a number


def test_epoch_strategy_evaluates_at_each_epoch_end(tmp_path, synthetic_data_dir):
    tokenizer = synthetic_tokenizer()
    source = TofuSource(data_dir=synthetic_data_dir, max_length=128, max_new_tokens=2)
    trainer_class = get_method("grad_ascent")
    config = trainer_class.config_class(
        output_dir=str(tmp_path), num_train_epochs=2, learning_rate=1e-3, per_device_train_batch_size=2, alpha=0.0,
        eval_strategy="epoch", save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = trainer_class(
        model=build_tiny_model(tokenizer, hidden_size=32, intermediate_size=64), args=config,
        train_dataset=ForgetRetainDataset(source.forget_dataset(tokenizer)),
        eval_dataset=source.benchmark(tokenizer, show_progress=False), processing_class=tokenizer,
    )  # fmt: skip
    with one_thread():
        trainer.train()
    forget_rows = len(source.forget_dataset(tokenizer))  # 4: two steps of 2 per epoch
    curve = [(log["step"], log["epoch"]) for log in trainer.state.log_history if "eval_model_utility" in log]
    assert forget_rows == 4 and curve == [(2, 1.0), (4, 2.0)]


def test_report_reads_the_curve_and_best_step_from_the_trainer_log():
    """The curve comes from Trainer's log history (so it survives a resume); without a selection the table and plot
    show the forget and utility metrics; an unavailable value is None, and never the best."""
    from types import SimpleNamespace

    from hf_unlearn.report_render import evaluation_figure, report_markdown
    from hf_unlearn.report_schema import best_model_record, evaluation_curve

    history = [
        {"loss": 1.0, "step": 1, "epoch": 0.5},
        {"eval_forget_prob": 0.5, "eval_model_utility": 0.4, "eval_forget_quality": math.nan, "eval_runtime": 3.0,
         "step": 2, "epoch": 1.0},
        {"eval_forget_prob": 0.2, "eval_model_utility": 0.3, "eval_forget_quality": 0.1, "step": 4, "epoch": 2.0},
        {"eval_forget_prob": 0.3, "eval_model_utility": 0.1, "eval_forget_quality": 0.1, "step": 6, "epoch": 3.0},
    ]  # fmt: skip
    curve = evaluation_curve(history)
    assert [e["step"] for e in curve] == [2, 4, 6] and "runtime" not in curve[0]["values"]
    assert curve[0]["values"]["forget_quality"] is None and curve[0]["epoch"] == 1.0
    args = SimpleNamespace(metric_for_best_model="forget_prob", greater_is_better=False, load_best_model_at_end=False)
    best = best_model_record(args, SimpleNamespace(best_model_checkpoint=None), curve)
    assert best == {"metric": "forget_prob", "greater_is_better": False, "step": 4, "value": 0.2, "checkpoint": None,
                    "loaded_at_end": False}  # fmt: skip
    args.metric_for_best_model, args.greater_is_better = "forget_quality", True
    assert best_model_record(args, SimpleNamespace(best_model_checkpoint=None), curve)["step"] == 4  # first best

    report = UnlearnReport(evaluation_curve=curve)
    markdown = report_markdown(report)
    assert "| step | epoch | `forget_prob` | `model_utility` |" in markdown and "Best step" not in markdown
    figure = evaluation_figure(report)
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["forget_prob", "model_utility"]
    report.best_model = best
    lines = evaluation_figure(report).axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["forget_prob", "best step 4"] and lines[1].get_xdata()[0] == 4
    older = {k: v for k, v in report.to_dict().items() if k not in ("evaluation_curve", "best_model")}
    assert UnlearnReport.from_dict(older).evaluation_curve == []  # a report written before these fields still reads


# ---- two processes ----------------------------------------------------------------------------------------------


def accelerate() -> str:
    found = Path(sys.executable).with_name("accelerate")
    return str(found) if found.is_file() else shutil.which("accelerate")


@pytest.mark.slow
def test_two_process_run_records_the_curve_and_the_best_step(original, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2`: every process evaluates its share of the benchmark, both
    pick the same best step, and the report holds the curve and that step."""
    folder, _ = original
    out = tmp_path / "ddp"
    recipe = ROOT / "recipes" / "demo.yaml"
    flags = ["--model_name_or_path", folder / "original", "--data_dir", out / "data", "--output_dir", out]
    flags += ["--synthetic_num_authors", "10", "--max_steps", "4", "--hybrid_fo_steps", "1"]
    flags += ["--per_device_train_batch_size", "1", "--disable_tqdm", "true", "--eval_max_new_tokens", "4"]
    flags += ["--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2"]
    flags += ["--load_best_model_at_end", "true", "--metric_for_best_model", SELECTION]
    flags += ["--retain_model", folder / "original", "--logging_steps", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_UNLEARN_CACHE=str(tmp_path / "cache"))
    command = [accelerate(), "launch", "--multi_gpu", "--num_processes", "2", str(recipe.relative_to(ROOT))]
    result = subprocess.run(
        [*command, *map(str, flags)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]

    report = UnlearnReport.load(out)
    assert report.compute["num_processes"] == 2
    assert [entry["step"] for entry in report.evaluation_curve] == [2, 4]
    combined = [entry["values"][SELECTION] for entry in report.evaluation_curve]
    best_step = report.evaluation_curve[combined.index(max(combined))]["step"]
    assert report.best_model["step"] == best_step and report.best_model["checkpoint"] == f"checkpoint-{best_step}"
    saved = load_file(out / "model.safetensors")
    kept = load_file(out / f"checkpoint-{best_step}" / "model.safetensors")
    assert all(torch.equal(saved[k], kept[k]) for k in saved)
    assert (out / EVAL_PLOT).is_file()
