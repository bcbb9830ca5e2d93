"""`hf-unlearn` command line: one thin module per command, imported only when that command runs.

Each module defines `add_arguments(parser)` and `main(args)`, parses its flags and calls one library function. The
library's errors reach the user as one line on stderr (exit code 2 for bad input, 1 otherwise); `--debug` or
`HF_UNLEARN_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys


# name -> help. The module is hf_unlearn.cli.<name>.
COMMANDS = {
    "run": "Run an unlearning recipe (YAML; flags after it override its keys).",
    "finetune": "Fine-tune the target and the retain model on a benchmark's QA data with trl.SFTTrainer.",
    "demo": "Run the embedded end-to-end demo on a tiny model and the synthetic benchmark.",
    "eval": "Evaluate a model on TOFU, MUSE or WMDP; write summary and per-example JSON.",
    "attack": "Relearning and quantization attacks on a saved model, evaluated.",
    "lmc": "Linear mode connectivity between two checkpoints: losses, barrier, plot.",
    "synthetic": "Write the synthetic fictitious-author benchmark as a local TOFU folder.",
    "bench": "Measure speed and memory ratios; write them as JSON.",
    "card": "(Re)build a finished run's model card (README.md) from its unlearn_report.json.",
    "push": "Push a finished run (weights, card, report, plots, recipe) to the Hugging Face Hub.",
}
# Commands that parse their own argv (a recipe's keys are only known once the recipe is read).
RAW_ARGV = {"run", "finetune"}


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("HF_UNLEARN_DEBUG", "0").lower() in ("1", "true", "yes")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    from hf_unlearn import __version__

    parser = argparse.ArgumentParser(prog="hf-unlearn", description="Robust LLM unlearning on the Hugging Face stack.")
    parser.add_argument("--version", action="version", version=f"hf_unlearn {__version__}")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks instead of one-line errors.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name in argv[:1]:  # only the chosen command pays for its imports
            importlib.import_module(f"hf_unlearn.cli.{name}").add_arguments(sub)
            sub.add_argument("--debug", action="store_true", help="Show tracebacks instead of one-line errors.")
    return parser


def report_error(command: str, err: BaseException) -> int:
    """One line on stderr naming the command and the library's message; 2 for bad input, 1 for other failures."""
    # Some library messages span lines (DeepSpeed lists each mismatched value): one line, nothing dropped.
    message = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    bad_input = isinstance(err, (ValueError, OSError, KeyError, TypeError, ImportError))
    print(f"hf-unlearn {command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
    return 2 if bad_input else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    command = argv[0] if argv else None
    try:
        if command in RAW_ARGV:
            rest = [a for a in argv[1:] if a != "--debug"]
            return importlib.import_module(f"hf_unlearn.cli.{command}").main_argv(rest) or 0
        args = build_parser(argv).parse_args(argv)
        return importlib.import_module(f"hf_unlearn.cli.{args.command}").main(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # the command boundary: one line for the user, the traceback on request
        if debug:
            raise
        return report_error(command or "hf-unlearn", err)


if __name__ == "__main__":
    sys.exit(main())
