"""The TOFU evaluation's stage breakdown of two versions of hf_unlearn, side by side on the same models, in one run.

    git worktree add ../hf_unlearn_before 76100c0     # the engine before the evaluation-speed work
    python scripts/eval_stages_ab.py --before ../hf_unlearn_before \\
        --model 2m=/path/to/2m_model:forget10 --model smollm2=/path/to/smollm2_target:forget10:50 \\
        --tofu_dir "$HF_UNLEARN_TOFU_DIR" --rounds 3 --output eval_stages.json

Every measurement is a fresh process pinned to one thread that imports hf_unlearn from one tree (``PYTHONPATH``),
loads the model in fp32 and times ``TofuBenchmark.evaluate`` (retain statistics given, so only the evaluation
itself runs), with each stage timed in process CPU seconds (steady when other processes share the machine) and in
wall seconds. Rounds alternate the trees (before, after, before, ...) per model, so a load change hits both. The
newer tree's child also reports how much of generation was the prompts' prefill, the most that reusing the
scoring pass's prompt cache for generation could save.

The output is one JSON: per model, per tree, each round's stages and the medians, and the ratio before / after of
each stage's median CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SPEC_HELP = "NAME=MODEL_DIR:FORGET_SPLIT[:MAX_EXAMPLES]"


def parse_model_spec(spec: str) -> dict:
    """``NAME=DIR:SPLIT[:MAX]`` -> ``{"name", "path", "forget_split", "max_examples"}``."""
    name, sep, rest = spec.partition("=")
    parts = rest.split(":")
    if not sep or not name or len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ValueError(f"--model {spec!r} is not {SPEC_HELP}, e.g. 2m=path/to/model:forget10.")
    max_examples = None
    if len(parts) == 3:
        if not parts[2].isdigit() or int(parts[2]) < 1:
            raise ValueError(f"--model {spec!r}: MAX_EXAMPLES must be a positive integer, got {parts[2]!r}.")
        max_examples = int(parts[2])
    return {"name": name, "path": parts[0], "forget_split": parts[1], "max_examples": max_examples}


def check_tree(path: str, flag: str) -> Path:
    tree = Path(path).expanduser().resolve()
    if not (tree / "hf_unlearn" / "benchmarks" / "tofu.py").is_file():
        raise FileNotFoundError(f"{flag} {path} is not an hf_unlearn checkout (no hf_unlearn/benchmarks/tofu.py).")
    return tree


def summarise(rounds: list[dict]) -> dict:
    """Median (min–max) CPU and wall seconds per stage over rounds, and of the whole evaluation."""
    out: dict[str, dict] = {}
    for clock in ("cpu_s", "wall_s"):
        stages = sorted({stage for r in rounds for stage in r[clock]})
        out[clock] = {
            stage: {
                "median": round(statistics.median(values), 3),
                "min": round(min(values), 3),
                "max": round(max(values), 3),
            }
            for stage in stages
            for values in [[r[clock].get(stage, 0.0) for r in rounds]]
        }
    return out


def ratios(before: dict, after: dict) -> dict[str, float | None]:
    """Before / after of each stage's median CPU seconds (``None`` where the newer tree spends nothing)."""
    stages = sorted(set(before["cpu_s"]) | set(after["cpu_s"]))
    result = {}
    for stage in stages:
        b = before["cpu_s"].get(stage, {}).get("median", 0.0)
        a = after["cpu_s"].get(stage, {}).get("median", 0.0)
        result[stage] = round(b / a, 3) if a > 0 else None
    return result


# ---- the measured child process ------------------------------------------------------------------------------------


class CpuStageTimer:
    """Stands in for the evaluator's own timer (older trees time wall clock only), with the same interface."""

    def __init__(self):
        self.wall, self.cpu = defaultdict(float), defaultdict(float)

    @contextmanager
    def __call__(self, stage: str, set_name: str | None = None):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[stage] += time.perf_counter() - wall
            self.cpu[stage] += time.process_time() - cpu

    def report(self, total: float) -> dict:
        return {"wall_s": dict(self.wall), "cpu_s": dict(self.cpu)}


def _count_prefill(engine) -> dict[str, float]:
    """Wrap the generation batch's prefill so its CPU seconds are summed (the part a prompt-cache reuse could save)."""
    spent = {"prefill_cpu_s": 0.0, "prefill_calls": 0}
    batch_class = getattr(engine, "_GreedyBatch", None)
    if batch_class is None:
        return spent
    original = batch_class.prefill.__func__

    def prefill(cls, *args, **kwargs):
        start = time.process_time()
        try:
            return original(cls, *args, **kwargs)
        finally:
            spent["prefill_cpu_s"] += time.process_time() - start
            spent["prefill_calls"] += 1

    batch_class.prefill = classmethod(prefill)
    return spent


