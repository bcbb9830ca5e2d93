"""Every Trainer callback of hf_unlearn: *when* things happen during a run (the work lives in plain modules).

- :class:`HybridScheduleCallback`: switches the hybrid optimizer between its FO and ZO phases.
- :class:`PairingEpochCallback`: re-pairs forget and retain examples each epoch on every process.
- :class:`RobustnessCallback`: relearning and quantization attacks at train end (``hf_unlearn.attacks``).
- :class:`ComputeAccountingCallback`: counts forward and backward passes per phase (FO / ZO) for the report.
- :class:`ComputeBudgetCallback`: stops training once those passes reach a budget (compute-matched sweeps).
- :class:`DivergenceGuardCallback`: stops training before a step with a non-finite (or runaway) loss or gradient
  updates the weights.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState, PrinterCallback, ProgressCallback

from hf_unlearn.attacks.robustness import (
    RESULTS_FORMAT,
    EvalFn,
    RobustnessConfig,
    benchmark_eval_fn,
    flat_logs,
    gathered_copy,
    is_zero3,
    rank_and_world,
    robustness_checks,
)
from hf_unlearn.io import atomic_write_text
from hf_unlearn.optim.args import check_hybrid_max_steps
from hf_unlearn.optim.hybrid import HybridOptimizer, unwrap_optimizer, zo_optimizer_of


class HybridScheduleCallback(TrainerCallback, ExportableState):
    """Alternates the ``hybrid`` optimizer between ``fo_steps`` first-order and ``zo_steps`` zeroth-order steps.

    Phases start with FO and the run must end with a complete ZO phase: ``max_steps`` must be a multiple of
    ``fo_steps + zo_steps`` (the config checks it when ``max_steps`` is set; ``on_train_begin`` checks the number of
    steps the Trainer derived from epochs with the same rule; it is never silently adjusted). The phase
    of a step is a function of the global step alone, so a run resumed mid-phase continues the schedule exactly; the
    callback's settings travel in checkpoints (``ExportableState``). Each training log gets ``optim/phase`` (0 = FO,
    1 = ZO, the phase of the step just finished) and, after ZO steps, ``zo/projected_grad`` in place of ``grad_norm``.
    """

    def __init__(self, fo_steps: int = 20, zo_steps: int = 20):
        self.fo_steps = fo_steps
        self.zo_steps = zo_steps
        self.phase = "fo"

    @classmethod
    def from_args(cls, args) -> HybridScheduleCallback:
        """Built from the config's resolved schedule (``hybrid_fo_steps`` / ``hybrid_zo_steps``, validated there)."""
        return cls(*args.hybrid_schedule)

    @property
    def period(self) -> int:
        return self.fo_steps + self.zo_steps

    def phase_at(self, step: int) -> str:
        """Phase of the 0-based optimizer step ``step``."""
        return "fo" if step % self.period < self.fo_steps else "zo"

    def _hybrid(self, optimizer) -> HybridOptimizer:
        inner = unwrap_optimizer(optimizer)
        if not isinstance(inner, HybridOptimizer):
            raise ValueError(
                f"HybridScheduleCallback needs optimizer='hybrid', got {type(inner).__name__}; set optimizer=hybrid "
                "or drop the callback"
            )
        return inner

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self._hybrid(optimizer)
        check_hybrid_max_steps(state.max_steps, self.fo_steps, self.zo_steps)

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.phase = self.phase_at(state.global_step)
        self._hybrid(optimizer).phase = self.phase

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        extra = {"optim/phase": 0.0 if self.phase == "fo" else 1.0}
        zo = self._hybrid(optimizer).zo
        if self.phase == "zo" and zo.last_projected_grad is not None:
            extra["zo/projected_grad"] = zo.last_projected_grad
        logs.update(extra)
        # A ZO step has no gradients: the norm Trainer reports for it is a meaningless 0.
        stale = ["grad_norm"] if self.phase == "zo" else []
        for key in stale:
            logs.pop(key, None)
        # Trainer.log stored a copy of `logs` in log_history before calling on_log: keep the two consistent.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)
            for key in stale:
                state.log_history[-1].pop(key, None)

    def state(self) -> dict:
        return {
            "args": {"fo_steps": self.fo_steps, "zo_steps": self.zo_steps},
            "attributes": {"phase": self.phase},
        }


