"""A short hybrid run of any registered method; launched once per process by the distributed tests.

Usage: python hybrid_method_run.py METHOD MODEL_PATH OUT_DIR PER_DEVICE_BATCH

The settings of `hybrid_npo_run.py` (two AdamW steps, then two AdaZO steps) with the method's default
hyperparameters and a retain term of weight 1. Saves every process's final weights to OUT_DIR/rank{R}.pt and its
training logs to OUT_DIR/logs{R}.json.
"""

import json
import os
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.scripts`

import torch  # noqa: E402

from hf_unlearn.distributed import end_process_group, exit_process  # noqa: E402
from hf_unlearn.trainers import get_method  # noqa: E402
from tests.scripts.optim_fixtures import npo_dataset  # noqa: E402


def main(method: str, model_path: str, out_dir: str, per_device_batch: int) -> None:
    trainer_cls = get_method(method)
    args = trainer_cls.config_class(
        output_dir=out_dir,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        per_device_train_batch_size=per_device_batch,
        max_steps=4,
        logging_steps=1,
        learning_rate=1e-3,
        adam_epsilon=1e-6,  # as hybrid_npo_run.py: damps weights whose gradient is fp32 rounding noise
        lr_scheduler_type="constant",
        optimizer="hybrid",
        hybrid_fo_steps=2,
        zo_learning_rate=1e-4,
        zo_mu=1e-2,  # as hybrid_npo_run.py: resolves the fp32 loss difference well below the tolerance
        alpha=1.0,
        seed=0,
    )
    trainer = trainer_cls(model=model_path, args=args, train_dataset=npo_dataset(model_path))
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    model = trainer.accelerator.unwrap_model(trainer.model)
    torch.save({n: p.detach().cpu().clone() for n, p in model.named_parameters()}, Path(out_dir) / f"rank{rank}.pt")
    logs = [log for log in trainer.state.log_history if "loss" in log]
    (Path(out_dir) / f"logs{rank}.json").write_text(json.dumps(logs))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
    end_process_group(finished=True)
    exit_process(0)
