"""A parsed recipe, run: data -> trainer -> train -> save -> evaluate -> attack -> report -> card -> push.

`run(recipe)` is what `hf-unlearn run`, `accelerate launch -m hf_unlearn.run` and the demo call. Everything that can
fail on a bad recipe has failed in `parse_recipe` before this module loads a weight; the model's own config checks
(an RMU layer outside the model, say) run here before the data is tokenised.
"""

from __future__ import annotations

import dataclasses

from hf_unlearn.benchmarks.sources import DataSource, source_from_recipe
from hf_unlearn.callbacks import ComputeAccountingCallback, ComputeBudgetCallback, RobustnessCallback
from hf_unlearn.loading import load_model_and_tokenizer
from hf_unlearn.recipes import Recipe
from hf_unlearn.report import AFTER, BEFORE, UnlearnReport
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
    # The run's one output is its UnlearnReport: the callback keeps its results in memory, not in a file of its own.
    checks = dataclasses.replace(recipe.robustness, results_file="")
    return RobustnessCallback(checks, benchmark=benchmark, original_model=original)


def new_report(recipe: Recipe, source: DataSource) -> UnlearnReport:
    script = recipe.script
    values = {**dataclasses.asdict(script), **dataclasses.asdict(recipe.robustness)}
    return UnlearnReport(
        method=script.method,
        optimizer=recipe.config.optimizer,
        base_model=script.model_name_or_path,
        benchmark=source.name,
        datasets=source.datasets(),
        hub_model_id=recipe.config.hub_model_id if recipe.config.push_to_hub else None,
        command=recipe.command(),
        recipe={k: v for k, v in values.items() if v is not None},
    )


def run(recipe: Recipe, compute_budget: int | None = None) -> UnlearnReport:
    """Train the recipe's method, save the unlearned model, evaluate / attack it if the recipe asks, and write its
    report and model card into `output_dir` (then push, with `push_to_hub`).

    `compute_budget`: stop training once the model's forward + backward passes (per process, as the report's
    compute accounting counts them) reach it; `hf-unlearn sweep --compute_budget` uses it for compute-matched runs.
    """
    from transformers import AutoConfig

    script, config = recipe.script, recipe.config
    trainer_cls = get_method(script.method)
    # Checks that need only the model's config (the RMU layer) run before the data is tokenised; the trainer then
    # receives the loaded model and does not check it again.
    trainer_cls.check_model_config(AutoConfig.from_pretrained(script.model_name_or_path), config)
    source = source_from_recipe(script, config)
    prepare_source(source)
    report = new_report(recipe, source)
    model, tokenizer = load_model_and_tokenizer(script.model_name_or_path)
    dataset = train_dataset(source, trainer_cls, config, tokenizer)
    checks = robustness_callback(recipe, source, tokenizer) if script.robustness else None
    push, config.push_to_hub = config.push_to_hub, False  # pushed below, with the card and the report
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config(script),
        callbacks=[checks] if checks else [],
        model_config_checked=True,
    )
    accounting = ComputeAccountingCallback.for_trainer(trainer)
    if compute_budget is not None:
        trainer.add_callback(ComputeBudgetCallback(accounting, compute_budget))
    if script.evaluate_before_training and (script.evaluate or script.robustness):
        with report.timed("evaluate_before"):
            report.add_evaluation(BEFORE, source.evaluate(model.eval(), tokenizer, **evaluation_settings(config)))
    resume = config.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "latest"):
        resume = True  # the latest checkpoint in output_dir, as Trainer.train(resume_from_checkpoint=True) reads it
    with report.timed("train"):
        result = trainer.train(resume_from_checkpoint=resume)
    report.record_training(trainer, result)
    trainer.save_model(config.output_dir)
    if checks is not None:
        run = checks.runs[-1]
        report.add_evaluation(AFTER, run["unlearned"])
        report.add_attacks(run, global_step=run["global_step"])
        report.wall_time_s["attacks"] = run["runtime_s"]
    elif script.evaluate:
        unwrapped = trainer.accelerator.unwrap_model(trainer.model).eval()
        with report.timed("evaluate"):
            report.add_evaluation(AFTER, source.evaluate(unwrapped, tokenizer, **evaluation_settings(config)))
    if trainer.is_world_process_zero():
        from hf_unlearn.model_card import write_card

        tokenizer.save_pretrained(config.output_dir)
        report.save(config.output_dir)
        write_card(config.output_dir)
        if push:
            from hf_unlearn.hub import push_to_hub

            push_to_hub(
                config.output_dir, config.hub_model_id, private=config.hub_private_repo, token=config.hub_token
            )
    return report
