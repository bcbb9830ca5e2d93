"""The launch matrix: every documented way to start a run, end to end on CPU, all on one shared tiny Llama.

Every case runs the hybrid schedule FO, ZO, FO, ZO (one step per phase) and saves the model after each step. The FO
learning rate is tiny (1e-6) and the ZO one large (1e-2), so the ZO steps must move the weights by about 1e-2 and
the FO step between them by about 1e-6. Under DeepSpeed that middle step is the proof that the ZO update reached the
fp32 master weights: had it missed them, the FO step would copy the pre-ZO masters back and undo the ZO change.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hf_unlearn.benchmarks.synthetic import write_synthetic_tofu
from hf_unlearn.report import UnlearnReport
from hf_unlearn.tiny import build_tiny_model, train_tokenizer
from tests.helpers import synthetic_splits


ROOT = Path(__file__).resolve().parents[1]
NPO_RECIPE = ROOT / "recipes" / "tofu_npo_hybrid.yaml"
ACCELERATE_CONFIGS = ROOT / "recipes" / "accelerate_configs"
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]  # `accelerate launch` of this interpreter
TWO_PROCESSES = ["--multi_gpu", "--num_processes", "2"]  # on CPU: DDP over gloo (`--cpu` would run one process)
EVERY_METHOD = ROOT / "tests" / "scripts" / "every_method_run.py"

# What each method's recipe changes in the NPO recipe (the optimizer schedule and data stay the same).
METHOD_KEYS = {
    "grad_ascent": {"alpha": 0.0},
    "grad_diff": {},
    "npo": {"beta": 0.1, "ref_log_probs": "cached"},
    "simnpo": {"beta": 2.5},
    "rmu": {"layer": 1, "trainable_layers": [1], "alpha": 10.0},
    "idk_dpo": {"beta": 0.1},
    "undial": {"beta": 10.0},
    "ce_u": {"ignore_first_n_answer_tokens": 1},
    "satimp": {"beta1": 5.0, "beta2": 1.0},
    "wga": {"beta": 1.0},
    "pdu": {"retain_loss_eps": 0.5},
    "idk_nll": {},
    "altpo": {"beta": 0.1},  # + alternates_file, written by method_recipe
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """One tiny Llama and one synthetic TOFU folder for every case."""
    folder = tmp_path_factory.mktemp("launch")
    data_dir = write_synthetic_tofu(folder / "data", num_authors=10, qa_per_author=4)
    rows = synthetic_splits()
    tokenizer = train_tokenizer([r["question"] + " " + r["answer"] for r in rows["full"]], vocab_size=400)
    build_tiny_model(tokenizer, hidden_size=32, intermediate_size=64).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return {"model": folder / "model", "data": Path(data_dir), "folder": folder}


def method_recipe(folder: Path, method: str, data_dir: Path) -> Path:
    """The NPO recipe with another method and that method's own keys, as a user would write it."""
    values = yaml.safe_load(NPO_RECIPE.read_text())
    for key in METHOD_KEYS["npo"]:
        values.pop(key)
    values.update(method=method, **METHOD_KEYS[method])
    if (
        method == "altpo"
    ):  # hand-written alternates for the recipe's forget split (`hf-unlearn alternates` has its test)
        rows = [json.loads(line) for line in (data_dir / f"{values['forget_split']}.json").read_text().splitlines()]
        alternates = folder / "alternates.jsonl"
        alternates.write_text(
            "".join(json.dumps({**r, "alternate": "Someone else wrote that book."}) + "\n" for r in rows)
        )
        values["alternates_file"] = str(alternates)
    path = folder / f"{method}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def flags(tiny: dict[str, Path], out: Path) -> list[str]:
    return [
        "--model_name_or_path", str(tiny["model"]), "--data_dir", str(tiny["data"]), "--output_dir", str(out),
        "--max_length", "64", "--max_steps", "4", "--hybrid_fo_steps", "1", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "1", "--learning_rate", "1e-6", "--zo_learning_rate", "1e-2",
        "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--logging_steps", "1", "--save_strategy", "steps",
        "--save_steps", "1", "--save_only_model", "true", "--disable_tqdm", "true",
        "--bf16", "false",  # the recipe targets GPUs in bf16; this CPU has no bf16 training
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_launcher(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `accelerate launch ... --main_process_port PORT COMMAND`; retry once on a port taken meanwhile."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])  # this checkout, in every rank
    for attempt in range(2):
        args = [*ACCELERATE, "--main_process_port", str(_free_port()), *command]
        result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if attempt == 0 and "address already in use" in (result.stdout + result.stderr).lower():
            continue
        return result


def launch(command: list[str], timeout: int = 300) -> None:
    result = run_launcher(command, timeout)
    if result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-5000:])


def check_run(out: Path, method: str = "npo", processes: int = 1) -> None:
    """The run finished on `processes` processes and wrote its outputs, and each ZO step moved the weights and
    stayed."""
    report = UnlearnReport.load(out)
    assert report.method == method and report.optimizer == "hybrid"
    assert report.compute["num_processes"] == processes  # one data-parallel run, not `processes` runs alone
    assert report.training_log and all(math.isfinite(log["loss"]) for log in report.training_log if "loss" in log)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    logs = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    steps = [log for log in logs if "optim/phase" in log]
    assert [log["optim/phase"] for log in steps] == [0, 1, 0, 1]
    assert all(log["zo/projected_grad"] != 0 for log in steps[1::2])
    weights = [load_file(out / f"checkpoint-{step}" / "model.safetensors") for step in (1, 2, 3)]
    weights.append(load_file(out / "model.safetensors"))  # the saved result, after step 4
    moved = [max(float((b[n] - a[n]).abs().max()) for n in a) for a, b in zip(weights, weights[1:])]
    zo_step, fo_step, last_zo_step = moved
    assert zo_step > 5e-3 and last_zo_step > 5e-3, moved  # ZO lr 1e-2: each ZO step took effect
    assert 0 < fo_step < 1e-4, moved  # FO lr 1e-6: the FO step moved the weights without undoing the ZO step


