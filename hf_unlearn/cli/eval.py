"""`hf-unlearn eval --model DIR --benchmark NAME` (a registered benchmark): evaluate, write JSON, print a table.

Under ``torch.distributed`` / ``accelerate launch`` every rank evaluates its shard of the examples, all ranks receive
the gathered result, and only the main process writes files and prints. Python callers use
``hf_unlearn.benchmarks.evaluate_model`` on an in-memory model.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from hf_unlearn.benchmarks import evaluate_model, get, registry
from hf_unlearn.benchmarks.base import settings_from
from hf_unlearn.benchmarks.sharding import process_info
from hf_unlearn.cli import common
from hf_unlearn.data import QAFormat
from hf_unlearn.loading import check_model_path, load_model_and_tokenizer
from hf_unlearn.report import UnlearnReport
from hf_unlearn.report_schema import REPORT_FILE


EVALUATED = "evaluated_model"


def command_line(command: str) -> str:
    """This invocation as a command to rerun (what `sys.argv` holds after the command's name)."""
    import shlex
    import sys

    argv = sys.argv[1:]
    rest = argv[argv.index(command) + 1 :] if command in argv else argv
    return shlex.join(["hf-unlearn", command, *rest])


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``eval`` options to ``parser``."""
    common.add_model(parser)
    parser.add_argument("--benchmark", required=True, choices=registry.available())
    common.add_output_dir(parser, None, "Where the JSON files go (default: <model>/eval, or ./eval for Hub ids).")
    common.add_data_dir(parser)
    parser.add_argument("--batch_size", type=int, default=16, help="Sequences per forward / generate call.")
    parser.add_argument("--max_examples", type=int, help="Evaluate only the first N examples of each set.")
    parser.add_argument("--max_new_tokens", type=int, help="TOFU generation length (default 200).")
    parser.add_argument("--forget_split", default="forget10", help="TOFU: forget01 | forget05 | forget10.")
    common.add_retain_model(parser)
    parser.add_argument("--retain_stats", help="TOFU/MUSE: retain statistics JSON (read, or written when computed).")
    common.add_qa_format(parser)
    parser.add_argument("--corpus", choices=("news", "books"), help="MUSE corpus (default: news).")
    parser.add_argument(
        "--muse_original", action="store_true", help="MUSE: the official code's rules (docs/definitions.md)."
    )
    parser.add_argument(
        "--privleak_max_length",
        type=int,
        help="MUSE default mode: cut PrivLeak texts to N tokens (default 2048; 0: whole texts, as --muse_original).",
    )
    parser.add_argument(
        "--privleak_ref_auc", type=float, help="MUSE: reference Min-K%% AUC for PrivLeak instead of a retain model."
    )
    parser.add_argument(
        "--privacy",
        action="store_true",
        help="TOFU/MUSE: also run the membership-inference suite on forget vs holdout (LOSS, zlib, Min-K%%++, "
        "GradNorm, Reference; each an AUC and a privleak against the retain model). Slower: one backward per example.",
    )
    parser.add_argument("--tasks", nargs="+", help="WMDP: lm-eval task names (default wmdp_bio wmdp_cyber mmlu).")
    parser.add_argument("--limit", type=int, help="WMDP: at most N questions per task.")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    common.add_device(parser)
    parser.add_argument("--no_progress", action="store_true", help="Hide progress bars.")
    common.add_overwrite(parser)
    return parser


# Flag groups a benchmark may not take: (setting, flags, whether the namespace sets them, why they do not apply).
REFUSED_WHEN_NOT_TAKEN = (
    ("privacy", "--privacy", lambda args: args.privacy, "has no holdout set to attack"),
    (
        "qa_format",
        "--qa_template/--system_prompt/--no_chat_template",
        lambda args: QAFormat.from_args(args) != QAFormat(),
        "'s prompts are fixed by the benchmark",
    ),
)


def benchmark_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark's keyword settings from parsed CLI options, through its settings class (unset options are
    left out); a flag the benchmark does not take fails in one line naming the benchmarks that do."""
    settings_class = registry.spec_of(args.benchmark).benchmark_class().settings_class
    taken = {f.name for f in dataclasses.fields(settings_class)}
    for setting, flags, given, why in REFUSED_WHEN_NOT_TAKEN:
        if setting not in taken and given(args):
            families = " and ".join(registry.families_with_setting(setting))
            verb, pronoun = ("apply", "them") if "/" in flags else ("applies", "it")
            sep = "" if why.startswith("'") else " "
            raise ValueError(f"{flags} {verb} to {families}; {args.benchmark}{sep}{why}. Drop {pronoun}.")
    return settings_from(settings_class, args)


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
    model_path = check_model_path(args.model, "--model")
    if args.retain_model:
        args.retain_model = check_model_path(args.retain_model, "--retain_model")
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise FileNotFoundError(f"--data_dir {args.data_dir} is not a folder.")
    if args.output_dir is None:
        args.output_dir = str(default_output_dir(args.model))
    # The default <model>/eval lies inside the evaluated model's folder: a subfolder of its own, never the folder.
    output_dir = common.check_output(
        args, {"--model": model_path, "--retain_model": args.retain_model, "--data_dir": args.data_dir},
        inside_ok=("--model",),
    )  # fmt: skip
    if args.no_progress:
        from hf_unlearn.loading import disable_progress_bars

        disable_progress_bars()
    benchmark = get(args.benchmark, **benchmark_settings(args))  # bad settings fail before any weight loads
    model, tokenizer = load_model_and_tokenizer(model_path, device=args.device, dtype=args.dtype)
    if hasattr(benchmark.args, "qa_format"):
        warn_default_format(benchmark.args.qa_format, tokenizer)
    result = evaluate_model(model, tokenizer, benchmark, output_dir, args.model)
    stem = result.benchmark.replace("/", "_")
    table = f"{result.table()}\nwrote {output_dir / REPORT_FILE} and {stem}_per_example.json"
    if process_info()[0] == 0:
        report = UnlearnReport(base_model=args.model, benchmark=result.benchmark, command=command_line("eval"))
        report.add_evaluation(EVALUATED, result)
        report.save(output_dir)
        print(table)
    return table


def main(args: argparse.Namespace) -> int:
    run_eval(args)
    return 0
