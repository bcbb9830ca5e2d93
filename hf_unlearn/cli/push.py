"""`hf-unlearn push OUTPUT_DIR --hub_model_id ID`: push a finished run (weights, card, report, plots, recipe)."""

from __future__ import annotations

import sys


HELP = "Push a finished run's model, card, report, plots and recipe to the Hugging Face Hub."


def add_arguments(parser):
    parser.add_argument("output_dir", help="A run's output folder, holding the model and unlearn_report.json.")
    parser.add_argument("--hub_model_id", required=True, help="Hub repo to push to: 'owner/name' or 'name'.")
    parser.add_argument("--private", action="store_true", help="Create the repo as private if it does not exist.")
    parser.add_argument(
        "--token",
        default=None,
        help="Hub token; default: HF_TOKEN or the stored `hf auth login` token (a token typed here lands in your "
        "shell history: prefer those).",
    )
    parser.add_argument("--commit_message", default=None, help="Commit message of the upload.")


def main(args) -> int:
    from hf_unlearn.hub import HubPushError, push_to_hub

    try:
        url = push_to_hub(
            args.output_dir, args.hub_model_id, private=args.private or None, token=args.token,
            commit_message=args.commit_message,
        )  # fmt: skip
    except HubPushError as error:
        print(f"hf-unlearn push: {error}", file=sys.stderr)
        return 2
    print(f"Pushed {args.output_dir} to {url}")
    return 0
