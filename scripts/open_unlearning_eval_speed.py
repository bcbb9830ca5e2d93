"""open-unlearning's TOFU evaluator against hf_unlearn's, side by side on one saved model, in one run.

    python scripts/open_unlearning_eval_speed.py --open_unlearning path/to/open-unlearning \\
        --model path/to/model --tofu_dir "$HF_UNLEARN_TOFU_DIR" --ou_pythonpath path/to/ou_deps \\
        --rounds 2 --out ou_eval_speed.json

Each round runs both sides, alternating which goes first, each in fresh processes pinned to one thread
(OMP_NUM_THREADS=1 and torch.set_num_threads(1)):

* open-unlearning: its own entry point ``src/eval.py`` (hydra, its ``TOFUEvaluator`` and metrics) with its default
  TOFU metric suite. Forget quality and privleak read the retain model's logs, so, as open-unlearning's workflow has
  it, the retain model is evaluated first (a process of its own, keeping only the two metrics whose outputs the
  reference needs: ``forget_truth_ratio`` and ``privleak``, whose pre-compute ``mia_min_k`` lands in the logs), then
  the model with ``retain_logs_path`` pointing at those logs. The model stands in for the retain model too.
* hf_unlearn: ``TofuBenchmark.retain_statistics`` then ``TofuBenchmark.evaluate`` (as
  ``benchmarks_perf/tofu_full_eval.py::time_tofu_evaluation`` times them), in one process.

Both read the local TOFU JSON files (open-unlearning's dataset configs are pointed at them with hydra overrides:
``path: json``, ``data_files``), batch 32, greedy generation of up to 200 new tokens, and TOFU's plain QA format
(``Question: {q}\\nAnswer: `` + answer, prompt and answer tokenised as one text), or with ``--chat_template`` the
model's own chat template (``[user]`` + generation prompt, then ``[user, assistant]``; no system message of ours, so
a template's default one applies on both sides): open-unlearning's Llama-3.2-Instruct model config with its system
prompt unset, sdpa attention and float32. The JSON written holds, per round and
side, the evaluation stage (the ``Evaluator.evaluate`` calls / the retain statistics + evaluation) and the whole
processes, in wall and process-CPU seconds; medians, min-max and the ratio open-unlearning / hf_unlearn; and each
side's summary values side by side (they agree where the work is the same).

open-unlearning's extra dependencies (hydra-core, omegaconf, antlr4-python3-runtime, hydra_colorlog, colorlog) go on
``--ou_pythonpath`` for its processes only. Its package imports ``lm_eval`` at import time for an evaluator the TOFU
suite does not use; where ``lm_eval`` is not installed a stub that raises on use stands in for it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
PLAIN_TEMPLATE = "Question: {question}\nAnswer: "
# open-unlearning's model config for a model without a chat template (configs/model/phi-1_5.yaml): the same plain
# format; its template_args are checked against PLAIN_TEMPLATE before anything is timed.
OU_MODEL_CONFIG = "phi-1_5"
# With --chat_template: a model config that applies the tokenizer's chat template; its system prompt is unset (the
# template's own default then applies, as on our side) and its GPU settings replaced for CPU float32.
OU_CHAT_MODEL_CONFIG = "Llama-3.2-1B-Instruct"
OU_CHAT_OVERRIDES = (
    "model.template_args.system_prompt=null",
    "model.model_args.attn_implementation=sdpa",
    "model.model_args.torch_dtype=float32",
)
# The default suite's metrics that the retain model's logs are read for (configs/eval/tofu_metrics/forget_quality.yaml
# and privleak.yaml: retain_model_logs include forget_truth_ratio and mia_min_k).
OU_RETAIN_KEEP = ("forget_truth_ratio", "privleak")
BATCH_SIZE = 32
MAX_NEW_TOKENS = 200
# open-unlearning's logged metric (TOFU_EVAL.json key) -> hf_unlearn's summary metric of the same quantity.
SAME_QUANTITY = {
    "forget_Q_A_Prob": "forget_prob",
    "forget_Q_A_ROUGE": "forget_rouge_l_recall",
    "forget_truth_ratio": "forget_truth_ratio",
    "forget_quality": "forget_quality",
    "extraction_strength": "forget_extraction_strength",
    "mia_min_k": "mia_min_k_auc",
    "privleak": "privleak",
    "retain_Q_A_Prob": "retain_prob",
    "retain_Q_A_ROUGE": "retain_rouge_l_recall",
    "retain_Truth_Ratio": "retain_truth_ratio",
    "ra_Q_A_Prob_normalised": "real_authors_prob",
    "ra_Q_A_ROUGE": "real_authors_rouge_l_recall",
    "ra_Truth_Ratio": "real_authors_truth_ratio",
    "wf_Q_A_Prob_normalised": "world_facts_prob",
    "wf_Q_A_ROUGE": "world_facts_rouge_l_recall",
    "wf_Truth_Ratio": "world_facts_truth_ratio",
    "model_utility": "model_utility",
}
OU_ROUGE_SETS = {
    "forget_Q_A_ROUGE": "forget",
    "retain_Q_A_ROUGE": "retain",
    "ra_Q_A_ROUGE": "real_authors",
    "wf_Q_A_ROUGE": "world_facts",
}
TOFU_FILES = ("forget10_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed", "holdout10")


# --------------------------------------------------------------------------------------------------- checks
def check_args(args) -> None:
    """One-line errors for every input, before anything runs."""
    ou = Path(args.open_unlearning)
    if not (ou / "src" / "eval.py").is_file() or not (ou / "configs" / "eval.yaml").is_file():
        raise SystemExit(
            f"--open_unlearning {ou}: no src/eval.py and configs/eval.yaml there; pass a checkout of "
            "locuslab/open-unlearning (e.g. git --git-dir=<mirror> archive HEAD | tar -x -C DIR)."
        )
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"--model {args.model}: no config.json; pass a folder saved with save_pretrained.")
    files = tofu_files(args.forget_split)
    missing = [name for name in files if not (Path(args.tofu_dir) / f"{name}.json").is_file()]
    if missing:
        raise SystemExit(f"--tofu_dir {args.tofu_dir}: missing {', '.join(m + '.json' for m in missing)}.")
    if args.rounds < 1:
        raise SystemExit(f"--rounds {args.rounds}: give at least 1.")
    if args.max_examples is not None and args.max_examples < 1:
        raise SystemExit(f"--max_examples {args.max_examples}: give at least 1, or leave it out for every row.")
    if not any((Path(p) / "hydra" / "__init__.py").is_file() for p in pythonpath_entries(args.ou_pythonpath)):
        raise SystemExit(
            f"--ou_pythonpath {args.ou_pythonpath!r} holds no hydra package; install open-unlearning's extra needs "
            "there: pip install --target DIR --no-deps hydra-core==1.3.2 omegaconf==2.3.0 "
            "antlr4-python3-runtime==4.9.3 hydra_colorlog==1.2.0 colorlog."
        )
    if Path(args.out).exists() and not args.overwrite:
        raise SystemExit(f"--out {args.out} exists; pass --overwrite to replace it.")
    if not Path(args.out).resolve().parent.is_dir():
        raise SystemExit(f"--out {args.out}: its folder does not exist.")


def tofu_files(forget_split: str) -> tuple[str, ...]:
    number = forget_split.removeprefix("forget")
    return (f"forget{number}_perturbed", *TOFU_FILES[1:4], f"holdout{number}")


def pythonpath_entries(value: str | None) -> list[str]:
    return [p for p in (value or "").split(os.pathsep) if p]


# ------------------------------------------------------------------------------------------------ summary
def spread(values: list[float]) -> dict[str, float]:
    """Median and min-max of a list of seconds (or ratios)."""
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def summarise(rounds: list[dict]) -> dict:
    """Medians, min-max and ratios open-unlearning / hf_unlearn of each measure over the rounds.

    ``ratio_of_medians`` divides the two sides' medians; ``per_round_ratio`` is the spread of each round's own ratio
    (the two sides of a round ran back to back, so they saw the most similar load).
    """
    summary = {}
    for measure in ("eval_wall_s", "eval_cpu_s", "process_wall_s", "process_cpu_s"):
        ou = [r["open_unlearning"][measure] for r in rounds]
        ours = [r["hf_unlearn"][measure] for r in rounds]
        summary[measure] = {
            "open_unlearning": spread(ou),
            "hf_unlearn": spread(ours),
            "ratio_of_medians": round(statistics.median(ou) / statistics.median(ours), 3),
            "per_round_ratio": spread([a / b for a, b in zip(ou, ours)]),
        }
    return summary


def compare_values(ou_logs: dict, ours: dict) -> dict[str, dict]:
    """Each quantity both sides report: open-unlearning's aggregate beside ours, and their absolute difference."""
    rows = {}
    for key, our_key in SAME_QUANTITY.items():
        theirs = (ou_logs.get(key) or {}).get("agg_value")
        mine = ours.get(our_key)
        diff = abs(theirs - mine) if isinstance(theirs, int | float) and isinstance(mine, int | float) else None
        rows[key] = {"hf_unlearn_key": our_key, "open_unlearning": theirs, "hf_unlearn": mine, "abs_diff": diff}
    return rows


