"""UNDIAL, CE-U, SatImp and WGA: each loss against a hand computation of open-unlearning's formula, and each method
training for two steps with AdamW and with the FO-ZO hybrid.

The hand computations follow locuslab/open-unlearning: `src/trainer/utils.py::compute_undial_loss`
(used by `src/trainer/unlearn/undial.py`), `src/trainer/unlearn/ceu.py`, `src/trainer/unlearn/satimp.py` and
`src/trainer/unlearn/wga.py`. They run one unpadded example at a time in float64 with explicit indexing; our losses
run on a padded float32 batch.
"""

from __future__ import annotations

import copy
import json
import math
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_unlearn.data import DataCollatorForUnlearning, ForgetRetainDataset, QADataset
from hf_unlearn.trainers import CEUConfig, SatImpConfig, UNDIALConfig, WGAConfig, get_method
from tests.helpers import one_thread, synthetic_splits


NEW_METHODS = {"undial": UNDIALConfig, "ce_u": CEUConfig, "satimp": SatImpConfig, "wga": WGAConfig}
FORGET_IDS, RETAIN_IDS = [0, 1, 2], [5, 8, 11]  # unequal answer lengths: padding and token means matter


@pytest.fixture(scope="module", autouse=True)
def module_one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def datasets(tokenizer):
    rows = synthetic_splits()["full"]
    forget, retain = QADataset(rows[:8], tokenizer), QADataset(rows[8:24], tokenizer)
    return {"forget": forget, "retain": retain, "pairs": ForgetRetainDataset(forget, retain, seed=0)}


@pytest.fixture(scope="module")
def teacher(memorised_model_dir):
    return AutoModelForCausalLM.from_pretrained(memorised_model_dir).eval()


@pytest.fixture(scope="module")
def student(teacher):
    """The memorised model moved off its answers: answer-token probabilities spread over (0.001, 0.999)."""
    model = copy.deepcopy(teacher)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


def config(cls, tmp_path, **overrides):
    defaults = {
        "output_dir": str(tmp_path / "out"),
        "report_to": "none",
        "save_strategy": "no",
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "learning_rate": 1e-3,
        "weight_decay": 0.0,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "seed": 0,
        "use_cpu": True,
        "disable_tqdm": True,
    }
    return cls(**{**defaults, **overrides})


# ---- open-unlearning's formulas, by hand ------------------------------------------------------------------------


def shifted(model, example) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [T-1, V] in float64, labels [T-1]) of one example, shifted so row t predicts label t."""
    ids = torch.tensor([example["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()
    return logits, torch.tensor(example["labels"][1:])


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """−Σ_v target_v · log softmax(logits)_v, written out."""
    log_probs = logits - torch.logsumexp(logits, -1)
    return -(target * torch.where(target > 0, log_probs, torch.zeros_like(log_probs))).sum().item()


def undial_terms(student, teacher, example, beta: float, every_position: bool = False) -> list[float]:
    """compute_undial_loss: CE(student, softmax(teacher − β·onehot(label))) at each position.

    open-unlearning scores every position of the batch (its mask indexes label −100 as the last vocabulary entry);
    `every_position` reproduces that literally, otherwise only answer positions are scored (our definition).
    """
    logits, labels = shifted(student, example)
    teacher_logits, _ = shifted(teacher, example)
    terms = []
    for t in range(len(labels)):
        if labels[t] == -100 and not every_position:
            continue
        adjusted = teacher_logits[t].clone()
        adjusted[int(labels[t])] -= beta  # label -100 indexes entry V − 100 in python, as in torch's advanced index
        terms.append(soft_cross_entropy(logits[t], torch.softmax(adjusted, -1)))
    return terms


def ceu_terms(model, example, ignore_first_n: int) -> list[float]:
    """ceu.py: drop the first n answer labels (cumsum over the unshifted labels), then at each remaining answer
    position CE(logits, softmax(detached logits with the true token at −inf))."""
    labels = torch.tensor(example["labels"])
    valid = labels != -100
    labels = labels.masked_fill(valid & (valid.cumsum(-1) <= ignore_first_n), -100)
    logits, _ = shifted(model, example)
    terms = []
    for t, label in enumerate(labels[1:].tolist()):
        if label == -100:
            continue
        target_logits = logits[t].clone()
        target_logits[label] = -math.inf
        terms.append(soft_cross_entropy(logits[t], torch.softmax(target_logits, -1)))
    return terms


def token_nlls(model, example) -> list[float]:
    logits, labels = shifted(model, example)
    log_probs = torch.log_softmax(logits, -1)
    return [-log_probs[t, int(labels[t])].item() for t in range(len(labels)) if labels[t] != -100]


def satimp_terms(model, example, beta1: float, beta2: float) -> list[float]:
    """satimp.py: −p^β1·(1−p)^β2·CE per answer token, p = exp(−CE) (detached: a weight, not differentiated)."""
    return [-(math.exp(-ce) ** beta1) * (1 - math.exp(-ce)) ** beta2 * ce for ce in token_nlls(model, example)]


def wga_terms(model, example, beta: float) -> list[float]:
    """wga.py: −p^β·CE per answer token, p = exp(−CE) detached."""
    return [-(math.exp(-ce) ** beta) * ce for ce in token_nlls(model, example)]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def hand_forget_term(method, args, student, teacher, forget) -> float:
    """open-unlearning's reduction: the mean over every scored token of the batch."""
    if method == "undial":
        return mean([v for e in forget for v in undial_terms(student, teacher, e, args.beta)])
    if method == "ce_u":
        return mean([v for e in forget for v in ceu_terms(student, e, args.ignore_first_n_answer_tokens)])
    if method == "satimp":
        return mean([v for e in forget for v in satimp_terms(student, e, args.beta1, args.beta2)])
    return mean([v for e in forget for v in wga_terms(student, e, args.beta)])


