"""Guarantees of issue 12 that the bad-input suite does not show by itself: the divergence guard's bound, the Hub
token kept out of every saved file, metrics of a NaN model reported unavailable, overwrite and resume allowed where
they should be, safetensors-only loading and the command line's quiet imports."""

import io
import json
import logging
import math
from pathlib import Path

import pytest
import torch

from hf_unlearn.io import check_output_dir
from hf_unlearn.trainers.callbacks import DivergenceGuardCallback, TrainingDiverged


ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo.yaml"


def recipe_flags(model, data, out, *extra):
    return [
        "--model_name_or_path", str(model), "--data_source", "tofu", "--data_dir", str(data), "--output_dir", str(out),
        "--max_steps", "2", "--hybrid_fo_steps", "1", "--hybrid_zo_steps", "1", "--disable_tqdm", "true",
        "--max_length", "64", *extra,
    ]  # fmt: skip


def test_forget_loss_bound_stops_gradient_ascent_before_the_update(tiny_model_dir, synthetic_data_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_unlearn import GradAscentConfig, GradAscentTrainer
    from hf_unlearn.benchmarks.tofu_data import load_tofu
    from hf_unlearn.data import ForgetRetainDataset, QADataset

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    forget = QADataset(load_tofu("forget10", synthetic_data_dir), tokenizer, max_length=64)
    config = GradAscentConfig(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3,
        divergence_max_forget_loss=1.0, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
        alpha=0.0,
    )  # fmt: skip
    trainer = GradAscentTrainer(model, config, train_dataset=ForgetRetainDataset(forget), processing_class=tokenizer)
    with pytest.raises(TrainingDiverged, match=r"step 1: loss/forget = -\d.*divergence_max_forget_loss=1.0") as info:
        trainer.train()
    assert info.value.record["step"] == 1 and info.value.record["quantity"] == "loss/forget"
    assert abs(float(info.value.record["value"])) > 1.0  # the untrained model's answer NLL (about log 400)
    for name, value in model.state_dict().items():  # the stopped step never reached the weights
        assert torch.equal(value, original[name]), name


def test_guard_checks_loss_grad_norm_and_zo_gradient():
    guard = DivergenceGuardCallback(max_forget_loss=None)
    guard.observe(3, torch.tensor(1.0), {"loss/forget": [torch.tensor(-5.0)]})  # finite, no bound: passes
    with pytest.raises(TrainingDiverged, match=r"step 3: loss/retain = inf \(a non-finite loss\)"):
        guard.observe(3, torch.tensor(1.0), {"loss/retain": [torch.tensor(1.0), torch.tensor(math.inf)]})
    layer = torch.nn.Linear(2, 2)
    layer.weight.grad = torch.full((2, 2), math.nan)

    class State:
        global_step = 6

    class Args:
        learning_rate = 0.5

    with pytest.raises(TrainingDiverged, match=r"step 7: grad_norm = nan .*learning_rate=0.5"):
        guard.on_pre_optimizer_step(Args(), State(), None, model=layer, optimizer=None)


def test_hub_token_never_reaches_saved_files(cli, tiny_model_dir, synthetic_data_dir, tmp_path):
    token = "hf_FAKEtoken1234567890abcdef"
    out = tmp_path / "out"
    code, stdout, stderr = cli(
        "run", DEMO, *recipe_flags(tiny_model_dir, synthetic_data_dir, out, "--hub_token", token)
    )
    assert code == 0, stderr
    assert token not in stdout + stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), f"the Hub token was written into {path.name}"
    args = torch.load(out / "training_args.bin", weights_only=False)  # our own file, read to check it
    assert args.hub_token is None
    report = json.loads((out / "unlearn_report.json").read_text())
    assert "hub_token" not in report["config"] and token not in report["command"]