def mean_words(texts: list[str]) -> float:
    """Mean whitespace-separated words of generated texts: how much each side generated, tokenizer-free."""
    return round(sum(len(t.split()) for t in texts) / max(len(texts), 1), 2)


def ou_generated_words(ou_logs: dict) -> dict[str, float]:
    """open-unlearning's mean generated words per set, from its ROUGE metrics' logged generations."""
    out = {}
    for key, name in OU_ROUGE_SETS.items():
        rows = (ou_logs.get(key) or {}).get("value_by_index") or {}
        if rows:
            out[name] = mean_words([row["generation"] for row in rows.values()])
    return out


# ---------------------------------------------------------------------------------------- child processes
def run_child(argv: list[str], env: dict, log: Path) -> dict:
    """Run one process to its end; its wall seconds and CPU seconds (user + system, from the kernel's rusage)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.run(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited with {code}; end of {log}:\n" + "\n".join(tail))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def child_env(args, side: str) -> dict:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    if side == "open_unlearning":
        paths = [str(Path(args.open_unlearning) / "src"), *pythonpath_entries(args.ou_pythonpath)]
        paths += [args.lm_eval_stub] if args.lm_eval_stub else []
    else:
        paths = [str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def write_lm_eval_stub(folder: Path) -> str | None:
    """A stand-in ``lm_eval`` package where none is installed (open-unlearning imports it; TOFU never calls it)."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is not None:
        return None
    package = folder / "lm_eval"
    (package / "models").mkdir(parents=True)
    refuse = "raise ImportError('lm_eval is a stub here: install lm-eval for open-unlearning\\'s LMEvalEvaluator')"
    (package / "__init__.py").write_text(f"def simple_evaluate(*args, **kwargs):\n    {refuse}\n")
    (package / "tasks.py").write_text(
        f"class TaskManager:\n    def __init__(self, *args, **kwargs):\n        {refuse}\n"
    )
    (package / "models" / "__init__.py").write_text("")
    (package / "models" / "hf_vlms.py").write_text(
        f"class HFLM:\n    def __init__(self, *args, **kwargs):\n        {refuse}\n"
    )
    return str(folder)


