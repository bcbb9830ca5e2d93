"""`python -m hf_unlearn.run RECIPE [--key value ...]`: the entry point `accelerate launch -m hf_unlearn.run` starts
on every rank; the same as `hf-unlearn run` (one-line errors, `--debug` for tracebacks)."""

import sys

from hf_unlearn.cli import main


if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
