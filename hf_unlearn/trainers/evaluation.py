"""`Trainer.evaluate` on a benchmark: the evaluation `eval_strategy` runs during training, and what
`metric_for_best_model` / `load_best_model_at_end` choose the kept checkpoint from.

An unlearning trainer's ``eval_dataset`` may be a :class:`~hf_unlearn.benchmarks.base.Benchmark` (TOFU, MUSE, WMDP,
...; ``DataSource.benchmark`` builds the recipe's own): ``evaluate`` then runs it on the model being trained and
returns its metrics under Trainer's prefix (``eval_forget_quality``, ``eval_model_utility``, ...), plus the value of
``metric_for_best_model`` when that is a combination (``eval_mean(forget_quality, model_utility)``). Trainer's own
machinery does the rest: when to evaluate, which evaluation is best, the checkpoint it keeps and reloads.

Every process evaluates (the benchmarks shard their examples and gather them, so every process gets the same
numbers and picks the same best step); under ZeRO-3 the evaluation runs on a gathered full copy, as the robustness
checks do. The training run's random stream is left as it was, so evaluating does not change the trained weights.
"""

from __future__ import annotations

import math
import time

import torch

from hf_unlearn.benchmarks.base import Benchmark
from hf_unlearn.benchmarks.selection import parse_selection
from hf_unlearn.modeling import eval_mode


class BenchmarkEvaluationMixin:
    """`evaluate` for an ``eval_dataset`` that is a `Benchmark` (other eval datasets go to Trainer's own)."""

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        target = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(target, str) and isinstance(self.eval_dataset, dict):
            target = self.eval_dataset[target]  # one entry of a dict of eval datasets, by name
        if not isinstance(target, Benchmark):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        start = time.perf_counter()
        values = self._benchmark_values(target)
        metrics = {f"{metric_key_prefix}_{k}": math.nan if v is None else float(v) for k, v in values.items()}
        selection = self.args.metric_for_best_model
        if selection is not None:
            parsed = parse_selection(selection)
            if not parsed.is_single_metric:
                key = (
                    selection if selection.startswith(f"{metric_key_prefix}_") else f"{metric_key_prefix}_{selection}"
                )
                metrics[key] = parsed(values)
        metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - start, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _benchmark_values(self, benchmark: Benchmark) -> dict[str, float | None]:
        from hf_unlearn.distributed import gathered_copy, is_zero3

        model = self.accelerator.unwrap_model(self.model)
        target = gathered_copy(model) if is_zero3(model) else model
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices), eval_mode(target, inference=False):
            return dict(benchmark.evaluate(target, self.processing_class).metrics)