def ou_base_overrides(args) -> list[str]:
    """Hydra overrides common to both open-unlearning runs: the model, CPU, float32, the suite's settings."""
    model = str(Path(args.model).resolve())
    chat = (
        [f"model={OU_CHAT_MODEL_CONFIG}", *OU_CHAT_OVERRIDES] if args.chat_template else [f"model={OU_MODEL_CONFIG}"]
    )
    return [
        *chat,
        f"model.model_args.pretrained_model_name_or_path={model}",
        f"model.tokenizer_args.pretrained_model_name_or_path={model}",
        "model.model_args.device_map=cpu",
        f"eval.tofu.forget_split={args.forget_split}",
        f"eval.tofu.holdout_split=holdout{args.forget_split.removeprefix('forget')}",
        f"eval.tofu.batch_size={BATCH_SIZE}",
        "eval.tofu.overwrite=true",
    ]


# ------------------------------------------------------------------------------------------------ workers
def worker_ou_plan(args) -> None:
    """Compose open-unlearning's config and write the overrides of both runs (data sources, retain suite)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import DictConfig, OmegaConf

    base = [*ou_base_overrides(args), "task_name=plan"]
    with initialize_config_dir(config_dir=str(Path(args.open_unlearning, "configs").resolve()), version_base=None):
        cfg = compose("eval.yaml", overrides=base)
    template = cfg.model.template_args
    if args.chat_template:
        if not template.apply_chat_template or template.get("system_prompt"):
            raise SystemExit(f"open-unlearning's {OU_CHAT_MODEL_CONFIG} config does not apply the bare chat template.")
    else:
        rendered = template.user_start_tag + "{question}" + template.user_end_tag + template.asst_start_tag
        if template.apply_chat_template or rendered != PLAIN_TEMPLATE:
            raise SystemExit(
                f"open-unlearning's {OU_MODEL_CONFIG} template renders {rendered!r}, not {PLAIN_TEMPLATE!r}."
            )
    data = []  # every dataset's hf_args, however deep under pre_compute it sits

    def walk(node, path):
        for key in node.keys():
            child = node[key]
            if key == "hf_args":
                data.append((".".join(path + [key]), OmegaConf.to_container(child, resolve=True)))
            elif isinstance(child, DictConfig):
                walk(child, path + [key])

    walk(cfg.eval.tofu.metrics, ["eval", "tofu", "metrics"])
    tofu_dir = Path(args.tofu_dir).resolve()
    split = "train" if args.max_examples is None else f"'train[:{args.max_examples}]'"  # quoted for hydra
    sources = []
    for path, hf_args in data:
        data_file = tofu_dir / f"{hf_args['name']}.json"
        sources += [
            f"{path}.path=json",
            f"{path}.name=null",
            f"+{path}.data_files={data_file}",
            f"{path}.split={split}",
        ]
    metrics = list(cfg.eval.tofu.metrics.keys())
    missing = [m for m in OU_RETAIN_KEEP if m not in metrics]
    if missing:
        raise SystemExit(f"open-unlearning's default TOFU suite has no {missing}; this script expects it to.")
    plan = {
        "prompt_boundary": prompt_boundary(args, tofu_dir),
        "base": base[:-1] + sources,
        "retain_drop": [f"~eval.tofu.metrics.{m}" for m in metrics if m not in OU_RETAIN_KEEP],
        "default_metrics": metrics,
        "datasets": {path.removeprefix("eval.tofu.metrics."): hf_args["name"] for path, hf_args in data},
        "template_args": OmegaConf.to_container(template, resolve=True),
    }
    Path(args.worker_out).write_text(json.dumps(plan, indent=1))


def prompt_boundary(args, tofu_dir: Path) -> dict:
    """How often the prompt's own tokens are not a prefix of prompt + answer's (the tokenizer merges across them).

    There the sides differ by one token: open-unlearning masks the first len(prompt tokens) positions and generates
    from the prompt's own tokens (its ``src/data/utils.py::preprocess_chat_instance``); hf_unlearn's labels start
    after the longest common prefix and it generates from that prefix.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    rows = [json.loads(line) for line in (tofu_dir / f"forget{args.forget_split[6:]}_perturbed.json").open()]
    merged = 0
    for row in rows:
        if args.chat_template:
            user = [{"role": "user", "content": row["question"]}]
            ids = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=False)
            full = tokenizer.apply_chat_template(
                [*user, {"role": "assistant", "content": row["answer"]}], tokenize=True, return_dict=False
            )
        else:
            prompt = PLAIN_TEMPLATE.format(question=row["question"])
            ids, full = tokenizer(prompt)["input_ids"], tokenizer(prompt + row["answer"])["input_ids"]
        merged += full[: len(ids)] != ids
    return {"forget_true_answers": len(rows), "prompt_tokens_not_a_prefix": merged}


