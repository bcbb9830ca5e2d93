"""A short hybrid NPO unlearning run; launched once per process by the distributed tests.

Usage: python hybrid_npo_run.py MODEL_PATH OUT_DIR PER_DEVICE_BATCH [DEEPSPEED_JSON]

Saves every process's final weights to OUT_DIR/rank{R}.pt and its training logs to OUT_DIR/logs{R}.json.
"""

import json
import os
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.scripts`

import torch  # noqa: E402

from hf_unlearn.distributed import end_process_group, exit_process  # noqa: E402
from hf_unlearn.trainers import (
    NPOConfig,  # noqa: E402
    NPOTrainer,  # noqa: E402
)
from hf_unlearn.trainers.callbacks import HybridScheduleCallback  # noqa: E402
from tests.scripts.optim_fixtures import npo_dataset  # noqa: E402


def main(model_path: str, out_dir: str, per_device_batch: int, deepspeed: str | None = None) -> None:
    args = NPOConfig(
        output_dir=out_dir,
        report_to="none",
        save_strategy="no",
        use_cpu=deepspeed is None,
        disable_tqdm=True,
        per_device_train_batch_size=per_device_batch,
        max_steps=4,
        logging_steps=1,
        learning_rate=1e-3,
        # Adam's first steps are ~lr·g/|g|: for a weight whose gradient is near zero, the fp32 rounding of a
        # gradient summed over 2 processes vs 1 batch moves the update by up to lr; eps damps those weights only
        adam_epsilon=1e-6,
        lr_scheduler_type="constant",
        optimizer="hybrid",
        hybrid_fo_steps=2,
        zo_learning_rate=1e-4,
        # c = Δloss/2μ resolves fp32 losses only to ~eps·loss/μ: a larger μ keeps the 1- vs 2-process difference
        # (losses summed in another order) well below the 1e-6 the test allows
        zo_mu=1e-2,
        beta=0.1,
        seed=0,
        deepspeed=deepspeed,
    )
    trainer = NPOTrainer(
        model=model_path,
        args=args,
        train_dataset=npo_dataset(model_path),
        callbacks=[HybridScheduleCallback()],
    )
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    model = trainer.accelerator.unwrap_model(trainer.model)
    torch.save({n: p.detach().cpu().clone() for n, p in model.named_parameters()}, Path(out_dir) / f"rank{rank}.pt")
    logs = [log for log in trainer.state.log_history if "loss" in log]
    (Path(out_dir) / f"logs{rank}.json").write_text(json.dumps(logs))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
    end_process_group(finished=True)
    exit_process(0)
