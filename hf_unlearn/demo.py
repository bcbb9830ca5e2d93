"""The embedded demo (`hf-unlearn demo`): a small optimizer sweep on a tiny model and the synthetic benchmark, offline.

1. Write the synthetic fictitious-author benchmark and train a tokenizer on it.
2. Fine-tune a tiny Llama on every author plus the general-knowledge sets (the "original" model, which unlearning
   edits) and another on the retain authors only (the "retain" model, whose statistics give forget quality).
3. Run `hf-unlearn sweep` on the packaged `demo.yaml` (NPO; `recipes/demo.yaml` in the checkout) with Adam,
   signAdam, Q(m;4), Sophia, AdaZO and the FO-ZO hybrid, three seeds each, in two learning-rate regimes
   (:data:`REGIMES`):

   - ``paper``: the paper's setting scaled to this model; unlearning moves many of the 4-bit codes;
   - ``small_change``: a learning rate and step count at which unlearning changes only a few percent of the 4-bit
     codes, as with 7B models at lr 1e-5; there quantization can snap weights back and the attack can bite.

   Each run is attacked (relearning, 4- and 8-bit quantization) and compared with the controls (the original and
   retain models, and noise matched to each ZO / hybrid run's weight change).
4. Print both tables (mean ± std over seeds) and write each regime's sweep report and plots, plus
   ``demo_report.md`` with both tables.

The numbers are what this tiny model measures, not the paper's 7B results.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from transformers import Trainer, TrainingArguments

from hf_unlearn.benchmarks.synthetic import write_synthetic_tofu
from hf_unlearn.benchmarks.tofu_data import load_tofu
from hf_unlearn.data import DataCollatorForUnlearning, QADataset
from hf_unlearn.errors import UserInputError
from hf_unlearn.io import atomic_write_text
from hf_unlearn.sweep import SweepReport
from hf_unlearn.tiny import build_tiny_model, train_tokenizer


# Package data (the same file as the checkout's recipes/demo.yaml), so that the demo runs from an installed wheel.
DEFAULT_RECIPE = Path(str(importlib.resources.files("hf_unlearn").joinpath("demo.yaml")))
OPTIMIZERS = ("adamw", "signadam", "qadam:4", "sophia", "adazo", "hybrid")
# regime -> recipe keys for every run of it (the recipe's own values otherwise).
# Both regimes run 20 steps, hybrid alternating 5 AdamW and 5 AdaZO steps.
REGIMES = {
    # recipes/demo.yaml's learning rates (AdamW 1e-3, ZO 1e-4): unlearning moves half of the 4-bit codes or more.
    "paper": ["--max_steps", "20", "--hybrid_fo_steps", "5"],
    # 10x smaller: unlearning moves a few percent of the 4-bit codes (AdamW about 6%, AdaZO under 1%; measured).
    "small_change": ["--learning_rate", "1e-4", "--zo_learning_rate", "1e-5", "--max_steps", "20",
                     "--hybrid_fo_steps", "5"],
}  # fmt: skip
# Every run of the demo: two relearning budgets, a 4-bit and (added by the sweep) an 8-bit round-to-nearest
# quantization, no evaluation before training (the original-model control is that evaluation, made once).
DEMO_KEYS = ["--relearn_steps", "5", "10", "--quantization", "rtn4", "--evaluate_before_training", "false"]


def finetune(tokenizer, rows, output_dir: Path, epochs: int, seed: int, on_trainer=None) -> Path:
    """Train a fresh tiny Llama on QA `rows` until it has memorised them; save it with its tokenizer. `on_trainer` is
    given the trainer before it trains (as :func:`hf_unlearn.pipeline.run` does)."""
    model = build_tiny_model(tokenizer, seed=seed)
    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        warmup_steps=10,
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=seed,
        use_cpu=True,
        disable_tqdm=True,
    )
    dataset = QADataset(rows, tokenizer, max_length=128)
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset, data_collator=DataCollatorForUnlearning(tokenizer)
    )
    if on_trainer is not None:
        on_trainer(trainer)
    trainer.train()
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def check_demo_settings(
    recipe, num_authors, finetune_epochs, optimizers, seeds, regimes, max_new_tokens, checkpoints
) -> None:
    """Every demo setting, checked before the first file is written or model built (a bad one was found after
    18 s of fine-tuning, with the models left behind)."""
    from hf_unlearn.sweep.plan import parse_specs, seeds_from

    unknown = [r for r in (regimes or []) if r not in REGIMES]
    if unknown:
        raise UserInputError(f"--regimes {' '.join(unknown)}: choose from {', '.join(REGIMES)}")
    if not Path(recipe).is_file():
        raise FileNotFoundError(f"Demo recipe {recipe} not found; pass --recipe recipes/demo.yaml from the repo.")
    parse_specs(optimizers or OPTIMIZERS)
    seeds_from(seeds)
    for flag, value, least in (
        ("--num_authors", num_authors, 2), ("--finetune_epochs", finetune_epochs, 1),
        ("--max_new_tokens", max_new_tokens, 1), ("--checkpoints", checkpoints, 0),
    ):  # fmt: skip
        if value < least:
            raise UserInputError(f"{flag} {value}: must be >= {least}; give {flag} {least} or more.")


def run_demo(
    output_dir: str | Path = "outputs/demo",
    recipe: str | Path = DEFAULT_RECIPE,
    num_authors: int = 20,
    finetune_epochs: int = 30,
    optimizers: list[str] | None = None,
    seeds: int = 3,
    regimes: list[str] | None = None,
    max_new_tokens: int = 16,
    extra: list[str] | None = None,
    seed: int = 0,
    checkpoints: int = 0,
    overwrite: bool = False,
    resume: bool = False,
    on_trainer=None,
) -> dict[str, SweepReport]:
    """Run the demo end to end; print and write the reports; return each regime's sweep report.

    `output_dir` must be new or empty, unless `overwrite` (the demo's own files there are removed first) or `resume`
    (an interrupted demo continues: its models and finished runs are reused). `on_trainer` is given each run's
    trainer before it trains (see :func:`hf_unlearn.pipeline.run`).
    """
    import shutil

    from hf_unlearn.io import check_output_dir

    check_output_dir(output_dir, flag="--output_dir", overwrite=overwrite or resume, overwrite_flag="--overwrite")
    import datasets
    from transformers.utils import logging

    from hf_unlearn.sweep import SweepSettings, main_table, run_sweep

    check_demo_settings(recipe, num_authors, finetune_epochs, optimizers, seeds, regimes, max_new_tokens, checkpoints)

    # The demo prints its own progress; per-file load/save bars from the libraries would drown it.
    datasets.disable_progress_bars()
    logging.disable_progress_bar()
    out = Path(output_dir)
    if overwrite and not resume:
        for name in ("data", "original", "retain", *REGIMES):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        (out / "demo_report.md").unlink(missing_ok=True)
    regimes = list(REGIMES) if regimes is None else regimes
    data_dir = write_synthetic_tofu(out / "data", num_authors=num_authors, seed=seed)
    models = {name: out / name for name in ("original", "retain")}
    if not all((path / "model.safetensors").is_file() for path in models.values()):  # else resumed
        full, retain = load_tofu("full", data_dir), load_tofu("retain90", data_dir)
        general = [*load_tofu("real_authors_perturbed", data_dir), *load_tofu("world_facts_perturbed", data_dir)]
        texts = [r["question"] + " " + r["answer"] for s in ("full", "holdout10") for r in load_tofu(s, data_dir)]
        tokenizer = train_tokenizer(texts + [r["question"] + " " + r["answer"] for r in general], vocab_size=1024)
        print("Fine-tuning the original and the retain model ...", flush=True)
        finetune(tokenizer, [*full, *general], models["original"], finetune_epochs, seed, on_trainer)
        finetune(tokenizer, [*retain, *general], models["retain"], finetune_epochs, seed, on_trainer)

    common = [
        "--model_name_or_path", str(models["original"]), "--data_source", "tofu", "--data_dir", str(data_dir),
        "--retain_model", str(models["retain"]), "--eval_max_new_tokens", str(max_new_tokens),
        "--disable_tqdm", "true", *DEMO_KEYS,
    ]  # fmt: skip
    reports, sections = {}, []
    for regime in regimes:
        print(f"Sweep, {regime} regime: {', '.join(optimizers or OPTIMIZERS)} x {seeds} seeds ...", flush=True)
        settings = SweepSettings(
            recipe=str(recipe), optimizers=list(optimizers or OPTIMIZERS), seeds=list(range(seed, seed + seeds)),
            output_dir=str(out / regime), overrides=[*common, *REGIMES[regime], *(extra or [])],
            title=f"hf_unlearn demo: {regime} regime", checkpoints=checkpoints,
        )  # fmt: skip
        report = run_sweep(settings, on_cell=lambda line: print(line, flush=True), on_trainer=on_trainer)
        reports[regime] = report
        flags = " ".join(REGIMES[regime]) or f"the recipe's own ({Path(recipe).name})"
        text = f"{main_table(report)}\n\n{quantization_note(report)}"
        sections += [f"## {regime} regime", "", f"Recipe keys: {flags}", "", text, "",
                     f"Full report and plots: {regime}/sweep_report.md", ""]  # fmt: skip
        print(f"\n{regime} regime (mean ± std over {seeds} seeds):\n{text}\n", flush=True)
    atomic_write_text(out / "demo_report.md", "# hf_unlearn demo\n\n" + "\n".join(sections))
    print(f"Reports: {out}/demo_report.md and {out}/<regime>/sweep_report.{{md,json}} (+ plots, one folder per run)")
    return reports


def quantization_note(report: SweepReport) -> str:
    """How many 4-bit codes unlearning changed, and how much of the forgetting 4-bit quantization undid."""
    codes = [c.key for c in report.columns if c.key.startswith("codes_changed/")]
    if not codes:
        return "No quantization codes were compared."
    kind = codes[0].split("/")[1]
    changed = [r.columns[f"codes_changed/{kind}"].mean for r in report.summary]
    undone = [r.columns[f"recovered/{kind}"].mean for r in report.summary if f"recovered/{kind}" in r.columns]
    changed = [c for c in changed if c is not None]
    undone = [u for u in undone if u is not None]
    text = f"Unlearning changed {min(changed):.1%}-{max(changed):.1%} of the {kind} codes (mean per optimizer)."
    if undone:
        text += (f" {kind} quantization undid between {min(undone):.0%} and {max(undone):.0%} of the forgetting "
                 f"({report.forget_metric}; mean per optimizer).")  # fmt: skip
    return text