def restore_chat_template_lists() -> None:
    """transformers 4.x's ``apply_chat_template(tokenize=True)`` return, a list of ids, for open-unlearning's code.

    open-unlearning pins transformers 4.45 and adds to that list (``chat_ids += [eos]``); transformers 5 returns a
    ``BatchEncoding`` unless ``return_dict=False``. Only that default changes; the tokens are the same.
    """
    from transformers import PreTrainedTokenizerBase

    original = PreTrainedTokenizerBase.apply_chat_template

    def as_list(self, conversation, *args, **kwargs):
        kwargs.setdefault("return_dict", False)
        return original(self, conversation, *args, **kwargs)

    PreTrainedTokenizerBase.apply_chat_template = as_list


def worker_ou_run(args) -> None:
    """open-unlearning's ``src/eval.py`` as it runs from its command line, with its evaluate calls timed."""
    import runpy

    import torch

    torch.set_num_threads(1)
    import evals.base

    timings = []
    evaluate = evals.base.Evaluator.evaluate

    def timed(self, *a, **k):
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return evaluate(self, *a, **k)
        finally:
            timings.append({"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu})

    evals.base.Evaluator.evaluate = timed
    restore_chat_template_lists()
    script = str(Path(args.open_unlearning, "src", "eval.py").resolve())
    sys.argv = [script, *json.loads(Path(args.worker_in).read_text())]
    runpy.run_path(script, run_name="__main__")
    if len(timings) != 1:
        raise SystemExit(f"expected one Evaluator.evaluate call, saw {len(timings)}.")
    Path(args.worker_out).write_text(json.dumps(timings[0]))


def qa_format(args):
    from hf_unlearn.data import QAFormat

    return (
        QAFormat(use_chat_template=True)
        if args.chat_template
        else QAFormat(template=PLAIN_TEMPLATE, use_chat_template=False)
    )


def worker_ours(args) -> None:
    """hf_unlearn's retain statistics + evaluation of the model, timed as the tofu_full_eval bench times them."""
    import torch

    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks_perf.tofu_full_eval import time_tofu_evaluation

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    wall, cpu, result = time_tofu_evaluation(
        model, tokenizer, args.tofu_dir, args.forget_split, BATCH_SIZE, MAX_NEW_TOKENS,
        qa_format=qa_format(args), max_examples=args.max_examples,
    )  # fmt: skip
    report = {
        "wall_s": wall,
        "cpu_s": cpu,
        "metrics": result.metrics,
        "num_examples": result.num_examples,
        "timings": result.config.get("timings"),
        "qa_format": result.config.get("qa_format"),
        "generated_words": {
            name: mean_words([r["generation"] for r in rows])
            for name, rows in result.per_example.items()
            if rows and "generation" in rows[0]
        },
    }
    Path(args.worker_out).write_text(json.dumps(report))


# ---------------------------------------------------------------------------------------------------- run
def run_open_unlearning(args, plan: dict, folder: Path, env: dict) -> tuple[dict, dict]:
    """The retain-model run then the model's run; (timings, the model run's TOFU_EVAL.json logs)."""
    retain_dir, eval_dir = folder / "retain", folder / "eval"
    runs = {
        "retain": [*plan["base"], *plan["retain_drop"], f"paths.output_dir={retain_dir}", "task_name=retain"],
        "eval": [
            *plan["base"], f"paths.output_dir={eval_dir}", "task_name=eval",
            f"eval.tofu.retain_logs_path={retain_dir / 'TOFU_EVAL.json'}",
        ],
    }  # fmt: skip
    totals = {"eval_wall_s": 0.0, "eval_cpu_s": 0.0, "process_wall_s": 0.0, "process_cpu_s": 0.0}
    parts = {}
    for name, overrides in runs.items():
        (folder / f"{name}_overrides.json").write_text(json.dumps(overrides))
        argv = worker_argv(args, "ou_run", folder / f"{name}_timing.json", folder / f"{name}_overrides.json")
        process = run_child(argv, env, folder / f"{name}.log")
        stage = json.loads((folder / f"{name}_timing.json").read_text())
        parts[name] = {"eval_wall_s": stage["wall_s"], "eval_cpu_s": stage["cpu_s"], **_process(process)}
        for key in totals:
            totals[key] += parts[name][key]
    logs = json.loads((eval_dir / "TOFU_EVAL.json").read_text())
    return {**totals, "runs": parts}, logs


def run_ours(args, folder: Path, env: dict) -> tuple[dict, dict]:
    argv = worker_argv(args, "ours", folder / "ours.json")
    process = run_child(argv, env, folder / "ours.log")
    report = json.loads((folder / "ours.json").read_text())
    timing = {"eval_wall_s": report["wall_s"], "eval_cpu_s": report["cpu_s"], **_process(process)}
    return {**timing, "stages_cpu_s": report["timings"]["stages_cpu_s"]}, report


def _process(measured: dict) -> dict:
    return {"process_wall_s": measured["wall_s"], "process_cpu_s": measured["cpu_s"]}


def worker_argv(args, worker: str, out: Path, worker_in: Path | None = None) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--worker_out", str(out)]
    argv += ["--open_unlearning", args.open_unlearning, "--model", args.model, "--tofu_dir", args.tofu_dir]
    argv += ["--forget_split", args.forget_split] + (["--chat_template"] if args.chat_template else [])
    argv += ["--max_examples", str(args.max_examples)] if args.max_examples is not None else []
    return argv + (["--worker_in", str(worker_in)] if worker_in else [])


def work_done(plan: dict, ou_logs: dict, ours: dict) -> dict:
    """What each side computed: open-unlearning's metric keys and row counts, ours' sets and summary metrics."""
    counts = {
        k: len(v["value_by_index"]) for k, v in ou_logs.items() if isinstance(v, dict) and v.get("value_by_index")
    }
    return {
        "prompt_boundary": plan.get("prompt_boundary"),
        "open_unlearning": {
            "default_metrics": plan["default_metrics"],
            "logged_metrics_with_rows": counts,
            "datasets": plan["datasets"],
            "retain_run_keeps": list(OU_RETAIN_KEEP),
            "template_args": plan["template_args"],
            "generated_words_mean": ou_generated_words(ou_logs),
        },
        "hf_unlearn": {
            "sets_rows": ours["num_examples"],
            "summary_metrics": sorted(ours["metrics"]),
            "qa_format": ours["qa_format"],
            "generated_words_mean": ours.get("generated_words"),
            "retain_statistics": "forget set scored (answer, paraphrase, perturbed) + holdout (answer)",
        },
    }


def main(argv: list[str] | None = None) -> dict | None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--open_unlearning", required=True, help="A checkout of locuslab/open-unlearning.")
    cli.add_argument("--model", required=True, help="A saved HF model + tokenizer folder (a TOFU fine-tuned model).")
    cli.add_argument(
        "--chat_template",
        action="store_true",
        help="Both sides format with the model's chat template, not the plain one.",
    )
    cli.add_argument("--tofu_dir", required=True, help="Local TOFU <config>.json files.")
    cli.add_argument("--rounds", type=int, default=2, help="Alternating rounds of both sides.")
    cli.add_argument("--out", default="ou_eval_speed.json", help="Where the JSON goes.")
    cli.add_argument("--overwrite", action="store_true", help="Replace --out if it exists.")
    cli.add_argument("--ou_pythonpath", default="", help="open-unlearning's extra packages (hydra, ...).")
    cli.add_argument("--forget_split", default="forget10", choices=["forget01", "forget05", "forget10"])
    cli.add_argument("--max_examples", type=int, default=None, help="First N rows of each set (smoke runs).")
    cli.add_argument("--work_dir", default=None, help="Where runs write logs (default: a new temporary folder).")
    cli.add_argument("--worker", choices=["ou_plan", "ou_run", "ours"], help=argparse.SUPPRESS)
    cli.add_argument("--worker_out", help=argparse.SUPPRESS)
    cli.add_argument("--worker_in", help=argparse.SUPPRESS)
    args = cli.parse_args(argv)
    if args.worker:
        {"ou_plan": worker_ou_plan, "ou_run": worker_ou_run, "ours": worker_ours}[args.worker](args)
        return None
    check_args(args)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ou_eval_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    args.lm_eval_stub = write_lm_eval_stub(work / "stub") if not (work / "stub").exists() else str(work / "stub")
    ou_env, our_env = child_env(args, "open_unlearning"), child_env(args, "hf_unlearn")
    run_child(worker_argv(args, "ou_plan", work / "plan.json"), ou_env, work / "plan.log")
    plan = json.loads((work / "plan.json").read_text())
    rounds, result = [], None
    for index in range(args.rounds):
        order = ("open_unlearning", "hf_unlearn") if index % 2 == 0 else ("hf_unlearn", "open_unlearning")
        record = {"order": list(order), "loadavg_start": os.getloadavg()[0]}
        for side in order:
            folder = work / f"round{index}_{side}"
            folder.mkdir()
            if side == "open_unlearning":
                record[side], ou_logs = run_open_unlearning(args, plan, folder, ou_env)
            else:
                record[side], ours = run_ours(args, folder, our_env)
            print(f"round {index} {side}: {json.dumps(_rounded(record[side]))}", flush=True)
        record["loadavg_end"] = os.getloadavg()[0]
        rounds.append(_rounded(record))
        result = build_result(
            args, work, rounds, compare_values(ou_logs, ours["metrics"]), work_done(plan, ou_logs, ours)
        )
        write_json(Path(args.out), result)  # after every round, so a run cut short keeps what it measured
    print(json.dumps(result["summary"], indent=1))
    return result


def build_result(args, work: Path, rounds: list[dict], values: dict, done: dict) -> dict:
    return {
        "what": "TOFU evaluation, open-unlearning's evaluator (its src/eval.py) vs hf_unlearn's TofuBenchmark",
        "settings": {
            "model": str(Path(args.model).resolve()),
            "tofu_dir": str(Path(args.tofu_dir).resolve()),
            "forget_split": args.forget_split,
            "max_examples": args.max_examples,
            "qa_format": "chat template" if args.chat_template else PLAIN_TEMPLATE,
            "batch_size": BATCH_SIZE,
            "max_new_tokens": MAX_NEW_TOKENS,
            "threads": 1,
            "rounds_asked": args.rounds,
            "rounds_done": len(rounds),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "work_dir": str(work),
        },
        "measures": {
            "eval_*": "open-unlearning: its Evaluator.evaluate calls (retain-model run + model run); hf_unlearn: "
            "retain_statistics + evaluate",
            "process_*": "whole processes from launch to exit (open-unlearning: its two processes together)",
            "*_cpu_s": "process CPU seconds (user + system); compare these when the machine is shared",
        },
        "summary": summarise(rounds),
        "rounds": rounds,
        "values_side_by_side": values,
        "work": done,
    }


def write_json(path: Path, value: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=1))
    temporary.replace(path)


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


if __name__ == "__main__":
    main()