def fixed_batch(datasets, tokenizer):
    forget = [{**datasets["forget"][i], "index": i} for i in FORGET_IDS]
    retain = [datasets["retain"][i] for i in RETAIN_IDS]
    batch = DataCollatorForUnlearning(tokenizer)([{"forget": f, "retain": r} for f, r in zip(forget, retain)])
    return forget, retain, batch


LOSS_CASES = [
    ("undial", {}),
    ("undial", {"beta": 3.0, "alpha": 0.5}),
    ("ce_u", {}),
    ("ce_u", {"ignore_first_n_answer_tokens": 3, "alpha": 0.5}),
    ("satimp", {}),
    ("satimp", {"beta1": 2.0, "beta2": 0.5, "gamma": 0.7}),
    ("wga", {}),
    ("wga", {"beta": 2.5, "alpha": 0.0}),
]


@pytest.mark.parametrize("method,overrides", LOSS_CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(LOSS_CASES)])
def test_loss_matches_open_unlearning_by_hand(
    method, overrides, tmp_path, memorised_model_dir, student, teacher, datasets, tokenizer
):
    args = config(NEW_METHODS[method], tmp_path, ref_model_path=str(memorised_model_dir), **overrides)
    trainer = get_method(method)(
        copy.deepcopy(student), args, train_dataset=datasets["pairs"], processing_class=tokenizer
    )
    forget, retain, batch = fixed_batch(datasets, tokenizer)
    with torch.no_grad():
        loss, parts = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    forget_term = hand_forget_term(method, args, student, teacher, forget)
    assert parts["loss/forget"].item() == pytest.approx(forget_term, rel=1e-5)
    expected = args.gamma * forget_term
    if args.alpha:
        expected += args.alpha * mean([v for e in retain for v in token_nlls(student, e)])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    print(f"{method} {overrides}: forget term ours {parts['loss/forget'].item():.6f}, by hand {forget_term:.6f}; "
          f"loss ours {loss.item():.6f}, by hand {expected:.6f}")  # fmt: skip


