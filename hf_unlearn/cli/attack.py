"""`hf-unlearn attack --model DIR`: relearning and quantization attacks on a saved model, post hoc.

Evaluates with a registered benchmark (``--benchmark tofu``, ``muse``, ``wmdp``) or, for a quick offline check,
``--benchmark nll`` (mean answer NLL on the forget and retain splits). Relearning trains on the benchmark's own
forget data: TOFU's forget split; MUSE's forget texts (its PrivLeak ``forget`` split, excerpts of the forget
corpus); WMDP ships no forget texts, so it needs ``--relearn_data``. Writes the run's ``unlearn_report.json`` /
``.md`` and plots, the same report a recipe run writes. The attack settings and their defaults are
`RobustnessConfig`'s, the one source.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from hf_unlearn.attacks.robustness import RobustnessConfig
from hf_unlearn.benchmarks import registry
from hf_unlearn.benchmarks.base import settings_from
from hf_unlearn.cli import common
from hf_unlearn.data import QAFormat


NLL = "nll"  # not a registered benchmark: mean answer NLL on TOFU's forget and retain splits
ATTACK_FIELDS = (
    "relearn_steps", "relearn_lr", "relearn_batch_size", "relearn_num_examples", "relearn_scheduler",
    "relearn_seed", "quantization",
)  # fmt: skip


def add_config_arguments(parser, config_cls, names) -> None:
    """One flag per dataclass field in `names`, with the field's type, default and help."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.name not in names:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        hint = hints[f.name]
        args = typing.get_args(hint)
        kwargs = {"default": default, "help": f.metadata.get("help")}
        if typing.get_origin(hint) is list:
            kwargs.update(nargs="*", type=args[0])
        else:
            base = next((a for a in args if a is not type(None)), hint)
            kwargs["type"] = base
        parser.add_argument(f"--{f.name}", **kwargs)


def add_arguments(parser):
    common.add_model(parser, help_text="Folder or Hub id of the unlearned model (and tokenizer).")
    parser.add_argument("--original_model", default=None, help="Model before unlearning: report codes changed.")
    parser.add_argument(
        "--benchmark",
        default="tofu",
        choices=[*registry.available(), NLL],
        help="A registered benchmark, or nll "
        "(mean answer NLL of TOFU's forget and retain splits: a quick offline check).",
    )
    common.add_data_dir(parser, "TOFU / MUSE / WMDP folder (default: TOFU's local copy, else the Hub).")
    parser.add_argument("--forget_split", default="forget10", help="TOFU forget split (forget01/05/10).")
    parser.add_argument("--corpus", choices=("news", "books"), help="MUSE corpus (default: news).")
    parser.add_argument("--max_examples", type=int, default=None, help="Evaluate only the first N rows per set.")
    parser.add_argument(
        "--report_answers", type=int, default=3,
        help="TOFU: show N forget and N retain questions with the model's answers (attacked, relearned, original).",
    )  # fmt: skip
    common.add_retain_model(parser)
    common.add_qa_format(parser)
    parser.add_argument(
        "--relearn_data", default=None, help="JSON Lines of QA or text rows to relearn on (default: the forget split)."
    )
    add_config_arguments(parser, RobustnessConfig, ATTACK_FIELDS)
    common.add_output_dir(parser, "outputs/attack", "Where unlearn_report.json / .md and the plots go.")
    common.add_device(parser)
    common.add_overwrite(parser)


def _benchmark(args, data_dir):
    """The registered benchmark ``--benchmark`` names, its settings read from the flags by its settings class."""
    settings_class = registry.spec_of(args.benchmark).benchmark_class().settings_class
    return registry.get(args.benchmark, **settings_from(settings_class, args, data_dir=data_dir))


def _eval_fn(args, benchmark):
    if benchmark is not None:
        from hf_unlearn.attacks.robustness import benchmark_eval_fn

        return benchmark_eval_fn(benchmark)

    from hf_unlearn.benchmarks.base import check_counts
    from hf_unlearn.benchmarks.nll import NLLBenchmark
    from hf_unlearn.benchmarks.tofu_data import load_split, tofu_split_names

    names = tofu_split_names(args.forget_split)
    check_counts(max_examples=args.max_examples)
    data_dir = args.data_dir
    cache = {}

    def eval_fn(model, tokenizer):
        if not cache:
            qa_format = QAFormat.from_args(args)
            splits = {
                names[role]: load_split(data_dir, names[role], tokenizer, args.max_examples, qa_format)
                for role in ("forget", "retain")
            }
            cache["benchmark"] = NLLBenchmark(splits)
        return cache["benchmark"].evaluate(model, tokenizer).metric_values()

    return eval_fn


