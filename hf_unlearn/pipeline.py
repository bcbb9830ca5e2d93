"""A parsed recipe, run: data -> trainer -> train -> save -> evaluate -> attack -> report -> card -> push.

`run(recipe)` is what `hf-unlearn run`, `accelerate launch -m hf_unlearn.run` and the demo call. Everything that can
fail on a bad recipe has failed in `parse_recipe` before this module loads a weight; the model's own config checks
(an RMU layer outside the model, say) run here before the data is tokenised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from hf_unlearn.attacks.callback import RobustnessCallback
from hf_unlearn.benchmarks.sources import DataSource, source_from_recipe
from hf_unlearn.compute import ComputeAccountingCallback, ComputeBudgetCallback
from hf_unlearn.distributed import is_zero3
from hf_unlearn.loading import check_model_fits, disable_progress_bars, load_model_and_tokenizer, load_tokenizer
from hf_unlearn.recipes import Recipe
from hf_unlearn.report import UnlearnReport
from hf_unlearn.report_schema import AFTER, BEFORE
from hf_unlearn.resume import CheckpointRecordCallback, check_resume, restore, run_keys
from hf_unlearn.trainers import get_method
from hf_unlearn.trainers.callbacks import TrainingDiverged


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
    from hf_unlearn.distributed import process_state

    state = process_state()
    with state.main_process_first():
        if state.is_main_process:
            source.prepare()


def train_dataset(source: DataSource, trainer_cls, config, tokenizer):
    from hf_unlearn.data import ForgetRetainDataset

    retain = source.retain_dataset(tokenizer) if trainer_cls.uses_retain(config) else None
    return ForgetRetainDataset(source.forget_dataset(tokenizer), retain, seed=config.data_seed or config.seed)


def evaluation_settings(config) -> dict:
    return {"show_progress": not config.disable_tqdm}


def sample_answers(recipe: Recipe, source: DataSource):
    """The run's sample questions (none unless it evaluates or attacks QA data and asks for report_answers)."""
    from hf_unlearn.answers import SampleAnswers, sample_questions

    script = recipe.script
    wanted = script.report_answers if (script.evaluate or script.robustness) else 0
    return SampleAnswers(sample_questions(source, wanted))


def robustness_callback(recipe: Recipe, source: DataSource, tokenizer, answers_fn=None) -> RobustnessCallback:
    script, config = recipe.script, recipe.config
    original = None
    if script.report_codes_changed:
        original, _ = load_model_and_tokenizer(script.model_name_or_path)
    benchmark = source.benchmark(tokenizer, **evaluation_settings(config))
    # The run's one output is its UnlearnReport: the callback keeps its results in memory, not in a file of its own.
    checks = dataclasses.replace(recipe.robustness, results_file="")
    return RobustnessCallback(checks, benchmark=benchmark, original_model=original, answers_fn=answers_fn)


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


def remove_stale_report(output_dir: str) -> None:
    """With overwrite_output_dir: remove an earlier run's report, recipe, plots and card before this run trains, so
    that no file describing a model that is gone survives beside the new one (whether or not this run finishes)."""
    from hf_unlearn.model_card import CARD_FILE
    from hf_unlearn.report_schema import EVAL_PLOT, LOSS_PLOT, MARKDOWN_FILE, RECIPE_FILE, RELEARN_PLOT, REPORT_FILE

    for name in (REPORT_FILE, MARKDOWN_FILE, RECIPE_FILE, LOSS_PLOT, RELEARN_PLOT, EVAL_PLOT, CARD_FILE):
        (Path(output_dir) / name).unlink(missing_ok=True)


def check_causal_lm(model_config, path: str) -> None:
    """Unlearning trains a causal LM: any other architecture fails here, from its config, before weights load."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(model_config) not in MODEL_FOR_CAUSAL_LM_MAPPING and not getattr(model_config, "auto_map", None):
        raise ValueError(
            f"model_name_or_path {path} is a {model_config.model_type} model without a causal-LM head in "
            "transformers; unlearning needs a decoder (causal) language model such as Llama, Qwen or GPT-2."
        )


def prepare_tokenizer(script):
    """The model's tokenizer, with `pad_token` applied; a tokenizer without one fails here, before any weight loads."""
    tokenizer = load_tokenizer(script.model_name_or_path, trust_remote_code=script.trust_remote_code)
    if script.pad_token:
        token = tokenizer.eos_token if script.pad_token == "eos" else script.pad_token
        if token is None:
            raise ValueError(f"pad_token=eos but the tokenizer of {script.model_name_or_path} has no eos token.")
        if script.pad_token != "eos" and tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
            raise ValueError(f"pad_token={token!r} is not in the tokenizer's vocabulary; use pad_token: eos.")
        tokenizer.pad_token = token
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"The tokenizer of {script.model_name_or_path} has no pad token; set pad_token: eos in the recipe "
            "(or --pad_token eos) to pad with its eos token."
        )
    return tokenizer


def run(recipe: Recipe, compute_budget: int | None = None, on_trainer: Callable | None = None) -> UnlearnReport:
    """Train the recipe's method, save the unlearned model, evaluate / attack it if the recipe asks, and write its
    report and model card into `output_dir` (then push, with `push_to_hub`).

    `compute_budget`: stop training once the model's forward + backward passes (per process, as the report's
    compute accounting counts them) reach it; `hf-unlearn sweep --compute_budget` uses it for compute-matched runs.
    `on_trainer(trainer)` is called once the trainer is built, before training (the commands swap Trainer's stdout
    log printers for stderr ones there: :func:`hf_unlearn.cli.logs.logs_to_stderr`).

    The main process holds `output_dir`'s lock (:mod:`hf_unlearn.lock`) from the first check to the last file: a
    second run into the same folder is refused, not mixed in.
    """
    import os

    from hf_unlearn.distributed import wait_for_every_rank
    from hf_unlearn.lock import output_lock

    main_process = int(os.environ.get("RANK", "0")) == 0  # the other ranks of this launch must not refuse themselves
    with output_lock(recipe.config.output_dir, main_process=main_process):
        report = _run(recipe, compute_budget, on_trainer)
    # Every rank returns once rank 0 has written the outputs and let go of the folder: a next run in this launch (a
    # sweep's next cell) then starts on all ranks together.
    wait_for_every_rank()
    return report