def test_undial_equals_open_unlearning_literally_where_every_position_is_an_answer_token(
    tmp_path, memorised_model_dir, student, teacher, datasets, tokenizer
):
    """Our one deliberate difference (only answer positions are scored) vanishes on text without prompt or
    padding: there open-unlearning's mean over all positions is the same number."""
    example = datasets["forget"][0]
    text = {"input_ids": example["input_ids"], "attention_mask": [1] * len(example["input_ids"])}
    text["labels"] = list(example["input_ids"])
    args = config(UNDIALConfig, tmp_path, ref_model_path=str(memorised_model_dir))
    trainer = get_method("undial")(copy.deepcopy(student), args, train_dataset=datasets["pairs"])
    batch = DataCollatorForUnlearning(tokenizer)([{"forget": text}])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    literal = mean(undial_terms(student, teacher, text, args.beta, every_position=True))
    assert loss == pytest.approx(literal, rel=1e-5)
    print(f"undial, every position an answer token: ours {loss:.6f}, open-unlearning literally {literal:.6f}")
    # ...while on a QA example the prompt positions open-unlearning also scores change its number
    qa = datasets["forget"][0]
    answer_only = mean(undial_terms(student, teacher, qa, args.beta))
    assert abs(mean(undial_terms(student, teacher, qa, args.beta, every_position=True)) - answer_only) > 1e-3


def test_ceu_drops_exactly_the_first_n_answer_tokens(tmp_path, student, datasets, tokenizer):
    from hf_unlearn.trainers.ce_u import without_first_answer_tokens

    _, _, batch = fixed_batch(datasets, tokenizer)
    labels = batch["forget"]["labels"]
    trimmed = without_first_answer_tokens(batch["forget"], 2)["labels"]
    for row, kept in zip(labels, trimmed):
        answer = (row[1:] != -100).nonzero()[:, 0] + 1
        assert (kept[answer[:2]] == -100).all() and torch.equal(kept[answer[2:]], row[answer[2:]])
        assert (kept[: answer[0]] == row[: answer[0]]).all()
    assert without_first_answer_tokens(batch["forget"], 0) is batch["forget"]


def test_ceu_training_steps_divide_by_the_scored_tokens_of_the_window(tmp_path, tiny_model_dir, datasets, tokenizer):
    """Inside train() the denominator is counted over the accumulation window, apart from the loss: it must leave
    the ignored tokens out too. Four forget examples make one window hold all of them, in any order, so the first
    logged loss is the hand value, for batch 4 × 1 and for 2 × 2 accumulation alike."""
    forget = QADataset(synthetic_splits()["full"][:4], tokenizer)
    pairs = ForgetRetainDataset(forget, datasets["retain"], seed=0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    expected = mean([v for e in forget for v in ceu_terms(model, e, 2)])
    runs = []
    for batch, accumulation in ((4, 1), (2, 2)):
        args = config(
            CEUConfig,
            tmp_path / f"{batch}x{accumulation}",
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            optimizer="sgd",
            learning_rate=0.5,
            ignore_first_n_answer_tokens=2,
        )
        trainer = get_method("ce_u")(str(tiny_model_dir), args, train_dataset=pairs)
        trainer.train()
        runs.append([e["loss"] for e in trainer.state.log_history if "loss" in e])
    assert runs[0][0] == pytest.approx(expected, rel=1e-5) and runs[1][0] == pytest.approx(expected, rel=1e-5)
    assert runs[0] == pytest.approx(runs[1], abs=1e-5) and runs[0][1] != runs[0][0]  # and the second step moved


@pytest.mark.parametrize("method", list(NEW_METHODS))
@pytest.mark.parametrize("optimizer", ["adamw", "hybrid"])
def test_two_steps_move_every_trainable_weight(method, optimizer, tmp_path, memorised_model_dir, datasets):
    """Two steps: with AdamW both are first order; with the hybrid the first is AdamW and the second AdaZO."""
    overrides = {"optimizer": optimizer}
    if optimizer == "hybrid":
        overrides.update(hybrid_fo_steps=1, hybrid_zo_steps=1, zo_learning_rate=1e-3)
    args = config(NEW_METHODS[method], tmp_path, alpha=0.5, **overrides)
    trainer = get_method(method)(str(memorised_model_dir), args, train_dataset=datasets["pairs"])
    assert (trainer.ref_model is not None) == (method == "undial")  # no reference model that the loss never reads
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2 and all(math.isfinite(e["loss/forget"]) and math.isfinite(e["loss"]) for e in logs)
    if optimizer == "hybrid":
        assert [e["optim/phase"] for e in logs] == [0, 1]
        assert logs[1]["zo/projected_grad"] != 0
    end = dict(trainer.model.named_parameters())
    assert [n for n in start if torch.equal(start[n], end[n].detach())] == []


@pytest.mark.parametrize(
    "method,optimizer", [("undial", "sam"), ("ce_u", "fo_rs"), ("satimp", "sophia"), ("wga", "adazo")]
)
def test_two_steps_with_the_other_grades(method, optimizer, tmp_path, memorised_model_dir, datasets):
    """One more optimizer per method, so SAM, FO-RS, Sophia and pure ZO each drive one of the new losses."""
    args = config(NEW_METHODS[method], tmp_path, alpha=0.5, optimizer=optimizer)
    trainer = get_method(method)(str(memorised_model_dir), args, train_dataset=datasets["pairs"])
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2 and all(math.isfinite(e["loss"]) for e in logs)
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(start[n], p.detach())]
    assert len(moved) == len(start)


