"""`RobustnessCallback`: the relearning and quantization checks of :mod:`hf_unlearn.attacks.robustness`, run by a
Trainer at train end (and optionally after each evaluation)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from hf_unlearn.attacks.robustness import (
    RESULTS_FORMAT,
    EvalFn,
    RobustnessConfig,
    benchmark_eval_fn,
    flat_logs,
    robustness_checks,
)
from hf_unlearn.benchmarks.sharding import process_info
from hf_unlearn.distributed import gathered_copy, is_zero3
from hf_unlearn.io import atomic_write_text


class RobustnessCallback(TrainerCallback):
    """Relearning and quantization attacks on the model being trained, at train end (and optionally at evaluation).

    Args:
        config: what to run (:class:`RobustnessConfig`).
        eval_fn: ``eval_fn(model, tokenizer) -> {metric: value}``; or give `benchmark` instead.
        benchmark: a benchmark name (built with `benchmark_settings`) or ``Benchmark`` instance to evaluate with.
        relearn_data: forget data for relearning (anything ``relearn`` accepts); default: the ``forget`` side
            of the trainer's ``ForgetRetainDataset``.
        tokenizer: default: the trainer's ``processing_class``.
        original_model: the model before unlearning, to report the fraction of quantization codes unlearning
            changed.
        qa_format: the QA format (:class:`hf_unlearn.data.QAFormat`) of relearning rows and of the benchmark
            (when `benchmark` is a name); the format the model was fine-tuned in.
        answers_fn: ``answers_fn(model) -> list[str]``: sample answers of the unlearned and the relearned model
            (:class:`hf_unlearn.answers.SampleAnswers`), kept in each run's ``answers`` / ``relearned_answers``.
    """

    def __init__(
        self,
        config: RobustnessConfig | None = None,
        eval_fn: EvalFn | None = None,
        benchmark=None,
        benchmark_settings: dict[str, Any] | None = None,
        relearn_data=None,
        tokenizer=None,
        original_model=None,
        qa_format=None,
        answers_fn=None,
    ):
        if eval_fn is None and benchmark is None:
            raise ValueError("RobustnessCallback needs eval_fn=... or benchmark=... (e.g. 'tofu') to measure with.")
        self.config = config or RobustnessConfig()
        settings = {**({"qa_format": qa_format} if qa_format is not None else {}), **(benchmark_settings or {})}
        self.eval_fn = eval_fn or benchmark_eval_fn(benchmark, **settings)
        self.qa_format, self.answers_fn = qa_format, answers_fn
        self.relearn_data, self.tokenizer, self.original_model = relearn_data, tokenizer, original_model
        self.runs: list[dict[str, Any]] = []

    def _resolve_data(self, train_dataloader) -> None:
        if self.relearn_data is not None or not self.config.relearn_steps:
            return
        dataset = getattr(train_dataloader, "dataset", None)
        forget = getattr(dataset, "forget", None)
        if forget is None or len(forget) == 0:
            raise ValueError(
                "RobustnessCallback: no forget data available for relearning; pass relearn_data=... or train on "
                "a ForgetRetainDataset (or set relearn_steps=[] to skip relearning)."
            )
        self.relearn_data = forget

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self._resolve_data(train_dataloader)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if self.config.at_eval:
            self._run("evaluate", args, state, model, **kwargs)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._run("train_end", args, state, model, **kwargs)

    def _run(self, trigger, args, state, model, processing_class=None, train_dataloader=None, **_):
        if model is None:
            raise ValueError("RobustnessCallback was called without the model.")
        tokenizer = self.tokenizer or processing_class
        if tokenizer is None:
            raise ValueError(
                "RobustnessCallback needs a tokenizer: pass tokenizer=... or processing_class to the Trainer."
            )
        self._resolve_data(train_dataloader)
        target = gathered_copy(model) if is_zero3(model) else model
        results = robustness_checks(
            target,
            tokenizer,
            self.eval_fn,
            self.relearn_data,
            self.config,
            self.original_model,
            self.qa_format,
            answers_fn=self.answers_fn,
        )
        results["zero3_gathered"] = target is not model
        record = {"trigger": trigger, "global_step": state.global_step, **results}
        self.runs.append(record)
        state.log_history.append({**flat_logs(results), "step": state.global_step})
        rank, world_size = process_info()
        if rank == 0 and self.config.results_file:
            path = Path(args.output_dir) / self.config.results_file
            document = {"format": RESULTS_FORMAT, "config": asdict(self.config), "runs": self.runs}
            if self.qa_format is not None:
                document["qa_format"] = self.qa_format.describe(tokenizer)
            atomic_write_text(path, json.dumps(document, indent=2, default=str) + "\n")
        if world_size > 1:
            torch.distributed.barrier()  # no rank moves on (or exits) before the file is written
