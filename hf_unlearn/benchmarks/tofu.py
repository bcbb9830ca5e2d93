"""TOFU evaluation (Maini et al., COLM 2024) with the definitions of ``docs/definitions.md``.

Sets: forget (``forgetNN_perturbed``), retain (``retain_perturbed``), real authors and world facts (their
``_perturbed`` configs) and holdout (``holdoutNN``, for the membership attack). Per set, one batched scoring pass
over every answer variant (true, paraphrased, perturbed) gives probability, truth ratio, Min-K% and extraction
strength; one batched greedy generation gives ROUGE-L recall.

``privacy=True`` adds the membership-inference suite of :mod:`hf_unlearn.benchmarks.privacy` on forget vs holdout
(LOSS, zlib and Min-K%++ from the same scoring pass, GradNorm from one backward per example, Reference from the
retain model's losses), each as ``mia_<attack>_auc`` and ``privleak_<attack>``.

Forget quality and the privleak reference need the *retain model's* forget-set truth ratios and Min-K% AUC:
:meth:`TofuBenchmark.retain_statistics` computes them, and ``retain_model=<path>`` computes them once and caches
them as JSON (in the retain model's folder, or under ``$HF_UNLEARN_CACHE`` for Hub ids).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hf_unlearn.benchmarks import metrics
from hf_unlearn.benchmarks import privacy as privacy_attacks
from hf_unlearn.benchmarks.base import UNSET, Benchmark, BenchmarkResult, check_counts, show_progress_of
from hf_unlearn.benchmarks.engine import generate_greedy, require_pad_token, score_examples
from hf_unlearn.benchmarks.kv_cache import PROMPT_STATES_BUDGET_BYTES, PromptStates
from hf_unlearn.benchmarks.retain_stats import RetainReference
from hf_unlearn.benchmarks.sharding import gather_in_order, process_info, shard
from hf_unlearn.benchmarks.tofu_data import load_tofu, tofu_split_names
from hf_unlearn.data import IGNORE_INDEX, QAFormat, tokenize_qa_rows


RETAIN_STATS_FORMAT = "hf_unlearn.tofu_retain_stats/v1"
LEGACY_MAX_ROWS = 300
LEGACY_TOTAL_TOKENS = 200
# Set name -> (TOFU config role, answer variants scored, whether ROUGE is generated).
SETS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "forget": ("forget_perturbed", ("answer", "paraphrased_answer", "perturbed_answer"), True),
    "retain": ("retain_perturbed", ("answer", "paraphrased_answer", "perturbed_answer"), True),
    "real_authors": ("real_authors", ("answer", "perturbed_answer"), True),
    "world_facts": ("world_facts", ("answer", "perturbed_answer"), True),
    "holdout": ("holdout", ("answer",), False),
}
UTILITY_SETS = ("retain", "real_authors", "world_facts")


def _qa_format_of(namespace):
    """The QA format a namespace holds (a recipe's, built once) or its QA-format flags give (``add_qa_format``)."""
    built = getattr(namespace, "qa_format", None)
    if isinstance(built, QAFormat):
        return built
    return QAFormat.from_args(namespace) if hasattr(namespace, "qa_template") else UNSET


@dataclass
class TofuSettings:
    """The settings of a TOFU evaluation (``hf-unlearn eval --benchmark tofu`` flags, recipe keys).

    Each field is read from the flag or recipe key of its own name, or of ``metadata["aliases"]``
    (:func:`hf_unlearn.benchmarks.base.settings_from`).
    """

    forget_split: str = field(
        default="forget10", metadata={"help": "TOFU forget split: forget01, forget05, forget10."}
    )
    data_dir: str | Path | None = field(
        default=None, metadata={"help": "Local folder of <config>.json JSON Lines; None reads locuslab/TOFU."}
    )
    legacy: bool = field(
        default=False,
        metadata={
            "help": "The original TOFU code's choices: first 300 rows of each set, prompt + generation capped at "
            "200 tokens per example (the tofu-legacy benchmark)."
        },
    )
    max_examples: int | None = field(
        default=None,
        metadata={
            "help": "Evaluate only the first N rows of each set (overrides legacy's 300).",
            "aliases": ("eval_max_examples",),
        },
    )
    batch_size: int = field(default=16, metadata={"help": "Sequences per scoring forward."})
    generation_batch_size: int | None = field(
        default=None, metadata={"help": "Sequences per generate call (default: batch_size)."}
    )
    max_new_tokens: int = field(
        default=200,
        metadata={"help": "Generation length for ROUGE outside legacy mode.", "aliases": ("eval_max_new_tokens",)},
    )
    qa_format: QAFormat = field(
        default_factory=QAFormat,
        metadata={
            "help": "How questions and answers become tokens: the format the model was fine-tuned in "
            "(--qa_template, --system_prompt, --no_chat_template). Default: the tokenizer's chat template, else "
            "TOFU's plain format.",
            "from_namespace": _qa_format_of,
        },
    )
    max_length: int = field(default=512, metadata={"help": "Maximum tokens of a question + answer."})
    retain_model: str | Path | None = field(
        default=None, metadata={"help": "Path / Hub id of the retain model; its statistics are computed once, cached."}
    )
    retain_stats: str | Path | dict | None = field(
        default=None,
        metadata={
            "help": "A retain statistics JSON file (read if it exists, else where computed statistics are "
            "written), or the statistics dict itself."
        },
    )
    min_k: float = field(default=metrics.MIN_K_FRACTION, metadata={"help": "Min-K% fraction of the membership score."})
    use_stemmer: bool = field(default=True, metadata={"help": "ROUGE stemmer (on in TOFU)."})
    show_progress: bool = field(
        default=True,
        metadata={"help": "Draw progress bars (--no_progress hides them).", "from_namespace": show_progress_of},
    )
    privacy: bool = field(
        default=False,
        metadata={
            "help": "Also run the membership-inference suite (hf_unlearn.benchmarks.privacy) on forget vs holdout; "
            "its Reference attack and every privleak use the retain model."
        },
    )
    retain: RetainReference = field(init=False, metadata={"help": "retain_model / retain_stats as one reference."})

    def __post_init__(self):
        check_counts(
            max_examples=self.max_examples, batch_size=self.batch_size,
            generation_batch_size=self.generation_batch_size, max_new_tokens=self.max_new_tokens,
        )  # fmt: skip
        tofu_split_names(self.forget_split)  # an unknown split fails here, in one line
        self.qa_format = self.qa_format or QAFormat()
        self.retain = RetainReference(self.retain_model, self.retain_stats)


class TofuBenchmark(Benchmark):
    """TOFU evaluator: ``TofuBenchmark(forget_split="forget10", data_dir=...).evaluate(model, tokenizer)``.

    Settings: :class:`TofuSettings` (as keywords, or one ``TofuSettings``), kept as ``self.args``.
    """

    name = "tofu"
    settings_class = TofuSettings
    retain_stats_format = RETAIN_STATS_FORMAT

    def __init__(self, args: TofuSettings | None = None, /, **settings):
        super().__init__(args, **settings)
        args = self.args
        self.splits = tofu_split_names(args.forget_split)
        self.max_examples = args.max_examples if args.max_examples is not None else (
            LEGACY_MAX_ROWS if args.legacy else None
        )  # fmt: skip
        self.generation_batch_size = args.generation_batch_size or args.batch_size
        self.name = "tofu-legacy" if args.legacy else "tofu"

    def relearn_rows(self):
        """The forget split's QA rows."""
        return load_tofu(self.args.forget_split, self.args.data_dir)

    # ----------------------------------------------------------------------------------------------- data
    def load_rows(self, set_name: str) -> list[dict[str, Any]]:
        """The rows of one evaluation set (after the ``max_examples`` cut), validated for what scoring needs."""
        config = self.splits[SETS[set_name][0]]
        rows = load_tofu(config, self.args.data_dir)
        if self.max_examples is not None:
            rows = rows.select(range(min(self.max_examples, len(rows))))
        rows = rows.to_list()
        if "perturbed_answer" in SETS[set_name][1]:
            for i, row in enumerate(rows):
                if not row["perturbed_answer"]:
                    raise ValueError(
                        f"TOFU {config} row {i} ({row['question'][:60]!r}) has no perturbed answers; "
                        "the truth ratio needs at least one."
                    )
        return rows

    def settings(self) -> dict[str, Any]:
        """The settings the numbers depend on; also the compatibility key of cached retain statistics."""
        return {
            "forget_split": self.args.forget_split,
            "legacy": self.args.legacy,
            "max_examples": self.max_examples,
            "qa_format": asdict(self.args.qa_format),
            "min_k": self.args.min_k,
            # Only when on: statistics cached by a default evaluation stay valid for default evaluations.
            **({"privacy": True} if self.args.privacy else {}),
        }

    # ----------------------------------------------------------------------------------------- evaluation
    def evaluate(self, model, tokenizer) -> BenchmarkResult:
        """All TOFU metrics of ``model``: summary in ``metrics``, per-example values in ``per_example``.

        ``config["timings"]`` holds the seconds of each stage per set (tokenise, scoring, generation, truth ratio)
        and of the summary stages (ROUGE, truth-ratio aggregation, MIA, retain statistics), wall clock and
        (``*_cpu_s``) the process's CPU time.
        """
        start = time.perf_counter()
        require_pad_token(tokenizer)
        timer = StageTimer()
        # Every set is scored first, then every prompt generated in one call; the prompt caches scoring keeps for
        # generation share one memory budget.
        scored, budget = {}, PROMPT_STATES_BUDGET_BYTES
        for name in SETS:
            scored[name] = self._score_set(model, tokenizer, name, SETS[name][2], timer, budget)
            budget -= scored[name].prompt_states.bytes if scored[name].prompt_states is not None else 0
        generating = [scored[name] for name in SETS if SETS[name][2]]
        generations = dict(zip((s.name for s in generating), self._generate(model, tokenizer, generating, timer)))
        records = {name: self._records(model, tokenizer, scored[name], generations.get(name), timer) for name in SETS}
        with timer("retain_statistics"):
            reference, reason = self.reference_statistics(model)
        values, unavailable = summarise(records, reference, reason, self.args.use_stemmer, timer)
        if self.args.privacy:
            with timer("mia"):
                extra, missing = privacy_summary(records, reference, reason)
            values.update(extra)
            unavailable.update(missing)
        config = {
            **self.settings(),
            "qa_format": self.args.qa_format.describe(tokenizer),
            "data_dir": str(self.args.data_dir) if self.args.data_dir else "locuslab/TOFU",
            "max_new_tokens": None if self.args.legacy else self.args.max_new_tokens,
            "max_total_tokens": LEGACY_TOTAL_TOKENS if self.args.legacy else None,
            "use_stemmer": self.args.use_stemmer,
            "privleak_reference": "retain model" if reference else "0.5 (no retain-model statistics)",
            "timings": timer.report(time.perf_counter() - start),
        }
        return BenchmarkResult(
            benchmark=self.name,
            metrics=values,
            unavailable=unavailable,
            per_example=records,
            config=config,
            num_examples={name: len(rows) for name, rows in records.items()},
            runtime_s=time.perf_counter() - start,
        )

    def retain_statistics(self, model, tokenizer) -> dict[str, Any]:
        """The retain model's forget-set truth ratios and Min-K% AUC (forget vs holdout), as a JSON-ready dict."""
        require_pad_token(tokenizer)
        forget = self._evaluate_set(model, tokenizer, "forget", generate=False)
        holdout = self._evaluate_set(model, tokenizer, "holdout", generate=False)
        stats = {
            "format": RETAIN_STATS_FORMAT,
            **self.settings(),
            "forget_truth_ratio": [r["truth_ratio"] for r in forget],
            "mia_min_k_auc": metrics.auc([r["min_k"] for r in forget], [r["min_k"] for r in holdout]),
        }
        if self.args.privacy:  # the privleak reference of every attack, and the Reference attack's losses
            stats["mia_auc"] = privacy_attacks.reference_aucs(forget, holdout)
            stats["forget_nll_mean"] = [r["nll_mean"] for r in forget]
            stats["holdout_nll_mean"] = [r["nll_mean"] for r in holdout]
        return stats

    def _evaluate_set(
        self, model, tokenizer, set_name: str, generate: bool, timer: StageTimer | None = None
    ) -> list[dict[str, Any]]:
        """One set's records; with ``generate``, its own greedy generation."""
        timer = timer or StageTimer()
        scored = self._score_set(model, tokenizer, set_name, generate, timer, PROMPT_STATES_BUDGET_BYTES)
        generations = self._generate(model, tokenizer, [scored], timer)[0] if generate else None
        return self._records(model, tokenizer, scored, generations, timer)

    def _score_set(
        self, model, tokenizer, set_name: str, generate: bool, timer: StageTimer, states_budget: int
    ) -> _ScoredSet:
        rows = self.load_rows(set_name)
        rank, world_size = process_info()
        local = shard(rows, rank, world_size)
        progress = self.args.show_progress and rank == 0
        variants = SETS[set_name][1]
        attacked = self.args.privacy and set_name in ("forget", "holdout")

        # Every answer variant of every local row goes into one scoring pass; identical sequences are scored once.
        with timer("tokenise", set_name):
            pairs, owners = [], []
            for position, (_, row) in enumerate(local):
                for variant in variants:
                    answers = row[variant] if variant == "perturbed_answer" else [row[variant]]
                    for option, answer in enumerate(answers):
                        pairs.append((row["question"], answer))
                        owners.append((position, variant, option))
            sequences = tokenize_qa_rows(
                tokenizer, pairs, self.args.max_length, self.args.qa_format, f"TOFU {self.splits[SETS[set_name][0]]}"
            )
            unique: dict[tuple[int, ...], int] = {}
            slots = [unique.setdefault(tuple(s["input_ids"]), len(unique)) for s in sequences]
            distinct = [None] * len(unique)
            for slot, sequence in zip(slots, sequences):
                distinct[slot] = sequence
        # Generation starts from the true answers' prompts, which scoring runs anyway: it keeps them for generation.
        answer_slot = {position: slot for (position, variant, _), slot in zip(owners, slots) if variant == "answer"}
        answer_slots = [answer_slot[position] for position in range(len(local))] if generate else []
        prompt_states = PromptStates(answer_slots, states_budget) if generate else None
        with timer("scoring", set_name):
            scores = score_examples(
                model,
                distinct,
                tokenizer.pad_token_id,
                self.args.batch_size,
                self.args.min_k,
                f"TOFU {set_name}: scoring",
                progress,
                vocab_stats=attacked,
                prompt_states=prompt_states,
            )
        by_row: list[dict[str, list[dict]]] = [{v: [] for v in variants} for _ in local]
        prompts: list[list[int] | None] = [None] * len(local)
        answers: list[dict | None] = [None] * len(local)
        for (position, variant, _), slot, sequence in zip(owners, slots, sequences):
            by_row[position][variant].append(scores[slot])
            if variant == "answer":
                # Generation starts from the tokens the true answer was scored after: the prompt as the model saw
                # it in prompt + answer (the same as the prompt's own tokens unless the tokenizer merges there).
                prompts[position] = sequence["input_ids"][: _label_start(sequence["labels"])]
                answers[position] = sequence
        states = prompt_states.by_prompt(answer_slots) if generate else None
        return _ScoredSet(set_name, len(rows), world_size, local, by_row, prompts, answers, states, attacked, progress)

    def _generate(self, model, tokenizer, sets: list[_ScoredSet], timer: StageTimer) -> list[list[str]]:
        """Greedy generations from every prompt of ``sets`` in one call (rows of one set finishing early make room
        for the next set's, so decode steps stay full), split back per set."""
        prompts = [prompt for scored in sets for prompt in scored.prompts]
        with timer("generation", sets[0].name if len(sets) == 1 else None):
            caps = (
                [max(0, LEGACY_TOTAL_TOKENS - len(p)) for p in prompts]
                if self.args.legacy
                else self.args.max_new_tokens
            )
            names = ", ".join(scored.name for scored in sets)
            generations = generate_greedy(
                model,
                tokenizer,
                prompts,
                caps,
                self.generation_batch_size,
                desc=f"TOFU {names}: generating",
                show_progress=sets[0].progress,
                prompt_states=PromptStates.combine([scored.prompt_states for scored in sets]),
            )
        split, start = [], 0
        for scored in sets:
            split.append(generations[start : start + len(scored.prompts)])
            start += len(scored.prompts)
        return split

    def _records(self, model, tokenizer, scored: _ScoredSet, generations, timer: StageTimer) -> list[dict[str, Any]]:
        generations = generations or [None] * len(scored.local)
        with timer("truth_ratio", scored.name):
            records = [
                (index, example_record(index, row, scored.by_row[position], generations[position], scored.name))
                for position, (index, row) in enumerate(scored.local)
            ]
        if scored.attacked:
            with timer("gradnorm", scored.name):
                for (_, record), sequence in zip(records, scored.answers):
                    ids, labels = sequence["input_ids"], sequence["labels"]
                    record["zlib_length"] = privacy_attacks.zlib_length(
                        privacy_attacks.labelled_text(tokenizer, ids, labels)
                    )
                    record["gradnorm"] = privacy_attacks.gradient_norm(model, ids, labels)
        return gather_in_order(records, scored.total, scored.world_size)


@dataclass
class _ScoredSet:
    """A set's scoring results, waiting for its generations (TOFU generates every set's prompts together)."""

    name: str
    total: int  # rows over every rank
    world_size: int
    local: list
    by_row: list
    prompts: list
    answers: list
    prompt_states: PromptStates | None  # keyed by prompt
    attacked: bool
    progress: bool


def _label_start(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


class StageTimer:
    """Seconds per stage, overall and per evaluation set (``with timer("scoring", "forget"): ...``).

    Wall-clock seconds, and the process's CPU seconds beside them: on a shared machine the wall clock measures the
    other jobs too, the CPU time mostly this evaluation's own work.
    """

    def __init__(self):
        self.stages: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.sets: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.cpu_start = time.process_time()

    @contextmanager
    def __call__(self, stage: str, set_name: str | None = None):
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.stages[stage] += seconds
            self.cpu[stage] += time.process_time() - cpu_start
            if set_name is not None:
                self.sets[set_name][stage] += seconds

    def report(self, total: float) -> dict[str, Any]:
        rounded = {stage: round(seconds, 4) for stage, seconds in self.stages.items()}
        per_set = {name: {k: round(v, 4) for k, v in stages.items()} for name, stages in self.sets.items()}
        return {
            "total_s": round(total, 4),
            "stages_s": rounded,
            "sets_s": per_set,
            "total_cpu_s": round(time.process_time() - self.cpu_start, 4),
            "stages_cpu_s": {stage: round(seconds, 4) for stage, seconds in self.cpu.items()},
        }


def example_record(
    index: int, row: dict[str, Any], scores: dict[str, list[dict]], generation: str | None, set_name: str
) -> dict[str, Any]:
    """One example's per-example values (JSON-ready)."""
    answer = scores["answer"][0]
    record: dict[str, Any] = {
        "index": index,
        "question": row["question"],
        "answer": row["answer"],
        "nll_mean": answer["nll_mean"],
        "num_tokens": answer["num_tokens"],
        "prob": math.exp(-answer["nll_mean"]),
        "min_k": answer["min_k"],
        "extraction_strength": answer["extraction_strength"],
        "exact_memorization": answer["exact_memorization"],
    }
    if "min_k_plus_plus" in answer:
        record["min_k_plus_plus"] = answer["min_k_plus_plus"]
    if generation is not None:
        record["generation"] = generation
    if "perturbed_answer" in scores:
        perturbed = [s["nll_mean"] for s in scores["perturbed_answer"]]
        correct = scores["paraphrased_answer"][0]["nll_mean"] if "paraphrased_answer" in scores else answer["nll_mean"]
        record["perturbed_nll_mean"] = perturbed
        if "paraphrased_answer" in scores:
            record["paraphrased_nll_mean"] = correct
        else:
            record["normalised_prob"] = float(metrics.normalised_probability([answer["nll_mean"]], [perturbed])[0])
        record["truth_ratio"] = float(metrics.truth_ratio([correct], [perturbed])[0])
    return record


def summarise(
    records: dict[str, list[dict]],
    reference: dict | None,
    reference_reason: str | None,
    use_stemmer: bool = True,
    timer: StageTimer | None = None,
) -> tuple[dict[str, float | None], dict[str, str]]:
    """The TOFU summary metrics from per-example records (ROUGE is added to the records here)."""
    timer = timer or StageTimer()
    values: dict[str, float | None] = {}
    unavailable: dict[str, str] = {}
    for set_name in ("forget", "retain", "real_authors", "world_facts"):
        rows = records[set_name]
        with timer("rouge", set_name):
            scores = metrics.rouge_l([r["generation"] for r in rows], [r["answer"] for r in rows], use_stemmer)
        for row, recall in zip(rows, scores["recall"]):
            row["rouge_l_recall"] = recall
        prob_key = "normalised_prob" if set_name in ("real_authors", "world_facts") else "prob"
        ratios = [r["truth_ratio"] for r in rows]
        values[f"{set_name}_prob"] = metrics.nanmean([r[prob_key] for r in rows])
        values[f"{set_name}_rouge_l_recall"] = metrics.nanmean(scores["recall"])
        aggregate = metrics.truth_ratio_forget_score if set_name == "forget" else metrics.truth_ratio_utility_score
        with timer("truth_ratio", set_name):
            values[f"{set_name}_truth_ratio"] = aggregate(ratios)
    values["forget_extraction_strength"] = metrics.nanmean([r["extraction_strength"] for r in records["forget"]])
    values["forget_exact_memorization"] = metrics.nanmean([r["exact_memorization"] for r in records["forget"]])

    utility_inputs = [values[f"{s}_{m}"] for s in UTILITY_SETS for m in ("prob", "rouge_l_recall", "truth_ratio")]
    if any(v is None or math.isnan(v) for v in utility_inputs):
        values["model_utility"] = None
        unavailable["model_utility"] = "one of its 9 inputs is undefined (a set without scored answer tokens)"
    else:
        values["model_utility"] = metrics.harmonic_mean(utility_inputs)

    forget_ratios = [r["truth_ratio"] for r in records["forget"]]
    if reference is None:
        values["forget_quality"] = None
        unavailable["forget_quality"] = reference_reason
    elif not all(math.isfinite(x) for x in forget_ratios):
        values["forget_quality"] = None
        unavailable["forget_quality"] = "a forget-set truth ratio is not finite (the model's probabilities are NaN?)"
    else:
        values["forget_quality"] = metrics.forget_quality(forget_ratios, reference["forget_truth_ratio"])
    scores = [r["min_k"] for r in records["forget"] + records["holdout"]]
    undefined = sum(s is None or not math.isfinite(s) for s in scores)
    if undefined:  # a NaN model would otherwise score every text alike and print AUC 0.5, privleak 0
        reason = (
            f"{undefined} of {len(scores)} forget/holdout answers have no finite Min-K% score (no scored token, or "
            "the model's log-probabilities are not finite)"
        )
        values["mia_min_k_auc"] = values["privleak"] = None
        unavailable["mia_min_k_auc"] = unavailable["privleak"] = reason
        return values, unavailable
    with timer("mia"):
        mia_auc = metrics.auc([r["min_k"] for r in records["forget"]], [r["min_k"] for r in records["holdout"]])
    values["mia_min_k_auc"] = mia_auc
    reference_auc = reference["mia_min_k_auc"] if reference else 0.5
    if reference_auc >= 1.0:
        values["privleak"] = None
        unavailable["privleak"] = "the retain model's Min-K% AUC is 1; privleak divides by 1 - AUC_ref"
    else:
        values["privleak"] = metrics.privleak(mia_auc, reference_auc)
    return values, unavailable


def privacy_summary(
    records: dict[str, list[dict]], reference: dict | None, reference_reason: str | None
) -> tuple[dict[str, float | None], dict[str, str]]:
    """The membership-inference suite on forget vs holdout records (adds ``reference_nll_mean`` to them)."""
    if reference is not None and "mia_auc" not in reference:
        reference, reference_reason = None, "the retain statistics were computed without privacy=True (--privacy)"
    if reference is not None:
        for set_name in ("forget", "holdout"):
            for record, nll in zip(records[set_name], reference[f"{set_name}_nll_mean"]):
                record["reference_nll_mean"] = nll
    aucs = reference["mia_auc"] if reference is not None else None
    return privacy_attacks.privacy_metrics(records["forget"], records["holdout"], aucs, reference_reason)
