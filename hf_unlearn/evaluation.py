"""`hf-unlearn eval --model DIR --benchmark tofu|tofu-legacy|muse|wmdp`: evaluate, write JSON, print a table.

The same path serves Python callers and callbacks: :func:`evaluate_model` takes an in-memory model. Under
``torch.distributed`` / ``accelerate launch`` every rank evaluates its shard of the examples, all ranks receive the
gathered result, and only the main process writes files and prints.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from hf_unlearn.benchmarks.base import Benchmark, BenchmarkResult, get
from hf_unlearn.benchmarks.sharding import process_info
from hf_unlearn.data import QAFormat, add_qa_format_arguments


CLI_BENCHMARKS = ("tofu", "tofu-legacy", "muse", "wmdp")
HELP = "Evaluate a model on TOFU, MUSE or WMDP; write <benchmark>_summary.json and <benchmark>_per_example.json."


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``eval`` options to ``parser``."""
    parser.add_argument("--model", required=True, help="Model folder or Hub id (loaded with from_pretrained).")
    parser.add_argument("--benchmark", required=True, choices=CLI_BENCHMARKS)
    parser.add_argument("--output_dir", help="Where the JSON files go (default: <model>/eval, or ./eval for Hub ids).")
    parser.add_argument("--data_dir", help="Local data folder instead of the Hub (TOFU/MUSE JSON Lines, WMDP JSON).")
    parser.add_argument("--batch_size", type=int, default=16, help="Sequences per forward / generate call.")
    parser.add_argument("--max_examples", type=int, help="Evaluate only the first N examples of each set.")
    parser.add_argument("--max_new_tokens", type=int, help="TOFU generation length (default 200).")
    parser.add_argument("--forget_split", default="forget10", help="TOFU: forget01 | forget05 | forget10.")
    parser.add_argument("--retain_model", help="TOFU/MUSE: retain model whose statistics are computed and cached.")
    parser.add_argument("--retain_stats", help="TOFU/MUSE: retain statistics JSON (read, or written when computed).")
    parser.add_argument("--corpus", choices=("news", "books"), default="news", help="MUSE corpus.")
    parser.add_argument("--muse_original", action="store_true", help="MUSE: stemmer off, ground truth cut to 128.")
    parser.add_argument("--tasks", nargs="+", help="WMDP: lm-eval task names (default wmdp_bio wmdp_cyber mmlu).")
    parser.add_argument("--limit", type=int, help="WMDP: at most N questions per task.")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: this rank's device).")
    parser.add_argument("--no_progress", action="store_true", help="Hide progress bars.")
    add_qa_format_arguments(parser)
    return parser


def add_eval_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``eval`` on an ``argparse`` subparsers object; the parsed args carry ``func=run_eval``."""
    parser = subparsers.add_parser("eval", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(func=run_eval)
    return parser


def benchmark_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark constructor's keyword arguments from parsed CLI options (unset options are left out)."""
    name = args.benchmark
    if not name.startswith("tofu") and QAFormat.from_args(args) != QAFormat():
        raise ValueError(
            f"--qa_template/--system_prompt/--no_chat_template apply to TOFU; {name}'s prompts are fixed by the "
            "benchmark. Drop them."
        )
    common = {"data_dir": args.data_dir, "batch_size": args.batch_size}
    if name.startswith("tofu"):
        specific = {
            "forget_split": args.forget_split,
            "max_examples": args.max_examples,
            "max_new_tokens": args.max_new_tokens,
            "retain_model": args.retain_model,
            "retain_stats": args.retain_stats,
            "show_progress": not args.no_progress,
            "qa_format": QAFormat.from_args(args),
        }
    elif name == "muse":
        specific = {
            "corpus": args.corpus,
            "original": args.muse_original,
            "max_examples": args.max_examples,
            "retain_model": args.retain_model,
            "retain_stats": args.retain_stats,
            "show_progress": not args.no_progress,
        }
    else:
        specific = {"tasks": args.tasks, "limit": args.limit if args.limit is not None else args.max_examples}
    return {k: v for k, v in {**common, **specific}.items() if v is not None}


def resolve_device(device: str) -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def load_for_eval(model_path: str, dtype: str = "auto", device: str = "auto"):
    """``(model, tokenizer)`` from a folder or Hub id, on this rank's device, in eval mode."""
    from hf_unlearn.tiny import load_model_and_tokenizer

    kwargs = {} if dtype == "auto" else {"dtype": getattr(torch, dtype)}
    model, tokenizer = load_model_and_tokenizer(model_path, **kwargs)
    return model.to(resolve_device(device)).eval(), tokenizer


def evaluate_model(
    model,
    tokenizer,
    benchmark: str | Benchmark,
    output_dir: str | Path | None = None,
    model_name: str | None = None,
    **settings,
) -> BenchmarkResult:
    """Evaluate an in-memory model; the main process writes the JSON files when ``output_dir`` is given."""
    evaluator = get(benchmark, **settings) if isinstance(benchmark, str) else benchmark
    result = evaluator.evaluate(model, tokenizer)
    if output_dir is not None and process_info()[0] == 0:
        result.save(output_dir, model_name=model_name)
    return result


def warn_default_format(qa_format: QAFormat, tokenizer) -> None:
    """One line on stderr when a model without a chat template is evaluated in the default plain template."""
    if qa_format.template is None and not getattr(tokenizer, "chat_template", None) and process_info()[0] == 0:
        template = qa_format.describe(tokenizer)["template"]
        print(
            f"warning: the tokenizer has no chat template, so prompts use TOFU's plain template {template!r}; if the "
            "model was fine-tuned in another format, pass it with --qa_template (and --system_prompt).",
            file=sys.stderr,
        )


def default_output_dir(model: str) -> Path:
    return Path(model) / "eval" if Path(model).is_dir() else Path("eval")


def run_eval(args: argparse.Namespace) -> str:
    """Run ``hf-unlearn eval`` from parsed args; print (main process) and return the results table."""
    model, tokenizer = load_for_eval(args.model, args.dtype, args.device)
    if args.benchmark.startswith("tofu"):
        warn_default_format(QAFormat.from_args(args), tokenizer)
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args.model)
    result = evaluate_model(model, tokenizer, args.benchmark, output_dir, args.model, **benchmark_settings(args))
    stem = result.benchmark.replace("/", "_")
    table = f"{result.table()}\nwrote {output_dir / f'{stem}_summary.json'} and {stem}_per_example.json"
    if process_info()[0] == 0:
        print(table)
    return table


def main(args: argparse.Namespace) -> int:
    """Entry point in the shape `hf_unlearn.cli` expects (``add_arguments`` + ``main``)."""
    run_eval(args)
    return 0
