"""Flags that mean the same thing in every command, declared once."""

from __future__ import annotations

from hf_unlearn.data import DEFAULT_QA_TEMPLATE


def add_model(parser, required: bool = True, help_text: str = "Model folder or Hub id (with its tokenizer).") -> None:
    parser.add_argument("--model", required=required, help=help_text)


def add_data_dir(
    parser, help_text: str = "Local data folder (TOFU/MUSE JSON Lines, WMDP JSON); unset: the Hub."
) -> None:
    # --data was this flag's name in attack and lmc; it stays accepted.
    parser.add_argument("--data_dir", "--data", dest="data_dir", default=None, help=help_text)


def add_retain_model(parser) -> None:
    parser.add_argument(
        "--retain_model", default=None, help="TOFU/MUSE: model trained without the forget set (forget quality)."
    )


def add_qa_format(parser) -> None:
    """``--qa_template``, ``--system_prompt``, ``--no_chat_template``: the same flags on every command."""
    group = parser.add_argument_group("QA format (must match how the model was fine-tuned)")
    group.add_argument(
        "--qa_template",
        default=None,
        help="Plain prompt template with {question}; the answer follows it directly; a typed \\n is a newline. "
        f"Default: the tokenizer's chat template, else {DEFAULT_QA_TEMPLATE!r} (TOFU's format).",
    )
    group.add_argument("--system_prompt", default=None, help="System prompt the model was fine-tuned with.")
    group.add_argument(
        "--no_chat_template", action="store_true", help="Ignore the tokenizer's chat template (use a plain template)."
    )


def add_device(parser) -> None:
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: this rank's device).")


def add_output_dir(parser, default: str | None, help_text: str) -> None:
    parser.add_argument("--output_dir", default=default, help=help_text)


def add_overwrite(parser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Write into an output folder that already holds files (refused otherwise).",
    )


def check_output(args, protected: dict[str, str | None], inside_ok: tuple[str, ...] = (), flag: str = "--output_dir"):
    """The command's output folder, checked before any weight loads (see `hf_unlearn.io.check_output_dir`)."""
    from hf_unlearn.io import check_output_dir

    return check_output_dir(
        args.output_dir, flag=flag, overwrite=args.overwrite, overwrite_flag="--overwrite", protected=protected,
        inside_ok=inside_ok,
    )  # fmt: skip
