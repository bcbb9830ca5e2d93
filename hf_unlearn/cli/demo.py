"""`hf-unlearn demo`: the embedded end-to-end demo (see `hf_unlearn.demo`)."""

from __future__ import annotations

from hf_unlearn.demo import DEFAULT_RECIPE, VARIANTS, run_demo


def add_arguments(parser):
    parser.add_argument("--output_dir", default="outputs/demo", help="Where the data, models and reports go.")
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="The unlearning recipe every variant runs.")
    parser.add_argument("--num_authors", type=int, default=20, help="Authors in the synthetic benchmark.")
    parser.add_argument("--finetune_epochs", type=int, default=30, help="Epochs to memorise the benchmark.")
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="Optimizers to compare."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed for data, models and training.")
    parser.add_argument("--overwrite", action="store_true", help="Write over an earlier demo in --output_dir.")


def main(args):
    run_demo(
        args.output_dir, args.recipe, args.num_authors, args.finetune_epochs, args.variants, args.seed, args.overwrite
    )