class PairingEpochCallback(TrainerCallback):
    """Re-pair forget and retain examples at each epoch on every process.

    accelerate forwards `set_epoch` to the dataset only when its sampler has none, which is not the case under
    DDP: without this callback a multi-process run would keep epoch 0's pairing while a single process reshuffles.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is fractional after a mid-epoch resume; the small offset absorbs float error at boundaries.
        self.dataset.set_epoch(math.floor(state.epoch + 1e-9))


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
        rank, world_size = rank_and_world()
        if rank == 0 and self.config.results_file:
            path = Path(args.output_dir) / self.config.results_file
            document = {"format": RESULTS_FORMAT, "config": asdict(self.config), "runs": self.runs}
            if self.qa_format is not None:
                document["qa_format"] = self.qa_format.describe(tokenizer)
            atomic_write_text(path, json.dumps(document, indent=2, default=str) + "\n")
        if world_size > 1:
            torch.distributed.barrier()  # no rank moves on (or exits) before the file is written


COUNTED = ("steps", "micro_batches", "forwards", "reference_forwards", "backwards")


class ComputeAccountingCallback(TrainerCallback):
    """Counts the forward and backward passes each optimizer step really ran, by phase (``fo`` or ``zo``).

    The counts come from hooks on the modules, not from formulas:

    - a forward is one call of the trained model that starts inside an optimizer step (a forward pre-hook on it);
      ``reference_forwards`` are the calls of ``reference_model`` (NPO's or RMU's frozen model), counted apart;
    - a backward is one trained-model forward whose graph a gradient flowed back through (a tensor hook on the
      output of the first module with trainable weights the forward runs), so a ``loss.backward()`` through a
      forget and a retain forward counts two backwards, as it costs two.

    Calls outside optimizer steps (evaluation, logging, the robustness checks) are not counted. A step's phase is
    the optimizer's at the step's end: ``zo`` when it is zeroth order (``adazo``, ``zo_*``, ``hybrid`` in its ZO
    phase), else ``fo``. Counts are per process (in data-parallel runs every process runs the same number of passes
    on its own batches). Under peft the reference is the trained model with its adapter disabled, so its forwards
    count as model forwards; under gradient checkpointing the layers recomputed during backward are not counted.
    """

    def __init__(self, reference_model=None):
        self.reference_model = reference_model
        self.totals = {phase: dict.fromkeys(COUNTED, 0) for phase in ("fo", "zo")}
        self.history: list[dict] = []  # one record per optimizer step: phase and its counts
        self._handles: list = []
        self._step: dict | None = None
        self._depth = {"model": 0, "reference": 0}
        self._forward_id = 0
        self._output_hooked = False
        self._backwarded: set[int] = set()

    @classmethod
    def for_trainer(cls, trainer) -> ComputeAccountingCallback:
        """A callback that also counts `trainer.ref_model`'s forwards, added to `trainer`."""
        callback = cls(reference_model=getattr(trainer, "ref_model", None))
        trainer.add_callback(callback)
        return callback

    # ---- hooks -------------------------------------------------------------------------------------------------

    def _attach(self, model) -> None:
        self._detach()
        self._handles.append(model.register_forward_pre_hook(self._enter("model")))
        self._handles.append(model.register_forward_hook(self._leave("model"), always_call=True))
        for module in model.modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                self._handles.append(module.register_forward_hook(self._hook_output))
        reference = self.reference_model
        if reference is not None and reference is not model:
            self._handles.append(reference.register_forward_pre_hook(self._enter("reference")))
            self._handles.append(reference.register_forward_hook(self._leave("reference"), always_call=True))

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _enter(self, which: str):
        def hook(module, args):
            if self._depth[which] == 0 and self._step is not None:
                self._step["forwards" if which == "model" else "reference_forwards"] += 1
                if which == "model":
                    self._forward_id += 1
                    self._output_hooked = False
            self._depth[which] += 1

        return hook

    def _leave(self, which: str):
        def hook(module, args, output):
            self._depth[which] -= 1

        return hook

    def _hook_output(self, module, args, output):
        if self._step is None or self._depth["model"] == 0 or self._output_hooked or not torch.is_grad_enabled():
            return
        tensor = next((t for t in _tensors(output) if t.requires_grad), None)
        if tensor is None:
            return
        self._output_hooked = True
        forward_id = self._forward_id
        tensor.register_hook(lambda grad: self._backwarded.add(forward_id))

    # ---- Trainer events ----------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("ComputeAccountingCallback was called without the model.")
        self._attach(model)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step = dict.fromkeys(COUNTED, 0)
        self._backwarded = set()

    def on_substep_end(self, args, state, control, **kwargs):
        if self._step is not None:
            self._step["micro_batches"] += 1

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if self._step is None:
            return
        step, self._step = self._step, None
        step["steps"] = 1
        step["micro_batches"] += 1  # the step's last micro-batch ends with the step, not with a substep
        step["backwards"] = len(self._backwarded)
        phase = "zo" if zo_optimizer_of(optimizer) is not None else "fo"
        for key in COUNTED:
            self.totals[phase][key] += step[key]
        self.history.append({"step": state.global_step, "phase": phase, **step})

    def on_train_end(self, args, state, control, **kwargs):
        self._detach()

    def to_dict(self) -> dict:
        """``{"per_process": True, "counted_by": ..., "fo": {<COUNTED>: n}, "zo": {<COUNTED>: n}}``."""
        return {"per_process": True, "counted_by": "module hooks", **{k: dict(v) for k, v in self.totals.items()}}


