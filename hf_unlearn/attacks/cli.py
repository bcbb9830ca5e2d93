"""`hf-unlearn attack --model DIR`: relearning and quantization attacks on a saved model, post hoc.

Evaluates with a registered benchmark (``--benchmark tofu``) or, for a quick offline check, ``--benchmark nll``
(mean answer NLL on the forget and retain splits). Writes ``robustness.json`` in the callback's schema, with one
run whose trigger is ``post_hoc``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from hf_unlearn.data import QAFormat, add_qa_format_arguments


def add_arguments(parser):
    add_qa_format_arguments(parser)
    parser.add_argument("--model", required=True, help="Folder or Hub id of the unlearned model (and tokenizer).")
    parser.add_argument("--original_model", default=None, help="Model before unlearning: report codes changed.")
    parser.add_argument("--benchmark", default="tofu", help="tofu | tofu-legacy | nll (answer NLL, fast).")
    parser.add_argument("--data", default=None, help="TOFU folder (default: the local copy, else the Hub).")
    parser.add_argument("--forget_split", default="forget10", help="TOFU forget split (forget01/05/10).")
    parser.add_argument("--max_examples", type=int, default=None, help="Evaluate only the first N rows per set.")
    parser.add_argument(
        "--relearn_data", default=None, help="JSON Lines of QA or text rows to relearn on (default: the forget split)."
    )
    parser.add_argument("--relearn_steps", type=int, nargs="*", default=[10, 20, 40], help="Relearning budgets.")
    parser.add_argument("--relearn_lr", type=float, default=1e-5, help="Relearning AdamW learning rate.")
    parser.add_argument("--relearn_batch_size", type=int, default=4, help="Relearning batch size.")
    parser.add_argument("--relearn_num_examples", type=int, default=None, help="Forget examples to relearn on.")
    parser.add_argument("--relearn_seed", type=int, default=0, help="Seed of the subset and batch order.")
    parser.add_argument("--quantization", nargs="*", default=["fp4"], help="fp4 nf4 int8 rtn2..rtn8.")
    parser.add_argument("--output_dir", default="outputs/attack", help="Where robustness.json goes.")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu).")


def _eval_fn(args, data_dir):
    if args.benchmark != "nll":
        from hf_unlearn.robustness import benchmark_eval_fn

        settings = {"forget_split": args.forget_split, "data_dir": data_dir, "max_examples": args.max_examples}
        settings["qa_format"] = QAFormat.from_args(args)
        return benchmark_eval_fn(args.benchmark, **settings)

    from hf_unlearn.analysis import mean_answer_loss
    from hf_unlearn.analysis_cli import load_split
    from hf_unlearn.benchmarks.tofu_data import tofu_split_names
    from hf_unlearn.data import DataCollatorForUnlearning

    names = tofu_split_names(args.forget_split)
    cache = {}

    def eval_fn(model, tokenizer):
        if not cache:
            cache["collator"] = DataCollatorForUnlearning(tokenizer)
            for role in ("forget", "retain"):
                split = load_split(data_dir, names[role], tokenizer, args.max_examples, QAFormat.from_args(args))
                cache[role] = (names[role], split)
        return {
            f"nll/{name}": mean_answer_loss(model, dataset, cache["collator"])
            for name, dataset in (cache["forget"], cache["retain"])
        }

    return eval_fn


def main(args):
    import torch
    from datasets import load_dataset

    from hf_unlearn.benchmarks.tofu_data import default_tofu_dir, load_tofu
    from hf_unlearn.robustness import RESULTS_FORMAT, RobustnessConfig, robustness_checks
    from hf_unlearn.tiny import load_model_and_tokenizer

    config = RobustnessConfig(
        relearn_steps=args.relearn_steps,
        relearn_lr=args.relearn_lr,
        relearn_batch_size=args.relearn_batch_size,
        relearn_num_examples=args.relearn_num_examples,
        relearn_seed=args.relearn_seed,
        quantization=args.quantization,
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    data_dir = args.data or default_tofu_dir()
    model, tokenizer = load_model_and_tokenizer(args.model)
    model.to(device).eval()
    original = load_model_and_tokenizer(args.original_model)[0].to(device) if args.original_model else None
    if not config.relearn_steps:
        relearn_rows = None
    elif args.relearn_data:
        relearn_rows = load_dataset("json", data_files=args.relearn_data, split="train")
    else:
        relearn_rows = load_tofu(args.forget_split, data_dir)
    qa_format = QAFormat.from_args(args)
    results = robustness_checks(model, tokenizer, _eval_fn(args, data_dir), relearn_rows, config, original, qa_format)
    document = {
        "format": RESULTS_FORMAT,
        "model": args.model,
        "config": asdict(config),
        "qa_format": qa_format.describe(tokenizer),
        "runs": [{"trigger": "post_hoc", "global_step": None, **results}],
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "relearn"}, indent=2))
    print(f"Wrote {out / 'robustness.json'}")
