"""`hf-unlearn run RECIPE [--key value ...]`: parse the recipe (flags override its keys) and run it.

`hf-unlearn run RECIPE --help` (or `hf-unlearn run --method npo --help`) lists every key of that method's recipe.
"""

from __future__ import annotations

import sys


def add_arguments(parser):
    parser.add_argument("recipe", nargs="?", help="Recipe YAML (see recipes/); flags after it override its keys.")


def print_help(recipe: str | None, overrides: list[str]) -> None:
    from hf_unlearn.recipes import _flag_keys, load_recipe, recipe_parser

    method = _flag_keys(overrides).get("method") or (load_recipe(recipe).get("method") if recipe else None)
    parser = recipe_parser(method or "npo")
    parser.prog = "hf-unlearn run RECIPE"
    parser.description = "Every key below can be a recipe key or a flag (flags override the recipe). " + (
        "" if method else "Keys shown for method npo; pass --method X --help for another method's keys."
    )
    parser.print_help()


def main_argv(argv: list[str]) -> int:
    """`hf-unlearn run` with its raw arguments: the recipe path, then `--key value` overrides."""
    recipe = argv[0] if argv and not argv[0].startswith("-") else None
    overrides = argv[1:] if recipe is not None else argv
    if "-h" in overrides or "--help" in overrides:
        print_help(recipe, [a for a in overrides if a not in ("-h", "--help")])
        return 0
    from hf_unlearn.recipes import parse_recipe  # light: the recipe's file errors come before the heavy imports

    parsed = parse_recipe(recipe, overrides)
    from hf_unlearn.cli.logs import logs_to_stderr
    from hf_unlearn.pipeline import run

    report = run(parsed, on_trainer=logs_to_stderr)
    if parsed.config.process_index == 0:
        print(report.to_markdown())
        print(f"Wrote {parsed.config.output_dir} (model, unlearn_report.json/.md, plots, README.md model card)")
    return 0


def main(args) -> int:
    return main_argv([args.recipe] if args.recipe else [])


if __name__ == "__main__":
    sys.exit(main_argv(sys.argv[1:]))
