"""`hf-unlearn sweep`: a tiny recipe over two optimizers and two seeds, compared in one report; resumable."""

import json
import statistics
from pathlib import Path

import pytest

from hf_unlearn import pipeline
from hf_unlearn.cli import main
from hf_unlearn.report import UnlearnReport
from hf_unlearn.sweep import SWEEP_SCHEMA_VERSION, OptimizerSpec, SweepReport


DEMO_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"


def sweep_argv(model_dir, data_dir, out, *extra):
    return [
        "sweep", str(DEMO_RECIPE), "--optimizers", "adamw", "adazo", "--seeds", "2", "--output_dir", str(out),
        "--checkpoints", "1", "--model_name_or_path", str(model_dir), "--data_source", "tofu", "--data_dir",
        str(data_dir), "--max_steps", "2", "--relearn_steps", "1", "--quantization", "rtn4",
        "--eval_max_new_tokens", "4", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def counted_sweep(tmp_path_factory, memorised_model_dir, synthetic_data_dir):
    """The sweep, run once; `calls` counts the cells `pipeline.run` trained."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    calls = []
    real = pipeline.run
    patch = pytest.MonkeyPatch()
    patch.setattr(pipeline, "run", lambda recipe, **kw: calls.append(recipe.config.output_dir) or real(recipe, **kw))
    try:
        assert main(sweep_argv(memorised_model_dir, synthetic_data_dir, out)) == 0
    finally:
        patch.undo()
    return out, calls, json.loads((out / "sweep_report.json").read_text())


def test_optimizer_specs_and_grade_order():
    specs = [OptimizerSpec.parse(s) for s in ("hybrid", "qadam:2", "adazo", "adamw", "signadam", "qadam:8", "sophia")]
    ordered = [s.label for s in sorted(specs, key=lambda s: s.grade)]
    assert ordered == ["Sophia", "AdamW", "Q(m;8)", "Q(m;2)", "signAdam", "AdaZO", "hybrid FO-ZO"]
    assert OptimizerSpec.parse("qadam:4").flags() == ["--optimizer", "qadam", "--qadam_bits", "4"]
    for bad, message in (("qadam", "give qadam its bits"), ("qadam:9", "1..8"), ("adam", "unknown"),
                         ("adamw:4", "adamw takes no :VALUE; only qadam takes one")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            OptimizerSpec.parse(bad)


def test_sweep_writes_the_comparison_with_mean_and_std(counted_sweep):
    out, calls, report = counted_sweep
    assert report["schema_version"] == SWEEP_SCHEMA_VERSION and report["forget_metric"] == "forget_prob"
    assert len(calls) == 4 and {(c["optimizer"], c["seed"]) for c in report["cells"]} == {
        ("adamw", 0), ("adamw", 1), ("adazo", 0), ("adazo", 1)
    }  # fmt: skip
    assert [row["label"] for row in report["summary"]] == ["AdamW", "AdaZO"]  # grade order
    # A table value against a hand computation from the two AdamW cells' own reports.
    relearned = []
    for seed in (0, 1):
        run = UnlearnReport.load(out / f"adamw_seed{seed}").attacks[-1]
        assert run.global_step == 2 and {q.kind for q in run.quantization} == {"rtn4", "rtn8"}  # 8-bit added
        relearned.append(run.relearn[-1].metrics.get("forget_prob"))
    adamw = report["summary"][0]["columns"]["relearned"]
    assert adamw["mean"] == pytest.approx(statistics.fmean(relearned))
    assert adamw["std"] == pytest.approx(statistics.stdev(relearned)) and adamw["std"] > 0
    table = (out / "sweep_report.md").read_text()
    assert f"{adamw['mean']:.3f} ± {adamw['std']:.3f}" in table
    # Compute accounting: a ZO run has no backward, an AdamW run one per forward.
    zo = report["summary"][1]["columns"]
    assert zo["compute/backwards"]["mean"] == 0 and report["summary"][0]["columns"]["compute/backwards"]["mean"] > 0
    # Controls: the original model once, a matched-noise model per AdaZO run.
    assert [c["kind"] for c in report["controls"]] == ["original", "noise", "noise"]
    noise = report["controls"][1]
    assert 0 < noise["codes_changed"]["rtn4"] <= 1 and noise["metrics"]["forget_prob"] is not None


def test_the_report_is_a_typed_sweep_report_that_reads_back_what_it_wrote(counted_sweep, tmp_path):
    out, _, document = counted_sweep
    report = SweepReport.load(out)
    assert report.to_dict() == document  # every key and value, control rows without the keys their kind lacks
    assert report.summary[0].columns["relearned"].n == 2 and report.cells[0].relearn[0].step == 0
    assert set(document["controls"][0]) == {"name", "kind", "path", "metrics"}
    (tmp_path / "sweep_report.json").write_text(json.dumps({**document, "schema_version": SWEEP_SCHEMA_VERSION + 1}))
    with pytest.raises(ValueError, match=f"reads up to {SWEEP_SCHEMA_VERSION}: upgrade it"):
        SweepReport.load(tmp_path)
    with pytest.raises(ValueError, match="Unknown sweep report field"):
        SweepReport.from_dict({**document, "extra": 1})
    with pytest.raises(ValueError, match="Not a sweep report"):
        SweepReport.from_dict({"schema_version": 1, "kind": "hf_unlearn.report"})


def test_utility_matched_table_and_plots(counted_sweep):
    out, _, report = counted_sweep
    matched = report["utility_matched"]
    adamw_utilities = [c["unlearned"]["model_utility"] for c in report["cells"] if c["optimizer"] == "adamw"]
    assert matched["target"] == pytest.approx(statistics.fmean(adamw_utilities))
    assert len(matched["runs"]) == 4
    for run in matched["runs"]:
        candidates = run["checkpoint_utilities"]
        assert [p["step"] for p in candidates] == [1, 2]  # one checkpoint + the final model
        best = min(abs(p["utility"] - matched["target"]) for p in candidates)
        assert abs(run["distance"]) == pytest.approx(best)
        if run["step"] != run["final_step"]:  # attacked at the checkpoint itself
            assert run["relearn"][0]["value"] is not None
    assert "## Utility-matched" in (out / "sweep_report.md").read_text()
    for plot in ("sweep_grade.png", "sweep_relearning.png", "sweep_tradeoff.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"


def test_restarted_sweep_does_not_recompute_finished_cells(counted_sweep, memorised_model_dir, synthetic_data_dir,
                                                           monkeypatch):  # fmt: skip
    out, _, before = counted_sweep
    # A sweep killed during adazo seed 1: its report was never written.
    (out / "adazo_seed1" / "unlearn_report.json").unlink()
    calls = []
    real = pipeline.run
    monkeypatch.setattr(
        pipeline, "run", lambda recipe, **kw: calls.append(recipe.config.output_dir) or real(recipe, **kw)
    )
    assert main(sweep_argv(memorised_model_dir, synthetic_data_dir, out)) == 0
    assert calls == [str(out / "adazo_seed1")]
    after = json.loads((out / "sweep_report.json").read_text())
    assert after["cells"][0] == before["cells"][0]  # adamw seed 0: read back, not rerun
    # --only runs a single cell (a separate launch) and writes no report
    calls.clear()
    (out / "sweep_report.json").unlink()
    assert main([*sweep_argv(memorised_model_dir, synthetic_data_dir, out), "--only", "adamw:1"]) == 0
    assert calls == [] and not (out / "sweep_report.json").exists()  # finished earlier


def test_parallel_only_launches_do_not_refuse_each_others_cells(memorised_model_dir, synthetic_data_dir, tmp_path):
    """Two `--only` launches into one sweep folder: the cell another live launch is training (locked) does not stop
    this launch's own cell (it did: every cell's folder was checked up front, and the second worker died)."""
    import os
    import socket

    from hf_unlearn.lock import LOCK_FILE

    out = tmp_path / "out"
    busy = out / "adamw_seed0"
    busy.mkdir(parents=True)
    record = {"pid": os.getppid(), "host": socket.gethostname(), "started": "2026-12-06T21:18:58Z"}  # alive
    (busy / LOCK_FILE).write_text(json.dumps(record))
    argv = [*sweep_argv(memorised_model_dir, synthetic_data_dir, out), "--checkpoints", "0", "--no_controls"]
    assert main([*argv, "--only", "adazo:0"]) == 0
    assert (out / "adazo_seed0" / "unlearn_report.json").is_file()
    assert sorted(p.name for p in busy.iterdir()) == [LOCK_FILE]  # the other launch's folder: untouched
    assert main([*argv, "--only", "adamw:0"]) == 2  # its own locked cell is still refused


def test_the_recipes_own_folder_takes_parallel_only_launches_then_the_report(
    memorised_model_dir, synthetic_data_dir, tmp_path, capsys
):
    """`hf-unlearn sweep RECIPE --only CELL` launches, then `hf-unlearn sweep RECIPE` for the report, with the sweep
    folder the recipe's own output_dir (no --output_dir): the report run went on (it refused the folder as a run's,
    since it holds the cells); a folder holding anything else is still refused."""
    out = tmp_path / "sweep"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(DEMO_RECIPE.read_text().replace('output_dir: "outputs/demo/npo_hybrid"', f'output_dir: "{out}"'))
    argv = sweep_argv(memorised_model_dir, synthetic_data_dir, out, "--checkpoints", "0", "--no_controls")
    argv[1] = str(recipe)
    del argv[argv.index("--output_dir") : argv.index("--output_dir") + 2]
    argv[argv.index("--seeds") + 1] = "1"
    for cell in ("adamw:0", "adazo:0"):
        assert main([*argv, "--only", cell]) == 0
    assert not (out / "sweep_report.json").exists()
    assert main(argv) == 0
    report = json.loads((out / "sweep_report.json").read_text())
    assert [(c["optimizer"], c["seed"]) for c in report["cells"]] == [("adamw", 0), ("adazo", 0)]
    (out / "notes.txt").write_text("someone else's")
    capsys.readouterr()
    assert main(argv) == 2
    assert "holds files a sweep did not write (notes.txt)" in capsys.readouterr().err


def test_bad_sweep_input_is_one_line(memorised_model_dir, synthetic_data_dir, tmp_path, capsys):
    argv = sweep_argv(memorised_model_dir, synthetic_data_dir, tmp_path / "x")
    argv[argv.index("adazo")] = "qadam:0"
    assert main(argv) == 2
    assert "qadam:BITS must be 1..8" in capsys.readouterr().err


def test_recipe_sweep_section_and_compute_budget(memorised_model_dir, synthetic_data_dir, tmp_path):
    """A recipe's sweep: section gives the optimizers and seeds; --compute_budget stops each run at equal passes."""
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(DEMO_RECIPE.read_text() + "\nsweep:\n  optimizers: [adamw]\n  seeds: 1\n")
    out = tmp_path / "out"
    argv = sweep_argv(memorised_model_dir, synthetic_data_dir, out, "--compute_budget", "6", "--no_controls")
    argv[1] = str(recipe)
    del argv[argv.index("--optimizers") : argv.index("--output_dir")]  # from the recipe
    argv[argv.index("--max_steps") + 1] = "4"
    assert main(argv) == 0
    report = json.loads((out / "sweep_report.json").read_text())
    (cell,) = report["cells"]
    assert (cell["optimizer"], cell["seed"], report["compute_budget"]) == ("adamw", 0, 6)
    # An NPO AdamW step is at least 2 forwards (forget, retain) and 2 backwards, plus the reference's forwards:
    # step 1 stays under 6 passes, step 2 crosses the budget and finishes; steps 3 and 4 never run.
    compute = cell["compute"]
    assert cell["global_step"] == 2 and compute["steps"] == 2 and compute["backwards"] == 4
    assert compute["passes"] == compute["forwards"] + compute["reference_forwards"] + compute["backwards"] >= 6
