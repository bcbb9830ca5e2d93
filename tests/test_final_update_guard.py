"""Issue 22, group 10: the last step's update, which no loss follows, is checked before anything is saved (finite
weights, the change of their norm within divergence_max_update_ratio), and so are the weights and the first loss
after a resume."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_unlearn.trainers.callbacks import DivergenceGuardCallback, TrainingDiverged, trainable_weight_norm


ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo.yaml"


def flags(model, data, out, *extra):
    return [
        "--model_name_or_path", str(model), "--data_source", "tofu", "--data_dir", str(data), "--output_dir", str(out),
        "--optimizer", "adamw", "--disable_tqdm", "true", "--max_length", "64", "--per_device_train_batch_size", "2",
        *extra,
    ]  # fmt: skip


class State:
    def __init__(self, step):
        self.global_step = step


class Args:
    learning_rate = 1e30


def test_guard_bounds_the_change_of_the_weights_norm():
    layer = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)  # norm 4
    guard = DivergenceGuardCallback(max_update_ratio=0.5)
    guard.on_train_begin(Args(), State(0), None, model=layer)
    assert trainable_weight_norm(layer) == 4.0
    with torch.no_grad():
        layer.weight.mul_(1.4)  # norm 5.6: changed by 0.4 of it
    guard.on_step_end(Args(), State(1), None, model=layer)
    with torch.no_grad():
        layer.weight.mul_(1e28)  # what lr 1e30 with warm-up wrote on the last step
    with pytest.raises(TrainingDiverged, match=r"step 2: weight_norm = 5\.6e\+28 .*by 1e\+28 times its size, past "
                                               r"divergence_max_update_ratio=0\.5.*learning_rate=1e\+30"):  # fmt: skip
        guard.on_step_end(Args(), State(2), None, model=layer)
    with torch.no_grad():
        layer.weight[0, 0] = math.inf
    with pytest.raises(TrainingDiverged, match=r"step 3: weight_norm = inf \(non-finite weights after the update"):
        guard.on_step_end(Args(), State(3), None, model=layer)


def test_guard_skips_frozen_weights_and_a_zero_start():
    layer = torch.nn.Linear(2, 2)
    layer.bias.requires_grad_(False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(math.nan)  # frozen: not the trainer's doing, not checked
    guard = DivergenceGuardCallback()
    guard.on_train_begin(Args(), State(0), None, model=layer)
    with torch.no_grad():
        layer.weight.fill_(0.1)  # from a zero norm no ratio exists; only finiteness is checked
    guard.on_step_end(Args(), State(1), None, model=layer)
    assert guard._weight_norm == pytest.approx(0.2)


def test_huge_last_update_is_not_saved(cli, tiny_model_dir, synthetic_data_dir, tmp_path):
    out = tmp_path / "out"
    code, _, stderr = cli(
        "run", DEMO,
        *flags(tiny_model_dir, synthetic_data_dir, out, "--learning_rate", "1e30", "--lr_scheduler_type", "linear",
               "--warmup_steps", "2", "--max_steps", "2"),
    )  # fmt: skip
    # step 1 runs at lr 0 (warm-up), step 2 at 5e29: only the weights show it, no loss follows the last step
    assert code == 1, stderr
    assert "training diverged at step 2: weight_norm" in stderr and "divergence_max_update_ratio=1" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (out / "model.safetensors").exists()
    report = json.loads((out / "unlearn_report.json").read_text())
    assert report["stopped"]["step"] == 2 and report["stopped"]["quantity"] == "weight_norm"
    assert report["config"]["divergence_max_update_ratio"] == 1.0


def test_an_ordinary_run_passes_the_weight_check(cli, tiny_model_dir, synthetic_data_dir, tmp_path):
    out = tmp_path / "out"
    code, _, stderr = cli("run", DEMO, *flags(tiny_model_dir, synthetic_data_dir, out, "--max_steps", "3",
                                              "--learning_rate", "1e-3"))  # fmt: skip
    assert code == 0, stderr
    assert json.loads((out / "unlearn_report.json").read_text())["stopped"] is None


@pytest.fixture(scope="module")
def checkpointed(tiny_model_dir, synthetic_data_dir, tmp_path_factory):
    from hf_unlearn.cli import main

    out = tmp_path_factory.mktemp("ckpt") / "run"
    args = flags(tiny_model_dir, synthetic_data_dir, out, "--max_steps", "4", "--save_strategy", "steps",
                 "--save_steps", "2", "--learning_rate", "1e-3")  # fmt: skip
    assert main(["run", str(DEMO), *args]) == 0
    return out, args


def resume_from_damaged(checkpointed, tmp_path, damage):
    out, args = checkpointed
    killed = tmp_path / "killed"
    shutil.copytree(out / "checkpoint-2", killed / "checkpoint-2")
    weights = load_file(killed / "checkpoint-2" / "model.safetensors")
    damage(weights)
    save_file(weights, killed / "checkpoint-2" / "model.safetensors", metadata={"format": "pt"})
    resumed = [a if a != str(out) else str(killed) for a in args] + ["--resume_from_checkpoint", "true"]
    return killed, resumed


def test_non_finite_checkpoint_weights_stop_the_resume(cli, checkpointed, tmp_path):
    def damage(weights):
        weights["model.norm.weight"][0] = math.nan

    killed, args = resume_from_damaged(checkpointed, tmp_path, damage)
    code, _, stderr = cli("run", DEMO, *args)
    assert code == 1 and "non-finite weights loaded from the checkpoint of step 2" in stderr, stderr
    assert not (killed / "model.safetensors").exists()


def test_first_loss_after_a_resume_is_checked(cli, checkpointed, tmp_path):
    def damage(weights):  # finite weights whose logits overflow: only the first loss after the resume shows it
        weights["lm_head.weight"].fill_(3e38)

    killed, args = resume_from_damaged(checkpointed, tmp_path, damage)
    code, _, stderr = cli("run", DEMO, *args)
    assert code == 1 and "training diverged at step 3: loss" in stderr and "non-finite loss" in stderr, stderr
    assert not (killed / "model.safetensors").exists() and not (killed / "checkpoint-4").exists()
