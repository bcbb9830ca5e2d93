"""`hf-unlearn` command line: one thin module per command, imported only when that command runs.

Each module defines `add_arguments(parser)` and `main(args)`, parses its flags and calls one library function. The
library's errors reach the user as one line on stderr; `--debug` (before or after the command) or
`HF_UNLEARN_DEBUG=1` shows the traceback instead.

Exit codes: 2 for bad input (:class:`hf_unlearn.errors.UserInputError`, a flag argparse refuses, and the standard
errors of a bad value or file: ``ValueError``, ``OSError``, ``ImportError``); 1 for anything else, including a
``TypeError`` or ``KeyError`` raised inside the library, which is a bug to report, not the user's mistake.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from hf_unlearn.distributed import end_process_group, exit_process
from hf_unlearn.errors import UserInputError


# name -> help. The module is hf_unlearn.cli.<name>.
COMMANDS = {
    "run": "Run an unlearning recipe (YAML; flags after it override its keys).",
    "finetune": "Fine-tune the target and the retain model on a benchmark's QA data with trl.SFTTrainer.",
    "sweep": "Run a recipe per (optimizer, seed), attack each run, compare them in one report with mean ± std.",
    "demo": "Run the embedded end-to-end demo on a tiny model and the synthetic benchmark.",
    "eval": "Evaluate a model on TOFU, MUSE or WMDP; write summary and per-example JSON.",
    "attack": "Relearning and quantization attacks on a saved model, evaluated.",
    "lmc": "Linear mode connectivity between two checkpoints: losses, barrier, plot.",
    "models": "List or fetch real pretrained models that install offline by name (models list | models fetch NAME).",
    "alternates": "Generate AltPO's alternate answers to a TOFU forget split with the model itself (JSON Lines).",
    "synthetic": "Write the synthetic fictitious-author benchmark as a local TOFU folder.",
    "subset": "Write a TOFU subset (a forget split's authors + the first N authors) as a local TOFU folder.",
    "bench": "Measure speed and memory ratios; write them as JSON.",
    "card": "(Re)build a finished run's model card (README.md) from its unlearn_report.json.",
    "push": "Push a finished run (weights, card, report, plots, recipe) to the Hugging Face Hub.",
}
# Commands that parse their own argv (a recipe's keys are only known once the recipe is read).
RAW_ARGV = {"run", "finetune", "sweep"}


class UsageError(UserInputError):
    """A command-line mistake argparse found (unknown flag, a value of the wrong type): bad input, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (raised to the command boundary), not the usage and a line."""

    def error(self, message):
        raise UsageError(f"{message}; `{self.prog} --help` lists the flags")


class _ThirdPartyNoise(logging.Filter):
    """Drops two import-time messages that are not errors and sends DeepSpeed's other messages to stderr.

    - bitsandbytes: "Failed to load CPU gemm_4bit_forward from kernels-community" (an optional CPU kernel package is
      not installed; 4-bit CPU code falls back to its own kernels);
    - DeepSpeed: "Setting accelerator to CPU" (there is no GPU: the user knows). DeepSpeed logs to stdout, which
      must carry only what a user would pipe, so its remaining messages are written to stderr instead.
    """

    DROPPED = ("Failed to load CPU gemm_4bit_forward from kernels-community", "Setting accelerator to CPU.")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.DROPPED):
            return False
        if record.name == "DeepSpeed":
            if record.levelno >= logging.getLogger("DeepSpeed").getEffectiveLevel():
                print(f"[DeepSpeed] {record.levelname}: {message}", file=sys.stderr)
            return False
        return True


def quiet_third_party_noise() -> None:
    """Install :class:`_ThirdPartyNoise` on the two loggers (before their packages are imported); CLI only."""
    noise = _ThirdPartyNoise()
    for name in ("bitsandbytes.backends.cpu.ops", "DeepSpeed"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ThirdPartyNoise) for f in logger.filters):
            logger.addFilter(noise)


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("HF_UNLEARN_DEBUG", "0").lower() in ("1", "true", "yes")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    from hf_unlearn import __version__

    parser = OneLineParser(prog="hf-unlearn", description="Robust LLM unlearning on the Hugging Face stack.")
    parser.add_argument("--version", action="version", version=f"hf_unlearn {__version__}")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks instead of one-line errors.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser)
    for name, help_text in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name in argv[:1]:  # only the chosen command pays for its imports
            importlib.import_module(f"hf_unlearn.cli.{name}").add_arguments(sub)
            sub.add_argument("--debug", action="store_true", help="Show tracebacks instead of one-line errors.")
    return parser


# UnicodeDecodeError and json.JSONDecodeError are ValueErrors: a file that is not what it should be is bad input.
BAD_INPUT = (UserInputError, ValueError, OSError, ImportError)
LIBRARY_BUGS = (TypeError, KeyError)


def report_error(command: str, err: BaseException) -> int:
    """One line on stderr naming the command and the library's message; 2 for bad input, 1 for other failures."""
    # Some library messages span lines (DeepSpeed lists each mismatched value): one line, nothing dropped.
    message = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    bad_input = isinstance(err, BAD_INPUT) and not isinstance(err, LIBRARY_BUGS)
    print(f"hf-unlearn {command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
    return 2 if bad_input else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    quiet_third_party_noise()
    # `--debug` is a flag of the whole program, accepted anywhere: `hf-unlearn --debug run ...` as the help shows it.
    argv = [a for a in argv if a != "--debug"]
    command = argv[0] if argv else None
    code = 1  # what the process-group teardown hears unless the command returns
    try:
        if command in RAW_ARGV:
            code = importlib.import_module(f"hf_unlearn.cli.{command}").main_argv(argv[1:]) or 0
            return code
        args = build_parser(argv).parse_args(argv)
        code = importlib.import_module(f"hf_unlearn.cli.{args.command}").main(args) or 0
        return code
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # the command boundary: one line for the user, the traceback on request
        if debug:
            raise
        return report_error(command or "hf-unlearn", err)
    finally:
        # a launched command's process group: every rank waits for the others (when this one finished), then it is
        # destroyed; the entry points then end the process with `hf_unlearn.distributed.exit_process`
        end_process_group(finished=code == 0)


if __name__ == "__main__":
    exit_process(main())
