"""`hf-unlearn bench`: ratios from alternating repeats (median, spread, goal), the real-model suite's JSON, the
command's one-line errors, and the measurements living outside the wheel and the library's import graph."""

import ast
import configparser
import json
from pathlib import Path

import pytest
from setuptools import find_packages

import hf_unlearn
from benchmarks_perf import ratio
from benchmarks_perf.journal import Journal


ROOT = Path(hf_unlearn.__file__).resolve().parent.parent


def test_alternate_runs_the_sides_in_turn_after_the_warm_up():
    calls = []

    def side(name, value):
        def measure():
            calls.append(name)
            return value + len(calls)  # distinguishes each call

        return measure

    values = ratio.alternate({"a": side("a", 100), "b": side("b", 200)}, repeats=3, warmup=2)
    assert calls == ["a", "b"] * 5  # 2 warm-up rounds, then A B A B A B
    assert values == {"a": [105, 107, 109], "b": [206, 208, 210]}  # warm-up values dropped, in call order


def test_alternate_refuses_no_repeats():
    with pytest.raises(ValueError, match="repeats=0"):
        ratio.alternate({"a": lambda: 1.0}, repeats=0)


def test_ratio_entry_reports_the_median_and_spread_of_the_paired_ratios():
    entry = ratio.ratio_entry("zo", [2.0, 3.0, 4.0, 10.0, 5.0], "fwd", [2.0, 2.0, 2.0, 2.0, 2.0], goal=2.0)
    # pair ratios 1, 1.5, 2, 5, 2.5 -> median 2, spread 1..5; the median meets a ceiling of 2 exactly
    assert (entry["ratio_median"], entry["ratio_min"], entry["ratio_max"]) == (2.0, 1.0, 5.0)
    assert entry["meets_goal"] is True and entry["goal"] == 2.0 and entry["repeats"] == 5
    assert entry["a_seconds"] == [2.0, 3.0, 4.0, 10.0, 5.0] and entry["b_median_seconds"] == 2.0
    assert ratio.ratio_entry("zo", [2.0, 3.0, 4.0], "fwd", [2.0, 2.0, 2.0], goal=1.4)["meets_goal"] is False
    assert ratio.ratio_entry("zo", [1.0], "fwd", [2.0], goal=None)["meets_goal"] is None
    ratio.check_ratio_entry(entry)


def test_ratio_entry_pairs_each_round_not_the_medians():
    # A drifts up with load and B with it: each pair's ratio is 1.1, the ratio of the medians would be too
    a = [1.1 * t for t in (1, 5, 2, 9, 3)]
    b = [float(t) for t in (1, 5, 2, 9, 3)]
    entry = ratio.ratio_entry("a", a, "b", b, goal=1.05)
    assert entry["ratio_min"] == entry["ratio_max"] == pytest.approx(1.1)
    assert entry["meets_goal"] is False


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ratio_median": 9.0}, "outside its spread"),
        ({"meets_goal": False}, "disagrees"),
        ({"repeats": 4}, "5 repeats|4 repeats"),
        ({"b_seconds": None}, "not a ratio entry"),
    ],
)
def test_check_ratio_entry_rejects_an_inconsistent_entry(change, message):
    entry = ratio.ratio_entry("a", [1.0, 2.0, 3.0, 2.0, 2.0], "b", [2.0] * 5, goal=1.05)
    with pytest.raises(ValueError, match=message):
        ratio.check_ratio_entry({**entry, **change})


def test_ratio_entry_refuses_unpaired_or_zero_measurements():
    with pytest.raises(ValueError, match="same number"):
        ratio.ratio_entry("a", [1.0, 2.0], "b", [1.0], goal=None)
    with pytest.raises(ValueError, match="positive denominator"):
        ratio.ratio_entry("a", [1.0], "b", [0.0], goal=None)


def test_timed_measures_one_call_on_the_chosen_clock(monkeypatch):
    ticks = iter([10.0, 12.5])
    monkeypatch.setitem(ratio.CLOCKS, "cpu", lambda: next(ticks))
    ran = []
    assert ratio.timed(lambda: ran.append(1), "cpu")() == 2.5 and ran == [1]
    with pytest.raises(ValueError, match="clock='gpu'"):
        ratio.timed(lambda: None, "gpu")


