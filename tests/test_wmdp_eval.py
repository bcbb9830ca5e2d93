import json

import huggingface_hub
import pytest
import torch

from hf_unlearn import benchmarks
from hf_unlearn.benchmarks.wmdp import local_task_config
from hf_unlearn.report import UnlearnReport
from hf_unlearn.tiny import tiny_model_and_tokenizer


pytest.importorskip("lm_eval")

QUESTIONS = [
    ("Which organelle makes ATP?", ["Nucleus", "Mitochondrion", "Ribosome", "Golgi body"], 1),
    ("Which molecule carries genetic code?", ["DNA", "Lipid", "Starch", "Keratin"], 0),
    ("What do antibodies bind?", ["Antigens", "Neurons", "Bones", "Salts"], 0),
    ("Which cells carry oxygen?", ["Platelets", "Neurons", "Red blood cells", "Osteocytes"], 2),
    ("Which port does HTTPS use?", ["21", "22", "80", "443"], 3),
    ("What does a firewall filter?", ["Heat", "Network traffic", "Light", "Sound"], 1),
]


def write_jsonl(path, rows, subject=None):
    """Rows as the Hub's files hold them; `subject` (cais/mmlu's column) is added to every row when given."""
    extra = {"subject": subject} if subject else {}
    path.write_text(
        "".join(json.dumps({**extra, "question": q, "choices": c, "answer": a}) + "\n" for q, c, a in rows)
    )


@pytest.fixture(scope="module")
def model_and_tokenizer():
    texts = [q + " " + " ".join(c) + " Answer: A B C D" for q, c, _ in QUESTIONS]
    return tiny_model_and_tokenizer(texts, vocab_size=300, seed=5)


