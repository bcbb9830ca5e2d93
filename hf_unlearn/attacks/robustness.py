"""Robustness checks of an unlearned model: metrics before and after relearning and weight quantization.

:func:`robustness_checks` is the plain function (also behind ``hf-unlearn attack``);
:class:`hf_unlearn.attacks.callback.RobustnessCallback` runs it at the end of training (and optionally after each
evaluation) and records the results in ``state.log_history`` (and, standalone, in ``<output_dir>/robustness.json``;
recipe runs put them in their ``UnlearnReport``). The weights the user keeps are verified bit for bit afterwards:
relearning trains a copy, quantization swaps weights in place and restores them.

Multi-process runs: every rank runs the checks (relearning is seeded identically, so each rank's copy is the
same) and the benchmark evaluator shards its examples across ranks and gathers them; rank 0 writes the file.
Under ZeRO-3 each weight is partitioned across ranks: the checks gather the weights into a plain full copy on every
rank and attack that copy (memory: one full model per rank, on the training device).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from hf_unlearn.attacks.quantize import codes_changed_fraction, parse_kind, quantized_weights
from hf_unlearn.attacks.relearn import EvalFn, evaluate_with, relearn
from hf_unlearn.errors import UserInputError


RESULTS_FORMAT = "hf_unlearn.robustness/v1"


@dataclass
class RobustnessConfig:
    """What the robustness checks run (an empty list switches a check off)."""

    relearn_steps: list[int] = field(
        default_factory=lambda: [10, 20, 40], metadata={"help": "Relearning budgets (steps) evaluated in one run."}
    )
    relearn_lr: float = field(default=1e-5, metadata={"help": "AdamW learning rate of the relearning attack."})
    relearn_batch_size: int = field(default=4, metadata={"help": "Relearning batch size."})
    relearn_num_examples: int | None = field(
        default=None, metadata={"help": "Forget examples to relearn on (seeded subset); None: all."}
    )
    relearn_scheduler: str = field(default="cosine", metadata={"help": "Learning-rate schedule of relearning."})
    relearn_seed: int = field(default=0, metadata={"help": "Seed of the relearning subset and batch order."})
    quantization: list[str] = field(
        default_factory=lambda: ["fp4"], metadata={"help": "Quantization attacks: fp4, nf4, int8, rtn2..rtn8."}
    )
    at_eval: bool = field(default=False, metadata={"help": "Also run the checks after every evaluation."})
    results_file: str = field(
        default="robustness.json",
        metadata={
            "help": "JSON file RobustnessCallback writes in output_dir (empty: none; recipe runs use the report)."
        },
    )
    verify_weights: bool = field(
        default=True, metadata={"help": "Hash the weights before and after; raise if the checks changed them."}
    )

    def __post_init__(self):
        for name in ("quantization", "relearn_steps"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)):  # a string would be read letter by letter
                raise UserInputError(f"{name} takes a list, got {value!r}; write {name}: [{value}].")
        if self.relearn_steps and not (math.isfinite(self.relearn_lr) and self.relearn_lr > 0):
            raise UserInputError(
                f"relearn_lr={self.relearn_lr} must be a finite number > 0 (at 0 relearning changes nothing); "
                "to skip the relearning attack, give no relearn_steps."
            )
        if self.relearn_batch_size < 1:
            raise UserInputError(f"relearn_batch_size={self.relearn_batch_size} must be >= 1.")
        for kind in self.quantization:
            parse_kind(kind)  # fails early, naming the accepted kinds
        if any(int(k) < 1 for k in self.relearn_steps):
            raise ValueError(f"relearn_steps must be positive step counts, got {self.relearn_steps}.")


def weights_fingerprint(model) -> str:
    """SHA-256 of every tensor in the state dict (names, dtypes and raw bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def benchmark_eval_fn(benchmark, **settings) -> EvalFn:
    """``eval_fn`` from a benchmark name (``"tofu"``, built with `settings`) or a ``Benchmark`` instance."""
    if isinstance(benchmark, str):
        from hf_unlearn import benchmarks

        benchmark = benchmarks.get(benchmark, **settings)
    return lambda model, tokenizer: benchmark.evaluate(model, tokenizer).metric_values()


def robustness_checks(
    model,
    tokenizer,
    eval_fn: EvalFn,
    relearn_data=None,
    config: RobustnessConfig | None = None,
    original_model=None,
    qa_format=None,
    answers_fn=None,
) -> dict[str, Any]:
    """Evaluate `model`, then after each relearning budget and each quantization kind; `model` is left as it was.

    Returns ``{"unlearned": metrics, "relearn": {config, curve, losses} | None,
    "quantization": {kind: {"metrics", "codes_changed_fraction"}}, "weights_sha256", "runtime_s"}``;
    ``codes_changed_fraction`` (vs `original_model`, the model before unlearning) is None without it. QA rows to
    relearn on are tokenised in `qa_format` (a :class:`hf_unlearn.data.QAFormat`). With `answers_fn` (model ->
    answers, see :mod:`hf_unlearn.answers`) the results also hold ``answers`` of the unlearned model and
    ``relearned_answers`` of the copy relearned for the largest budget.
    """
    config = config or RobustnessConfig()
    start = time.perf_counter()
    fingerprint = weights_fingerprint(model) if config.verify_weights else None
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):  # the checks must not shift the training run's random stream
        results: dict[str, Any] = {"unlearned": evaluate_with(model, tokenizer, eval_fn), "relearn": None}
        if answers_fn is not None:
            results["answers"] = answers_fn(model)
        if config.relearn_steps:
            run = relearn(
                model,
                relearn_data,
                tokenizer,
                lr=config.relearn_lr,
                batch_size=config.relearn_batch_size,
                scheduler=config.relearn_scheduler,
                num_examples=config.relearn_num_examples,
                seed=config.relearn_seed,
                eval_fn=eval_fn,
                eval_at=config.relearn_steps,
                qa_format=qa_format,
            )
            if answers_fn is not None:
                results["relearned_answers"] = answers_fn(run.model)
            del run.model  # free the relearned copy before quantizing
            results["relearn"] = run.to_dict()
        results["quantization"] = {}
        for kind in config.quantization:
            with quantized_weights(model, kind):
                metrics = evaluate_with(model, tokenizer, eval_fn)
            codes = codes_changed_fraction(original_model, model, kind)["fraction"] if original_model else None
            results["quantization"][kind] = {"metrics": metrics, "codes_changed_fraction": codes}
    if fingerprint is not None and weights_fingerprint(model) != fingerprint:
        raise RuntimeError("The robustness checks changed the model's weights; this is a bug in hf_unlearn.")
    results["weights_sha256"] = fingerprint
    results["runtime_s"] = time.perf_counter() - start
    return results


def flat_logs(results: dict[str, Any]) -> dict[str, float]:
    """``robustness/<stage>/<metric>`` -> value, for the Trainer's log history (non-numeric values left out)."""
    logs = {f"robustness/unlearned/{k}": v for k, v in results["unlearned"].items()}
    for point in (results["relearn"] or {}).get("curve", []):
        logs.update({f"robustness/relearn_{point['step']}/{k}": v for k, v in point["metrics"].items()})
    for kind, record in results["quantization"].items():
        logs.update({f"robustness/{kind}/{k}": v for k, v in record["metrics"].items()})
        if record["codes_changed_fraction"] is not None:
            logs[f"robustness/{kind}/codes_changed_fraction"] = record["codes_changed_fraction"]
    return {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