def test_compare_is_alternate_then_ratio_of_a_over_b():
    order = []
    entry = ratio.compare(
        "npo", lambda: order.append("npo") or 3.0, "sft", lambda: order.append("sft") or 2.0, 1.05, repeats=5
    )
    assert order == ["npo", "sft"] * 6  # one warm-up round, five measured
    assert entry["ratio_median"] == 1.5 and entry["meets_goal"] is False and entry["warmup"] == 1
    ratio.check_ratio_entry(entry)


# ---- the journal: a stopped run resumes ------------------------------------------------------------------------


def _counting_sides(calls, **values):
    def side(name):
        def measure():
            calls.append(name)
            return values[name] + len(calls)

        return measure

    return {name: side(name) for name in values}


def test_a_journaled_run_continues_at_the_first_missing_round_and_measures_a_cut_round_again_whole(tmp_path):
    path = tmp_path / "bench.json.journal.jsonl"
    journal = Journal(path, {"repeats": 3})
    calls = []
    stop_after = 5  # a, b, a measured, then the run is stopped before the second b

    def measure_b():
        if len(calls) == stop_after:
            raise KeyboardInterrupt
        calls.append("b")
        return 200.0 + len(calls)

    sides = _counting_sides(calls, a=100.0)
    sides["b"] = measure_b
    with pytest.raises(KeyboardInterrupt):
        ratio.alternate(sides, repeats=3, warmup=1, journal=journal, row="a_vs_b")
    assert calls == ["a", "b", "a", "b", "a"]  # warm-up a b, then a b a (its values: 103, 204, 105)

    resumed = Journal(path, {"repeats": 3}, resume=True)
    calls.clear()
    values = ratio.alternate(_counting_sides(calls, a=1000.0, b=2000.0), 3, warmup=1, journal=resumed, row="a_vs_b")
    # the warm-up again (a fresh process), then round 2 again whole (its a, 105, came from the stopped sitting and
    # A_2 / B_2 must pair values of one sitting) and round 3, in A B order
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert values == {"a": [103.0, 1003.0, 1005.0], "b": [204.0, 2004.0, 2006.0]}
    summary = resumed.summary()
    assert summary["resumed"] and len(summary["starts"]) == 2
    assert summary["discarded_rounds"] == [{"row": "a_vs_b", "round": 2, "discarded": {"a": [105.0]}}]

    calls.clear()  # all measured: nothing runs, not even the warm-up, and the discard reads back from the file
    again = Journal(path, {"repeats": 3}, resume=True)
    assert ratio.alternate(_counting_sides(calls, a=0.0, b=0.0), 3, 1, again, "a_vs_b") == values and calls == []
    assert again.summary()["discarded_rounds"] == summary["discarded_rounds"]


def test_a_resume_on_another_machine_is_said_and_each_start_names_its_machine(tmp_path, capsys):
    path = tmp_path / "j.jsonl"
    Journal(path, {}, machine={"host": "a", "cpu": "EPYC"}).record("r", "a", 1.0)
    Journal(path, {}, resume=True, machine={"host": "a", "cpu": "EPYC"})
    assert capsys.readouterr().err == ""
    moved = Journal(path, {}, resume=True, machine={"host": "b", "cpu": "EPYC"})
    assert "this start runs on {'host': 'b'" in capsys.readouterr().err
    assert [start["machine"]["host"] for start in moved.summary()["starts"]] == ["a", "a", "b"]


def test_resume_without_a_real_model_run_is_one_line(cli, tmp_path):
    code, _, stderr = cli("bench", "--only", "zo_step_vs_forwards", "--resume", "--output", tmp_path / "b.json")
    assert code == 2 and stderr.strip().count("\n") == 0 and "give --model (or --real)" in stderr


def test_the_journal_refuses_to_overwrite_a_stopped_run_or_to_mix_settings(tmp_path):
    path = tmp_path / "j.jsonl"
    with pytest.raises(FileNotFoundError, match="no stopped run to continue"):
        Journal(path, {"repeats": 5}, resume=True)
    Journal(path, {"repeats": 5, "rows": ("hybrid",)}).record("r", "a", 1.5)
    with pytest.raises(FileExistsError, match="add --resume to continue it"):
        Journal(path, {"repeats": 5, "rows": ("hybrid",)})
    with pytest.raises(ValueError, match="measured repeats=5, this one asks for 6"):
        Journal(path, {"repeats": 6, "rows": ("hybrid",)}, resume=True)
    assert Journal(path, {"repeats": 5, "rows": ("hybrid",)}, resume=True).values("r", "a") == [1.5]