def choice_loglikelihoods(model, tokenizer, context, choices=("A", "B", "C", "D")):
    """log p(" X" | context) for each letter, with the context/continuation split of lm-eval's HFLM."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    values = []
    for letter in choices:
        whole = tokenizer(context + " " + letter, add_special_tokens=False)["input_ids"]
        logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), dim=-1)
        values.append(sum(logp[t - 1, whole[t]].item() for t in range(len(context_ids), len(whole))))
    return values


def test_local_multiple_choice_tasks_give_hand_computed_accuracy(tmp_path, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    write_jsonl(tmp_path / "wmdp_bio.json", QUESTIONS[:4])
    write_jsonl(tmp_path / "wmdp_cyber.json", QUESTIONS[4:])
    result = benchmarks.get("wmdp", tasks=["wmdp_bio", "wmdp_cyber"], data_dir=tmp_path, batch_size=4).evaluate(
        model, tokenizer
    )
    assert result.num_examples == {"wmdp_bio": 4, "wmdp_cyber": 2}
    for task, rows in (("wmdp_bio", QUESTIONS[:4]), ("wmdp_cyber", QUESTIONS[4:])):
        description = local_task_config(task, tmp_path)["description"]
        correct = 0
        for record, (question, choices, answer) in zip(result.per_example[task], rows):
            context = description + f"{question}\n" + "".join(f"{L}. {c}\n" for L, c in zip("ABCD", choices))
            expected = choice_loglikelihoods(model, tokenizer, context + "Answer:")
            assert record["loglikelihoods"] == pytest.approx(expected, abs=1e-4)
            assert record["target"] == answer
            correct += max(range(4), key=lambda i: expected[i]) == answer
        assert result.metrics[f"{task}_acc"] == pytest.approx(correct / len(rows))


def test_packaged_demo_task_and_limit(model_and_tokenizer):
    from hf_unlearn.benchmarks.wmdp import TASKS_DIR

    model, tokenizer = model_and_tokenizer
    result = benchmarks.get("wmdp", tasks=["mc_demo_local"], limit=5).evaluate(model, tokenizer)
    assert result.num_examples == {"mc_demo": 5}
    rows = [json.loads(line) for line in (TASKS_DIR / "mc_demo.json").read_text().splitlines()][:5]
    description = local_task_config("mc_demo_local")["description"]
    correct = 0
    for row in rows:  # the accuracy by hand, from our own log-likelihoods, never from lm-eval's records
        context = description + f"{row['question']}\n" + "".join(f"{L}. {c}\n" for L, c in zip("ABCD", row["choices"]))
        expected = choice_loglikelihoods(model, tokenizer, context + "Answer:")
        correct += max(range(4), key=lambda i: expected[i]) == row["answer"]
    assert result.metrics["mc_demo_acc"] == pytest.approx(correct / 5)


def test_missing_local_file_and_offline_builtin_task_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="wmdp_cyber.json: JSON Lines"):
        benchmarks.get("wmdp", tasks=["wmdp_cyber"], data_dir=tmp_path).task_specs()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    with pytest.raises(RuntimeError, match="reads the Hub, which is switched off"):
        benchmarks.get("wmdp", tasks=["mmlu"]).task_specs()
    with pytest.raises(ValueError, match="No local task 'nope_local'"):
        local_task_config("nope")


# Rows per subject of different sizes: a size-weighted mean of the subjects differs from their plain mean.
MMLU_ROWS = {"abstract_algebra": QUESTIONS[:1], "anatomy": QUESTIONS[1:4], "computer_security": QUESTIONS[4:6]}


def lm_eval_mmlu_subject(subject: str, data_file) -> dict:
    """lm-eval's own config of its `mmlu_<subject>` task (lm_eval/tasks/mmlu/default/mmlu_<subject>.yaml and its
    _default_template_yaml), reading `data_file` in place of the Hub's cais/mmlu."""
    from pathlib import Path

    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    folder = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    config = load_yaml(folder / f"mmlu_{subject}.yaml")
    config.pop("tag", None)
    # Zero-shot: the few-shot split (lm-eval's "dev") is never drawn from, but the task wants one to exist.
    files = {"test": str(data_file), "dev": str(data_file)}
    return {**config, "dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files}}


def test_local_mmlu_equals_lm_eval_mmlu_per_row_and_in_aggregate(tmp_path, model_and_tokenizer):
    """Our offline mmlu against lm-eval's own mmlu subject tasks and its group aggregation (weight_by_size, from
    lm_eval/tasks/mmlu/default/_mmlu.yaml), run by lm-eval's HFLM on the same rows."""
    from pathlib import Path

    import lm_eval
    from lm_eval import simple_evaluate
    from lm_eval.api.group import Group
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    model, tokenizer = model_and_tokenizer
    local = tmp_path / "mmlu.json"
    local.write_text("".join(json.dumps({"subject": subject, "question": q, "choices": c, "answer": a}) + "\n"
                             for subject, rows in MMLU_ROWS.items() for q, c, a in rows))  # fmt: skip
    ours = benchmarks.get("wmdp", tasks=["mmlu"], data_dir=tmp_path, batch_size=4).evaluate(model, tokenizer)

    group_yaml = load_yaml(Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default" / "_mmlu.yaml")
    reference = Group.from_config({"group": "mmlu", "aggregate_metric_list": group_yaml["aggregate_metric_list"]})
    for subject, rows in MMLU_ROWS.items():
        write_jsonl(tmp_path / f"{subject}.json", rows, subject)
        reference.add(ConfigurableTask(config=lm_eval_mmlu_subject(subject, tmp_path / f"{subject}.json")))
    output = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4), tasks=[reference], num_fewshot=0,
        log_samples=True, bootstrap_iters=0, task_manager=TaskManager(include_defaults=False),
    )  # fmt: skip

    records = ours.per_example["mmlu"]
    assert ours.num_examples == {"mmlu": 6} and len(records) == 6
    position = 0
    for subject, rows in MMLU_ROWS.items():
        theirs = sorted(output["samples"][f"mmlu_{subject}"], key=lambda s: s["doc_id"])
        mine = records[position : position + len(rows)]
        position += len(rows)
        assert [r["task"] for r in mine] == [f"mmlu_local_{subject}"] * len(rows)
        for record, sample in zip(mine, theirs):
            assert record["loglikelihoods"] == pytest.approx([float(r[0]) for r in sample["filtered_resps"]], abs=1e-6)
            assert record["acc"] == sample["acc"]
    assert ours.metrics["mmlu_acc"] == pytest.approx(output["results"]["mmlu"]["acc,none"], abs=1e-12)
    subject_acc = {s: output["results"][f"mmlu_{s}"]["acc,none"] for s in MMLU_ROWS}
    sizes = {s: len(rows) for s, rows in MMLU_ROWS.items()}
    weighted = sum(subject_acc[s] * sizes[s] for s in MMLU_ROWS) / sum(sizes.values())
    assert ours.metrics["mmlu_acc"] == pytest.approx(weighted)  # the size-weighted mean of the subjects


