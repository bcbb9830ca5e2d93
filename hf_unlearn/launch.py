"""Recipes that launch themselves: `accelerate launch recipe.yaml [--key value ...]` and `python recipe.yaml`.

A self-launching recipe is a file that is valid YAML *and* valid Python. Its first entry is

    launch: str = __import__("hf_unlearn.launch").launch.run_this_recipe(__file__)

Python reads that line as an annotated assignment, whose value it evaluates: the call runs the recipe it sits in
(with `sys.argv[1:]` as overrides) and exits, so no later line ever executes; Python only has to *compile* them.
YAML reads the same line as the key `launch` with one string value, which the recipe parser ignores. Whoever starts
the file (`python`, `accelerate launch` in any mode, `torchrun`) runs it as a script, so `__file__` is its path.

The rest of the file keeps to a subset of YAML that Python also compiles (see docs/recipes.md): one flat
`key: value` mapping, no indented blocks; strings that Python would misread (`7b`, a Python keyword, `no`, anything
with `:` or `-` followed by a digit...) in quotes. `check_self_launching(path)` says whether a file is in that
subset; a recipe outside it still runs through `hf-unlearn run recipe.yaml`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hf_unlearn.recipes import LAUNCH_LINE, yaml_mapping


def run_this_recipe(path: str) -> None:
    """Run the recipe at `path` with the command line's flags, then exit: called from the recipe's first line.

    It goes through `hf-unlearn run` (one-line errors, `--debug` for tracebacks) and exits with its code: the lines
    after the first are YAML for Python's eyes, compiled but never to be executed.
    """
    from hf_unlearn.cli import main
    from hf_unlearn.distributed import exit_process

    exit_process(main(["run", path, *sys.argv[1:]]))


class NotSelfLaunching(ValueError):
    """A recipe that `accelerate launch recipe.yaml` cannot run (it still runs through `hf-unlearn run`)."""


def check_self_launching(path: str | Path) -> None:
    """Raise `NotSelfLaunching` (one line, naming the offending line) unless `path` can launch itself.

    Checks that the file is a flat YAML mapping, that its first entry is the launch line, and that Python compiles
    the whole file (it must: Python compiles a script before running its first statement).
    """

    path = Path(path)
    text = path.read_text()
    try:
        yaml_mapping(text, str(path))
    except ValueError as err:
        raise NotSelfLaunching(str(err)) from None
    lines = text.splitlines()
    statements = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()[:1] not in ("", "#")]
    if not statements or statements[0][1].rstrip() != LAUNCH_LINE:
        number = statements[0][0] if statements else 1
        raise NotSelfLaunching(f"{path}:{number}: the first entry must be the launch line; put `{LAUNCH_LINE}` first.")
    for number, line in statements:
        if line[0].isspace():
            raise NotSelfLaunching(
                f"{path}:{number}: `{line.strip()}` is indented; a self-launching recipe is one flat `key: value` "
                "mapping (write lists inline: [a, b])."
            )
    try:
        compile(text, str(path), "exec")
    except SyntaxError as err:
        line = lines[err.lineno - 1].strip() if err.lineno and err.lineno <= len(lines) else ""
        raise NotSelfLaunching(
            f'{path}:{err.lineno}: Python cannot read `{line}` ({err.msg}); quote the value, e.g. key: "value" '
            "(or run the file with `hf-unlearn run`)."
        ) from err


def main(argv: list[str] | None = None) -> int:
    """`python -m hf_unlearn.launch RECIPE...`: check recipes; one line per recipe outside the subset."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hf_unlearn.launch", description=check_self_launching.__doc__)
    parser.add_argument("recipes", nargs="+", help="Recipe files to check.")
    failures = 0
    for recipe in parser.parse_args(argv).recipes:
        try:
            check_self_launching(recipe)
        except (NotSelfLaunching, OSError) as err:
            print(err, file=sys.stderr)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
