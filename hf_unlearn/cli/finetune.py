"""`hf-unlearn finetune --model_name_or_path BASE --output_dir OUT [flags]`.

Fine-tunes the target and the retain model of an unlearning run with `trl.SFTTrainer` (see `hf_unlearn.finetune`).
The flags are the fields of `FinetuneArguments`, `trl.SFTConfig` and `trl.ModelConfig`, as in TRL's own scripts, and
`--config file.yaml` gives their defaults (`trl.TrlParser`). Then unlearn from the result:
`hf-unlearn run recipe.yaml --model_name_or_path OUT/target --retain_model OUT/retain --data_dir ...`.
"""

from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument(
        "flags", nargs="*", help="FinetuneArguments / SFTConfig / ModelConfig flags; --help lists them."
    )


def main_argv(argv: list[str]) -> int:
    """The command with its raw arguments: TRL's parser reads them (and `--help`) itself."""
    from hf_unlearn.finetune import finetune, parse_finetune_args

    script_args, config, model_args = parse_finetune_args(argv)
    summary = finetune(script_args, config, model_args)
    if config.process_index == 0:
        print(json.dumps(summary, indent=2))
    return 0


def main(args) -> int:
    return main_argv(list(args.flags))
