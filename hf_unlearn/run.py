"""`python -m hf_unlearn.run RECIPE [--key value ...]`: the entry point `accelerate launch -m hf_unlearn.run` starts
on every rank; the same as `hf-unlearn run` (one-line errors, `--debug` for tracebacks)."""

import sys

from hf_unlearn.cli import main
from hf_unlearn.distributed import exit_process


if __name__ == "__main__":
    exit_process(main(["run", *sys.argv[1:]]))
