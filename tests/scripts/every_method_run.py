"""Every method's recipe, one after another, in ONE launch (one process start for the whole set).

Usage: accelerate launch --multi_gpu --num_processes 2 every_method_run.py RECIPE [RECIPE ...] -- [--flag value ...]

Each recipe runs through the same code as `python -m hf_unlearn.run RECIPE --flags`, with `--output_dir` set to
the flags' output_dir plus the recipe's file stem.
"""

import sys
from pathlib import Path

from hf_unlearn.distributed import end_process_group, exit_process
from hf_unlearn.pipeline import run
from hf_unlearn.recipes import parse_recipe


def main(argv: list[str]) -> None:
    split = argv.index("--")
    recipes, flags = argv[:split], argv[split + 1 :]
    out = Path(flags[flags.index("--output_dir") + 1])
    for recipe in recipes:
        run(parse_recipe(recipe, [*flags, "--output_dir", str(out / Path(recipe).stem)]))


if __name__ == "__main__":
    main(sys.argv[1:])
    end_process_group(finished=True)
    exit_process(0)
