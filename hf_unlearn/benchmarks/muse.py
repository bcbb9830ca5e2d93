"""MUSE (Shi et al., 2024) News and Books: VerbMem, KnowMem (forget / retain) and PrivLeak.

Data: the Hub datasets ``muse-bench/MUSE-News`` / ``muse-bench/MUSE-Books`` (config ``verbmem`` split ``forget``;
config ``knowmem`` splits ``forget_qa``, ``retain_qa``, ``forget_qa_icl``, ``retain_qa_icl``; config ``privleak``
splits ``forget``, ``holdout``), or a local folder with the same layout as JSON Lines files:
``<data_dir>/verbmem/forget.json`` (``prompt``, ``gt``), ``<data_dir>/knowmem/forget_qa.json`` (``question``,
``answer``), ... , ``<data_dir>/privleak/holdout.json`` (``text``).

Metrics (fractions in [0, 1], MUSE reports them x100):

* ``verbmem_f``: ROUGE-L F1 between a 128-token greedy continuation of each forget prompt and its true continuation.
* ``knowmem_f`` / ``knowmem_r``: ROUGE-L F1 between the answer generated (32 new tokens, cut at the first stop
  string) after a few-shot prompt ending in ``"Answer: "`` built from the ICL examples, and the true answer.
* ``privleak``: Min-K% (k = 40%) AUC of forget vs holdout texts relative to the retain model's AUC (or to an AUC
  given as ``privleak_ref_auc``); unavailable, with the reason, when there is neither.
  See :func:`hf_unlearn.benchmarks.metrics.privleak`.
* ``privacy=True``: the membership-inference suite of :mod:`hf_unlearn.benchmarks.privacy` on the same PrivLeak
  texts (``mia_<attack>_auc``, ``privleak_<attack>`` against the retain model's AUC of the same attack).

``original=True`` reproduces the MUSE code (``docs/definitions.md`` lists each rule): stemmer off; VerbMem
ground truth tokenised with special tokens and cut to its first 128 tokens; PrivLeak texts scored whole in one
forward, even past the model's context (one warning); Min-K% over ``floor(0.4 n)`` tokens, NaN when that is 0.
Otherwise: stemmer on, whole ground truth, PrivLeak texts cut to ``max_length`` tokens and read in windows of the
model's context, Min-K% over at least one token.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import load_dataset

from hf_unlearn.benchmarks import metrics
from hf_unlearn.benchmarks import privacy as privacy_attacks
from hf_unlearn.benchmarks.base import UNSET, Benchmark, BenchmarkResult, check_counts, show_progress_of
from hf_unlearn.benchmarks.engine import eval_mode, generate_greedy, model_device, require_pad_token, score_examples
from hf_unlearn.benchmarks.retain_stats import RetainReference
from hf_unlearn.benchmarks.sharding import gather_in_order, process_info, shard
from hf_unlearn.data import IGNORE_INDEX, check_columns


HUB_IDS = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
RETAIN_STATS_FORMAT = "hf_unlearn.muse_retain_stats/v1"
STOP_STRINGS = ("\n\n", "\nQuestion", "Question:")
DEFAULT_MAX_LENGTH = 2048
# (config, split) -> required columns
SPLITS: dict[tuple[str, str], tuple[str, ...]] = {
    ("verbmem", "forget"): ("prompt", "gt"),
    ("knowmem", "forget_qa"): ("question", "answer"),
    ("knowmem", "retain_qa"): ("question", "answer"),
    ("knowmem", "forget_qa_icl"): ("question", "answer"),
    ("knowmem", "retain_qa_icl"): ("question", "answer"),
    ("privleak", "forget"): ("text",),
    ("privleak", "holdout"): ("text",),
}


def load_muse(corpus: str, config: str, split: str, data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows of one MUSE split, from ``data_dir/<config>/<split>.json`` (JSON Lines) or else from the Hub."""
    if corpus not in HUB_IDS:
        raise ValueError(f"Unknown MUSE corpus {corpus!r}; choose one of {', '.join(HUB_IDS)}.")
    if data_dir is None:
        rows, source = load_dataset(HUB_IDS[corpus], config, split=split), f"{HUB_IDS[corpus]}:{config}/{split}"
    else:
        path = Path(data_dir) / config / f"{split}.json"
        if not path.is_file():
            role = " (the few-shot examples KnowMem prompts with)" if split.endswith("_icl") else ""
            raise FileNotFoundError(
                f"MUSE {config}/{split} not found at {path}{role}; expected JSON Lines with "
                f"columns {list(SPLITS[(config, split)])}."
            )
        rows, source = load_dataset("json", data_files=str(path), split="train"), str(path)
    check_columns(rows, SPLITS[(config, split)], source)
    if len(rows) == 0:
        raise ValueError(f"{source} is empty.")
    return rows.to_list()


