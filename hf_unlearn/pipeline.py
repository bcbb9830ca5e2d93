"""A parsed recipe, run: data -> trainer -> train -> save -> evaluate -> attack -> results.

`run(recipe)` is what `hf-unlearn run`, `accelerate launch -m hf_unlearn.run` and the demo call. Everything that can
fail on a bad recipe has failed in `parse_recipe` before this module loads a weight; the model's own config checks
(an RMU layer outside the model, say) run here before the data is tokenised.
"""

from __future__ import annotations

import json
from pathlib import Path

from hf_unlearn.benchmarks.sources import DataSource, source_from_recipe
from hf_unlearn.callbacks import RobustnessCallback
from hf_unlearn.loading import load_model_and_tokenizer
from hf_unlearn.recipes import Recipe
from hf_unlearn.trainers import get_method


def peft_config(script):
    """The LoRA config a recipe asks for (TRL's `use_peft` / `lora_*` names), or None for full fine-tuning."""
    if script.peft_rank <= 0:
        return None
    from transformers.utils import is_peft_available

    if not is_peft_available():
        raise ImportError("use_peft / lora_r need peft: pip install 'hf_unlearn[peft]'.")
    from peft import LoraConfig

    return LoraConfig(
        r=script.peft_rank, lora_alpha=script.lora_alpha, target_modules=script.lora_target_modules,
        task_type="CAUSAL_LM",
    )  # fmt: skip


def prepare_source(source: DataSource) -> None:
    """Write what the source writes (synthetic data) once, on the main process, before any process reads it."""
    from accelerate import PartialState

    state = PartialState()
    with state.main_process_first():
        if state.is_main_process:
            source.prepare()


def train_dataset(source: DataSource, trainer_cls, config, tokenizer):
    from hf_unlearn.data import ForgetRetainDataset

    retain = source.retain_dataset(tokenizer) if trainer_cls.uses_retain(config) else None
    return ForgetRetainDataset(source.forget_dataset(tokenizer), retain, seed=config.data_seed or config.seed)


def evaluation_settings(config) -> dict:
    return {"show_progress": not config.disable_tqdm}


def robustness_callback(recipe: Recipe, source: DataSource, tokenizer) -> RobustnessCallback:
    script, config = recipe.script, recipe.config
    original = None
    if script.report_codes_changed:
        original, _ = load_model_and_tokenizer(script.model_name_or_path)
    benchmark = source.benchmark(tokenizer, **evaluation_settings(config))
    return RobustnessCallback(recipe.robustness, benchmark=benchmark, original_model=original)


def run(recipe: Recipe) -> dict:
    """Train the recipe's method, save the unlearned model, and evaluate / attack it if the recipe asks."""
    from transformers import AutoConfig

    script, config = recipe.script, recipe.config
    trainer_cls = get_method(script.method)
    # Checks that need only the model's config (the RMU layer) run before the data is tokenised; the trainer then
    # receives the loaded model and checks it without building a skeleton again.
    trainer_cls.check_model_config(AutoConfig.from_pretrained(script.model_name_or_path), config)
    source = source_from_recipe(script, config)
    prepare_source(source)
    model, tokenizer = load_model_and_tokenizer(script.model_name_or_path)
    dataset = train_dataset(source, trainer_cls, config, tokenizer)
    callbacks = [robustness_callback(recipe, source, tokenizer)] if script.robustness else []
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config(script),
        callbacks=callbacks,
        model_config_checked=True,
    )
    resume = config.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "latest"):
        resume = True  # the latest checkpoint in output_dir, as Trainer.train(resume_from_checkpoint=True) reads it
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(config.output_dir)
    summary = {
        "method": script.method,
        "optimizer": config.optimizer,
        "data_source": script.data_source,
        "train": result.metrics,
    }
    if script.evaluate and not script.robustness:  # the robustness checks evaluate the model first
        unwrapped = trainer.accelerator.unwrap_model(trainer.model).eval()
        evaluation = source.evaluate(unwrapped, tokenizer, **evaluation_settings(config))
        if trainer.is_world_process_zero():
            evaluation.save(config.output_dir, model_name=config.output_dir)
        summary["eval"] = evaluation.metrics
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(config.output_dir)
        Path(config.output_dir, "run_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
