"""Short NPO runs with plain SGD, `sam` and `fo_rs` (SGD base); launched once per process by the DDP smoothing test.

Usage: python smoothing_npo_run.py MODEL_PATH OUT_DIR PER_DEVICE_BATCH GRADIENT_ACCUMULATION

Saves each process's final weights to OUT_DIR/{optimizer}_rank{R}.pt and its training logs to
OUT_DIR/{optimizer}_logs{R}.json.
"""

import json
import os
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.scripts`

import torch  # noqa: E402

from hf_unlearn.distributed import end_process_group, exit_process  # noqa: E402
from hf_unlearn.trainers import NPOConfig, NPOTrainer  # noqa: E402
from tests.scripts.optim_fixtures import npo_dataset  # noqa: E402


def main(model_path: str, out_dir: str, per_device_batch: int, accumulation: int) -> None:
    rank = int(os.environ.get("RANK", "0"))
    out = Path(out_dir)
    for optimizer in ("sgd", "sam", "fo_rs"):
        args = NPOConfig(
            output_dir=out_dir,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            per_device_train_batch_size=per_device_batch,
            gradient_accumulation_steps=accumulation,
            max_steps=3,
            logging_steps=1,
            learning_rate=0.02,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
            optimizer=optimizer,  # sgd: the reference without smoothing
            smoothing_base_optimizer="sgd",
            sam_rho=0.05,
            fo_rs_sigma=1e-2,
            beta=0.1,
            seed=0,
        )
        trainer = NPOTrainer(model=model_path, args=args, train_dataset=npo_dataset(model_path))
        trainer.train()
        model = trainer.accelerator.unwrap_model(trainer.model)
        final = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
        torch.save(final, out / f"{optimizer}_rank{rank}.pt")
        logs = [log for log in trainer.state.log_history if "loss" in log]
        (out / f"{optimizer}_logs{rank}.json").write_text(json.dumps(logs))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    end_process_group(finished=True)
    exit_process(0)