def few_shot_prompt(icl_rows: list[dict[str, Any]], question: str) -> str:
    """The MUSE KnowMem prompt: ``Question: q\\nAnswer: a\\n\\n`` per ICL example, then ``Question: q\\nAnswer: ``.

    The prompt ends in ``"Answer: "`` with its trailing space, as in the MUSE code: with a tokenizer that attaches
    whitespace to the preceding token, that space changes the last prompt token and so every generation.
    (The one place the prompt is built; the shared QA formatting function of issue 11 can replace it.)
    """
    shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in icl_rows)
    return f"{shots}Question: {question}\nAnswer: "


def verbmem_reference(tokenizer, gt: str, num_tokens: int) -> str:
    """The MUSE code's VerbMem reference: ``gt`` tokenised *with* special tokens, cut to ``num_tokens``, decoded.

    A BOS token takes one of the ``num_tokens`` slots, so ``num_tokens - 1`` text tokens remain.
    """
    return tokenizer.decode(tokenizer(gt)["input_ids"][:num_tokens], skip_special_tokens=True)


def context_windows(num_tokens: int, context: int | None) -> list[tuple[int, int, int]]:
    """``(start, end, first_scored)`` windows that score each token of a ``num_tokens`` sequence exactly once.

    A sequence that fits in ``context`` (or with ``context=None``) is one window. A longer one is read in windows
    of ``context`` tokens that start every ``context // 2`` tokens; each window scores only the tokens after the
    previous window's end (the first scores from position 1), so every token but the first is scored once, with
    at least ``context - context // 2`` tokens of left context beyond the first window.
    """
    if context is None or num_tokens <= context:
        return [(0, num_tokens, 1)]
    if context < 2:
        raise ValueError(f"A context of {context} token(s) cannot score any token; it must be at least 2.")
    windows, start, scored_until = [], 0, 1
    while True:
        end = min(start + context, num_tokens)
        windows.append((start, end, scored_until))
        if end == num_tokens:
            return windows
        start, scored_until = start + context // 2, end


def extrapolates_positions(model) -> bool:
    """Whether the model encodes positions in a way defined past its context: rotary (RoPE) or ALiBi, not learned."""
    config = getattr(model, "config", None)
    rotary = any(getattr(config, key, None) is not None for key in ("rope_parameters", "rope_theta", "rope_scaling"))
    return rotary or bool(getattr(config, "alibi", False)) or getattr(config, "model_type", None) == "bloom"


