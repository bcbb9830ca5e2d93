"""Run a recipe: `hf-unlearn run recipe.yaml [--flag value ...]`, or on every rank
`accelerate launch [--config_file ...] -m hf_unlearn.run recipe.yaml [--flag value ...]`.

Everything that can fail on a bad recipe (unknown keys, bad values, an optimizer that cannot run with the chosen
precision, a method that needs data the benchmark lacks, an RMU layer outside the model) fails before any weight
is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from hf_unlearn.benchmarks.synthetic import write_synthetic_tofu
from hf_unlearn.benchmarks.tofu_data import load_tofu, tofu_split_names
from hf_unlearn.data import ForgetRetainDataset, QADataset, QAFormat, TextBlockDataset, read_texts
from hf_unlearn.recipes import ScriptArguments, parse_recipe
from hf_unlearn.trainers import get_method


def add_arguments(parser):
    parser.add_argument("recipe", nargs="?", help="Recipe YAML (see recipes/); flags after it override its keys.")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="--key value pairs overriding the recipe.")


def resolve_data_dir(script_args: ScriptArguments, config) -> str | None:
    if script_args.benchmark != "synthetic":
        return script_args.data_dir
    from accelerate import PartialState

    folder = Path(script_args.data_dir or Path(config.output_dir) / "data")
    with PartialState().main_process_first():  # one process writes, the others read what it wrote
        if PartialState().is_main_process:
            write_synthetic_tofu(folder, num_authors=script_args.synthetic_num_authors, seed=config.seed)
    return str(folder)


def text_dataset(script_args: ScriptArguments, config, trainer_cls, tokenizer) -> ForgetRetainDataset:
    """Raw-text corpora (MUSE, WMDP) cut into `max_length`-token blocks."""

    def blocks(path):
        texts = read_texts(path, script_args.text_field)
        return TextBlockDataset(texts, tokenizer, block_size=script_args.max_length, source=path)

    retain = None
    if trainer_cls.uses_retain(config):
        if not script_args.retain_file:
            raise ValueError(f"{script_args.method} with alpha={config.alpha} needs retain_file (or set alpha=0).")
        retain = blocks(script_args.retain_file)
    return ForgetRetainDataset(blocks(script_args.forget_file), retain, seed=config.data_seed or config.seed)


def build_train_dataset(
    script_args: ScriptArguments, config, trainer_cls, tokenizer, data_dir: str | None
) -> ForgetRetainDataset:
    if script_args.benchmark == "text":
        return text_dataset(script_args, config, trainer_cls, tokenizer)
    names = tofu_split_names(script_args.forget_split)
    retain_split = script_args.retain_split or names["retain"]

    def qa(split):
        source = f"{data_dir or 'locuslab/TOFU'}:{split}"
        return QADataset(
            load_tofu(split, data_dir), tokenizer, max_length=script_args.max_length,
            qa_format=QAFormat.from_args(script_args), source=source,
        )  # fmt: skip

    retain = qa(retain_split) if trainer_cls.uses_retain(config) else None
    return ForgetRetainDataset(qa(script_args.forget_split), retain, seed=config.data_seed or config.seed)


def peft_config(script_args: ScriptArguments):
    if script_args.lora_r <= 0:
        return None
    from transformers.utils import is_peft_available

    if not is_peft_available():
        raise ImportError("lora_r > 0 needs peft: pip install 'hf_unlearn[peft]'.")
    from peft import LoraConfig

    return LoraConfig(
        r=script_args.lora_r, lora_alpha=script_args.lora_alpha, target_modules=script_args.lora_target_modules,
        task_type="CAUSAL_LM",
    )  # fmt: skip


def tofu_settings(script_args: ScriptArguments, data_dir: str | None, show_progress: bool = True) -> dict:
    """How the TOFU evaluator reads this run's data, so evaluation and training see the same splits."""
    return {
        "show_progress": show_progress,
        "forget_split": script_args.forget_split,
        "data_dir": data_dir,
        "qa_format": QAFormat.from_args(script_args),
        "max_length": script_args.max_length,
        "max_new_tokens": script_args.eval_max_new_tokens,
        "retain_model": script_args.retain_model_path,
    }


def callbacks_for(script_args: ScriptArguments, config, data_dir: str | None, robustness) -> list:
    """The robustness checks, if the recipe asks for them (a hybrid run's schedule is the trainer's own)."""
    from hf_unlearn.robustness import RobustnessCallback

    callbacks = []
    if script_args.robustness:
        original = None
        if script_args.report_codes_changed:
            from transformers import AutoModelForCausalLM

            original = AutoModelForCausalLM.from_pretrained(script_args.model_name_or_path)
        settings = tofu_settings(script_args, data_dir, show_progress=not config.disable_tqdm)
        callbacks.append(
            RobustnessCallback(
                robustness,
                benchmark="tofu",
                benchmark_settings=settings,
                original_model=original,
                qa_format=settings["qa_format"],
            )  # fmt: skip
        )
    return callbacks


def run(script_args: ScriptArguments, config, robustness) -> dict:
    """Train the recipe's method, save the unlearned model, and evaluate / attack it if the recipe asks."""
    trainer_cls = get_method(script_args.method)
    # Checks that need only the model's config (e.g. the RMU layer) run before the data is tokenised.
    trainer_cls.check_model_config(AutoConfig.from_pretrained(script_args.model_name_or_path), config)
    tokenizer = AutoTokenizer.from_pretrained(script_args.model_name_or_path)
    data_dir = resolve_data_dir(script_args, config)
    train_dataset = build_train_dataset(script_args, config, trainer_cls, tokenizer, data_dir)
    trainer = trainer_cls(
        model=script_args.model_name_or_path,
        args=config,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(script_args),
        callbacks=callbacks_for(script_args, config, data_dir, robustness),
    )
    result = trainer.train()
    trainer.save_model(config.output_dir)
    summary = {"method": script_args.method, "optimizer": config.optimizer, "train": result.metrics}
    if script_args.evaluate and not script_args.robustness:  # the robustness checks evaluate the model first
        from hf_unlearn.evaluation import evaluate_model

        unwrapped = trainer.accelerator.unwrap_model(trainer.model).eval()
        settings = tofu_settings(script_args, data_dir, show_progress=not config.disable_tqdm)
        evaluation = evaluate_model(unwrapped, tokenizer, "tofu", config.output_dir, **settings)
        summary["eval"] = evaluation.metrics
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(config.output_dir)
        Path(config.output_dir, "run_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(args) -> int:
    script_args, config, robustness = parse_recipe(args.recipe, args.overrides)
    summary = run(script_args, config, robustness)
    if config.process_index == 0:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m hf_unlearn.run", description=__doc__)
    add_arguments(cli)
    sys.exit(main(cli.parse_args()))