def passes(counts: dict) -> int:
    """Model passes of a compute record (one phase's counts): forwards, reference forwards and backwards, each one."""
    return int(counts.get("forwards", 0) + counts.get("reference_forwards", 0) + counts.get("backwards", 0))


class ComputeBudgetCallback(TrainerCallback):
    """Stops training after the optimizer step at which the passes `accounting` counted reach `budget`.

    A pass is one forward, reference forward or backward (:func:`passes`), so runs with different optimizers can be
    stopped at equal compute: a ZO step costs forwards only, a first-order step forwards and backwards. The step
    that crosses the budget finishes (a step is never cut in half); `accounting` must be added to the trainer
    before this callback, so its counts include the step just ended.
    """

    def __init__(self, accounting: ComputeAccountingCallback, budget: int):
        if budget < 1:
            raise ValueError(f"compute_budget={budget} must be >= 1 model pass")
        self.accounting, self.budget = accounting, budget

    def spent(self) -> int:
        return sum(passes(counts) for counts in self.accounting.totals.values())

    def on_step_end(self, args, state, control, **kwargs):
        if self.spent() >= self.budget:
            control.should_training_stop = True


def _tensors(output):
    """The tensors in a module's output (a tensor, a tuple/list, or a dict-like ModelOutput)."""
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from _tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from _tensors(item)


def trainable_weight_norm(model) -> float:
    """The L2 norm of the trainable weights, accumulated in float64 (weights of 1e28 do not overflow it; a non-finite
    weight makes it non-finite). Under ZeRO-3 each process holds a shard: the squares are summed over processes."""
    tensors = [getattr(p, "ds_tensor", p).detach() for p in model.parameters() if p.requires_grad]
    if not tensors:
        return 0.0
    square = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64) for t in tensors]).square().sum()
    sharded = any(hasattr(p, "ds_tensor") for p in model.parameters())
    if sharded and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(square)
    return math.sqrt(square.item()) if math.isfinite(square.item()) else square.item()


class TrainingDiverged(RuntimeError):
    """Training stopped by :class:`DivergenceGuardCallback`; `record` is what the report keeps of the stop."""

    def __init__(self, record: dict[str, Any]):
        self.record = record
        super().__init__(record["message"])