def model_context(model) -> int | None:
    """The model's maximum sequence length (``config.max_position_embeddings``), ``None`` when it declares none."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def _privleak_max_length_of(namespace):
    """``--privleak_max_length``: N tokens, 0 for whole texts (None); unset leaves the default."""
    value = getattr(namespace, "privleak_max_length", None)
    return UNSET if value is None else (value or None)


@dataclass
class MuseSettings:
    """The settings of a MUSE evaluation (``hf-unlearn eval --benchmark muse`` flags, recipe keys).

    Each field is read from the flag or recipe key of its own name, or of ``metadata["aliases"]``
    (:func:`hf_unlearn.benchmarks.base.settings_from`).
    """

    corpus: str = field(default="news", metadata={"help": "news or books.", "aliases": ("muse_corpus",)})
    data_dir: str | Path | None = field(
        default=None, metadata={"help": "Local folder (layout in hf_unlearn.benchmarks.muse); None reads the Hub."}
    )
    original: bool = field(
        default=False,
        metadata={"help": "The MUSE code's rules (docs/definitions.md).", "aliases": ("muse_original",)},
    )
    max_examples: int | None = field(
        default=None,
        metadata={"help": "Evaluate only the first N rows of each split.", "aliases": ("eval_max_examples",)},
    )
    batch_size: int = field(default=16, metadata={"help": "Sequences per forward / generate call."})
    verbmem_new_tokens: int = field(default=128, metadata={"help": "VerbMem generation length (128 in MUSE)."})
    knowmem_new_tokens: int = field(default=32, metadata={"help": "KnowMem generation length (32 in MUSE)."})
    max_length: int | None = field(
        default=DEFAULT_MAX_LENGTH,
        metadata={
            "help": "Default mode only: each PrivLeak text is cut to its first max_length tokens (None: scored "
            "whole), and read in windows where it is longer than the model's context. Original mode scores whole "
            "texts in one forward, past the context too (--privleak_max_length; 0 on the CLI is None).",
            "from_namespace": _privleak_max_length_of,
        },
    )
    retain_model: str | Path | None = field(
        default=None, metadata={"help": "Retain model: the source of the PrivLeak reference AUC (computed, cached)."}
    )
    retain_stats: str | Path | dict | None = field(
        default=None, metadata={"help": "Retain statistics JSON file or dict, as TOFU's retain_stats."}
    )
    privleak_ref_auc: float | None = field(
        default=None,
        metadata={
            "help": "The reference AUC given directly (forget scored against holdout), instead of a retain model."
        },
    )
    min_k: float = field(default=metrics.MIN_K_FRACTION, metadata={"help": "Min-K% fraction of the membership score."})
    show_progress: bool = field(
        default=True,
        metadata={"help": "Draw progress bars (--no_progress hides them).", "from_namespace": show_progress_of},
    )
    privacy: bool = field(
        default=False,
        metadata={
            "help": "Also run the membership-inference suite on the PrivLeak texts; its privleaks and the Reference "
            "attack need the retain model (privleak_ref_auc is a Min-K% AUC and serves Min-K% only)."
        },
    )
    retain: RetainReference = field(init=False, metadata={"help": "retain_model / retain_stats as one reference."})

    def __post_init__(self):
        check_counts(
            max_examples=self.max_examples, batch_size=self.batch_size, verbmem_new_tokens=self.verbmem_new_tokens,
            knowmem_new_tokens=self.knowmem_new_tokens,
        )  # fmt: skip
        if self.corpus not in HUB_IDS:
            raise ValueError(f"Unknown MUSE corpus {self.corpus!r}; choose one of {', '.join(HUB_IDS)}.")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(
                f"max_length (--privleak_max_length) must be at least 2, or None (0 on the CLI) for whole texts; "
                f"got {self.max_length}."
            )
        if self.original and self.max_length not in (None, DEFAULT_MAX_LENGTH):
            raise ValueError(
                f"max_length={self.max_length} (--privleak_max_length) caps PrivLeak texts in default mode only; "
                "original=True (--muse_original) scores whole texts as the MUSE code does. Drop one of the two."
            )
        if self.privleak_ref_auc is not None:
            if not 0.0 <= self.privleak_ref_auc < 1.0:
                raise ValueError(
                    f"privleak_ref_auc must be in [0, 1) (privleak divides by 1 - it), got {self.privleak_ref_auc}."
                )
            if self.retain_model is not None or self.retain_stats is not None:
                raise ValueError(
                    "privleak_ref_auc and retain_model/retain_stats both give the PrivLeak reference; pass only one."
                )
        self.retain = RetainReference(self.retain_model, self.retain_stats)


class MuseBenchmark(Benchmark):
    """MUSE evaluator: ``MuseBenchmark(corpus="news", data_dir=...).evaluate(model, tokenizer)``.

    Settings: :class:`MuseSettings` (as keywords, or one ``MuseSettings``), kept as ``self.args``.
    """

    name = "muse"
    settings_class = MuseSettings
    retain_stats_format = RETAIN_STATS_FORMAT

    def __init__(self, args: MuseSettings | None = None, /, **settings):
        super().__init__(args, **settings)
        self.max_length = None if self.args.original else self.args.max_length
        self.name = f"muse-{self.args.corpus}"
        self._warned_past_context = False

    def relearn_rows(self):
        """The PrivLeak ``forget`` split: excerpts of the forget corpus."""
        return load_muse(self.args.corpus, "privleak", "forget", self.args.data_dir)

    def rows(self, config: str, split: str) -> list[dict[str, Any]]:
        rows = load_muse(self.args.corpus, config, split, self.args.data_dir)
        return rows if self.args.max_examples is None or split.endswith("_icl") else rows[: self.args.max_examples]

    def settings(self) -> dict[str, Any]:
        return {
            "corpus": self.args.corpus,
            "original": self.args.original,
            "max_examples": self.args.max_examples,
            "max_length": self.max_length,
            "min_k": self.args.min_k,
            **({"privacy": True} if self.args.privacy else {}),
        }

    def evaluate(self, model, tokenizer) -> BenchmarkResult:
        """VerbMem, KnowMem f/r, Min-K% AUC and PrivLeak, with per-example values."""
        start = time.perf_counter()
        require_pad_token(tokenizer)
        use_stemmer = not self.args.original
        icl = {side: self.rows("knowmem", f"{side}_qa_icl") for side in ("forget", "retain")}  # fail early if absent
        self._check_whole_texts_fit(model, tokenizer)
        records = {"verbmem_forget": self._verbmem(model, tokenizer)}
        for side in ("forget", "retain"):
            records[f"knowmem_{side}"] = self._knowmem(model, tokenizer, side, icl[side])
        records["privleak_forget"] = self._membership(model, tokenizer, "forget")
        records["privleak_holdout"] = self._membership(model, tokenizer, "holdout")

        references = {"verbmem_forget": "gt", "knowmem_forget": "answer", "knowmem_retain": "answer"}
        for key, reference_key in references.items():
            scores = metrics.rouge_l(
                [r["generation"] for r in records[key]], [r[reference_key] for r in records[key]], use_stemmer
            )
            for record, f1, recall in zip(records[key], scores["f1"], scores["recall"]):
                record["rouge_l_f1"], record["rouge_l_recall"] = f1, recall
        values: dict[str, float | None] = {
            "verbmem_f": metrics.nanmean([r["rouge_l_f1"] for r in records["verbmem_forget"]]),
            "knowmem_f": metrics.nanmean([r["rouge_l_f1"] for r in records["knowmem_forget"]]),
            "knowmem_r": metrics.nanmean([r["rouge_l_f1"] for r in records["knowmem_retain"]]),
        }
        membership = records["privleak_forget"] + records["privleak_holdout"]
        self._warn_if_cut(membership)
        self._warn_if_past_context(membership, model)
        unavailable: dict[str, str] = {}
        values["mia_min_k_auc"], reason = self._membership_auc(records["privleak_forget"], records["privleak_holdout"])
        if reason:
            unavailable["mia_min_k_auc"] = reason
        values["privleak"], privleak_reason, reference_source = None, None, None
        if values["mia_min_k_auc"] is None:
            privleak_reason = f"the Min-K% AUC is unavailable ({reason})"
        else:
            reference_auc, privleak_reason, reference_source = self._reference_auc(model)
            if reference_auc is not None:
                values["privleak"] = metrics.privleak(values["mia_min_k_auc"], reference_auc)
        if privleak_reason:
            unavailable["privleak"] = privleak_reason
        if self.args.privacy:
            extra, missing = self._privacy_metrics(model, records["privleak_forget"], records["privleak_holdout"])
            values.update(extra)
            unavailable.update(missing)
        config = {
            **self.settings(),
            "use_stemmer": use_stemmer,
            "data_dir": str(self.args.data_dir) if self.args.data_dir else HUB_IDS[self.args.corpus],
            "verbmem_new_tokens": self.args.verbmem_new_tokens,
            "knowmem_new_tokens": self.args.knowmem_new_tokens,
            "privleak_reference": reference_source,
            "privleak_texts_cut": sum(r["cut"] for r in membership),
            "privleak_texts_windowed": sum(r["windows"] > 1 for r in membership),
            "privleak_texts_past_context": sum(r["past_context"] for r in membership),
            "privleak_texts_below_min_k": sum(r["below_min_k"] for r in membership),
        }
        return BenchmarkResult(
            benchmark=self.name,
            metrics=values,
            unavailable=unavailable,
            per_example=records,
            config=config,
            num_examples={k: len(v) for k, v in records.items()},
            runtime_s=time.perf_counter() - start,
        )

    def retain_statistics(self, model, tokenizer) -> dict[str, Any]:
        """The retain model's Min-K% AUC on forget vs holdout texts (the PrivLeak reference; ``None`` if undefined)."""
        self._check_whole_texts_fit(model, tokenizer)
        forget, holdout = self._membership(model, tokenizer, "forget"), self._membership(model, tokenizer, "holdout")
        self._warn_if_past_context(forget + holdout, model)
        auc, reason = self._membership_auc(forget, holdout)
        stats = {"format": RETAIN_STATS_FORMAT, **self.settings(), "mia_min_k_auc": auc}
        if self.args.privacy:  # the privleak reference of every attack, and the Reference attack's losses
            forget, holdout = (self._membership(model, tokenizer, split) for split in ("forget", "holdout"))
            stats["mia_auc"] = privacy_attacks.reference_aucs(forget, holdout)
            stats["forget_nll_mean"] = [r["nll_mean"] for r in forget]
            stats["holdout_nll_mean"] = [r["nll_mean"] for r in holdout]
        return {**stats, "mia_min_k_auc_unavailable": reason} if reason else stats

    def _privacy_metrics(self, model, forget: list[dict], holdout: list[dict]):
        """The membership-inference suite on the PrivLeak records (adds ``reference_nll_mean`` to them)."""
        if self.args.privleak_ref_auc is not None:
            reference, reason = None, "privleak_ref_auc is a Min-K% AUC; the other attacks need a retain model"
        else:
            reference, reason = self.reference_statistics(model)
        if reference is not None and "mia_auc" not in reference:
            reference, reason = None, "the retain statistics were computed without privacy=True (--privacy)"
        if reference is not None:
            for records, key in ((forget, "forget_nll_mean"), (holdout, "holdout_nll_mean")):
                for record, nll in zip(records, reference[key]):
                    record["reference_nll_mean"] = nll
        aucs = reference["mia_auc"] if reference is not None else None
        return privacy_attacks.privacy_metrics(forget, holdout, aucs, reason)

    def _reference_auc(self, model) -> tuple[float | None, str | None, str]:
        """``(AUC_ref, None, its source)``, or ``(None, why PrivLeak is unavailable, source)``."""
        if self.args.privleak_ref_auc is not None:
            return self.args.privleak_ref_auc, None, f"given privleak_ref_auc={self.args.privleak_ref_auc}"
        reference, reason = self.reference_statistics(model)
        if reference is None:
            return None, f"no reference AUC: {reason}; or give one with privleak_ref_auc (--privleak_ref_auc)", "none"
        reference_auc = reference["mia_min_k_auc"]
        if reference_auc is None:
            detail = reference.get("mia_min_k_auc_unavailable", "undefined")
            return None, f"the retain model's Min-K% AUC is unavailable ({detail})", "retain model"
        if reference_auc >= 1.0:
            return None, "the retain model's Min-K% AUC is 1; privleak divides by 1 - AUC_ref", "retain model"
        return reference_auc, None, "retain model"

    def _membership_auc(self, forget: list[dict], holdout: list[dict]) -> tuple[float | None, str | None]:
        """Min-K% AUC of forget vs holdout texts, or ``(None, reason)`` when a text's score is NaN."""
        undefined = sum(r["min_k"] is None or math.isnan(r["min_k"]) for r in forget + holdout)
        if undefined:
            rule = "floor(k*n) = 0 as in the MUSE code" if self.args.original else "no scored token"
            rule += ", or non-finite log-probabilities"
            return None, (
                f"{undefined} of {len(forget) + len(holdout)} PrivLeak texts have no Min-K% score ({rule}; the MUSE "
                "code's AUC fails on them too)"
            )
        return metrics.auc([r["min_k"] for r in forget], [r["min_k"] for r in holdout]), None

    def _warn_if_cut(self, membership: list[dict]) -> None:
        cut = sum(r["cut"] for r in membership)
        if cut and process_info()[0] == 0:
            warnings.warn(
                f"MUSE PrivLeak: {cut} of {len(membership)} texts are longer than max_length={self.max_length} "
                f"tokens and were scored on their first {self.max_length} tokens only; pass max_length=None "
                "(--privleak_max_length 0) or original=True (--muse_original) to score whole texts.",
                stacklevel=3,
            )

    def _warn_if_past_context(self, membership: list[dict], model) -> None:
        """Original mode: say once per benchmark that texts longer than the context were scored whole."""
        past = sum(r["past_context"] for r in membership)
        if not past or self._warned_past_context or process_info()[0] != 0:
            return
        self._warned_past_context = True
        context = model_context(model)
        warnings.warn(
            f"MUSE PrivLeak (original mode): {past} of {len(membership)} texts are longer than the model's context "
            f"({context} tokens) and were scored whole in one forward, positions past {context} extrapolated, as "
            "the MUSE code does; the default mode reads such texts in windows of the context.",
            stacklevel=3,
        )

    def _check_whole_texts_fit(self, model, tokenizer) -> None:
        """Original mode on a model whose positions cannot extrapolate: refuse texts past its context up front."""
        context = model_context(model)
        if not self.args.original or context is None or extrapolates_positions(model):
            return
        rows = self.rows("privleak", "forget") + self.rows("privleak", "holdout")
        longest = max(len(tokenizer(row["text"])["input_ids"]) for row in rows)
        if longest > context:
            raise ValueError(
                f"MUSE --muse_original scores PrivLeak texts whole, but one has {longest} tokens and this "
                f"{type(model).__name__} has {context} learned positions; evaluate without --muse_original (texts "
                "are then read in windows of the context)."
            )

    def _generate(self, model, tokenizer, rows, prompts, max_new_tokens, stop_strings, desc):
        rank, world_size = process_info()
        local = shard(list(zip(rows, prompts)), rank, world_size)
        texts = generate_greedy(
            model,
            tokenizer,
            [p for _, (_, p) in local],
            max_new_tokens,
            self.args.batch_size,
            stop_strings,
            desc,
            self.args.show_progress and rank == 0,
        )
        pairs = [
            (index, {"index": index, **row, "generation": text.strip() if stop_strings else text})
            for (index, (row, _)), text in zip(local, texts)
        ]
        return gather_in_order(pairs, len(rows), world_size)

    def _verbmem(self, model, tokenizer) -> list[dict[str, Any]]:
        rows = self.rows("verbmem", "forget")
        if self.args.original:
            rows = [{**r, "gt": verbmem_reference(tokenizer, r["gt"], self.args.verbmem_new_tokens)} for r in rows]
        prompts = [tokenizer(r["prompt"])["input_ids"] for r in rows]
        return self._generate(model, tokenizer, rows, prompts, self.args.verbmem_new_tokens, (), "MUSE verbmem")

    def _knowmem(self, model, tokenizer, side: str, icl_rows) -> list[dict[str, Any]]:
        rows = self.rows("knowmem", f"{side}_qa")
        prompts = [tokenizer(few_shot_prompt(icl_rows, r["question"]))["input_ids"] for r in rows]
        return self._generate(
            model, tokenizer, rows, prompts, self.args.knowmem_new_tokens, STOP_STRINGS, f"MUSE knowmem {side}"
        )

    def _membership(self, model, tokenizer, split: str) -> list[dict[str, Any]]:
        """Min-K% score of each PrivLeak text: tokenised with special tokens (as ``tokenizer.encode``). Default mode:
        cut to ``max_length``, read in :func:`context_windows` when longer than the model's context. Original mode:
        scored whole in one forward whatever its length, as the MUSE code does."""
        rows = self.rows("privleak", split)
        rank, world_size = process_info()
        local = shard(rows, rank, world_size)
        context, at_least_one = model_context(model), not self.args.original
        windowed_context = None if self.args.original else context
        fitting, texts = [], []
        for _, row in local:
            full = tokenizer(row["text"])["input_ids"]
            ids = full if self.max_length is None else full[: self.max_length]
            windows = context_windows(len(ids), windowed_context)
            past_context = context is not None and len(windows) == 1 and len(ids) > context
            texts.append({"ids": ids, "text_tokens": len(full), "windows": windows, "past_context": past_context})
            if len(windows) == 1:
                fitting.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)})
        scores = iter(
            score_examples(
                model,
                fitting,
                tokenizer.pad_token_id,
                self.args.batch_size,
                self.args.min_k,
                f"MUSE privleak {split}",
                self.args.show_progress and rank == 0,
                at_least_one,
                vocab_stats=self.args.privacy,
            )
        )
        pairs = []
        for (index, _), text in zip(local, texts):
            if len(text["windows"]) == 1:
                score = next(scores)
            else:
                score = score_in_windows(
                    model, text["ids"], text["windows"], self.args.min_k, at_least_one, vocab_stats=self.args.privacy
                )
            record = {
                "index": index,
                "num_tokens": score["num_tokens"],
                "text_tokens": text["text_tokens"],
                "cut": len(text["ids"]) < text["text_tokens"],
                "windows": len(text["windows"]),
                "past_context": text["past_context"],
                "below_min_k": math.floor(score["num_tokens"] * self.args.min_k) == 0,
                "nll_mean": score["nll_mean"],
                "min_k": score["min_k"],
            }
            if self.args.privacy:
                ids = text["ids"]
                record["min_k_plus_plus"] = score["min_k_plus_plus"]
                record["zlib_length"] = privacy_attacks.zlib_length(privacy_attacks.labelled_text(tokenizer, ids, ids))
                record["gradnorm"] = privacy_attacks.gradient_norm(model, ids, ids, windows=text["windows"])
            pairs.append((index, record))
        return gather_in_order(pairs, len(rows), world_size)


