"""Hybrid (1 FO step, 1 ZO step, alternating) on a tiny Llama under DeepSpeed; one process per rank.

Usage: torchrun --nproc_per_node 2 zero_hybrid_run.py OUT_DIR DEEPSPEED_JSON

Saves the weights after every optimizer step (and before the first) to OUT_DIR/snapshots{RANK}.pt. The FO learning
rate is tiny and the ZO one large, so a ZO change lost in the next FO step would show as a jump of its own size.
The robustness checks run at train end (under ZeRO-3 on a gathered copy) and write OUT_DIR/robustness.json.

Also saves, after every step from the first ZO step on, this rank's fp32 master elements that the ZO engine uses
and whether the module weights equal cast(master) there (OUT_DIR/masters{RANK}.pt), and after training checks that
one more ±mu perturbation restores every weight and master bit for bit (OUT_DIR/restore{RANK}.json).
"""

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.scripts`

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_unlearn.attacks.callback import RobustnessCallback  # noqa: E402
from hf_unlearn.attacks.robustness import RobustnessConfig  # noqa: E402
from hf_unlearn.distributed import end_process_group, exit_process  # noqa: E402
from hf_unlearn.optim.hybrid import unwrap_optimizer  # noqa: E402
from hf_unlearn.optim.zo import projected_gradients  # noqa: E402
from hf_unlearn.trainers.callbacks import HybridScheduleCallback  # noqa: E402
from tests.scripts.optim_fixtures import (  # noqa: E402
    RandomTokens,
    ZOTrainer,
    tiny_llama,
    training_args,
    weights,
)


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


def master_pieces(optimizer):
    masters = unwrap_optimizer(optimizer).zo.directions.masters
    return None if masters is None else [p for p in masters.pieces if p is not None]


def rank_masters(optimizer) -> dict:
    """This rank's fp32 master partitions as DeepSpeed keeps them, and whether the module weights equal their cast
    wherever the ZO engine has attached to them."""
    from hf_unlearn.optim.zero import _find_in_chain

    zero3 = _find_in_chain(optimizer, "fp32_partitioned_groups_flat")
    flats = (
        zero3.fp32_partitioned_groups_flat
        if zero3
        else _find_in_chain(optimizer, "single_partition_of_fp32_groups").single_partition_of_fp32_groups
    )
    pieces = master_pieces(optimizer)
    return {
        "master": torch.cat([flat.detach().float().clone() for flat in flats]),
        "attached": pieces is not None,
        "low_is_cast_master": pieces is not None
        and all(torch.equal(p.low, p.master.to(p.low.dtype)) for p in pieces if p.master is not None),
        "separate_masters": pieces is not None and all(p.master is not None for p in pieces),
    }


class MasterLog(TrainerCallback):
    def __init__(self):
        self.log = []

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.log.append(rank_masters(optimizer))

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.log.append(rank_masters(optimizer))


def check_restore(trainer) -> dict:
    """One more ZO perturbation (+mu, -mu, restore, no update): weights and masters must come back bit for bit."""
    model = trainer.model.eval()
    batch = RandomTokens(n=16)[0:2]
    before, masters_before = full_weights(model), rank_masters(trainer.optimizer)["master"]
    zo = unwrap_optimizer(trainer.optimizer).zo
    with torch.no_grad():
        c, _ = projected_gradients(zo, lambda: model(**batch).loss, [12345])
    after, masters_after = full_weights(model), rank_masters(trainer.optimizer)["master"]
    return {
        "weights_exact": all(torch.equal(before[n], after[n]) for n in before),
        "masters_exact": torch.equal(masters_before, masters_after),
        "projected_grad": float(c[0]),
    }


def token_loss(model, _tokenizer) -> dict[str, float]:
    """Mean LM loss on the first four training sequences: the metric the checks report."""
    batch = RandomTokens(n=16)[0:4]
    device = next(model.parameters()).device
    return {"loss": model(**{k: v.to(device) for k, v in batch.items()}).loss.item()}


def main(out_dir: str, deepspeed: str, zo_fields: str = "{}") -> None:
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
        **json.loads(zo_fields),
    )
    # bf16 from the DeepSpeed config; set after the checks of TrainingArguments, which refuse bf16 on a CPU without
    # use_cpu (DeepSpeed runs its bf16 on CPU over gloo regardless)
    args.bf16 = json.loads(Path(deepspeed).read_text())["bf16"]["enabled"]
    args.hf_deepspeed_config.mismatches = []
    args.hf_deepspeed_config.trainer_config_process(args)  # re-read with bf16 set
    snapshots, master_log = Snapshots(), MasterLog()
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
        callbacks=[HybridScheduleCallback(), snapshots, master_log, checks],
    )
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    torch.save(snapshots.snapshots, Path(out_dir) / f"snapshots{rank}.pt")
    torch.save(master_log.log, Path(out_dir) / f"masters{rank}.pt")
    (Path(out_dir) / f"restore{rank}.json").write_text(json.dumps(check_restore(trainer)))
    engine_optimizer = type(trainer.model_wrapped.optimizer).__name__
    (Path(out_dir) / f"engine{rank}.txt").write_text(f"{type(trainer.model_wrapped).__name__} {engine_optimizer}")


if __name__ == "__main__":
    main(*sys.argv[1:])
    end_process_group(finished=True)
    exit_process(0)