@pytest.mark.slow
def test_npo_under_hf_unlearn_run(tiny, tmp_path):
    from hf_unlearn.cli import main

    out = tmp_path / "run"
    assert main(["run", str(NPO_RECIPE), *flags(tiny, out)]) == 0
    check_run(out)


@pytest.mark.slow
def test_npo_self_launching_recipe(tiny, tmp_path):
    """`accelerate launch recipes/tofu_npo_hybrid.yaml ...` literally: the recipe file is the program."""
    out = tmp_path / "self"
    launch([str(NPO_RECIPE), *flags(tiny, out)])
    check_run(out)


def recipe_precision(flags: list[str]) -> list[str]:
    """The flags without `--bf16 false`: the recipe's own `bf16: true`, as a user launches it."""
    at = flags.index("--bf16")
    return flags[:at] + flags[at + 2 :]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without a GPU does with a bf16 recipe")
@pytest.mark.parametrize("launcher", [[], TWO_PROCESSES], ids=["one_process", "multi_gpu"])
def test_bf16_recipe_self_launches_without_a_gpu_as_cpu_autocast(tiny, tmp_path, launcher):
    """`accelerate launch recipes/tofu_npo_hybrid.yaml --model_name_or_path TINY ...`, the recipe's bf16 kept."""
    out = tmp_path / "bf16"
    result = run_launcher([*launcher, str(NPO_RECIPE), *recipe_precision(flags(tiny, out))])
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Your setup doesn't support bf16" not in result.stderr
    assert result.stderr.count("bf16 runs as CPU autocast (use_cpu=True)") == 1  # said once, by rank 0
    check_run(out, processes=2 if launcher else 1)
    config = UnlearnReport.load(out).config
    assert config["bf16"] is True and config["use_cpu"] is True


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without a GPU does with a bf16 recipe")
def test_bf16_recipe_under_deepspeed_without_a_gpu_fails_at_start_naming_bf16_false(tiny, tmp_path):
    out = tmp_path / "zero2"
    command = [*LAUNCHERS["zero2"], str(NPO_RECIPE), *recipe_precision(flags(tiny, out))]
    result = run_launcher(command)
    assert result.returncode != 0
    ours = {line for line in result.stderr.splitlines() if line.startswith("hf-unlearn")}
    assert len(ours) == 1, result.stderr[-5000:]  # each rank says the same one line
    (line,) = ours
    assert line.startswith("hf-unlearn run: error: bf16 under DeepSpeed needs a GPU") and "`--bf16 false`" in line
    assert "/hf_unlearn/" not in result.stderr  # no traceback through the library (the launcher prints its own)
    assert not out.exists()  # refused before the output folder or any weight


LAUNCHERS = {
    "multi_gpu": TWO_PROCESSES,
    "ddp": ["--config_file", str(ACCELERATE_CONFIGS / "ddp.yaml")],
    "zero2": ["--config_file", str(ACCELERATE_CONFIGS / "zero2.yaml")],
    "zero3": ["--config_file", str(ACCELERATE_CONFIGS / "zero3.yaml")],
}
# NPO under every launcher; GradDiff (no reference model: the policy's own prepare) under ZeRO-2 here and under
# ZeRO-3 with every other method below.
CASES = [("npo", name) for name in LAUNCHERS] + [("grad_diff", "zero2")]


@pytest.mark.slow
@pytest.mark.parametrize("method,launcher", CASES, ids=[f"{m}-{name}" for m, name in CASES])
def test_two_process_launch(method, launcher, tiny, tmp_path):
    recipe = NPO_RECIPE if method == "npo" else method_recipe(tmp_path, method, tiny["data"])
    out = tmp_path / "out"
    launch([*LAUNCHERS[launcher], "-m", "hf_unlearn.run", str(recipe), *flags(tiny, out)])
    check_run(out, method, processes=2)


@pytest.mark.slow
def test_every_method_under_one_zero3_launch(tiny, tmp_path):
    """Every method in one process start, under the launcher that partitions the most (ZeRO-3)."""
    recipes = [str(method_recipe(tmp_path, method, tiny["data"])) for method in METHOD_KEYS]
    launcher = LAUNCHERS["zero3"]
    launch([*launcher, str(EVERY_METHOD), *recipes, "--", *flags(tiny, tmp_path / "out")], timeout=600)
    for method in METHOD_KEYS:
        check_run(tmp_path / "out" / method, method, processes=2)


@pytest.mark.slow
def test_pdu_idk_nll_altpo_under_one_ddp_launch(tiny, tmp_path):
    """The three methods of issue 21 under two-process DDP; PDU's multiplier is logged at every step."""
    methods = ["pdu", "idk_nll", "altpo"]
    recipes = [str(method_recipe(tmp_path, method, tiny["data"])) for method in methods]
    launch([*LAUNCHERS["multi_gpu"], str(EVERY_METHOD), *recipes, "--", *flags(tiny, tmp_path / "out")], timeout=600)
    for method in methods:
        check_run(tmp_path / "out" / method, method, processes=2)
    logs = UnlearnReport.load(tmp_path / "out" / "pdu").training_log
    assert [math.isfinite(log["pdu/lambda"]) and log["pdu/lambda"] >= 0 for log in logs if "loss" in log] == [True] * 4