def test_local_mmlu_describes_each_subject_as_lm_eval_does(tmp_path):
    write_jsonl(tmp_path / "mmlu.json", QUESTIONS[:2], "high_school_us_history")
    (task,) = local_task_config("mmlu", tmp_path)["task"]
    expected = lm_eval_mmlu_subject("high_school_us_history", tmp_path / "mmlu.json")
    assert task["description"] == expected["description"]
    assert (
        task["description"]
        == "The following are multiple choice questions (with answers) about high school us history.\n\n"
    )
    for key in ("doc_to_text", "doc_to_choice", "doc_to_target", "output_type", "metric_list"):
        assert task[key] == expected[key], key


def test_local_mmlu_without_subjects_fails_naming_the_line(tmp_path):
    write_jsonl(tmp_path / "mmlu.json", QUESTIONS[:2])
    with pytest.raises(ValueError, match=r"mmlu.json line 1 has no 'subject': lm-eval's mmlu describes each question"):
        local_task_config("mmlu", tmp_path)


def test_eval_cli_runs_a_local_task(tmp_path, model_and_tokenizer):
    from hf_unlearn.cli import main

    model, tokenizer = model_and_tokenizer
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "wmdp_bio.json", QUESTIONS)
    code = main(
        [
            "eval",
            "--model",
            str(tmp_path / "model"),
            "--benchmark",
            "wmdp",
            "--tasks",
            "wmdp_bio",
            "--data_dir",
            str(tmp_path / "data"),
            "--limit",
            "3",
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    evaluated = UnlearnReport.load(tmp_path / "out").evaluations["evaluated_model"]
    summary = {"metrics": evaluated.values, "num_examples": evaluated.num_examples}
    per_example = json.loads((tmp_path / "out" / "wmdp_per_example.json").read_text())["splits"]["wmdp_bio"]
    assert summary["num_examples"] == {"wmdp_bio": 3}
    assert summary["metrics"]["wmdp_bio_acc"] == pytest.approx(sum(r["acc"] for r in per_example) / 3)
    assert [r["target"] for r in per_example] == [answer for _, _, answer in QUESTIONS[:3]]


def _sharded_worker(rank, world_size, port, data_dir, out_dir, model, tokenizer):
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        scored = []
        model.register_forward_hook(lambda module, args, output: scored.append(output.logits.shape[0]))
        result = benchmarks.get("wmdp", tasks=["wmdp_bio", "wmdp_cyber"], data_dir=data_dir, batch_size=2).evaluate(
            model, tokenizer
        )
        record = {"metrics": result.metrics, "per_example": result.per_example, "scored": sum(scored)}
        (out_dir / f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_split_the_questions_and_agree_with_one(tmp_path, model_and_tokenizer):
    import socket

    import torch.multiprocessing as mp

    model, tokenizer = model_and_tokenizer
    write_jsonl(tmp_path / "wmdp_bio.json", QUESTIONS[:4])
    write_jsonl(tmp_path / "wmdp_cyber.json", QUESTIONS[4:])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children inherit the imported libraries and the model (spawn would re-import for ~10 s each).
    args = (2, port, tmp_path, tmp_path, model, tokenizer)
    mp.start_processes(_sharded_worker, args=args, nprocs=2, join=True, start_method="fork")
    scored = []
    hook = model.register_forward_hook(lambda module, args, output: scored.append(output.logits.shape[0]))
    single = benchmarks.get("wmdp", tasks=["wmdp_bio", "wmdp_cyber"], data_dir=tmp_path, batch_size=2).evaluate(
        model, tokenizer
    )
    hook.remove()
    expected = json.loads(json.dumps({"metrics": single.metrics, "per_example": single.per_example}))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for got in ranks:
        assert got["metrics"] == pytest.approx(expected["metrics"])
        for task, records in expected["per_example"].items():
            assert [(r["index"], r["target"], r["acc"]) for r in got["per_example"][task]] == [
                (r["index"], r["target"], r["acc"]) for r in records
            ]
            for mine, theirs in zip(got["per_example"][task], records):  # other batches, other float rounding
                assert mine["loglikelihoods"] == pytest.approx(theirs["loglikelihoods"], abs=1e-5)
    # each rank scored a share of the questions; together exactly what one process scores
    assert 0 < ranks[0]["scored"] < sum(scored) and ranks[0]["scored"] + ranks[1]["scored"] == sum(scored)
