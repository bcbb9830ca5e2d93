"""`hf-unlearn` command line: each subcommand lives in its own module and is imported only when it runs."""

from __future__ import annotations

import argparse
import importlib
import sys


# name -> (module, help). Each module defines `add_arguments(parser)` and `main(args)`.
SUBCOMMANDS = {
    "run": ("hf_unlearn.run", "Run an unlearning recipe (YAML; flags override its keys)."),
    "demo": ("hf_unlearn.demo", "Run the embedded end-to-end demo on a tiny model and the synthetic benchmark."),
    "eval": ("hf_unlearn.evaluation", "Evaluate a model on TOFU, MUSE or WMDP; write summary and per-example JSON."),
    "attack": ("hf_unlearn.attacks.cli", "Relearning and quantization attacks on a saved model, evaluated."),
    "lmc": ("hf_unlearn.analysis_cli", "Linear mode connectivity between two checkpoints: losses, barrier, plot."),
    "synthetic": ("hf_unlearn.benchmarks.synthetic_cli", "Write the synthetic fictitious-author benchmark."),
    "bench": ("hf_unlearn.bench", "Measure speed and memory ratios; write them as JSON."),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    from hf_unlearn import __version__

    parser = argparse.ArgumentParser(prog="hf-unlearn", description="Robust LLM unlearning on the Hugging Face stack.")
    parser.add_argument("--version", action="version", version=f"hf_unlearn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module)
        if argv[:1] == [name]:  # only the chosen subcommand pays for its imports
            importlib.import_module(module).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return importlib.import_module(args._module).main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
