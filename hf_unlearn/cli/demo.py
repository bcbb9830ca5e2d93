"""`hf-unlearn demo`: the embedded demo, a small optimizer sweep (see `hf_unlearn.demo`)."""

from __future__ import annotations

from hf_unlearn.demo import DEFAULT_RECIPE, OPTIMIZERS, REGIMES, run_demo
from hf_unlearn.errors import UserInputError


def add_arguments(parser):
    parser.add_argument(
        "--real", action="store_true",
        help="The real-model demo instead: SmolLM2-135M-Instruct fine-tuned on 4 TOFU authors, unlearned with AdamW "
        "and the hybrid, attacked (about 15 min on 2 CPU cores; needs --tofu_dir). Takes --output_dir and --resume.",
    )  # fmt: skip
    parser.add_argument(
        "--tofu_dir", default=None, help="--real: a local TOFU folder (default: $HF_UNLEARN_TOFU_DIR)."
    )
    parser.add_argument("--output_dir", default=None, help="Where the data, models and reports go.")
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="The unlearning recipe every run uses.")
    parser.add_argument("--num_authors", type=int, default=20, help="Authors in the synthetic benchmark.")
    parser.add_argument("--finetune_epochs", type=int, default=30, help="Epochs to memorise the benchmark.")
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), help="Optimizers to compare.")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds per optimizer.")
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES), help="LR regimes.")
    parser.add_argument("--max_new_tokens", type=int, default=16, help="Generation length of the ROUGE metrics.")
    parser.add_argument("--max_steps", type=int, default=None, help="Unlearning steps of every run (a smaller demo).")
    parser.add_argument("--relearn_steps", type=int, nargs="+", default=None, help="Relearning budgets evaluated.")
    parser.add_argument(
        "--checkpoints", type=int, default=0,
        help="Checkpoints per run for the utility-matched table (0: final models only, the fastest).",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="Seed for data and models; runs use seed..seed+seeds-1.")
    parser.add_argument("--overwrite", action="store_true", help="Remove an earlier demo in --output_dir first.")
    parser.add_argument("--resume", action="store_true", help="Continue an interrupted demo in --output_dir.")


def main(args):
    if args.real:
        from hf_unlearn.demo_real import run_real_demo

        run_real_demo(args.output_dir or "outputs/demo_real", args.tofu_dir, resume=args.resume)
        return
    args.output_dir = args.output_dir or "outputs/demo"
    # `is not None`: 0 is a value to refuse, not "unset" (it was silently ignored).
    if args.max_steps is not None and args.max_steps < 1:
        raise UserInputError(f"--max_steps {args.max_steps}: the demo's runs need at least 1 step each.")
    if args.relearn_steps and min(args.relearn_steps) < 1:
        raise UserInputError(f"--relearn_steps {' '.join(map(str, args.relearn_steps))}: each budget must be >= 1.")
    extra = ["--max_steps", str(args.max_steps)] if args.max_steps is not None else []
    extra += ["--relearn_steps", *map(str, args.relearn_steps)] if args.relearn_steps else []
    run_demo(
        args.output_dir, args.recipe, args.num_authors, args.finetune_epochs, args.optimizers, args.seeds,
        args.regimes, args.max_new_tokens, extra, args.seed, args.checkpoints,
        args.overwrite, args.resume,
    )  # fmt: skip
