"""`hf-unlearn card OUTPUT_DIR`: (re)build the model card (README.md) from the folder's unlearn_report.json."""

from __future__ import annotations


HELP = "Rebuild OUTPUT_DIR/README.md (the model card) from OUTPUT_DIR/unlearn_report.json."


def add_arguments(parser):
    parser.add_argument("output_dir", help="A run's output folder, holding unlearn_report.json.")


def main(args) -> int:
    from hf_unlearn.model_card import write_card

    print(f"Wrote {write_card(args.output_dir)}")
    return 0
