import argparse
import json

import pytest
import torch
from torch import nn

from hf_unlearn.analysis import barrier_height, linear_mode_connectivity, plot_lmc
from hf_unlearn.benchmarks.nll import mean_answer_loss
from hf_unlearn.benchmarks.synthetic import write_synthetic_tofu
from hf_unlearn.cli import lmc as lmc_command
from tests.helpers import mean_answer_nll, one_thread
from tests.unlearned_tiny import state_hash, tiny_unlearned


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


class Quadratic(nn.Module):
    """A two-weight 'model' whose loss along the path is known in closed form."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))


def ring_loss(model) -> float:
    return float((model.w.pow(2).sum() - 1) ** 2)  # zero on the unit circle, 1 at its centre


def test_barrier_height_hand_computed():
    # Endpoint line at a = 0.5 is 1.5, so the gap there is 3 - 1.5; at a = 0.25 it is 2 - 1.25.
    assert barrier_height([0.0, 0.25, 0.5, 1.0], [1.0, 2.0, 3.0, 2.0]) == (1.5, 0.5)


def test_quadratic_toy_has_the_closed_form_path_and_barrier():
    result = linear_mode_connectivity(
        Quadratic([1.0, 0.0]), Quadratic([-1.0, 0.0]), ring_loss, points=11, metrics_fn=lambda m: {"w0": float(m.w[0])}
    )
    alphas = [i / 10 for i in range(11)]
    assert result.alphas == alphas
    assert result.losses == pytest.approx([((1 - 2 * a) ** 2 - 1) ** 2 for a in alphas], abs=1e-12)
    assert result.barrier == pytest.approx(1.0) and result.barrier_alpha == 0.5
    assert [m["w0"] for m in result.metrics] == pytest.approx([1 - 2 * a for a in alphas])


def test_endpoints_equal_each_models_loss_and_models_stay_unchanged():
    original, unlearned, _, _, forget, collator = tiny_unlearned()
    hashes = state_hash(original), state_hash(unlearned)
    loss = lambda model: mean_answer_loss(model, forget, collator)  # noqa: E731
    result = linear_mode_connectivity(original, unlearned, loss, points=5)
    assert result.losses[0] == loss(original) and result.losses[-1] == loss(unlearned)
    assert loss(original) == pytest.approx(mean_answer_nll(original, forget), rel=1e-5)
    gaps = [x - ((1 - a) * result.losses[0] + a * result.losses[-1]) for a, x in zip(result.alphas, result.losses)]
    assert result.barrier == max(gaps)
    assert (state_hash(original), state_hash(unlearned)) == hashes


def test_identical_models_have_zero_barrier():
    _, unlearned, _, _, forget, collator = tiny_unlearned()
    result = linear_mode_connectivity(unlearned, unlearned, lambda m: mean_answer_loss(m, forget, collator), points=3)
    assert result.losses == [result.losses[0]] * 3
    assert result.barrier == pytest.approx(0.0, abs=1e-12)


def test_different_architectures_are_rejected():
    with pytest.raises(ValueError, match="shapes differ"):
        linear_mode_connectivity(Quadratic([1.0, 0.0]), Quadratic([1.0, 0.0, 0.0]), ring_loss)
    with pytest.raises(ValueError, match="points must be between 2"):
        linear_mode_connectivity(Quadratic([1.0]), Quadratic([0.0]), ring_loss, points=1)


def test_plot_writes_a_png(tmp_path):
    result = linear_mode_connectivity(Quadratic([1.0, 0.0]), Quadratic([-1.0, 0.0]), ring_loss, points=5)
    path = plot_lmc(result, tmp_path / "plots" / "lmc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lmc_command_writes_json_and_plot(tmp_path, capsys):
    original, unlearned, tokenizer, _, forget, collator = tiny_unlearned()
    for name, model in (("a", original), ("b", unlearned)):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    data = write_synthetic_tofu(tmp_path / "data", num_authors=6, qa_per_author=8, seed=0)
    parser = argparse.ArgumentParser()
    lmc_command.add_arguments(parser)
    args = parser.parse_args(
        [str(tmp_path / "a"), str(tmp_path / "b"), "--points", "3", "--data", str(data), "--split", "forget10"]
        + ["--eval_splits", "retain90", "--output_dir", str(tmp_path / "out"), "--device", "cpu"]
    )
    lmc_command.main(args)
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lmc: point")]
    assert len(progress) == 3 and progress[-1].startswith("lmc: point 3/3 (a = 1.000)")  # no silent long run
    record = json.loads((tmp_path / "out" / "lmc.json").read_text())
    assert set(record) == {
        "format", "model_a", "model_b", "loss", "qa_format", "alphas", "losses", "barrier", "barrier_alpha", "metrics"
    }  # fmt: skip
    assert record["alphas"] == [0.0, 0.5, 1.0] and len(record["losses"]) == 3
    assert record["losses"][0] == pytest.approx(mean_answer_loss(original, forget, collator), rel=1e-6)
    assert record["losses"][2] == pytest.approx(mean_answer_loss(unlearned, forget, collator), rel=1e-6)
    assert [sorted(m) for m in record["metrics"]] == [["nll/retain90"]] * 3
    assert (tmp_path / "out" / "lmc.png").stat().st_size > 1000
