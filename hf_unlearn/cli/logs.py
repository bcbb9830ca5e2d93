"""The command line's training log printers: JSON lines on stderr, so that a command's stdout carries only what a
user would pipe (its report)."""

from __future__ import annotations

import json
import sys

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback


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
