"""`hf-unlearn finetune --model_name_or_path BASE --output_dir OUT [flags]`.

Fine-tunes the target and the retain model of an unlearning run with `trl.SFTTrainer` (see `hf_unlearn.finetune`).
The flags are the fields of `FinetuneArguments`, `trl.SFTConfig` and `trl.ModelConfig`, as in TRL's own scripts
(`hf_unlearn.finetune.parse_finetune_args` also reads `trl.TrlParser`'s `--config file.yaml`). Then unlearn from the
result:
`hf-unlearn run recipe.yaml --model_name_or_path OUT/target --retain_model_path OUT/retain --data_dir ...`.
"""

from __future__ import annotations

import json


def add_arguments(parser):
    from hf_unlearn.finetune import finetune_parser

    # What `ArgumentParser(parents=[...])` does, for a parser that already exists: every field becomes a flag here.
    parser._add_container_actions(finetune_parser(add_help=False))


def main(args) -> int:
    from hf_unlearn.finetune import finetune, parse_finetune_args

    script_args, config, model_args = parse_finetune_args(args=args)
    summary = finetune(script_args, config, model_args)
    if config.process_index == 0:
        print(json.dumps(summary, indent=2))
    return 0
