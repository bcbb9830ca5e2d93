"""`hf-unlearn demo`: the embedded default pipeline, on a tiny model and the synthetic benchmark, fully offline.

It builds the synthetic fictitious-author benchmark, trains a tokenizer and a tiny Llama on the spot, fine-tunes it
until it knows the authors (the "original" model), and reports the answer NLL on forget and retain data.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from hf_unlearn.benchmarks.synthetic import write_synthetic_tofu
from hf_unlearn.benchmarks.tofu_data import load_tofu
from hf_unlearn.data import DataCollatorForUnlearning, QADataset
from hf_unlearn.tiny import build_tiny_model, train_tokenizer


def add_arguments(parser):
    parser.add_argument("--output_dir", default="outputs/demo", help="Where the data, models and results go.")
    parser.add_argument("--num_authors", type=int, default=20, help="Size of the synthetic benchmark.")
    parser.add_argument("--finetune_epochs", type=int, default=30, help="Epochs to memorise the benchmark.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for data, model and training.")


@torch.no_grad()
def mean_answer_nll(model, dataset, collator, batch_size: int = 16) -> float:
    """Mean over examples of the mean answer-token negative log-likelihood."""
    model.eval()
    values = []
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        mask = labels != -100
        values += ((token_nll * mask).sum(1) / mask.sum(1)).tolist()
    return sum(values) / len(values)


def main(args):
    out = Path(args.output_dir)
    data_dir = write_synthetic_tofu(out / "data", num_authors=args.num_authors, seed=args.seed)
    full, forget, retain = (load_tofu(name, data_dir) for name in ("full", "forget10", "retain90"))
    tokenizer = train_tokenizer([r["question"] + " " + r["answer"] for r in full], vocab_size=1024)
    model = build_tiny_model(tokenizer, seed=args.seed)
    collator = DataCollatorForUnlearning(tokenizer)
    train_set, forget_set, retain_set = (QADataset(rows, tokenizer) for rows in (full, forget, retain))

    before = {
        "forget": mean_answer_nll(model, forget_set, collator),
        "retain": mean_answer_nll(model, retain_set, collator),
    }
    training_args = TrainingArguments(
        output_dir=str(out / "original"),
        num_train_epochs=args.finetune_epochs,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        warmup_steps=10,
        logging_steps=50,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        use_cpu=True,
    )
    Trainer(model=model, args=training_args, train_dataset=train_set, data_collator=collator).train()
    after = {
        "forget": mean_answer_nll(model, forget_set, collator),
        "retain": mean_answer_nll(model, retain_set, collator),
    }
    model.save_pretrained(out / "original")
    tokenizer.save_pretrained(out / "original")

    results = {"answer_nll_before_finetune": before, "answer_nll_original": after}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"{'split':<8}{'random init':>14}{'original':>12}")
    for split in ("forget", "retain"):
        print(f"{split:<8}{before[split]:>14.3f}{after[split]:>12.3f}")
    print(f"Results in {out / 'results.json'}")