def test_a_line_cut_by_the_stop_is_measured_again_and_a_corrupt_one_is_refused(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path, {})
    journal.record("r", "a", 1.0)
    journal.record("r", "a", 2.0)
    text = path.read_text()
    path.write_text(text[:-10])  # the last value half written
    assert Journal(path, {}, resume=True).values("r", "a") == [1.0]
    path.write_text("not json\n" + text)
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        Journal(path, {}, resume=True)


# ---- the real-model suite, on the tiny model -------------------------------------------------------------------


@pytest.mark.slow  # about a minute of CPU: a dozen trainers and four short runs, even on the tiny model
def test_real_model_suite_writes_every_ratio_against_its_goal(cli, tiny_model_dir, tmp_path, monkeypatch):
    """The whole suite through `hf-unlearn bench --model DIR` on a tiny Llama (the memory processes faked: they are
    pinned by the slow test below)."""
    from benchmarks_perf import real

    peaks = {"inference": 100.0, "zo_sgd": 103.0}
    monkeypatch.setattr(real, "_memory_in_subprocess", lambda mode, *args: peaks[mode])
    out = tmp_path / "bench.json"
    code, stdout, stderr = cli(
        "bench", "--model", tiny_model_dir, "--batch_size", "2", "--seq_len", "64", "--repeats", "2",
        "--hybrid_steps", "1", "--output", out,
    )  # fmt: skip
    assert code == 0, stderr
    report = json.loads(out.read_text())
    assert {"platform", "cpu", "cores", "load_average_at_start", "torch"} <= set(report["machine"])
    suite = report["results"]["real_model"]
    assert list(report["results"]) == ["real_model"]  # --model runs the real-model entry alone
    assert suite["shape"]["batch_size"] == 2 and suite["shape"]["seq_len"] == 64 and suite["repeats"] == 2
    low, high = suite["shape"]["answer_tokens_min_max"]
    assert 1 <= low <= high <= 40  # short answers after a long prompt (a small test vocabulary: more tokens)
    ratios = suite["ratios"]
    expected = {
        "zo_sgd_sphere_vs_two_forwards": 1.05,
        "zo_sgd_rademacher_vs_two_forwards": 1.05,
        "zo_sgd_peak_memory_vs_inference": 1.05,
        "npo_step_vs_sft_step": 1.05,
        "hybrid_run_vs_adamw_run": 0.90,
        "answer_only_vs_full_vocabulary_scoring": None,
        "answer_only_vs_full_vocabulary_training": None,
    }
    for name, goal in expected.items():
        ratio.check_ratio_entry(ratios[name])
        assert ratios[name]["goal"] == goal and ratios[name]["repeats"] == 2, name
    assert ratios["zo_sgd_peak_memory_vs_inference"]["ratio_median"] == pytest.approx(1.03)
    assert ratios["zo_sgd_peak_memory_vs_inference"]["a_mb"] == [103.0, 103.0]
    assert ratios["hybrid_run_vs_adamw_run"]["steps"] == 2
    # answer-only logits score the same answers as the full head
    assert ratios["answer_only_vs_full_vocabulary_scoring"]["nll_sum_difference"] < 1e-3
    assert ratios["answer_only_vs_full_vocabulary_scoring"]["positions_with_logits"] < 64
    # a ZO option missing from this library is listed, not silently dropped
    variants = {name for name, _ in real.ZO_VARIANTS}
    benched = {name.removesuffix("_vs_two_forwards") for name in ratios} & variants
    skipped = set(suite["zo_rows_not_in_this_library"])
    assert benched | skipped == variants and not benched & skipped


