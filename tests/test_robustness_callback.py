import json
from pathlib import Path

import pytest
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_unlearn.attacks import quantize
from hf_unlearn.attacks.callback import RobustnessCallback
from hf_unlearn.attacks.robustness import RESULTS_FORMAT, RobustnessConfig, robustness_checks
from hf_unlearn.data import ForgetRetainDataset
from tests.helpers import one_thread
from tests.unlearned_tiny import forget_nll, state_hash, tiny_unlearned


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


class HashAtTrainEnd(TrainerCallback):
    """Records the weights' hash at train end, before the robustness callback (which runs after it) starts."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.hash = state_hash(model)


def training_args(tmp_path, **overrides):
    defaults = {
        "output_dir": str(tmp_path),
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-4,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "logging_steps": 1,
        "remove_unused_columns": False,  # paired {"forget": ...} items are not model arguments
    }
    return TrainingArguments(**{**defaults, **overrides})


def test_callback_keeps_weights_bitwise_and_records_every_check(tmp_path):
    original, unlearned, tokenizer, splits, forget, collator = tiny_unlearned()
    eval_fn = lambda model, _: {"forget_nll": forget_nll(model, forget, collator)}  # noqa: E731
    config = RobustnessConfig(relearn_steps=[3, 6], relearn_lr=1e-3, quantization=["fp4", "rtn4"])
    probe = HashAtTrainEnd()
    robustness = RobustnessCallback(config, eval_fn=eval_fn, relearn_data=splits["forget10"], original_model=original)
    trainer = Trainer(
        model=unlearned,
        args=training_args(tmp_path),
        train_dataset=forget,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[probe, robustness],
    )
    trainer.train()
    assert state_hash(trainer.model) == probe.hash  # the checks left the kept weights bit for bit as they were

    document = json.loads((tmp_path / "robustness.json").read_text())
    assert document["format"] == RESULTS_FORMAT and document["config"]["relearn_steps"] == [3, 6]
    (run,) = document["runs"]
    assert set(run) == {
        "trigger", "global_step", "unlearned", "relearn", "quantization", "weights_sha256", "runtime_s",
        "zero3_gathered",
    }  # fmt: skip
    assert run["trigger"] == "train_end" and run["global_step"] == 2 and run["zero3_gathered"] is False
    assert run["unlearned"]["forget_nll"] == pytest.approx(forget_nll(trainer.model, forget, collator))
    curve = run["relearn"]["curve"]
    assert [p["step"] for p in curve] == [3, 6] and len(run["relearn"]["losses"]) == 6
    assert curve[1]["metrics"]["forget_nll"] < curve[0]["metrics"]["forget_nll"] < run["unlearned"]["forget_nll"]
    assert sorted(run["quantization"]) == ["fp4", "rtn4"]
    fp4 = run["quantization"]["fp4"]
    assert fp4["metrics"]["forget_nll"] == pytest.approx(forget_nll(quantize(trainer.model, "fp4"), forget, collator))
    assert fp4["metrics"]["forget_nll"] != run["unlearned"]["forget_nll"]
    assert 0.2 < fp4["codes_changed_fraction"] < 0.6

    logged = trainer.state.log_history[-1]
    assert logged["step"] == 2
    assert logged["robustness/relearn_6/forget_nll"] == curve[1]["metrics"]["forget_nll"]
    assert logged["robustness/rtn4/forget_nll"] == run["quantization"]["rtn4"]["metrics"]["forget_nll"]
    assert "robustness/fp4/codes_changed_fraction" in logged


def plain_nll(model, inputs, return_outputs=False, **_):
    """Fine-tuning loss on the forget side of a paired batch (the callback test needs training, not unlearning)."""
    batch = inputs.get("forget", inputs)
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    return (outputs.loss, outputs) if return_outputs else outputs.loss


def test_relearn_data_defaults_to_the_forget_side_and_at_eval_adds_runs(tmp_path):
    _, unlearned, tokenizer, _, forget, collator = tiny_unlearned()
    calls = []

    def eval_fn(model, _):
        calls.append(1)
        return {"forget_nll": forget_nll(model, forget, collator)}

    config = RobustnessConfig(relearn_steps=[1], relearn_lr=1e-3, quantization=["rtn8"], at_eval=True)
    robustness = RobustnessCallback(config, eval_fn=eval_fn)
    trainer = Trainer(
        model=unlearned,
        args=training_args(tmp_path, eval_strategy="steps", eval_steps=2, learning_rate=0.0),
        train_dataset=ForgetRetainDataset(forget),
        eval_dataset=forget,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[robustness],
    )
    trainer.compute_loss = plain_nll
    trainer.train()
    assert robustness.relearn_data is forget
    runs = json.loads((tmp_path / "robustness.json").read_text())["runs"]
    assert [r["trigger"] for r in runs] == ["evaluate", "train_end"]
    assert len(calls) == 2 * 3  # unlearned + 1 relearning point + rtn8, per run
    assert runs[0]["unlearned"] == runs[1]["unlearned"]  # lr 0: the model did not move between the runs


def test_missing_forget_data_and_evaluator_are_clear_errors(tmp_path):
    _, unlearned, tokenizer, _, forget, collator = tiny_unlearned()
    with pytest.raises(ValueError, match="eval_fn=... or benchmark="):
        RobustnessCallback(RobustnessConfig())
    callback = RobustnessCallback(RobustnessConfig(), eval_fn=lambda m, t: {})
    with pytest.raises(ValueError, match="no forget data available for relearning"):
        callback.on_train_begin(training_args(tmp_path), TrainerState(), TrainerControl(), model=unlearned)
    with pytest.raises(ValueError, match="bit width"):
        RobustnessConfig(quantization=["rtn12"])


def test_plain_checks_without_relearning_or_quantization():
    _, unlearned, tokenizer, _, forget, collator = tiny_unlearned()
    config = RobustnessConfig(relearn_steps=[], quantization=[])
    results = robustness_checks(
        unlearned, tokenizer, lambda m, t: {"forget_nll": forget_nll(m, forget, collator)}, None, config
    )
    assert results["relearn"] is None and results["quantization"] == {}
    assert results["unlearned"]["forget_nll"] == forget_nll(unlearned, forget, collator)


def _ddp_worker(rank, world_size, port, model_dir, out_dir):
    import datetime
    import os
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist

    from hf_unlearn.data import QADataset
    from hf_unlearn.loading import load_model_and_tokenizer
    from tests.helpers import mean_answer_nll

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=120))
    model, tokenizer = load_model_and_tokenizer(model_dir)
    rows = json.loads((Path(model_dir) / "forget.json").read_text())
    forget = QADataset(rows, tokenizer)

    def collective_eval(model, _):
        # Each rank scores its half and the sum is all-reduced: a rank that skipped evaluation would hang it.
        mine = [forget[i] for i in range(rank, len(forget), world_size)]
        total = torch.tensor([mean_answer_nll(model, mine) * len(mine)], dtype=torch.float64)
        dist.all_reduce(total)
        return {"forget_nll": total.item() / len(forget)}

    before = state_hash(model)
    callback = RobustnessCallback(
        RobustnessConfig(relearn_steps=[2, 4], relearn_lr=1e-3, quantization=["rtn4"]),
        eval_fn=collective_eval,
        relearn_data=rows,
    )
    state = TrainerState()
    state.global_step = 5
    callback.on_train_end(
        SimpleNamespace(output_dir=out_dir), state, TrainerControl(), model=model, processing_class=tokenizer
    )
    record = {"run": callback.runs[0], "unchanged": state_hash(model) == before}
    record["run"].pop("runtime_s")
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_every_rank_runs_the_checks_and_rank0_writes(tmp_path):
    import socket

    import torch.multiprocessing as mp

    _, unlearned, tokenizer, splits, forget, collator = tiny_unlearned()
    unlearned.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "forget.json").write_text(json.dumps(splits["forget10"]))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "model"), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["unchanged"] and ranks[1]["unchanged"]
    assert ranks[0]["run"] == ranks[1]["run"]  # same seed, same relearned copy, same gathered metrics
    assert ranks[0]["run"]["unlearned"]["forget_nll"] == pytest.approx(forget_nll(unlearned, forget, collator))
    document = json.loads((tmp_path / "robustness.json").read_text())
    assert [r["global_step"] for r in document["runs"]] == [5]


def test_a_metric_the_benchmark_cannot_compute_keeps_its_reason_through_every_attack():
    from hf_unlearn.attacks.robustness import benchmark_eval_fn
    from hf_unlearn.benchmarks.base import BenchmarkResult
    from hf_unlearn.report_schema import NO_VALUE, AttackRun

    original, unlearned, tokenizer, splits, forget, collator = tiny_unlearned()
    reason = "forget_quality needs the retain model's statistics; pass --retain_model"

    class Benchmark:  # what TofuBenchmark returns without a retain model
        def evaluate(self, model, tokenizer):
            values = {"forget_nll": forget_nll(model, forget, collator), "forget_quality": None}
            return BenchmarkResult("tofu", values, unavailable={"forget_quality": reason})

    config = RobustnessConfig(relearn_steps=[1], relearn_lr=1e-3, quantization=["rtn8"])
    results = robustness_checks(unlearned, tokenizer, benchmark_eval_fn(Benchmark()), splits["forget10"], config)
    run = AttackRun.from_robustness(results, "unlearned model", benchmark="tofu")
    measured = [run.unlearned, *(point.metrics for point in run.relearn), *(q.metrics for q in run.quantization)]
    assert len(measured) == 3  # the unlearned model, relearned 1 step, rtn8
    for metrics in measured:
        assert metrics.values["forget_quality"] is None and metrics.unavailable["forget_quality"] == reason
        assert metrics.values["forget_nll"] is not None and NO_VALUE not in metrics.unavailable.values()