def test_nan_model_metrics_are_unavailable_not_numbers(tiny_model_dir, synthetic_data_dir):
    from hf_unlearn import benchmarks
    from hf_unlearn.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(math.nan)
    bench = benchmarks.get(
        "tofu", data_dir=synthetic_data_dir, forget_split="forget10", max_examples=4, max_new_tokens=2,
        show_progress=False,
    )  # fmt: skip
    result = bench.evaluate(model, tokenizer)
    for name in ("mia_min_k_auc", "privleak"):
        assert result.metrics[name] is None, f"{name} = {result.metrics[name]} for a NaN model"
        assert "not finite" in result.unavailable[name]
    assert result.metrics["forget_prob"] is None or math.isnan(result.metrics["forget_prob"])


def test_overwrite_and_resume_open_an_occupied_output_folder(tmp_path):
    occupied = tmp_path / "run"
    occupied.mkdir()
    (occupied / "unlearn_report.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds files"):
        check_output_dir(occupied)
    assert check_output_dir(occupied, overwrite=True) == occupied
    with pytest.raises(FileExistsError):  # resume needs the run's own checkpoints
        check_output_dir(occupied, resume=True)
    (occupied / "checkpoint-4").mkdir()
    assert check_output_dir(occupied, resume=True) == occupied
    assert not (tmp_path / "new").exists() and check_output_dir(tmp_path / "new") and not (tmp_path / "new").exists()


def test_recipe_overwrite_output_dir_field(tiny_model_dir, synthetic_data_dir, tmp_path):
    from hf_unlearn.recipes import parse_recipe

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("an earlier run")
    with pytest.raises(FileExistsError, match="overwrite_output_dir=true"):
        parse_recipe(DEMO, recipe_flags(tiny_model_dir, synthetic_data_dir, out))
    recipe = parse_recipe(
        DEMO, recipe_flags(tiny_model_dir, synthetic_data_dir, out, "--overwrite_output_dir", "true")
    )
    assert recipe.config.overwrite_output_dir is True


def test_weights_load_from_safetensors_only(tiny_model_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from hf_unlearn.loading import load_model_and_tokenizer

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    state = load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors|model.safetensors"):
        load_model_and_tokenizer(pickled)


def test_cli_drops_import_noise_but_not_real_messages(capsys):
    from hf_unlearn.cli import quiet_third_party_noise

    quiet_third_party_noise()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    bnb.addHandler(handler)
    try:
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "No module named 'kernels'")
        bnb.warning("a real problem")
    finally:
        bnb.removeHandler(handler)
    assert stream.getvalue() == "a real problem\n"
    deepspeed_logger = logging.getLogger("DeepSpeed")
    deepspeed_logger.warning("Setting accelerator to CPU. If you have GPU or other accelerator, ...")
    deepspeed_logger.warning("ZeRO stage 3 needs more memory")
    captured = capsys.readouterr()
    assert "Setting accelerator" not in captured.out + captured.err
    assert "ZeRO stage 3 needs more memory" in captured.err and "ZeRO" not in captured.out


def test_overwrite_replaces_the_earlier_report_and_keeps_other_files(
    cli, tiny_model_dir, synthetic_data_dir, tmp_path
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "unlearn_report.json").write_text('{"stale": true}')
    (out / "unlearn_relearning.png").write_bytes(b"an earlier run's plot")
    (out / "notes.txt").write_text("the user's own notes")
    flags = recipe_flags(tiny_model_dir, synthetic_data_dir, out)
    code, _, stderr = cli("run", DEMO, *flags)
    assert (
        code == 2
        and "overwrite_output_dir" in stderr
        and (out / "unlearn_report.json").read_text() == '{"stale": true}'
    )
    code, _, stderr = cli("run", DEMO, *flags, "--overwrite_output_dir", "true")
    assert code == 0, stderr
    assert "stale" not in (out / "unlearn_report.json").read_text()
    assert not (out / "unlearn_relearning.png").exists()  # this run has no relearning: the old plot must not stay
    assert (out / "notes.txt").read_text() == "the user's own notes" and (out / "model.safetensors").is_file()
