"""`hf-unlearn lmc MODEL_A MODEL_B --points 11 --data DIR_OR_FILE`: loss along the line between two checkpoints.

Writes ``lmc.json`` (alphas, losses, barrier, the NLL on each ``--eval_splits`` split as metrics) and ``lmc.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

from hf_unlearn.data import QAFormat, add_qa_format_arguments


def add_arguments(parser):
    add_qa_format_arguments(parser)
    parser.add_argument("model_a", help="Folder or Hub id of the first checkpoint (a = 0); its tokenizer is used.")
    parser.add_argument("model_b", help="Folder or Hub id of the second checkpoint (a = 1).")
    parser.add_argument("--points", type=int, default=11, help="Evenly spaced interpolation weights in [0, 1].")
    parser.add_argument(
        "--data",
        default=None,
        help="A TOFU folder of <split>.json files (default: the local TOFU copy), or one JSON Lines file of "
        "question/answer or text rows.",
    )
    parser.add_argument("--split", default="forget10", help="TOFU split the loss is measured on (folder --data).")
    parser.add_argument(
        "--eval_splits", nargs="*", default=[], help="More TOFU splits whose answer NLL is reported at each point."
    )
    parser.add_argument("--max_examples", type=int, default=None, help="Use only the first N rows of each split.")
    parser.add_argument("--batch_size", type=int, default=16, help="Sequences per forward.")
    parser.add_argument("--output_dir", default="outputs/lmc", help="Where lmc.json and lmc.png go.")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu).")


def load_split(data: str | None, split: str, tokenizer, max_examples: int | None, qa_format: QAFormat | None = None):
    """Tokenised examples of one split: a TOFU config from a folder, or the rows of one JSON Lines file."""
    from datasets import load_dataset

    from hf_unlearn.benchmarks.tofu_data import default_tofu_dir, load_tofu
    from hf_unlearn.data import QADataset, TextBlockDataset

    if data is not None and Path(data).is_file():
        rows = load_dataset("json", data_files=data, split="train")
    else:
        folder = data or default_tofu_dir()
        if folder is None:
            raise FileNotFoundError("No --data given and no local TOFU copy found; pass --data DIR_OR_FILE.")
        rows = load_tofu(split, folder)
    if max_examples is not None:
        rows = rows.select(range(min(max_examples, len(rows))))
    if "question" in rows.column_names:
        return QADataset(rows, tokenizer, qa_format=qa_format, source=f"{data}:{split}")
    if "text" in rows.column_names:
        return TextBlockDataset(rows["text"], tokenizer, block_size=512, source=f"{data}:{split}")
    raise ValueError(f"{data}: rows need question/answer or text columns, found {rows.column_names}.")


def main(args):
    import torch

    from hf_unlearn.analysis import linear_mode_connectivity, mean_answer_loss, plot_lmc
    from hf_unlearn.data import DataCollatorForUnlearning
    from hf_unlearn.tiny import load_model_and_tokenizer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_a, tokenizer = load_model_and_tokenizer(args.model_a)
    model_b, _ = load_model_and_tokenizer(args.model_b)
    model_a.to(device), model_b.to(device)
    collator = DataCollatorForUnlearning(tokenizer)
    qa_format = QAFormat.from_args(args)
    main_set = load_split(args.data, args.split, tokenizer, args.max_examples, qa_format)
    extra = {name: load_split(args.data, name, tokenizer, args.max_examples, qa_format) for name in args.eval_splits}

    def metrics_fn(model):
        return {f"nll/{name}": mean_answer_loss(model, ds, collator, args.batch_size) for name, ds in extra.items()}

    result = linear_mode_connectivity(
        model_a,
        model_b,
        lambda model: mean_answer_loss(model, main_set, collator, args.batch_size),
        points=args.points,
        metrics_fn=metrics_fn if extra else None,
    )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "format": "hf_unlearn.lmc/v1",
        "model_a": args.model_a,
        "model_b": args.model_b,
        "loss": f"mean answer NLL on {args.split}",
        "qa_format": qa_format.describe(tokenizer),
        **result.to_dict(),
    }
    (out / "lmc.json").write_text(json.dumps(record, indent=2) + "\n")
    plot_lmc(result, out / "lmc.png", label=f"answer NLL ({args.split})")
    losses = ", ".join(f"{x:.4f}" for x in result.losses)
    print(f"barrier {result.barrier:.4f} at a = {result.barrier_alpha:.2f}; losses {losses}")
    print(f"Wrote {out / 'lmc.json'} and {out / 'lmc.png'}")