def test_a_stopped_bench_resumes_from_its_journal_and_keeps_what_it_measured(
    cli, tiny_model_dir, tmp_path, monkeypatch
):
    out = tmp_path / "bench.json"
    journal_file = tmp_path / "bench.json.journal.jsonl"
    flags = ("bench", "--model", tiny_model_dir, "--rows", "scoring", "--batch_size", "2", "--seq_len", "64",
             "--repeats", "3", "--warmup", "0", "--output", out)  # fmt: skip
    record = Journal.record
    taken = []

    def stop_after_three(self, row, side, value):
        if len(taken) == 3:
            raise KeyboardInterrupt  # what Ctrl-C, a session's end or a lost machine does to a long run
        taken.append(value)
        record(self, row, side, value)

    monkeypatch.setattr(Journal, "record", stop_after_three)
    assert cli(*flags)[0] == 130
    assert journal_file.exists() and not out.exists()

    code, _, stderr = cli(*flags)  # without --resume: refused, the stopped run's values kept
    assert code == 2 and stderr.strip().count("\n") == 0 and "add --resume" in stderr
    code, _, stderr = cli(*flags[:-2], "--repeats", "4", "--resume", "--output", out)
    assert code == 2 and "measured repeats=3, this one asks for 4" in stderr

    monkeypatch.setattr(Journal, "record", record)
    code, _, stderr = cli(*flags, "--resume")
    assert code == 0, stderr
    suite = json.loads(out.read_text())["results"]["real_model"]
    entry = suite["ratios"]["answer_only_vs_full_vocabulary_scoring"]
    ratio.check_ratio_entry(entry)
    # round 1 (A B) is the stopped run's; round 2 was cut after its A, so it was measured again whole
    assert [entry["a_seconds"][0], entry["b_seconds"][0]] == [round(v, 4) for v in taken[:2]]
    (discard,) = suite["journal"]["discarded_rounds"]
    assert discard["round"] == 2 and list(discard["discarded"].values()) == [[taken[2]]]
    starts = suite["journal"]["starts"]
    assert len(starts) == 2 and suite["journal"]["resumed"] and starts[0]["machine"] == starts[1]["machine"]
    assert {"host", "cpu", "cores", "torch"} <= set(starts[0]["machine"])
    assert entry["nll_sum_difference"] < 1e-3
    assert not journal_file.exists()  # its values are in the report


def test_chat_examples_are_exactly_the_shape_with_the_answer_labelled_at_the_end(tokenizer):
    from benchmarks_perf.real import chat_examples

    examples = chat_examples(tokenizer, count=3, seq_len=80)
    for example in examples:
        assert len(example["input_ids"]) == len(example["labels"]) == 80
        labelled = [i for i, label in enumerate(example["labels"]) if label != -100]
        assert labelled == list(range(labelled[0], 80))  # one answer span, at the end
        assert example["input_ids"][-1] == tokenizer.eos_token_id
        assert 80 - len(labelled) > 40  # the prompt dominates


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_memory_process_reports_a_peak_above_the_loaded_baseline(tiny_model_dir, dtype):
    from benchmarks_perf.real import _memory_in_subprocess

    peak = _memory_in_subprocess("zo_sgd", str(tiny_model_dir), 2, 64, 1, "cpu", dtype)
    assert 0 < peak < 2000


def test_bf16_weights_run_every_side_in_bf16(cli, tiny_model_dir, tmp_path, monkeypatch):
    import torch

    from benchmarks_perf import real
    from hf_unlearn import loading

    load, dtypes = loading.load_model, []
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: dtypes.append(load(*a, **k).dtype) or load(*a, **k))
    monkeypatch.setattr(real, "_memory_in_subprocess", lambda mode, *args: {"inference": 10.0, "zo_sgd": 10.1}[mode])
    stepped = []
    step = real.Stepper.step
    monkeypatch.setattr(
        real.Stepper, "step", lambda self, batch: stepped.append(self.trainer.model.dtype) or step(self, batch)
    )
    out = tmp_path / "bench.json"
    code, _, stderr = cli(
        "bench", "--model", tiny_model_dir, "--dtype", "bfloat16", "--rows", "npo_step", "zo_step", "hybrid",
        "--repeats", "2", "--warmup", "0", "--hybrid_steps", "1", "--batch_size", "2", "--seq_len", "64",
        "--output", out,
    )  # fmt: skip
    assert code == 0, stderr
    suite = json.loads(out.read_text())["results"]["real_model"]
    assert dtypes == [torch.bfloat16]  # loaded once, in bf16
    assert set(stepped) == {torch.bfloat16} and len(stepped) == 2 * (2 + len(real.ZO_VARIANTS))  # NPO, SFT, ZO rows
    assert suite["dtype"] == "bfloat16" and suite["device"] == "cpu" and suite["clock"] == "cpu"
    for name, entry in suite["ratios"].items():
        ratio.check_ratio_entry(entry)
        # ZO moves bf16 weights with stochastic rounding (the setup that keeps ZO's memory), and says so
        assert entry.get("zo_stochastic_rounding", False) is name.startswith(("zo_sgd", "hybrid")), name


def test_the_cuda_clock_waits_for_the_gpu_before_and_after(monkeypatch):
    import torch

    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: events.append("sync"))
    ratio.timed(lambda: events.append("work"), "cuda")()
    assert events == ["sync", "work", "sync"]


