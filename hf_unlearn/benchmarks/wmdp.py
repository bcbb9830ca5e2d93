"""WMDP (Li et al., 2024) and MMLU multiple-choice accuracy through lm-eval, on the in-memory model.

Tasks are lm-eval's built-in ``wmdp_bio``, ``wmdp_cyber``, ``mmlu`` (they read the Hub), or the offline twins shipped
in ``hf_unlearn/benchmarks/tasks/<name>_local.yaml``: the same prompt and scoring, reading JSON Lines files
(``{"question", "choices", "answer"}`` per line, the Hub rows' format) from ``data_dir``. With ``data_dir`` set,
every requested task uses its local twin. Zero-shot accuracy (``acc``: the choice letter with the highest
log-likelihood).

In a multi-process run each rank scores its share of the questions: lm-eval splits documents by the model's
``rank``/``world_size`` and gathers the outcomes to rank 0 through the model's ``all_gather``/``gather_object``
hooks, which :func:`sharded_lm` points at torch.distributed (HFLM ignores ranks for an already-loaded model); rank 0
then broadcasts the result, so every rank returns the same numbers.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hf_unlearn.benchmarks.base import Benchmark, BenchmarkResult, check_counts
from hf_unlearn.benchmarks.engine import require_pad_token
from hf_unlearn.benchmarks.sharding import process_info
from hf_unlearn.loading import hub_offline
from hf_unlearn.modeling import eval_mode


TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DEFAULT_TASKS = ("wmdp_bio", "wmdp_cyber", "mmlu")
LOCAL_SUFFIX = "_local"


def local_task_names() -> list[str]:
    """Names of the packaged offline tasks (``wmdp_bio_local``, ...)."""
    return sorted(p.stem for p in TASKS_DIR.glob(f"*{LOCAL_SUFFIX}.yaml"))


def local_task_config(name: str, data_dir: str | Path | None = None) -> dict[str, Any]:
    """The lm-eval config dict of a packaged local task, its data file resolved against ``data_dir``.

    ``name`` may be the built-in name (``wmdp_bio``) or the local one (``wmdp_bio_local``). Without ``data_dir``
    the file is looked up beside the YAML (packaged demo data). A task whose YAML has a ``subject_task`` (``mmlu``)
    becomes a group config: one task per subject in the file (:func:`subject_group_config`).
    """
    local = name if name.endswith(LOCAL_SUFFIX) else name + LOCAL_SUFFIX
    path = TASKS_DIR / f"{local}.yaml"
    if not path.is_file():
        raise ValueError(f"No local task {local!r}; packaged local tasks: {', '.join(local_task_names())}.")
    config = yaml.safe_load(path.read_text())
    folder = Path(data_dir) if data_dir is not None else TASKS_DIR
    if "subject_task" in config:
        return subject_group_config(config, folder, local)
    _resolve_data_files(config["dataset_kwargs"]["data_files"], folder, local)
    return config


def _resolve_data_files(files: dict[str, str], folder: Path, task: str, row: str = "") -> None:
    for split, file_name in files.items():
        data_file = folder / file_name
        if not data_file.is_file():
            raise FileNotFoundError(
                f"Task {task} needs {data_file}: JSON Lines with one "
                f'{{{row}"question": str, "choices": [4 str], "answer": int}} per line.'
            )
        files[split] = str(data_file)


def subject_group_config(config: dict[str, Any], folder: Path, task: str) -> dict[str, Any]:
    """lm-eval's subject layout (its ``mmlu``): a group of one task per subject, each described by its subject.

    The YAML's ``subject_task`` is the template of a subject's task: ``{subject}`` in its name and
    ``{subject_words}`` (the subject with spaces for underscores, as lm-eval writes it) in its description are
    filled in, and it keeps the rows whose ``subject_field`` is that subject. The group's ``aggregate_metric_list``
    (``weight_by_size``) makes its accuracy the size-weighted mean of the subjects', as lm-eval reports ``mmlu``.
    """
    template, field_name = config.pop("subject_task"), config.pop("subject_field")
    files = template["dataset_kwargs"]["data_files"]
    _resolve_data_files(files, folder, task, row=f'"{field_name}": str, ')
    (split, data_file), *_ = files.items()
    tasks = []
    for subject in file_subjects(data_file, field_name):
        spec = copy.deepcopy(template)
        spec["task"] = template["task"].replace("{subject}", subject)
        spec["description"] = template["description"].replace("{subject_words}", " ".join(subject.split("_")))
        spec["process_docs"] = functools.partial(rows_of_subject, field_name=field_name, subject=subject)
        tasks.append(spec)
    return {**config, "task": tasks}


def file_subjects(path: str | Path, field_name: str) -> list[str]:
    """The subjects of a JSON Lines file, sorted (lm-eval's order); a line without one is a one-line error."""
    import json

    subjects = set()
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        subject = json.loads(line).get(field_name)
        if not isinstance(subject, str) or not subject:
            raise ValueError(
                f"{path} line {number} has no {field_name!r}: lm-eval's mmlu describes each question by its subject; "
                f'add it to every line (cais/mmlu\'s subject names, e.g. "{field_name}": "abstract_algebra").'
            )
        subjects.add(subject)
    return sorted(subjects)


def rows_of_subject(dataset, field_name: str, subject: str):
    """The rows of one subject (lm-eval's ``process_docs`` of a subject's task)."""
    return dataset.filter(_is_subject, fn_kwargs={"field_name": field_name, "subject": subject})


def _is_subject(row: dict[str, Any], field_name: str, subject: str) -> bool:
    return row[field_name] == subject


def lm_eval_spec(spec: str | dict[str, Any]):
    """What ``simple_evaluate`` takes for one task spec: a group config becomes lm-eval's ``Group`` of
    ``ConfigurableTask`` (lm-eval reads inline group dicts as task settings); names and task dicts pass through."""
    if not (isinstance(spec, dict) and "group" in spec):
        return spec
    from lm_eval.api.group import Group
    from lm_eval.api.task import ConfigurableTask

    group = Group.from_config({k: v for k, v in spec.items() if k != "task"})
    for task in spec["task"]:
        group.add(ConfigurableTask(config=task))
    return group


def spec_name(spec: str | dict[str, Any]) -> str:
    return spec if isinstance(spec, str) else spec.get("group") or spec["task"]


def _hub_unreachable() -> bool:
    """The Hub is off for huggingface_hub, or for datasets (``HF_DATASETS_OFFLINE``), through which lm-eval reads."""
    from datasets import config

    return hub_offline() or bool(config.HF_HUB_OFFLINE)


@dataclass
class WmdpSettings:
    """The settings of a WMDP / MMLU evaluation (``hf-unlearn eval --benchmark wmdp`` flags, recipe keys)."""

    tasks: list[str] | None = field(
        default=None,
        metadata={
            "help": "Task names: built-in lm-eval names, or <name>_local for the packaged offline twins "
            f"(default {' '.join(DEFAULT_TASKS)})."
        },
    )
    data_dir: str | Path | None = field(
        default=None,
        metadata={
            "help": "Folder with wmdp_bio.json / wmdp_cyber.json / mmlu.json (JSON Lines); when set, every task "
            "runs from its local twin."
        },
    )
    batch_size: int = field(default=16, metadata={"help": "lm-eval batch size."})
    limit: int | None = field(
        default=None,
        metadata={"help": "At most this many questions per task (None: all).", "aliases": ("max_examples",)},
    )

    def __post_init__(self):
        check_counts(batch_size=self.batch_size, limit=self.limit)
        self.tasks = list(self.tasks or DEFAULT_TASKS)


class WmdpBenchmark(Benchmark):
    """Zero-shot multiple-choice accuracy via ``lm_eval.simple_evaluate`` with ``HFLM(pretrained=<model>)``.

    Settings: :class:`WmdpSettings` (as keywords, or one ``WmdpSettings``), kept as ``self.args``. lm-eval draws
    its own progress bars.
    """

    name = "wmdp"
    settings_class = WmdpSettings

    def task_specs(self) -> list[str | dict[str, Any]]:
        """What is handed to lm-eval: config dicts for local tasks, names for built-in ones."""
        specs: list[str | dict[str, Any]] = []
        for task in self.args.tasks:
            if self.args.data_dir is not None or task.endswith(LOCAL_SUFFIX):
                specs.append(local_task_config(task, self.args.data_dir))
            elif _hub_unreachable():
                raise RuntimeError(
                    f"Task {task!r} reads the Hub, which is switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); "
                    f"pass data_dir (--data_dir) with local JSON files or use {task}{LOCAL_SUFFIX}."
                )
            else:
                specs.append(task)
        return specs

    def evaluate(self, model, tokenizer) -> BenchmarkResult:
        """Accuracy per task (``<task>_acc``, ``_local`` dropped from the name) and each question's outcome."""
        start = time.perf_counter()
        require_pad_token(tokenizer)
        specs = self.task_specs()
        payload = self._run(model, tokenizer, specs)  # the full result on rank 0, None elsewhere
        if process_info()[1] > 1:
            import torch.distributed as dist

            box = [payload]
            dist.broadcast_object_list(box, src=0)
            payload = box[0]
        metrics, per_example, counts = payload
        return BenchmarkResult(
            benchmark=self.name,
            metrics=metrics,
            per_example=per_example,
            config={
                "tasks": self.args.tasks,
                "data_dir": str(self.args.data_dir) if self.args.data_dir else None,
                "limit": self.args.limit,
                "num_fewshot": 0,
            },
            num_examples=counts,
            runtime_s=time.perf_counter() - start,
        )

    def _run(self, model, tokenizer, specs):
        try:
            from lm_eval import simple_evaluate
        except ImportError as err:
            raise ImportError("WMDP/MMLU evaluation needs lm-eval: pip install 'hf_unlearn[eval]'.") from err

        from lm_eval.tasks import TaskManager

        # Indexing lm-eval's thousands of built-in YAMLs takes seconds; local configs need none of them.
        task_manager = TaskManager(include_defaults=any(isinstance(spec, str) for spec in specs))
        with eval_mode(model):
            lm = sharded_lm(model, tokenizer, self.args.batch_size)
            output = simple_evaluate(
                model=lm,
                tasks=[lm_eval_spec(spec) for spec in specs],
                num_fewshot=0,
                limit=self.args.limit,
                log_samples=True,
                bootstrap_iters=0,
                task_manager=task_manager,
            )
        if output is None:  # lm-eval returns results on rank 0 only
            return None
        samples = output.get("samples", {})
        metrics, per_example, counts = {}, {}, {}
        for spec in specs:  # the requested tasks and groups; a group's subjects are in its per-example records
            name = spec_name(spec)
            values = output["results"].get(name, {})
            if "acc,none" not in values:
                continue
            short = name.removesuffix(LOCAL_SUFFIX)
            metrics[f"{short}_acc"] = float(values["acc,none"])
            members = [t["task"] for t in spec["task"]] if isinstance(spec, dict) and "group" in spec else [name]
            if all(member in samples for member in members):
                records = []
                for member in members:
                    subject = {"task": member} if member != name else {}
                    ordered = sorted(samples[member], key=lambda s: s["doc_id"])
                    records += [{**subject, **sample_record(s)} for s in ordered]
                per_example[short] = records
                counts[short] = len(records)
        return metrics, per_example, counts


def sharded_lm(model, tokenizer, batch_size: int):
    """lm-eval's HFLM around the in-memory model, scoring this rank's share of the documents."""
    import torch
    import torch.distributed as dist
    from lm_eval.models.huggingface import HFLM

    class ShardedHFLM(HFLM):
        def all_gather(self, tensor):
            if self.world_size <= 1:
                return tensor
            tensor = tensor.reshape(1) if tensor.ndim == 0 else tensor
            parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
            dist.all_gather(parts, tensor)
            return torch.cat(parts)

        def barrier(self):
            if self.world_size > 1:
                dist.barrier()

    lm = ShardedHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    lm._rank, lm._world_size = process_info()
    return lm


def sample_record(sample: dict[str, Any]) -> dict[str, Any]:
    """One question's outcome from lm-eval's logged sample: target, per-choice log-likelihoods, correctness."""
    loglikelihoods = [float(resp[0]) for resp in sample["filtered_resps"]]
    return {
        "index": int(sample["doc_id"]),
        "target": int(sample["target"]),
        "loglikelihoods": loglikelihoods,
        "acc": float(sample["acc"]),
    }