def _run(recipe: Recipe, compute_budget: int | None, on_trainer: Callable | None) -> UnlearnReport:
    from transformers import AutoConfig

    script, config = recipe.script, recipe.config
    # A resume that does not match its checkpoint (or has nothing to resume) fails before anything loads.
    resume, resume_record = check_resume(script, config)
    if config.disable_tqdm:
        disable_progress_bars()
    trainer_cls = get_method(script.method)
    # Checks that need only the model's config (the RMU layer) run before the data is tokenised; the trainer then
    # receives the loaded model and does not check it again.
    trust = {"trust_remote_code": script.trust_remote_code}
    model_config = AutoConfig.from_pretrained(script.model_name_or_path, **trust)
    check_causal_lm(model_config, script.model_name_or_path)
    trainer_cls.check_model_config(model_config, config)
    tokenizer = prepare_tokenizer(script)
    models = {
        "model_name_or_path": script.model_name_or_path,
        "ref_model_path": getattr(config, "ref_model_path", None),
        "retain_model": script.retain_model,
    }
    for name, path in models.items():  # each model the run loads, from its config: before any folder or weight
        if path:
            check_model_fits(path, name, tokenizer, script.max_length, script.trust_remote_code)
    source = source_from_recipe(script, config)
    prepare_source(source)
    report = new_report(recipe, source)
    model, _ = load_model_and_tokenizer(script.model_name_or_path, **trust)
    dataset = train_dataset(source, trainer_cls, config, tokenizer)
    samples = sample_answers(recipe, source)
    qa_format = getattr(getattr(source, "settings", None), "qa_format", None)
    answers_fn = (lambda m: samples.generate(m, tokenizer, qa_format)) if samples.questions else None
    checks = robustness_callback(recipe, source, tokenizer, answers_fn) if script.robustness else None
    # eval_strategy evaluates with the recipe's own benchmark during training (what metric_for_best_model reads).
    in_run = source.benchmark(tokenizer, **evaluation_settings(config)) if config.eval_strategy != "no" else None
    push, config.push_to_hub = config.push_to_hub, False  # pushed below, with the card and the report
    # The token is used for the push below and never reaches training_args.bin, the report or the card.
    token, config.hub_token = config.hub_token, None
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=dataset,
        eval_dataset=in_run,
        processing_class=tokenizer,
        peft_config=peft_config(script),
        callbacks=[checks] if checks else [],
        model_config_checked=True,
        trust_remote_code=script.trust_remote_code,
    )
    accounting = ComputeAccountingCallback.for_trainer(trainer)
    trainer.add_callback(CheckpointRecordCallback(trainer, run_keys(script, config), accounting))
    restore(trainer, resume_record, accounting)
    if compute_budget is not None:
        trainer.add_callback(ComputeBudgetCallback(accounting, compute_budget))
    if on_trainer is not None:
        on_trainer(trainer)
    if script.evaluate_before_training and (script.evaluate or script.robustness):
        with report.timed("evaluate_before"):
            report.add_evaluation(BEFORE, source.evaluate(model.eval(), tokenizer, **evaluation_settings(config)))
    if answers_fn is not None and not is_zero3(model):  # under ZeRO-3 the RobustnessCallback gathers the model
        samples.answers["before unlearning"] = answers_fn(model)
    if config.overwrite_output_dir and not resume and trainer.is_world_process_zero():
        remove_stale_report(config.output_dir)
    try:
        with report.timed("train"):
            result = trainer.train(resume_from_checkpoint=resume)
    except TrainingDiverged as stop:
        # Nothing of the diverged model is saved: the checkpoints written before this step are the last good ones.
        report.record_training(trainer)
        report.stopped = stop.record
        if trainer.is_world_process_zero():
            report.save(config.output_dir)
        raise
    report.record_training(trainer, result)
    trainer.save_model(config.output_dir)
    if checks is not None:
        run = checks.runs[-1]
        samples.answers["after unlearning"] = run.get("answers")
        if run.get("relearned_answers") is not None:
            samples.answers[f"relearned ({max(recipe.robustness.relearn_steps)} steps)"] = run["relearned_answers"]
        report.add_evaluation(AFTER, run["unlearned"])
        report.add_attacks(run, global_step=run["global_step"])
        report.wall_time_s["attacks"] = run["runtime_s"]
    elif script.evaluate:
        unwrapped = trainer.accelerator.unwrap_model(trainer.model).eval()
        with report.timed("evaluate"):
            report.add_evaluation(AFTER, source.evaluate(unwrapped, tokenizer, **evaluation_settings(config)))
        if answers_fn is not None and not is_zero3(unwrapped):
            samples.answers["after unlearning"] = answers_fn(unwrapped)
    report.answers = samples.to_records()
    if trainer.is_world_process_zero():
        from hf_unlearn.model_card import write_card

        tokenizer.save_pretrained(config.output_dir)
        report.save(config.output_dir)
        write_card(config.output_dir)
        if push:
            from hf_unlearn.hub import push_to_hub

            push_to_hub(config.output_dir, config.hub_model_id, private=config.hub_private_repo, token=token)
    return report