def test_reference_is_built_only_when_read(tmp_path, memorised_model_dir, datasets):
    for method in ("satimp", "wga", "ce_u"):
        args = config(NEW_METHODS[method], tmp_path, alpha=1.0, retain_loss="kl")
        trainer = get_method(method)(str(memorised_model_dir), args, train_dataset=datasets["pairs"])
        assert trainer.ref_model is not None
    args = config(UNDIALConfig, tmp_path, alpha=0.0)
    assert get_method("undial")(str(memorised_model_dir), args, train_dataset=datasets["pairs"]).ref_model is not None


def test_defaults_follow_the_papers_and_open_unlearning(tmp_path):
    undial, ceu = config(UNDIALConfig, tmp_path), config(CEUConfig, tmp_path)
    satimp, wga = config(SatImpConfig, tmp_path), config(WGAConfig, tmp_path)
    assert (undial.beta, undial.gamma, undial.alpha) == (10.0, 1.0, 0.0)
    assert (ceu.ignore_first_n_answer_tokens, ceu.alpha) == (1, 0.0)
    assert (satimp.beta1, satimp.beta2, satimp.gamma, satimp.alpha) == (5.0, 1.0, 1.0, 0.1)
    assert (wga.beta, wga.gamma, wga.alpha) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "config_cls,field,value,message",
    [
        (UNDIALConfig, "beta", 0.0, "beta must be > 0, got 0.0"),
        (CEUConfig, "ignore_first_n_answer_tokens", -1, "ignore_first_n_answer_tokens must be an integer >= 0"),
        (CEUConfig, "ignore_first_n_answer_tokens", 1.5, "ignore_first_n_answer_tokens must be an integer >= 0"),
        (SatImpConfig, "beta1", -1.0, "beta1 must be >= 0, got -1.0"),
        (SatImpConfig, "beta2", float("nan"), "beta2 must be >= 0, got nan"),
        (WGAConfig, "beta", -0.5, "beta must be >= 0, got -0.5"),
    ],
)
def test_bad_hyperparameters_fail_in_one_line(config_cls, field, value, message, tmp_path):
    with pytest.raises(ValueError, match=f"^{message}"):
        config(config_cls, tmp_path, **{field: value})


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ce_u", "undial"])
def test_ddp_hybrid_matches_one_process_with_the_same_global_batch(method, tmp_path):
    """Two processes × batch 2 against one process × batch 4, two AdamW then two AdaZO steps: CE-U's token count
    (trimmed labels, gathered over processes) and UNDIAL's teacher forward on each rank must give the same run."""
    from tests.scripts.optim_fixtures import save_npo_model
    from tests.test_distributed_optim import ROOT, _run

    script = ROOT / "tests" / "scripts" / "hybrid_method_run.py"
    model_path = save_npo_model(tmp_path / "model")
    ddp = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    ddp += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    _run(
        lambda port: [
            *ddp,
            "--main_process_port",
            str(port),
            str(script),
            method,
            model_path,
            str(tmp_path / "ddp"),
            "2",
        ],
        300,
    )
    _run(lambda port: [sys.executable, str(script), method, model_path, str(tmp_path / "single"), "4"], 300)
    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "single" / "rank0.pt")
    logs, single_logs = (json.loads((tmp_path / run / "logs0.json").read_text()) for run in ("ddp", "single"))
    assert [log["optim/phase"] for log in logs] == [0, 0, 1, 1]
    assert [log["loss/forget"] for log in logs] == pytest.approx([log["loss/forget"] for log in single_logs], rel=1e-5)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], single[name], rtol=0, atol=1e-6)
