"""Hybrid (1 FO step, 1 ZO step, alternating) on a tiny Llama under DeepSpeed; one process per rank.

Usage: torchrun --nproc_per_node 2 zero_hybrid_run.py OUT_DIR DEEPSPEED_JSON

Saves the weights after every optimizer step (and before the first) to OUT_DIR/snapshots{RANK}.pt. The FO learning
rate is tiny and the ZO one large, so a ZO change lost in the next FO step would show as a jump of its own size.
The robustness checks run at train end (under ZeRO-3 on a gathered copy) and write OUT_DIR/robustness.json.
"""

import os
import sys
from pathlib import Path
from types import SimpleNamespace


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.scripts`

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_unlearn.attacks.robustness import RobustnessConfig  # noqa: E402
from hf_unlearn.callbacks import (
    HybridScheduleCallback,  # noqa: E402
    RobustnessCallback,  # noqa: E402
)
from tests.scripts.optim_fixtures import RandomTokens, ZOTrainer, tiny_llama, training_args, weights  # noqa: E402


def full_weights(model) -> dict[str, torch.Tensor]:
    params = list(model.parameters())
    if not any(hasattr(p, "ds_id") for p in params):
        return weights(model)
    import deepspeed

    with deepspeed.zero.GatheredParameters(params):  # ZeRO-3: gather the partitions to read whole tensors
        return weights(model)


class Snapshots(TrainerCallback):
    def __init__(self):
        self.snapshots = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.snapshots.append(full_weights(model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.snapshots.append(full_weights(model))


def token_loss(model, _tokenizer) -> dict[str, float]:
    """Mean LM loss on the first four training sequences: the metric the checks report."""
    batch = RandomTokens(n=16)[0:4]
    device = next(model.parameters()).device
    return {"loss": model(**{k: v.to(device) for k, v in batch.items()}).loss.item()}


def main(out_dir: str, deepspeed: str) -> None:
    args = training_args(
        out_dir,
        use_cpu=False,
        deepspeed=deepspeed,
        optimizer="hybrid",
        hybrid_fo_steps=1,
        max_steps=4,
        learning_rate=1e-6,
        zo_learning_rate=1e-2,
        per_device_train_batch_size=2,
    )
    snapshots = Snapshots()
    checks = RobustnessCallback(
        RobustnessConfig(relearn_steps=[1, 2], relearn_lr=1e-2, relearn_batch_size=2, quantization=["rtn4"]),
        eval_fn=token_loss,
        relearn_data=[RandomTokens(n=16)[i] for i in range(4)],
        tokenizer=SimpleNamespace(pad_token_id=0),
    )
    trainer = ZOTrainer(
        model=tiny_llama(),
        args=args,
        train_dataset=RandomTokens(n=16),
        callbacks=[HybridScheduleCallback.from_args(args), snapshots, checks],
    )
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    torch.save(snapshots.snapshots, Path(out_dir) / f"snapshots{rank}.pt")
    engine_optimizer = type(trainer.model_wrapped.optimizer).__name__
    (Path(out_dir) / f"engine{rank}.txt").write_text(f"{type(trainer.model_wrapped).__name__} {engine_optimizer}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