class DivergenceGuardCallback(TrainerCallback):
    """Stop a run at the first step whose loss, gradient norm or ZO projected gradient is not finite, or whose
    forget loss passes ``max_forget_loss`` in absolute value (gradient ascent's collapse), before the optimizer
    applies that step.

    The trainer hands each forward's loss and parts to :meth:`observe` (non-finite values stop at once); gradients
    and the forget-loss bound (its largest magnitude over all processes) are checked in ``on_pre_optimizer_step``.
    A failed check raises :class:`TrainingDiverged` (one message naming the step, the value and the likely cause),
    so the step's update never reaches the weights, no checkpoint of it is written, and the caller decides what to
    keep (the pipeline keeps the report and saves no final model).

    The weights themselves are checked after every step (``on_step_end``, before a checkpoint or the final model is
    saved): they must be finite, and the step may not change the L2 norm of the trainable weights by more than
    ``max_update_ratio`` times that norm (a lower bound of the update's size; see
    ``UnlearnConfig.divergence_max_update_ratio``). This is what catches the last step's update, which no loss
    follows. The weights training starts from are checked too, those of a resumed checkpoint included.
    """

    def __init__(self, max_forget_loss: float | None = None, max_update_ratio: float | None = 1.0):
        self.max_forget_loss = max_forget_loss
        self.max_update_ratio = max_update_ratio
        self._worst_forget = 0.0  # the forget loss of largest magnitude in this optimizer step
        self._weight_norm: float | None = None  # of the trainable weights, after the last step checked

    @classmethod
    def from_args(cls, args) -> DivergenceGuardCallback:
        return cls(
            max_forget_loss=args.divergence_max_forget_loss,
            max_update_ratio=getattr(args, "divergence_max_update_ratio", 1.0),
        )

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """The weights training starts from are finite: after a resume, the checkpoint's (whose last update no loss
        has checked yet; the first loss after the resume is observed like every other)."""
        self._weight_norm = None
        if model is None:
            return
        norm = trainable_weight_norm(model)
        if not math.isfinite(norm):
            where = f"loaded from the checkpoint of step {state.global_step}" if state.global_step else "given"
            self._stop(args, state.global_step, "weight_norm", norm, f"non-finite weights {where}")
        self._weight_norm = norm

    def on_step_end(self, args, state, control, model=None, **kwargs):
        """Check the weights each step wrote, before they are saved: the last step's update is followed by no loss
        that would show it, and a checkpoint must never hold weights no check has seen."""
        if model is None:
            return
        step, norm, before = state.global_step, trainable_weight_norm(model), self._weight_norm
        if not math.isfinite(norm):
            self._stop(args, step, "weight_norm", norm, "non-finite weights after the update")
        ratio = self.max_update_ratio
        if ratio is not None and before and abs(norm - before) > ratio * before:
            self._stop(
                args, step, "weight_norm", norm,
                f"the update moved the trainable weights' norm from {before:.6g} by {abs(norm - before) / before:.3g} "
                f"times its size, past divergence_max_update_ratio={ratio:g}",
            )  # fmt: skip
        self._weight_norm = norm

    def observe(self, step: int, loss: torch.Tensor | None, parts: dict[str, list] | None, args=None) -> None:
        """Check one forward's loss and its parts (``loss/forget``, ...) as soon as they exist, before any update.

        Called by the trainer after each `training_step`, also when that step raised (a ZO optimizer refusing a
        non-finite projected gradient): the guard's message then replaces the optimizer's.
        """
        values = {"loss": [loss]} if loss is not None else {}
        values.update(parts or {})
        for name, items in values.items():
            if not items:
                continue
            value = torch.stack([v.detach().float().reshape(-1)[0] for v in items]).cpu()
            if not torch.isfinite(value).all():
                self._stop(args, step, name, value[~torch.isfinite(value)][0].item(), "a non-finite loss")
            if name == "loss/forget" and self.max_forget_loss is not None:
                worst = value[value.abs().argmax()].item()
                if abs(worst) > abs(self._worst_forget):
                    self._worst_forget = worst

    def on_step_begin(self, args, state, control, **kwargs):
        self._worst_forget = 0.0

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step + 1
        if self.max_forget_loss is not None:
            # Checked here, across processes, so that every process stops at the same step (a rank-local stop
            # would leave the others waiting in the next collective).
            worst = torch.tensor([abs(self._worst_forget), self._worst_forget], dtype=torch.float64)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                gathered = [torch.zeros_like(worst) for _ in range(torch.distributed.get_world_size())]
                torch.distributed.all_gather(gathered, worst.to(args.device) if args.device.type != "cpu" else worst)
                worst = max((g.cpu() for g in gathered), key=lambda g: g[0].item())
            if worst[0].item() > self.max_forget_loss:
                self._stop(
                    args, step, "loss/forget", worst[1].item(),
                    f"past divergence_max_forget_loss={self.max_forget_loss}, the sign of a collapsing model; "
                    "raise the bound if this loss is expected",
                )  # fmt: skip
        self._worst_forget = 0.0
        zo = zo_optimizer_of(optimizer) if optimizer is not None else None
        projected = zo.last_projected_grad if zo is not None and zo.pending_records else None
        if projected is not None and not math.isfinite(float(projected)):
            self._stop(args, step, "zo/projected_grad", float(projected), "a non-finite zeroth-order gradient")
        if model is not None:
            norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
            if norms:
                grad_norm = torch.linalg.vector_norm(torch.stack([n.cpu() for n in norms])).item()
                if not math.isfinite(grad_norm):
                    self._stop(args, step, "grad_norm", grad_norm, "a non-finite gradient")

    def _stop(self, args, step: int, name: str, value: float, what: str) -> None:
        lr = getattr(args, "learning_rate", None)
        rate = f" (learning_rate={lr:g})" if lr is not None else ""
        message = (
            f"training diverged at step {step}: {name} = {value:.6g} ({what}); the likely cause is a learning rate "
            f"too high for this method{rate}: lower it (or set divergence_guard=false to train on regardless)"
        )
        raise TrainingDiverged({"step": step, "quantity": name, "value": str(value), "message": message})


def _log_line(logs: dict) -> str:
    return json.dumps({k: v for k, v in logs.items() if k != "total_flos"}, default=str)


class LogLinesCallback(TrainerCallback):
    """Training logs as JSON lines on stderr (numbers stay numbers), in place of `PrinterCallback`'s Python dicts on
    stdout: a command's stdout carries only what a user would pipe (its report)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            print(_log_line(logs), file=sys.stderr, flush=True)


class StderrProgressCallback(ProgressCallback):
    """`ProgressCallback` whose log lines go to stderr as JSON, like its bar, not to stdout as Python dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.write(_log_line(logs), file=sys.stderr)


def logs_to_stderr(trainer) -> None:
    """Swap Trainer's stdout log printers (`PrinterCallback`, `ProgressCallback`) for their stderr counterparts."""
    if trainer.pop_callback(PrinterCallback) is not None:
        trainer.add_callback(LogLinesCallback())
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(StderrProgressCallback())