def child(model_path: str, forget_split: str, max_examples: int | None, tofu_dir: str, batch_size: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_unlearn.benchmarks.engine as engine
    import hf_unlearn.benchmarks.tofu as tofu

    torch.set_num_threads(1)
    tofu.StageTimer = CpuStageTimer
    prefill = _count_prefill(engine)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    settings = {"forget_split": forget_split, "data_dir": tofu_dir, "batch_size": batch_size, "max_new_tokens": 200,
                "show_progress": False, "max_examples": max_examples}  # fmt: skip
    # Stand-in retain statistics: forget quality's inputs, so the evaluation runs without a retain model's pass.
    reference = {"forget_truth_ratio": [1.0] * 400, "mia_min_k_auc": 0.5}
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    result = tofu.TofuBenchmark(**settings, retain_stats=reference).evaluate(model, tokenizer)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    timings = result.config["timings"]
    return {
        "cpu_s": {**timings["cpu_s"], "total": cpu},
        "wall_s": {**timings["wall_s"], "total": wall},
        **prefill,
        "load_before": load,
        "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, float)},
    }


def run_child(tree: Path, spec: dict, tofu_dir: str, batch_size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", out.name]
        command += ["--child_model", spec["path"], "--child_split", spec["forget_split"], "--tofu_dir", tofu_dir]
        command += ["--batch_size", str(batch_size)]
        if spec["max_examples"]:
            command += ["--child_max_examples", str(spec["max_examples"])]
        done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"the evaluation in {tree} of {spec['name']} failed: {tail}")
        return json.load(out)


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--before", help="An hf_unlearn checkout of the older version.")
    cli.add_argument("--after", default=str(ROOT), help="The newer checkout (default: this one).")
    cli.add_argument("--model", action="append", default=[], help=SPEC_HELP + " (repeatable)")
    cli.add_argument("--tofu_dir", default=os.environ.get("HF_UNLEARN_TOFU_DIR"))
    cli.add_argument("--rounds", type=int, default=3)
    cli.add_argument("--batch_size", type=int, default=32)
    cli.add_argument("--output", default="eval_stages.json")
    for flag in ("--child", "--child_model", "--child_split", "--child_max_examples"):
        cli.add_argument(flag, help=argparse.SUPPRESS, type=int if flag == "--child_max_examples" else str)
    args = cli.parse_args(argv)
    if args.child:
        result = child(args.child_model, args.child_split, args.child_max_examples, args.tofu_dir, args.batch_size)
        Path(args.child).write_text(json.dumps(result))
        return 0
    try:
        if not args.before or not args.model:
            raise ValueError("Give --before <older checkout> and at least one --model " + SPEC_HELP + ".")
        if args.rounds < 1:
            raise ValueError(f"--rounds must be at least 1, got {args.rounds}.")
        if not args.tofu_dir or not Path(args.tofu_dir, "full.json").is_file():
            raise FileNotFoundError("--tofu_dir (or $HF_UNLEARN_TOFU_DIR) must be a folder of TOFU <config>.json.")
        trees = {"before": check_tree(args.before, "--before"), "after": check_tree(args.after, "--after")}
        specs = [parse_model_spec(spec) for spec in args.model]
        for spec in specs:
            if not Path(spec["path"], "config.json").is_file():
                raise FileNotFoundError(f"--model {spec['name']}: {spec['path']} has no config.json.")
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = {"trees": {k: str(v) for k, v in trees.items()}, "rounds": args.rounds, "threads": 1,
              "batch_size": args.batch_size, "max_new_tokens": 200, "models": {}}  # fmt: skip
    for spec in specs:
        measured = {"before": [], "after": []}
        for round_index in range(args.rounds):
            for label in ("before", "after") if round_index % 2 == 0 else ("after", "before"):
                measured[label].append(run_child(trees[label], spec, args.tofu_dir, args.batch_size))
                cpu = measured[label][-1]["cpu_s"]["total"]
                print(f"{spec['name']} round {round_index + 1} {label}: {cpu:.2f} CPU s", flush=True)
        summary = {label: summarise(rounds) for label, rounds in measured.items()}
        report["models"][spec["name"]] = {
            **spec,
            "rounds": measured,
            "summary": summary,
            "before_over_after_cpu": ratios(summary["before"], summary["after"]),
            "prefill_share_of_generation_cpu": _prefill_share(measured["after"]),
        }
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return 0


def _prefill_share(rounds: list[dict]) -> float | None:
    shares = [r["prefill_cpu_s"] / r["cpu_s"]["generation"] for r in rounds if r["cpu_s"].get("generation")]
    return round(statistics.median(shares), 4) if shares else None


if __name__ == "__main__":
    sys.exit(main())
