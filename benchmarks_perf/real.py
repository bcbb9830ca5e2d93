"""The real model's costs, each side by side in one run: `hf-unlearn bench --model smollm2-135m-instruct`.

At a stated shape (default 8 × 256 tokens per side), on chat-template examples (a long system message of author
facts, a question, a short answer), every comparison alternates its sides after a warm-up (``ratio.py``):

- a ZO-SGD step against two no-grad forwards of the same loss (one row per direction law, and per ZO option that
  exists, e.g. ``zo_cache_directions``); goal ≤ 1.05;
- ZO-SGD peak memory against inference (two no-grad forwards), each side in a fresh process; goal ≤ 1.05;
- an NPO step (cached reference, AdamW) against a plain SFT step (mean answer NLL, AdamW) on the same forget +
  retain rows; goal ≤ 1.05;
- a hybrid run (N AdamW steps then N AdaZO steps, NPO) against an AdamW run of as many steps; goal ≤ 0.90;
- scoring answers with logits over every position against logits from the first answer position on; no goal;
- the same for a training forward + backward of the mean answer NLL (what every objective trains on); no goal.

Every step goes through the library's trainer (``training_step`` then ``optimizer.step``), so what is timed is what
a run pays, and options the engine gains reach the bench through its config fields alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import torch

from benchmarks_perf import peak_rss_kb, subprocess_env
from benchmarks_perf.journal import Journal
from benchmarks_perf.ratio import alternate, compare, ratio_entry, timed


DEFAULT_MODEL = "smollm2-135m-instruct"
GOALS = {
    "zo_step": 1.05,
    "zo_memory": 1.05,
    "npo_step": 1.05,
    "hybrid_run": 0.90,
    "answer_only_scoring": None,
    "answer_only_training": None,
}
# Extra ZO rows: (row name, config fields). A row runs only when its fields exist in this version of the library, so
# a ZO option added to the engine (e.g. ``zo_cache_directions``) is benched by adding one line here.
ZO_VARIANTS = (
    ("zo_sgd_sphere", {"zo_direction": "sphere"}),
    ("zo_sgd_rademacher", {"zo_direction": "rademacher"}),
    ("zo_sgd_sphere_cached_directions", {"zo_direction": "sphere", "zo_cache_directions": True}),
    ("zo_sgd_rademacher_cached_directions", {"zo_direction": "rademacher", "zo_cache_directions": True}),
)
# --rows names -> the comparison each runs (cheapest first, the order of a run)
ROWS = {
    "scoring": "answer_only_vs_full_vocabulary_scoring",
    "training_head": "answer_only_vs_full_vocabulary_training",
    "npo_step": "npo_step_vs_sft_step",
    "zo_step": "zo_rows",
    "hybrid": "hybrid_run_vs_adamw_run",
    "zo_memory": "zo_sgd_peak_memory_vs_inference",
}
ROWS_BY_COMPARISON = {comparison: row for row, comparison in ROWS.items()}
MIN_SEQ_LEN = 64  # room for the chat template's markup, a question and a short answer


# ---- data ----------------------------------------------------------------------------------------------------------


def chat_examples(tokenizer, count: int, seq_len: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """``count`` QA examples of exactly ``seq_len`` tokens in the tokenizer's chat template.

    Each is a system message of facts about fictitious authors (the synthetic benchmark's), the question and its
    short answer: long prompts and short answers, as in TOFU-style unlearning. The prompt is cut from the left to
    the length (the answer, its closing token and the end of the prompt stay whole).
    """
    from hf_unlearn.benchmarks.synthetic import make_synthetic_tofu
    from hf_unlearn.data import IGNORE_INDEX, QAFormat, tokenize_qa

    rows = make_synthetic_tofu(num_authors=max(4, count), qa_per_author=8, seed=seed)["full"]
    facts = " ".join(row["answer"] for row in rows)
    examples = []
    for index in range(count):
        row = rows[(index * 7) % len(rows)]
        context = facts
        while True:
            fmt = QAFormat(system_prompt="Answer from these facts. " + context)
            example = tokenize_qa(tokenizer, row["question"], row["answer"], max_length=10**6, qa_format=fmt)
            if len(example["input_ids"]) >= seq_len:
                break
            context = context + " " + facts
        answer_tokens = sum(label != IGNORE_INDEX for label in example["labels"])
        if answer_tokens >= seq_len - 8:
            raise ValueError(f"seq_len={seq_len} leaves no room for a prompt; use at least {MIN_SEQ_LEN}.")
        examples.append({key: example[key][-seq_len:] for key in ("input_ids", "attention_mask", "labels")})
    return examples


def answer_tokens(examples) -> list[int]:
    from hf_unlearn.data import IGNORE_INDEX

    return [sum(label != IGNORE_INDEX for label in e["labels"]) for e in examples]


# ---- trainers driven one step at a time ----------------------------------------------------------------------------


def _config(output_dir: str, batch_size: int, **fields):
    from hf_unlearn.trainers import get_method

    defaults = {"output_dir": output_dir, "report_to": "none", "save_strategy": "no", "disable_tqdm": True,
                "per_device_train_batch_size": batch_size, "per_device_eval_batch_size": batch_size, "seed": 0,
                "learning_rate": 1e-6, "logging_steps": 10**6, "use_cpu": True, "max_steps": 10**6}  # fmt: skip
    return get_method("npo").config_class(**{**defaults, **fields})


def config_fields() -> set[str]:
    from hf_unlearn.trainers import get_method

    return {f.name for f in dataclasses.fields(get_method("npo").config_class)}


class Stepper:
    """An NPO trainer on ``model`` whose optimizer steps are run one at a time, as its training loop runs them."""

    def __init__(self, model, tokenizer, dataset, output_dir: str, batch_size: int, **fields):
        from hf_unlearn.trainers import get_method

        args = _config(output_dir, batch_size, **fields)
        self.trainer = get_method("npo")(model, args, train_dataset=dataset, processing_class=tokenizer)
        self.trainer.create_optimizer()
        self.trainer.current_gradient_accumulation_steps = 1

    def step(self, batch) -> None:
        trainer = self.trainer
        trainer.training_step(trainer.model, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.state.global_step += 1

    def no_grad_loss(self, batch) -> None:
        from hf_unlearn.modeling import eval_mode

        with eval_mode(self.trainer.model):
            self.trainer.compute_loss(self.trainer.model, batch)


@dataclasses.dataclass(frozen=True)
class Context:
    """What every comparison runs on: the model, its tokenizer and forget/retain data, a scratch folder for the
    trainers, the rows per side, the device the trainers place the run on (``cpu`` or ``cuda``) and the weights'
    dtype."""

    model: object
    tokenizer: object
    data: object
    out: str
    batch_size: int
    device: str = "cpu"
    dtype: str = "float32"

    @property
    def zo_fields(self) -> dict:
        """What a ZO step adds on these weights: on bf16, stochastic rounding of the in-place moves (without it
        updates below bf16's spacing vanish; fp32 masters would double the weights' memory, the cost ZO avoids)."""
        return {"zo_stochastic_rounding": True} if self.dtype == "bfloat16" else {}

    def config(self, **fields):
        """The trainer config of a run here (``fields`` over the bench's defaults)."""
        return _config(self.out, self.batch_size, **self._placed(fields))

    def stepper(self, **fields) -> Stepper:
        return Stepper(self.model, self.tokenizer, self.data, self.out, self.batch_size, **self._placed(fields))

    def _placed(self, fields: dict) -> dict:
        return {"use_cpu": self.device == "cpu", **fields}

    def on_device(self, batch: dict) -> dict:
        """``batch`` on the model's device (what the trainer's ``training_step`` does to its inputs)."""
        return {key: value.to(self.device) for key, value in batch.items()}


# ---- the comparisons -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rounds:
    """How every comparison is measured: alternating ``repeats`` after ``warmup`` rounds, on ``clock``, each value
    journaled when a ``journal`` is given (a stopped run resumes)."""

    repeats: int = 5
    warmup: int = 1
    clock: str = "cpu"
    journal: Journal | None = None

    def compare(self, a_name, a, b_name, b, goal, **setup) -> dict:
        """:func:`benchmarks_perf.ratio.compare` of two callables timed on this clock."""
        return compare(
            a_name, timed(a, self.clock), b_name, timed(b, self.clock), goal, self.repeats, self.warmup,
            journal=self.journal, **setup,
        )  # fmt: skip


def _zo_rows(ctx: Context, plain, rounds: Rounds) -> tuple[dict, list[str]]:
    available = config_fields()
    from hf_unlearn.optim.zo import DIRECTIONS

    variants = {
        name: fields
        for name, fields in ZO_VARIANTS
        if set(fields) <= available and fields.get("zo_direction", "sphere") in DIRECTIONS
    }
    reference = ctx.stepper(optimizer="adamw")
    sides = {"two_forwards": timed(lambda: [reference.no_grad_loss(plain) for _ in range(2)], rounds.clock)}
    for name, fields in variants.items():
        stepper = ctx.stepper(optimizer="zo_sgd", learning_rate=1e-7, **ctx.zo_fields, **fields)
        sides[name] = timed(lambda s=stepper: s.step(plain), rounds.clock)
    values = alternate(sides, rounds.repeats, rounds.warmup, rounds.journal, row="zo_rows")
    rows = {
        f"{name}_vs_two_forwards": ratio_entry(
            name,
            values[name],
            "two_forwards",
            values["two_forwards"],
            GOALS["zo_step"],
            warmup=rounds.warmup,
            **ctx.zo_fields,
            **fields,
        )
        for name, fields in variants.items()
    }
    skipped = [name for name, fields in ZO_VARIANTS if name not in variants]
    return rows, skipped


def _npo_row(ctx: Context, rounds: Rounds) -> dict:
    stepper = ctx.stepper(optimizer="adamw")
    collate, data, batch_size = stepper.trainer.data_collator, ctx.data, ctx.batch_size
    pairs = collate([data[i] for i in range(batch_size)])
    rows = [data[i]["forget"] for i in range(batch_size)] + [data[i]["retain"] for i in range(batch_size)]
    plain = collate([{k: v for k, v in row.items() if k != "index"} for row in rows])
    return rounds.compare(
        "npo_step", lambda: stepper.step(pairs), "sft_step", lambda: stepper.step(plain), GOALS["npo_step"],
        what="NPO (cached reference, beta 0.1, alpha 1) on B forget + B retain rows against the mean answer NLL of "
        "the same 2B rows in one batch; AdamW; the reference pass runs in NPO's first call (the warm-up, if any)",
    )  # fmt: skip


def _hybrid_row(ctx: Context, n: int, rounds: Rounds) -> dict:
    def run(**fields):
        from hf_unlearn.trainers import get_method

        args = ctx.config(max_steps=2 * n, **fields)
        get_method("npo")(ctx.model, args, train_dataset=ctx.data, processing_class=ctx.tokenizer).train()

    return rounds.compare(
        "hybrid_run", lambda: run(optimizer="hybrid", hybrid_fo_steps=n, **ctx.zo_fields), "adamw_run",
        lambda: run(optimizer="adamw"), GOALS["hybrid_run"], hybrid_fo_steps=n, steps=2 * n, **ctx.zo_fields,
        what=f"whole NPO runs (trainer.train(), fresh optimizer, cached reference pass included): {n} AdamW + {n} "
        f"AdaZO steps against {2 * n} AdamW steps",
    )  # fmt: skip


def _scoring_row(model, plain, rounds: Rounds) -> dict:
    from hf_unlearn.data import IGNORE_INDEX
    from hf_unlearn.modeling import eval_mode, token_nll

    labels = plain["labels"]
    scored = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero()
    start = int(scored[0])
    keep = labels.shape[1] - start
    results = {}

    def score(answer_only: bool):
        with eval_mode(model):
            if answer_only:
                logits = model(**_inputs(plain), logits_to_keep=keep).logits
                results["answer_only"] = float(token_nll(logits, labels[:, start:]).sum())
            else:
                results["full"] = float(token_nll(model(**_inputs(plain)).logits, labels).sum())

    entry = rounds.compare(
        "answer_only_logits", lambda: score(True), "full_vocabulary_logits", lambda: score(False),
        GOALS["answer_only_scoring"],
        positions_with_logits=keep, positions=labels.shape[1],
        what="answer NLL of B rows: the output head over the vocabulary at every position against only from the "
        "position before the first answer token on (logits_to_keep)",
    )  # fmt: skip
    for answer_only, key in ((True, "answer_only"), (False, "full")):
        if key not in results:  # every timing came from a resumed run's journal
            score(answer_only)
    entry["nll_sum_difference"] = abs(results["answer_only"] - results["full"])
    return entry


def _training_head_row(model, plain, rounds: Rounds) -> dict:
    from hf_unlearn.modeling import answer_token_nll, token_nll

    labels = plain["labels"]
    tokens = int((labels[:, 1:] != -100).sum())

    def step(answer_only: bool):
        model.zero_grad(set_to_none=True)
        nll = answer_token_nll(model, plain) if answer_only else token_nll(model(**_inputs(plain)).logits, labels)
        (nll.sum() / tokens).backward()

    was_training = model.training
    model.train()
    try:
        entry = rounds.compare(
            "answer_only_head", lambda: step(True), "full_vocabulary_head", lambda: step(False),
            GOALS["answer_only_training"],
            answer_tokens=tokens, positions=labels.numel(),
            what="forward + backward of the mean answer NLL of B rows: the output head on the answer positions only "
            "(hf_unlearn.modeling.answer_token_nll, what every objective trains on) against the head at every "
            "position",
        )  # fmt: skip
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return entry


def _inputs(batch):
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


# ---- peak memory, one fresh process per measurement ----------------------------------------------------------------

MEMORY_MODES = ("inference", "zo_sgd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DEVICES = ("cpu", "cuda")


def _memory_in_subprocess(
    mode: str, folder: str, batch_size: int, seq_len: int, threads: int, device: str = "cpu", dtype: str = "float32"
) -> float:
    """Peak memory (MB) of a fresh process running ``mode`` once, above what it held before the model loaded: RSS
    on a CPU, allocated GPU memory on CUDA."""
    # tensors above 128 KiB are mmap'd and unmapped when freed: RSS then follows live memory
    env = subprocess_env(MALLOC_MMAP_THRESHOLD_="131072")
    command = [sys.executable, "-m", "benchmarks_perf.real", "memory", mode, folder, str(batch_size), str(seq_len)]
    command += [str(threads), device, dtype]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the {mode} memory process failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_above_base_mb"]


def _memory_child(
    mode: str, folder: str, batch_size: int, seq_len: int, threads: int, device: str, dtype: str
) -> None:
    """Both modes import and build the same things before the baseline; only the model and its work follow it."""
    torch.set_num_threads(threads)
    import hf_unlearn.trainers  # noqa: F401  (the trainer's modules are in the baseline, as the interpreter is)
    from hf_unlearn.data import ForgetRetainDataset
    from hf_unlearn.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(folder)
    examples = chat_examples(tokenizer, 2 * batch_size, seq_len)
    data = ForgetRetainDataset(examples[:batch_size], examples[batch_size:], seed=0)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.init()  # the CUDA context is not the model's memory: created before the baseline
    with tempfile.TemporaryDirectory() as out:
        base = torch.cuda.memory_allocated() if cuda else _rss_kb() * 1024
        loaded = load_model(folder, dtype=DTYPES[dtype]).to(device)
        ctx = Context(loaded, tokenizer, data, out, batch_size, device, dtype)
        if mode == "inference":
            stepper = ctx.stepper(optimizer="adamw")  # no step: no optimizer state
            plain = ctx.on_device(stepper.trainer.data_collator(examples[:batch_size]))
            for _ in range(2):
                stepper.no_grad_loss(plain)
        else:
            stepper = ctx.stepper(optimizer="zo_sgd", learning_rate=1e-7, **ctx.zo_fields)
            stepper.step(stepper.trainer.data_collator(examples[:batch_size]))
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_kb() * 1024
    print(json.dumps({"peak_above_base_mb": (peak - base) / 2**20}))


def _progress(rows: dict) -> None:
    """Each comparison as it finishes (a long run that is stopped keeps what it measured)."""
    for name, entry in rows.items():
        print(f"  real_model {name}: {json.dumps(entry)}", flush=True)


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


# ---- the suite -----------------------------------------------------------------------------------------------------


def bench_real_model(
    model: str = DEFAULT_MODEL,
    batch_size: int = 8,
    seq_len: int = 256,
    repeats: int = 5,
    warmup: int = 1,
    hybrid_steps: int = 20,
    threads: int = 1,
    clock: str | None = None,
    rows: tuple[str, ...] = (),
    journal: Journal | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict:
    """Every comparison of the module docstring on ``model`` (a folder or a packaged model's name), in one run;
    ``rows``: only these of :data:`ROWS` (default: all); ``journal``: where each value is kept as it is taken (values
    already there are not measured again).

    ``device``: ``cpu`` or ``cuda``; ``dtype``: the weights' (``float32``, ``bfloat16``: every side trains and
    scores in it, as a model loaded in bf16 does). ``clock``: process CPU seconds on a CPU, wall seconds between two
    ``torch.cuda.synchronize()`` on CUDA (:data:`benchmarks_perf.ratio.CLOCKS`).
    """
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise ValueError(f"Unknown bench rows {sorted(unknown)}; choose from {', '.join(ROWS)}.")
    if device not in DEVICES or dtype not in DTYPES:
        raise ValueError(f"device={device!r}, dtype={dtype!r}: choose from {DEVICES} and {tuple(DTYPES)}.")
    clock = clock or ("cuda" if device == "cuda" else "cpu")
    from hf_unlearn.data import ForgetRetainDataset
    from hf_unlearn.loading import check_model_path, load_model, load_tokenizer

    folder = check_model_path(model, "--model")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tokenizer = load_tokenizer(folder)
        examples = chat_examples(tokenizer, 2 * batch_size, seq_len)
        data = ForgetRetainDataset(examples[:batch_size], examples[batch_size:], seed=0)
        loaded = load_model(folder, dtype=DTYPES[dtype]).to(device)
        with tempfile.TemporaryDirectory() as out:
            ctx = Context(loaded, tokenizer, data, out, batch_size, device, dtype)
            plain = ctx.on_device(ctx.stepper(optimizer="adamw").trainer.data_collator(examples[:batch_size]))
            memory = {
                mode: (lambda m=mode: _memory_in_subprocess(m, folder, batch_size, seq_len, threads, device, dtype))
                for mode in MEMORY_MODES
            }
            rounds = Rounds(repeats, warmup, clock, journal)
            peak = "peak allocated CUDA memory" if device == "cuda" else "peak RSS (VmHWM)"
            # cheapest first: a run stopped early (a loaded machine) keeps the most comparisons
            comparisons = {
                "answer_only_vs_full_vocabulary_scoring": lambda: _scoring_row(loaded, plain, rounds),
                "answer_only_vs_full_vocabulary_training": lambda: _training_head_row(loaded, plain, rounds),
                "npo_step_vs_sft_step": lambda: _npo_row(ctx, rounds),
                "zo_rows": lambda: _zo_rows(ctx, plain, rounds),
                "hybrid_run_vs_adamw_run": lambda: _hybrid_row(ctx, hybrid_steps, rounds),
                "zo_sgd_peak_memory_vs_inference": lambda: compare(
                    "zo_sgd", memory["zo_sgd"], "inference", memory["inference"], GOALS["zo_memory"], repeats, 0,
                    unit="mb", journal=journal, what=f"{peak} of a fresh process above what it held before the "
                    f"model loaded: one ZO-SGD step against two no-grad forwards of the same loss, {dtype}",
                ),
            }  # fmt: skip
            ratios, skipped = {}, []
            for name, row in comparisons.items():
                if rows and ROWS_BY_COMPARISON[name] not in rows:
                    continue
                if name == "zo_rows":
                    done, skipped = row()
                else:
                    done = {name: row()}
                ratios.update(done)
                _progress(done)
        parameters = sum(p.numel() for p in loaded.parameters())
    finally:
        torch.set_num_threads(before)
    answers = answer_tokens(examples)
    return {
        "model": model,
        "folder": folder,
        "parameters": parameters,
        "vocabulary": loaded.config.vocab_size,
        "dtype": dtype,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "shape": {
            "batch_size": batch_size,
            "seq_len": seq_len,
            "tokens_per_side": batch_size * seq_len,
            "answer_tokens_min_max": [min(answers), max(answers)],
            "format": "chat template: system message of author facts, question, short answer (+ end token)",
        },
        "threads": threads,
        "clock": clock,
        "repeats": repeats,
        "warmup": warmup,
        "rows": list(rows or ROWS),
        "zo_rows_not_in_this_library": skipped,
        "ratios": ratios,
        **({"journal": journal.summary()} if journal is not None else {}),
    }


if __name__ == "__main__":
    if len(sys.argv) == 9 and sys.argv[1] == "memory":
        _memory_child(sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7]), sys.argv[7], sys.argv[8])
    else:
        print(json.dumps(bench_real_model(), indent=1))
