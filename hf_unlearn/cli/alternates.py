"""`hf-unlearn alternates --model M --data_dir D --forget_split S --output FILE`: AltPO's alternate answers.

The model rewrites each forget answer with other facts, prompted in the QA format training will use; the rows
(question, answer, alternate) are written as JSON Lines in one atomic write, which an `altpo` recipe names in
`alternates_file`.
"""

from __future__ import annotations

from pathlib import Path

from hf_unlearn.alternates import DEFAULT_INSTRUCTION, alternates_jsonl, check_instruction, generate_alternates
from hf_unlearn.cli import common
from hf_unlearn.data import QAFormat, unescape_newlines
from hf_unlearn.loading import check_model_path, load_model_and_tokenizer


def add_arguments(parser):
    common.add_model(parser, help_text="The model to unlearn (with its tokenizer): it writes its own alternates.")
    common.add_data_dir(parser, "Local TOFU folder (<split>.json JSON Lines); unset: the Hub (locuslab/TOFU).")
    parser.add_argument("--forget_split", default="forget10", help="TOFU forget split: forget01, forget05, forget10.")
    parser.add_argument("--output", required=True, help="JSON Lines file to write (refused if it exists).")
    common.add_overwrite(parser)
    common.add_qa_format(parser)
    parser.add_argument("--max_new_tokens", type=int, default=128, help="Longest alternate, in tokens.")
    parser.add_argument("--batch_size", type=int, default=8, help="Prompts per generate call.")
    parser.add_argument("--do_sample", action="store_true", help="Sample (with --temperature) instead of greedy.")
    parser.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (with --do_sample).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampling (same seed, same file).")
    parser.add_argument(
        "--instruction",
        default=DEFAULT_INSTRUCTION,
        help="The question put to the model, with {question} and {answer}; a typed \\n is a newline.",
    )
    common.add_device(parser)


def check_output_file(path: str, overwrite: bool, protected: dict[str, str | None]) -> Path:
    """The output file: not a folder, not an existing file unless --overwrite, not inside the model or data folder."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise IsADirectoryError(f"--output {path} is a folder; give a file name, e.g. {out / 'alternates.jsonl'}.")
    if out.exists() and not overwrite:
        raise FileExistsError(f"--output {path} already exists; choose a new file, or pass --overwrite.")
    for name, folder in protected.items():
        if (
            folder
            and Path(folder).expanduser().is_dir()
            and Path(folder).expanduser().resolve() in out.resolve().parents
        ):
            raise ValueError(f"--output {path} is inside the {name} folder {folder}; write it elsewhere.")
    return out


def main(args):
    from hf_unlearn.benchmarks.tofu_data import load_tofu
    from hf_unlearn.io import atomic_write_text

    instruction = unescape_newlines(args.instruction)
    check_instruction(instruction)
    for name in ("max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}.")
    if args.do_sample and not args.temperature > 0:
        raise ValueError(f"--temperature must be > 0 with --do_sample, got {args.temperature}.")
    if not args.forget_split.startswith("forget"):
        raise ValueError(f"--forget_split {args.forget_split!r} is not a forget split; use forget01/05/10.")
    check_model_path(args.model, "--model")
    out = check_output_file(args.output, args.overwrite, {"model": args.model, "data": args.data_dir})
    rows = list(load_tofu(args.forget_split, args.data_dir))  # the data is checked before the weights load
    model, tokenizer = load_model_and_tokenizer(args.model, device=args.device)
    if tokenizer.pad_token_id is None:  # left padding under the attention mask: the pad id is never attended to
        tokenizer.pad_token = tokenizer.eos_token
    generated = generate_alternates(
        model, tokenizer, rows, QAFormat.from_args(args), instruction=instruction,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, do_sample=args.do_sample,
        temperature=args.temperature, seed=args.seed,
    )  # fmt: skip
    atomic_write_text(out, alternates_jsonl(generated))
    print(f"Wrote {len(generated)} alternates for {args.forget_split} to {out}")
