"""The embedded demo (`hf-unlearn demo`): the whole pipeline on a tiny model and the synthetic benchmark, offline.

1. Write the synthetic fictitious-author benchmark and train a tokenizer on it.
2. Fine-tune a tiny Llama on every author plus the general-knowledge sets (the "original" model) and another on
   the retain authors only (the "retain" model, whose statistics give forget quality and privleak).
3. Unlearn the forget authors with NPO through `recipes/demo.yaml`, once per optimizer (Adam, the FO-ZO hybrid,
   AdaZO alone), each followed by the robustness checks: relearning and 4-bit quantization, evaluated with the
   TOFU metrics.
4. Add a control: the original weights plus isotropic noise of the size of AdaZO's change, tensor by tensor (at
   small scale ZO unlearning can look like plain noise; the control tells the two apart).
5. Print one table and write `report.json` / `report.md`.

The numbers are what this tiny model measures, not the paper's 7B results.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from hf_unlearn.benchmarks.synthetic import write_synthetic_tofu
from hf_unlearn.benchmarks.tofu_data import load_tofu
from hf_unlearn.data import DataCollatorForUnlearning, QADataset
from hf_unlearn.io import atomic_write_json, atomic_write_text
from hf_unlearn.loading import load_model_and_tokenizer
from hf_unlearn.tiny import build_tiny_model, train_tokenizer


DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
VARIANTS = {"adam": "adamw", "hybrid": "hybrid", "zo": "adazo"}
COLUMNS = {  # report column -> metric key
    "forget prob": "forget_prob",
    "forget ROUGE": "forget_rouge_l_recall",
    "model utility": "model_utility",
    "forget quality": "forget_quality",
}


def finetune(tokenizer, rows, output_dir: Path, epochs: int, seed: int) -> Path:
    """Train a fresh tiny Llama on QA `rows` until it has memorised them; save it with its tokenizer."""
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
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorForUnlearning(tokenizer)).train()
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def unlearn(recipe: str, variant: str, out: Path, overrides: list[str]) -> dict:
    """Run the recipe with one optimizer; returns the robustness record of its train-end checks."""
    from hf_unlearn.pipeline import run
    from hf_unlearn.recipes import parse_recipe

    output_dir = out / f"npo_{variant}"
    flags = [*overrides, "--optimizer", VARIANTS[variant], "--output_dir", str(output_dir)]
    (attack,) = run(parse_recipe(recipe, flags)).attacks
    return {
        "unlearned": attack.unlearned.values,
        "relearn": {"curve": [{"step": p.step, "metrics": p.metrics.values} for p in attack.relearn]},
        "quantization": {
            q.kind: {"metrics": q.metrics.values, "codes_changed_fraction": q.codes_changed_fraction}
            for q in attack.quantization
        },
    }


def noise_control(original: Path, unlearned: Path, output_dir: Path, seed: int) -> Path:
    """The original model plus Gaussian noise whose norm equals unlearning's change, tensor by tensor."""
    model, tokenizer = load_model_and_tokenizer(original)
    moved = AutoModelForCausalLM.from_pretrained(unlearned).state_dict()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            noise = torch.randn(weight.shape, generator=generator)
            weight.add_(noise * ((moved[name] - weight).norm() / noise.norm()))
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def reference_row(name: str, path: Path, data_dir: Path, retain: Path) -> dict:
    from hf_unlearn.benchmarks import evaluate_model

    model, tokenizer = load_model_and_tokenizer(path, device="cpu")
    result = evaluate_model(
        model, tokenizer, "tofu", path / "eval", data_dir=str(data_dir), retain_model=str(retain),
        max_new_tokens=48, max_length=128, show_progress=False,
    )  # fmt: skip
    return {"model": name, "unlearned": result.metrics}


