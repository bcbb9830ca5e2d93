"""`hf-unlearn synthetic OUT_DIR`: write the synthetic benchmark as a local TOFU folder (a new or empty one)."""

from hf_unlearn.benchmarks.synthetic import write_synthetic_tofu


def add_arguments(parser):
    parser.add_argument("output_dir", help="Folder to write <config>.json JSON Lines files into.")
    parser.add_argument("--num_authors", type=int, default=20, help="Fictitious authors in `full`.")
    parser.add_argument("--qa_per_author", type=int, default=10, help="Questions per author (1-10).")
    parser.add_argument("--seed", type=int, default=0, help="Same seed, same benchmark.")


def main(args):
    folder = write_synthetic_tofu(
        args.output_dir, num_authors=args.num_authors, qa_per_author=args.qa_per_author, seed=args.seed
    )
    print(f"Wrote the synthetic TOFU benchmark to {folder}")
