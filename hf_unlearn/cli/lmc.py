"""`hf-unlearn lmc MODEL_A MODEL_B --points 11 --data_dir DIR_OR_FILE`: loss along the line between two checkpoints.

Writes ``lmc.json`` (alphas, losses, barrier, the NLL on each ``--eval_splits`` split as metrics) and ``lmc.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hf_unlearn.cli import common
from hf_unlearn.data import QAFormat


def add_arguments(parser):
    parser.add_argument("model_a", help="Folder or Hub id of the first checkpoint (a = 0); its tokenizer is used.")
    parser.add_argument("model_b", help="Folder or Hub id of the second checkpoint (a = 1).")
    parser.add_argument("--points", type=int, default=11, help="Evenly spaced interpolation weights in [0, 1].")
    common.add_data_dir(
        parser,
        "A TOFU folder of <split>.json files (default: the local TOFU copy), or one JSON Lines file of "
        "question/answer or text rows.",
    )
    parser.add_argument("--split", default="forget10", help="TOFU split the loss is measured on (folder --data_dir).")
    parser.add_argument(
        "--eval_splits", nargs="*", default=[], help="More TOFU splits whose answer NLL is reported at each point."
    )
    parser.add_argument("--max_examples", type=int, default=None, help="Use only the first N rows of each split.")
    parser.add_argument("--batch_size", type=int, default=16, help="Sequences per forward.")
    common.add_qa_format(parser)
    common.add_output_dir(parser, "outputs/lmc", "Where lmc.json and lmc.png go.")
    common.add_device(parser)
    common.add_overwrite(parser)


def main(args):
    from hf_unlearn.analysis import check_points, linear_mode_connectivity, plot_lmc
    from hf_unlearn.benchmarks.nll import mean_answer_loss
    from hf_unlearn.benchmarks.tofu_data import load_split
    from hf_unlearn.data import DataCollatorForUnlearning
    from hf_unlearn.io import atomic_write_json
    from hf_unlearn.loading import check_model_path, load_model_and_tokenizer, load_tokenizer

    check_model_path(args.model_a, "model_a")
    check_model_path(args.model_b, "model_b")
    check_points(args.points)
    data_folder = args.data_dir if args.data_dir and Path(args.data_dir).is_dir() else None
    out = common.check_output(args, {"model_a": args.model_a, "model_b": args.model_b, "--data_dir": data_folder})
    # The splits (names, files, rows) are read with the tokenizer alone, before any weight loads.
    tokenizer = load_tokenizer(args.model_a)
    qa_format = QAFormat.from_args(args)
    main_set = load_split(args.data_dir, args.split, tokenizer, args.max_examples, qa_format)
    extra = {
        name: load_split(args.data_dir, name, tokenizer, args.max_examples, qa_format) for name in args.eval_splits
    }
    model_a, tokenizer = load_model_and_tokenizer(args.model_a, device=args.device)
    model_b, _ = load_model_and_tokenizer(args.model_b, device=args.device)
    collator = DataCollatorForUnlearning(tokenizer)

    def metrics_fn(model):
        return {f"nll/{name}": mean_answer_loss(model, ds, collator, args.batch_size) for name, ds in extra.items()}

    result = linear_mode_connectivity(
        model_a,
        model_b,
        lambda model: mean_answer_loss(model, main_set, collator, args.batch_size),
        points=args.points,
        metrics_fn=metrics_fn if extra else None,
        on_point=lambda i, a, loss: print(
            f"lmc: point {i + 1}/{args.points} (a = {a:.3f}): loss {loss:.4f}", file=sys.stderr, flush=True
        ),
    )
    record = {
        "format": "hf_unlearn.lmc/v1",
        "model_a": args.model_a,
        "model_b": args.model_b,
        "loss": f"mean answer NLL on {args.split}",
        "qa_format": qa_format.describe(tokenizer),
        **result.to_dict(),
    }
    atomic_write_json(out / "lmc.json", record)
    plot_lmc(result, out / "lmc.png", label=f"answer NLL ({args.split})")
    losses = ", ".join(f"{x:.4f}" for x in result.losses)
    print(f"barrier {result.barrier:.4f} at a = {result.barrier_alpha:.2f}; losses {losses}")
    print(f"Wrote {out / 'lmc.json'} and {out / 'lmc.png'}")
