"""`hf-unlearn sweep RECIPE --optimizers adamw qadam:4 adazo hybrid --seeds 3 [--key value ...]`.

Runs the recipe once per (optimizer, seed), attacks every result, adds the controls and writes one comparison
report (see `hf_unlearn.sweep`). Flags the sweep does not know are recipe keys, given to every cell.
"""

from __future__ import annotations

import argparse
import sys


def sweep_parser() -> argparse.ArgumentParser:
    from hf_unlearn.sweep import optimizers_help

    parser = argparse.ArgumentParser(
        prog="hf-unlearn sweep",
        description="Run a recipe per (optimizer, seed), attack each run, and compare them in one report. Flags "
        "not listed here are recipe keys for every cell (e.g. --max_steps 40).",
    )
    parser.add_argument("recipe", help="Recipe YAML; its sweep: section may give optimizers and seeds.")
    parser.add_argument("--optimizers", nargs="+", default=None, help=optimizers_help())
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=None,
        help="A count (3 = the recipe's seed and the next two) or the seeds themselves (0 5 9).",
    )  # fmt: skip
    parser.add_argument("--output_dir", default=None, help="Where the cells and the report go (default: recipe's).")
    parser.add_argument(
        "--only", nargs="+", default=None, metavar="OPT:SEED",
        help="Run only these cells (e.g. adamw:0), one launch each; a run without it writes the report.",
    )  # fmt: skip
    parser.add_argument(
        "--checkpoints", type=int, default=0,
        help="Checkpoints per run for the utility-matched comparison (0: final models only).",
    )  # fmt: skip
    parser.add_argument(
        "--utility_target", type=float, default=None, help="Model utility to match (default: AdamW's mean final)."
    )
    parser.add_argument(
        "--compute_budget", type=int, default=None,
        help="Stop every run once its forward + backward passes reach this (compute-matched).",
    )  # fmt: skip
    parser.add_argument("--no_controls", action="store_true", help="Skip the original/retain/noise controls.")
    return parser


def settings_from_argv(argv: list[str]):
    from hf_unlearn.sweep import SweepSettings, sweep_section

    args, overrides = sweep_parser().parse_known_args(argv)
    section = sweep_section(args.recipe)
    optimizers = args.optimizers or section.get("optimizers")
    if not optimizers:
        raise ValueError("No optimizers: pass --optimizers adamw adazo ... or give the recipe a sweep: section")
    seeds = args.seeds if args.seeds is not None else section.get("seeds", 1)
    if isinstance(seeds, list) and len(seeds) == 1:
        seeds = seeds[0]  # --seeds 3: a count
    return SweepSettings(
        recipe=args.recipe, optimizers=[str(o) for o in optimizers], seeds=seeds,
        output_dir=args.output_dir, overrides=overrides, only=args.only, checkpoints=args.checkpoints,
        utility_target=args.utility_target, compute_budget=args.compute_budget, controls=not args.no_controls,
    )  # fmt: skip


def main_argv(argv: list[str]) -> int:
    from hf_unlearn.sweep import SWEEP_MARKDOWN_FILE, main_table, run_sweep

    if not argv or argv[0] in ("-h", "--help"):
        sweep_parser().print_help()
        return 0
    import datasets
    from transformers.utils import logging

    # One line per cell is the sweep's progress; per-file load/save bars would drown it.
    datasets.disable_progress_bars()
    logging.disable_progress_bar()
    from hf_unlearn.cli.logs import logs_to_stderr

    report = run_sweep(settings_from_argv(argv), on_trainer=logs_to_stderr)
    if report is not None:
        print(main_table(report))
        print(f"Wrote {report.output_dir}/{SWEEP_MARKDOWN_FILE}, sweep_report.json and plots; one folder per run.")
    return 0


def add_arguments(parser):
    parser.add_argument("recipe", nargs="?")


def main(args) -> int:
    return main_argv([args.recipe] if args.recipe else [])


if __name__ == "__main__":
    sys.exit(main_argv(sys.argv[1:]))
