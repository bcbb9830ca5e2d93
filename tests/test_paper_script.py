"""scripts/paper_smollm2.py: the experiment's plan (dry run) and its learning-rate rule, without running it."""

import json

import pytest

from tests.helpers import load_script


@pytest.fixture(scope="module")
def paper():
    return load_script("paper_smollm2")


def test_choose_lr_takes_the_smallest_rate_that_forgets_and_keeps_utility(paper):
    target = {"forget_prob": 0.8, "model_utility": 0.5}
    probes = {
        1e-5: {"forget_prob": 0.7, "model_utility": 0.5},  # forgets too little: 0.875 of the target's
        5e-5: {"forget_prob": 0.3, "model_utility": 0.46},  # 0.375 and 0.92: qualifies
        1e-4: {"forget_prob": 0.1, "model_utility": 0.47},  # qualifies too, but larger
    }
    lr, rows = paper.choose_lr(target, probes)
    assert lr == 5e-5 and [r["qualifies"] for r in rows] == [False, True, True]
    assert rows[1]["forget_prob_vs_target"] == 0.375 and rows[1]["utility_vs_target"] == 0.92
    # none qualifies: the rate with the smallest total shortfall (here: utility 0.84 misses by 0.06 < 0.375)
    lr, _ = paper.choose_lr(target, {1e-5: probes[1e-5], 1e-4: {"forget_prob": 0.1, "model_utility": 0.42}})
    assert lr == 1e-4


@pytest.mark.parametrize("full", [False, True])
def test_dry_run_plans_every_cell(paper, tmp_path, capsys, monkeypatch, full):
    tofu = tmp_path / "tofu"
    tofu.mkdir()
    (tofu / "full.json").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    monkeypatch.setattr(paper, "is_fetched", lambda name: True)
    flags = [
        "--dry_run",
        "--tofu_dir",
        str(tofu),
        "--output_dir",
        str(tmp_path / "out"),
        *(["--full"] if full else []),
    ]
    assert paper.main(flags) == 0
    printed = capsys.readouterr().out
    plan = paper.FULL if full else paper.CPU
    cells = [f"--only {o}:{s}" for s in range(plan["seeds"]) for o in plan["optimizers"]]
    assert all(cell in printed for cell in cells)
    assert f"--forget_split {plan['forget_split']}" in printed
    assert ("--bf16 true" in printed) is full and ("hf_unlearn subset" in printed) is not full
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
