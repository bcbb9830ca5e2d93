"""Resume that checks what it resumes.

Each checkpoint a recipe run writes gets a record, ``unlearn_checkpoint.json``, written after Trainer's own files:

- ``keys``: the settings the checkpoint's weights and optimizer state depend on, in four groups: the method (its name,
  its hyperparameters, the model and adapter), the optimizer (every optimizer field), the schedule (learning rate,
  scheduler, warm-up, steps, batch sizes) and the data (source, files, splits, lengths, format, seeds);
- ``loss_total`` and ``compute``: the running sum of the training loss and the forward/backward counts, so that a
  resumed run reports the numbers of the run it continues, not of its second half alone.

A resume is refused, in one line naming the keys, when any key differs from the checkpoint's; when the checkpoint
is incomplete (its ``trainer_state.json`` does not parse, or its weights, optimizer, scheduler or record are
missing or empty: a run killed while saving); when it is past ``max_steps``; and when the output folder already
holds a finished run's report (there is nothing left to resume; resuming would overwrite it with 0-step numbers).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


RECORD_FILE = "unlearn_checkpoint.json"
RECORD_FORMAT = 1
STATE_FILE = "trainer_state.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
SCHEDULE_KEYS = (
    "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "max_steps", "num_train_epochs",
    "per_device_train_batch_size", "gradient_accumulation_steps",
)  # fmt: skip
OPTIMIZER_TRAINING_KEYS = ("adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay", "max_grad_norm")
DATA_KEYS = (
    "data_source", "data_dir", "forget_split", "retain_split", "forget_file", "retain_file", "text_field",
    "muse_corpus", "max_length", "qa_template", "system_prompt", "no_chat_template", "pad_token",
    "synthetic_num_authors", "seed", "data_seed",
)  # fmt: skip
METHOD_SCRIPT_KEYS = ("method", "model_name_or_path", "use_peft", "lora_r", "lora_alpha", "lora_target_modules")
# UnlearnConfig fields that guard or place the run and do not change what a step computes.
NOT_METHOD_KEYS = (
    "overwrite_output_dir", "divergence_guard", "divergence_max_forget_loss", "divergence_max_update_ratio",
    "remove_unused_columns",
)  # fmt: skip
PATH_KEYS = ("model_name_or_path", "ref_model_path", "data_dir", "forget_file", "retain_file")


def _value(name: str, value: Any) -> Any:
    from hf_unlearn.io import json_safe

    if name in PATH_KEYS and isinstance(value, str) and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())  # `./model` and its absolute path are the same model
    return json_safe(value)


def run_keys(script, config) -> dict[str, dict[str, Any]]:
    """The settings a checkpoint depends on, by group: ``{"method": {...}, "optimizer": ..., "schedule": ...,
    "data": ...}`` (see the module's docstring)."""
    from transformers import TrainingArguments

    from hf_unlearn.optim.args import OptimizerArguments

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    optimizer_fields = [f.name for f in dataclasses.fields(OptimizerArguments)]
    own = [
        f.name for f in dataclasses.fields(config)
        if f.name not in inherited and f.name not in optimizer_fields and f.name not in NOT_METHOD_KEYS
    ]  # fmt: skip
    groups = {
        "method": {**{k: getattr(script, k) for k in METHOD_SCRIPT_KEYS}, **{k: getattr(config, k) for k in own}},
        "optimizer": {k: getattr(config, k, None) for k in (*optimizer_fields, *OPTIMIZER_TRAINING_KEYS)},
        "schedule": {k: getattr(config, k, None) for k in SCHEDULE_KEYS},
        "data": {k: getattr(script, k, getattr(config, k, None)) for k in DATA_KEYS},
    }
    return {group: {k: _value(k, v) for k, v in values.items()} for group, values in groups.items()}


def differing_keys(saved: dict[str, dict], current: dict[str, dict]) -> list[str]:
    """``"group key (saved -> current)"`` for every key whose value differs (a key on one side only included)."""
    missing = "<unset>"
    out = []
    order = ("method", "optimizer", "schedule", "data")
    for group in sorted(set(saved) | set(current), key=lambda g: (order.index(g) if g in order else len(order), g)):
        old, new = saved.get(group, {}), current.get(group, {})
        for key in sorted(set(old) | set(new), key=lambda k: (k != group, k)):  # `method` / `optimizer` first
            if old.get(key, missing) != new.get(key, missing):
                out.append(f"{key} ({old.get(key, missing)!r} -> {new.get(key, missing)!r})")
    return out


# ---- what a checkpoint holds ----------------------------------------------------------------------------------


def _json_file(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def incomplete_reason(folder: str | Path) -> str | None:
    """Why `folder` cannot be resumed from (a missing, empty or unreadable file), or None when it is complete."""
    folder = Path(folder)
    if not folder.is_dir():
        return "it is not a folder"
    state = _json_file(folder / STATE_FILE)
    if state is None or not isinstance(state.get("global_step"), int):
        return f"its {STATE_FILE} is missing or does not parse"
    if (folder / "latest").is_file():  # DeepSpeed: its engine's files stand for the optimizer and the weights
        tag = (folder / "latest").read_text().strip()
        if not tag or not (folder / tag).is_dir() or not any((folder / tag).iterdir()):
            return f"its DeepSpeed state {tag or '(unnamed)'} is missing"
    else:
        if not any((folder / name).is_file() and (folder / name).stat().st_size > 0 for name in WEIGHT_FILES):
            return f"it has no weights ({' or '.join(WEIGHT_FILES)})"
        for name in ("optimizer.pt", "scheduler.pt"):
            if not (folder / name).is_file() or (folder / name).stat().st_size == 0:
                return f"its {name} is missing or empty"
    record = _json_file(folder / RECORD_FILE)
    if record is None or record.get("format") != RECORD_FORMAT or "keys" not in record:
        return f"its {RECORD_FILE} (the settings hf_unlearn records with each checkpoint) is missing or does not parse"
    return None


def _checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders of `output_dir`, newest (largest N) first."""
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(folders, key=lambda p: int(p.name.split("-")[-1]), reverse=True)


def find_checkpoint(resume, output_dir: str) -> str | None:
    """What `Trainer.train(resume_from_checkpoint=...)` gets: ``true`` / ``latest`` -> the latest *complete*
    checkpoint in `output_dir` (a run killed while saving leaves a partial folder that must not be resumed from); a
    path, as given, once it is complete; unset -> None."""
    if isinstance(resume, str) and resume.lower() in ("true", "latest"):
        resume = True
    if not resume:
        return None
    if resume is not True:
        reason = incomplete_reason(resume)
        if reason is not None:
            raise ValueError(f"resume_from_checkpoint {resume} cannot be resumed: {reason}; point it at a complete "
                             "checkpoint-N folder.")  # fmt: skip
        return str(resume)
    folders = _checkpoint_folders(output_dir)
    complete = next((p for p in folders if incomplete_reason(p) is None), None)
    if complete is None:
        newest = f" (the newest, {folders[0].name}: {incomplete_reason(folders[0])})" if folders else ""
        raise FileNotFoundError(
            f"resume_from_checkpoint=true but {output_dir} holds no complete checkpoint-N folder{newest}; drop the "
            "flag to start from step 0."
        )
    return str(complete)


def read_record(checkpoint: str | Path) -> dict:
    return _json_file(Path(checkpoint) / RECORD_FILE) or {}


def check_resume(script, config) -> tuple[str | None, dict]:
    """The checkpoint to resume from and its record (None, {} when not resuming), refused in one line when the run
    it belongs to has finished, the checkpoint is incomplete or past `max_steps`, or any key differs."""
    from hf_unlearn.report_schema import REPORT_FILE

    checkpoint = find_checkpoint(config.resume_from_checkpoint, config.output_dir)
    if checkpoint is None:
        return None, {}
    report = Path(config.output_dir) / REPORT_FILE
    if report.is_file() and Path(checkpoint).resolve().parent == Path(config.output_dir).resolve():
        stopped = (_json_file(report) or {}).get("stopped")
        if stopped:  # the divergence guard's stop: the same settings would diverge again at the same step
            raise FileExistsError(
                f"output_dir {config.output_dir} holds a run that diverged at step {stopped.get('step')} "
                f"({REPORT_FILE}): resuming it with the same settings diverges again; start a new run in another "
                "output_dir with a lower learning rate."
            )
        raise FileExistsError(
            f"output_dir {config.output_dir} holds a finished run ({REPORT_FILE}): there is nothing to resume; "
            "choose a new output_dir (or set overwrite_output_dir=true and drop resume_from_checkpoint to train "
            "again from step 0)."
        )
    record = read_record(checkpoint)
    step = int(_json_file(Path(checkpoint) / STATE_FILE)["global_step"])
    if config.max_steps > 0 and step > config.max_steps:
        raise ValueError(
            f"resume_from_checkpoint: {Path(checkpoint).name} is at step {step}, past max_steps={config.max_steps}; "
            f"resume with the checkpoint's max_steps ({record['keys'].get('schedule', {}).get('max_steps')})."
        )
    changed = differing_keys(record["keys"], run_keys(script, config))
    if changed:
        raise ValueError(
            f"resume_from_checkpoint: {Path(checkpoint).name} was trained with other settings: {'; '.join(changed)}; "
            "resume with the checkpoint's values, or start a new run in another output_dir."
        )
    return checkpoint, record


class CheckpointRecordCallback(TrainerCallback):
    """Writes each checkpoint's :data:`RECORD_FILE` (keys, running loss sum, compute counts) after Trainer's files.

    Every process calls ``on_save`` (the loss sum is averaged over processes there); the main process writes.
    """

    def __init__(self, trainer, keys: dict, accounting=None):
        self.trainer, self.keys, self.accounting = trainer, keys, accounting

    def on_save(self, args, state, control, **kwargs):
        from hf_unlearn.io import atomic_write_json

        loss_total = self.trainer.training_loss_total()
        # RANK too: a Trainer built after another in the same launched process can see itself as not distributed
        # (transformers warns "parallel_mode != ParallelMode.DISTRIBUTED"), and two writers here would delete each
        # other's temporary file below.
        if not state.is_world_process_zero or int(os.environ.get("RANK", "0")) != 0:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        record = {
            "format": RECORD_FORMAT, "global_step": state.global_step, "keys": self.keys, "loss_total": loss_total,
            "compute": self.accounting.totals if self.accounting is not None else None,
        }  # fmt: skip
        if folder.is_dir():
            # a run killed while writing this record left its temporary file here; this save replaces both
            for leftover in folder.glob(f".{RECORD_FILE}.*.tmp"):
                leftover.unlink(missing_ok=True)
            atomic_write_json(folder / RECORD_FILE, record)


def restore(trainer, record: dict, accounting=None) -> None:
    """Carry a checkpoint record's loss sum and compute counts into a trainer about to resume from it."""
    if not record:
        return
    trainer.training_loss_sum = float(record.get("loss_total") or 0.0)
    if accounting is not None and record.get("compute"):
        for phase, counts in record["compute"].items():
            accounting.totals[phase].update(counts)