def forget_rows(args, config: RobustnessConfig, benchmark, data_dir):
    """The rows relearning trains on (None without relearning): --relearn_data, else the benchmark's forget data."""
    from datasets import load_dataset

    if not config.relearn_steps:
        return None
    if args.relearn_data:
        return load_dataset("json", data_files=args.relearn_data, split="train")
    if benchmark is None:  # nll: TOFU's forget split
        from hf_unlearn.benchmarks.tofu_data import load_tofu

        return load_tofu(args.forget_split, data_dir)
    return benchmark.relearn_rows()


def sample_questions_for(args, data_dir) -> list[dict]:
    """The attacked model's sample questions: the first forget and retain rows of the TOFU split (report_answers)."""
    from hf_unlearn.answers import tofu_questions
    from hf_unlearn.benchmarks.tofu_data import tofu_split_names

    if args.report_answers < 1 or data_dir is None:
        return []
    retain = tofu_split_names(args.forget_split)["retain"]
    return tofu_questions(data_dir, args.forget_split, retain, args.report_answers)


def main(args):
    from hf_unlearn.answers import SampleAnswers
    from hf_unlearn.attacks.robustness import robustness_checks
    from hf_unlearn.benchmarks.tofu_data import default_tofu_dir
    from hf_unlearn.cli.eval import EVALUATED, command_line
    from hf_unlearn.loading import check_model_path, load_model_and_tokenizer
    from hf_unlearn.report import UnlearnReport
    from hf_unlearn.report_schema import REPORT_FILE, public_name

    config = RobustnessConfig(**{name: getattr(args, name) for name in ATTACK_FIELDS})
    check_model_path(args.model, "--model")
    for flag in ("original_model", "retain_model"):
        if getattr(args, flag):
            check_model_path(getattr(args, flag), f"--{flag}")
    if args.relearn_data and not Path(args.relearn_data).is_file():
        raise FileNotFoundError(f"--relearn_data {args.relearn_data} not found; give a JSON Lines file.")
    reads_tofu = args.benchmark == NLL or registry.spec_of(args.benchmark).family == "TOFU"
    data_dir = args.data_dir or (default_tofu_dir() if reads_tofu else None)
    args.data_dir = data_dir
    protected = {"--model": args.model, "--original_model": args.original_model, "--retain_model": args.retain_model}
    common.check_output(args, {**protected, "--data_dir": data_dir}, inside_ok=("--model",))
    # Names (benchmark, split) and data are checked before any weight loads.
    benchmark = None if args.benchmark == NLL else _benchmark(args, data_dir)
    eval_fn = _eval_fn(args, benchmark)
    relearn_rows = forget_rows(args, config, benchmark, data_dir)
    model, tokenizer = load_model_and_tokenizer(args.model, device=args.device)
    original = load_model_and_tokenizer(args.original_model, device=args.device)[0] if args.original_model else None
    qa_format = QAFormat.from_args(args)
    report = UnlearnReport(
        base_model=args.model,
        benchmark=args.benchmark,
        command=command_line("attack"),
        recipe={
            "attack": dataclasses.asdict(config),
            "original_model": args.original_model,
            "qa_format": qa_format.describe(tokenizer),
        },
    )
    samples = SampleAnswers(sample_questions_for(args, data_dir) if reads_tofu else [])
    answers_fn = (lambda m: samples.generate(m, tokenizer, qa_format)) if samples.questions else None
    if answers_fn is not None and original is not None:
        samples.answers["original model"] = answers_fn(original)
    with report.timed("attacks"):
        results = robustness_checks(
            model, tokenizer, eval_fn, relearn_rows, config, original, qa_format, answers_fn=answers_fn
        )
    report.add_evaluation(EVALUATED, results["unlearned"])
    report.add_attacks(results, label=f"{public_name(args.model)} (post hoc)")
    if answers_fn is not None:
        samples.answers["attacked model"] = results["answers"]
        if results.get("relearned_answers") is not None:
            samples.answers[f"relearned ({max(config.relearn_steps)} steps)"] = results["relearned_answers"]
        report.answers = samples.to_records()
    report.save(args.output_dir)
    print(report.to_markdown())
    print(f"Wrote {Path(args.output_dir) / REPORT_FILE}")