def score_in_windows(
    model, ids: list[int], windows: list[tuple[int, int, int]], k: float, at_least_one: bool, vocab_stats=False
) -> dict[str, float]:
    """``num_tokens``, ``nll_mean`` and ``min_k`` of one sequence scored window by window (:func:`context_windows`);
    the Min-K% is taken over the token log-probs of all windows together (``vocab_stats``: Min-K%++ likewise)."""
    device = model_device(model)
    pieces, z_pieces = [], []
    with eval_mode(model):
        for start, end, first_scored in windows:
            window = torch.tensor([ids[start:end]], device=device)
            labels = window.clone()
            labels[0, : first_scored - start] = IGNORE_INDEX
            logits = model(input_ids=window).logits
            logprobs, mask = metrics.shifted_token_logprobs(logits, labels)
            pieces.append(logprobs[mask].double())
            if vocab_stats:
                z, _ = metrics.vocab_z_scores(logits, labels)
                z_pieces.append(z[mask])
    logprobs = torch.cat(pieces).unsqueeze(0)
    mask = torch.ones_like(logprobs, dtype=torch.bool)
    scores = {
        "num_tokens": logprobs.size(1),
        "nll_mean": float(-logprobs.mean()),
        "min_k": float(metrics.min_k_scores(logprobs, mask, k, at_least_one)[0]),
    }
    if vocab_stats:
        z = torch.cat(z_pieces).unsqueeze(0)
        scores["min_k_plus_plus"] = float(metrics.min_k_scores(z, mask, k, at_least_one)[0])
    return scores