def test_asking_for_cuda_without_a_gpu_is_one_line(cli, tiny_model_dir, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, stderr = cli("bench", "--model", tiny_model_dir, "--device", "cuda", "--output", tmp_path / "b.json")
    assert code == 2 and stderr.strip().count("\n") == 0 and "use --device cpu" in stderr
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "b.json.journal.jsonl").exists()


# ---- the command's errors, before any loading --------------------------------------------------------------------


def test_unknown_model_name_is_one_line(cli, tmp_path):
    code, _, stderr = cli("bench", "--model", "smollm9-135m", "--output", tmp_path / "b.json")
    assert code == 2
    assert stderr.strip().count("\n") == 0
    assert "neither a packaged model (smollm2-135m-instruct" in stderr and "models list" in stderr


def test_packaged_model_not_fetched_says_how_to_fetch(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_UNLEARN_MODELS", str(tmp_path / "models"))
    code, _, stderr = cli("bench", "--model", "smollm2-135m-instruct", "--output", tmp_path / "b.json")
    assert code == 2 and stderr.strip().count("\n") == 0
    assert "hf-unlearn models fetch smollm2-135m-instruct" in stderr


@pytest.mark.parametrize("flag, value", [("--repeats", "1"), ("--seq_len", "16"), ("--batch_size", "0")])
def test_bad_real_model_settings_are_one_line(cli, tmp_path, tiny_model_dir, flag, value):
    code, _, stderr = cli("bench", "--model", tiny_model_dir, flag, value, "--output", tmp_path / "b.json")
    assert code == 2 and stderr.strip().count("\n") == 0
    assert f"{flag} {value} must be at least" in stderr
    assert not (tmp_path / "b.json").exists()


def test_bench_without_the_measurements_says_they_are_not_in_the_wheel(cli, tmp_path, monkeypatch):
    from hf_unlearn.cli import bench

    monkeypatch.setattr(bench, "PERF_PACKAGE", "benchmarks_perf_not_here")
    code, _, stderr = cli("bench", "--only", "zo_step_vs_forwards", "--output", tmp_path / "b.json")
    assert code == 2 and stderr.strip().count("\n") == 0
    assert "benchmarks_perf_not_here/ folder of a source checkout" in stderr and "wheel" in stderr


# ---- outside the wheel and the import graph ----------------------------------------------------------------------


def wheel_packages() -> list[str]:
    """The packages setup.cfg puts in the wheel: find_packages with its [options.packages.find] settings."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["options"]["packages"].strip() == "find:"
    find = config["options.packages.find"] if config.has_section("options.packages.find") else {}
    include = find.get("include", "*").split()
    exclude = find.get("exclude", "").split()
    return find_packages(where=str(ROOT), include=include, exclude=exclude)


def test_the_measurements_are_not_in_the_wheel():
    packages = wheel_packages()
    assert "hf_unlearn" in packages and "hf_unlearn.cli" in packages  # the reading is right
    assert not [p for p in packages if p.startswith("benchmarks_perf") or p.startswith("hf_unlearn.perf")]
    assert (ROOT / "benchmarks_perf" / "__init__.py").is_file() and not (ROOT / "hf_unlearn" / "perf").exists()


def module_level_imports(tree: ast.Module) -> set[str]:
    """Modules imported by statements that run on import (module body, including its if/try blocks)."""
    names, pending = set(), list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            pending += node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
            pending += [child for handler in getattr(node, "handlers", []) for child in handler.body]
    return names


def test_no_library_module_imports_the_measurements():
    package = ROOT / "hf_unlearn"
    importers = []
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        if any(name.split(".")[0] == "benchmarks_perf" for name in module_level_imports(tree)):
            importers.append(path.name)
        # anywhere at all (function level too): only the command loads it, by name, through importlib
        if any(
            isinstance(node, (ast.Import, ast.ImportFrom))
            and any(n.split(".")[0] == "benchmarks_perf" for n in module_level_imports(ast.Module([node], [])))
            for node in ast.walk(tree)
        ):
            importers.append(str(path.relative_to(package)))
    assert importers == []
    assert 'PERF_PACKAGE = "benchmarks_perf"' in (package / "cli" / "bench.py").read_text()


def test_module_level_import_finder_sees_if_and_try_blocks():
    source = "import a\nif x:\n import b\ntry:\n from c import d\nexcept E:\n import e\ndef f():\n import g\n"
    tree = ast.parse(source)
    assert module_level_imports(tree) == {"a", "b", "c", "e"}


# ---- the toy entries report the same ratio entries -----------------------------------------------------------------


def test_toy_zo_and_hybrid_entries_are_alternating_ratio_entries(single_thread):
    from benchmarks_perf.optim import bench_hybrid_wall_time, bench_zo_step_time

    zo = bench_zo_step_time(batch_size=1, seq_len=8, repeats=2)
    ratio.check_ratio_entry(zo)
    assert (zo["a"], zo["b"], zo["goal"], zo["repeats"], zo["warmup"]) == ("zo_step", "two_forwards", 1.03, 2, 1)
    hybrid = bench_hybrid_wall_time(n=1, batch_size=1, seq_len=8, repeats=2)
    ratio.check_ratio_entry(hybrid)
    assert (hybrid["a"], hybrid["b"], hybrid["goal"]) == ("hybrid_run", "adamw_run", 0.90)


def test_markdown_table_quotes_medians_with_spreads():
    entries = {
        "zo": ratio.ratio_entry("zo", [1.2, 1.1, 1.3], "fwd", [1.0, 1.0, 1.0], goal=1.05),
        "mem": ratio.ratio_entry("zo", [103.0] * 3, "inf", [100.0] * 3, goal=1.05, unit="mb"),
    }
    table = ratio.markdown_table(entries).splitlines()
    assert table[2] == "| zo | zo / fwd | **1.200** (1.100–1.300) | 1.2 / 1 s | ≤ 1.05 | no |"
    assert table[3] == "| mem | zo / inf | **1.030** (1.030–1.030) | 103 / 100 MB | ≤ 1.05 | yes |"


def test_unknown_suite_row_is_refused_before_loading(tmp_path):
    from benchmarks_perf.real import bench_real_model

    refused = r"Unknown bench rows \['zo'\]; choose from scoring, training_head, npo_step, zo_step"
    with pytest.raises(ValueError, match=refused):
        bench_real_model(str(tmp_path / "no-model"), rows=("zo",))


def test_the_command_lists_every_measurement():
    from benchmarks_perf import all_measurements
    from hf_unlearn.cli.bench import ENTRIES

    assert list(ENTRIES) == list(all_measurements())


def test_the_rows_flag_offers_every_real_model_comparison_in_run_order():
    import argparse

    from benchmarks_perf.real import ROWS
    from hf_unlearn.cli import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    (rows,) = [action for action in parser._actions if action.dest == "rows"]
    assert list(rows.choices) == list(ROWS)


def test_a_measuring_child_reports_its_own_peak_not_its_parents():
    """Linux carries ru_maxrss over exec from the forking process: a memory child of a bench holding a loaded model
    reported the bench's peak (8.5 GB on both sides of SmolLM2's ZO-memory row). The peak read is the child's own."""
    import subprocess
    import sys

    from benchmarks_perf import subprocess_env

    held = bytearray(700 * 2**20)  # the parent's peak: 700 MB touched
    held[::4096] = b"x" * len(held[::4096])
    code = "import resource; from benchmarks_perf import peak_rss_kb; print(peak_rss_kb(), resource.getrusage(0)[2])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())
    own, inherited = (int(v) / 1024 for v in out.stdout.split())
    assert own < 100 < 700 <= inherited  # MB: a bare interpreter's peak; ru_maxrss shows the parent's
    del held


@pytest.mark.slow  # a subprocess running the bench
def test_the_gpu_script_benches_a_shape_built_from_the_config_in_bf16(tiny_model_dir, tmp_path):
    """scripts/gpu_real_bench.py checked on a CPU: the shape is the config's (random weights), the bench runs on it in
    bf16 and writes one JSON per shape."""
    import importlib.util

    from transformers import AutoModelForCausalLM

    spec = importlib.util.spec_from_file_location("gpu_real_bench", ROOT / "scripts" / "gpu_real_bench.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--like", str(tiny_model_dir), "--output_dir", str(tmp_path), "--shapes", "smollm2_135m",
            "--repeats", "2", "--device", "cpu", "--bench_args", "--rows", "scoring", "--batch_size", "2",
            "--seq_len", "64"]  # fmt: skip
    assert script.main(argv) == 0
    suite = json.loads((tmp_path / "bench_gpu_smollm2_135m.json").read_text())["results"]["real_model"]
    assert suite["dtype"] == "bfloat16"
    assert suite["parameters"] == AutoModelForCausalLM.from_pretrained(tiny_model_dir).num_parameters()
    ratio.check_ratio_entry(suite["ratios"]["answer_only_vs_full_vocabulary_scoring"])