def table(rows: list[dict]) -> str:
    """Markdown table: metrics of each model, after its largest relearning budget and after each quantization."""

    def fmt(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    header = ["model", *COLUMNS]
    relearn_k = quant_kinds = None
    for row in rows:
        if row.get("relearn"):
            relearn_k = row["relearn"]["curve"][-1]["step"]
            quant_kinds = list(row["quantization"])
    if relearn_k:
        header += [f"forget prob after relearn {relearn_k}"]
    header += [f"forget prob after {kind}" for kind in quant_kinds or []]
    header += [f"{kind} codes changed" for kind in quant_kinds or []]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], *(fmt(row["unlearned"].get(key)) for key in COLUMNS.values())]
        if relearn_k:
            cells.append(fmt(row["relearn"]["curve"][-1]["metrics"]["forget_prob"]) if row.get("relearn") else "")
        quantization = row.get("quantization") or {}
        cells += [
            fmt(quantization[k]["metrics"]["forget_prob"]) if k in quantization else "" for k in quant_kinds or []
        ]
        cells += [
            fmt(quantization[k]["codes_changed_fraction"]) if k in quantization else "" for k in quant_kinds or []
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def quantization_note(rows: list[dict]) -> str:
    """Say whether the quantization attack could bite: only if unlearning left most 4-bit codes as they were."""
    changed = [
        record["codes_changed_fraction"]
        for row in rows
        for record in (row.get("quantization") or {}).values()
        if record["codes_changed_fraction"] is not None
    ]
    if not changed:
        return "No quantization codes were compared."
    return (
        f"Unlearning changed {min(changed):.0%}-{max(changed):.0%} of the 4-bit codes. Quantization can only restore "
        "knowledge where the codes snap back to the original model's (a few percent changed, as for 7B models at "
        "lr 1e-5); where many codes changed, as on this tiny model, the attack cannot bite and its rows measure "
        "quantization noise only."
    )


def run_demo(
    output_dir: str | Path = "outputs/demo",
    recipe: str | Path = DEFAULT_RECIPE,
    num_authors: int = 20,
    finetune_epochs: int = 30,
    variants: list[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> list[dict]:
    """Run the demo end to end; print and write the report; return its rows.

    `output_dir` must be new or empty unless `overwrite` (an earlier demo's files are then written over).
    """
    from hf_unlearn.io import check_output_dir

    check_output_dir(output_dir, flag="--output_dir", overwrite=overwrite, overwrite_flag="--overwrite")
    import datasets
    from transformers.utils import logging

    # The demo prints its own progress; per-file load/save bars from the libraries would drown it.
    datasets.disable_progress_bars()
    logging.disable_progress_bar()
    out = Path(output_dir)
    variants = list(VARIANTS) if variants is None else variants
    if not Path(recipe).is_file():
        raise FileNotFoundError(f"Demo recipe {recipe} not found; pass --recipe recipes/demo.yaml from the repo.")
    data_dir = write_synthetic_tofu(out / "data", num_authors=num_authors, seed=seed)
    full, retain = load_tofu("full", data_dir), load_tofu("retain90", data_dir)
    general = [*load_tofu("real_authors_perturbed", data_dir), *load_tofu("world_facts_perturbed", data_dir)]
    texts = [r["question"] + " " + r["answer"] for split in ("full", "holdout10") for r in load_tofu(split, data_dir)]
    tokenizer = train_tokenizer(texts + [r["question"] + " " + r["answer"] for r in general], vocab_size=1024)

    print("Fine-tuning the original and the retain model ...")
    original = finetune(tokenizer, [*full, *general], out / "original", finetune_epochs, seed)
    retain_model = finetune(tokenizer, [*retain, *general], out / "retain", finetune_epochs, seed)
    rows = [reference_row("original", original, data_dir, retain_model)]
    rows.append(reference_row("retain (target)", retain_model, data_dir, retain_model))

    overrides = [
        "--model_name_or_path", str(original), "--data_source", "tofu", "--data_dir", str(data_dir),
        "--retain_model", str(retain_model), "--robustness", "true", "--report_codes_changed", "true",
        "--eval_max_new_tokens", "48", "--disable_tqdm", "true", "--seed", str(seed),
        "--overwrite_output_dir", str(overwrite).lower(),
    ]  # fmt: skip
    for variant in variants:
        print(f"Unlearning with NPO + {variant}, then attacking the result ...")
        rows.append({"model": f"NPO + {variant}", **unlearn(str(recipe), variant, out, overrides)})
    if "zo" in variants:
        control = noise_control(original, out / "npo_zo", out / "noise_control", seed)
        rows.append(reference_row("noise of the size of NPO + zo", control, data_dir, retain_model))

    report = table(rows) + "\n\n" + quantization_note(rows)
    atomic_write_json(out / "report.json", rows)
    atomic_write_text(out / "report.md", f"# hf_unlearn demo\n\n{report}\n")
    print(report)
    print(f"Models (each with its unlearn_report.json and model card) and report.md/report.json are in {out}")
    return rows
