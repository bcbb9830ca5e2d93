"""`hf-unlearn subset OUT_DIR`: a TOFU subset (a forget split's authors + the first N) as a local TOFU folder."""

from hf_unlearn.benchmarks.tofu_subset import write_tofu_subset


def add_arguments(parser):
    parser.add_argument("output_dir", help="A new or empty folder for the subset's <config>.json files.")
    parser.add_argument("--data_dir", required=True, help="The local TOFU folder to take the subset from.")
    parser.add_argument("--forget_split", default="forget01", help="forget01, forget05 or forget10.")
    parser.add_argument("--retain_authors", type=int, default=8, help="TOFU's first N authors to keep (1-20).")
    parser.add_argument("--overwrite", action="store_true", help="Write into a folder that already holds files.")


def main(args):
    folder = write_tofu_subset(
        args.data_dir, args.output_dir, args.forget_split, args.retain_authors, overwrite=args.overwrite
    )
    print(f"Wrote a TOFU subset ({args.forget_split} + {args.retain_authors} retain authors) to {folder}")
