"""MUSE (Shi et al., 2024) News and Books: VerbMem, KnowMem (forget / retain) and PrivLeak.

Data: the Hub datasets ``muse-bench/MUSE-News`` / ``muse-bench/MUSE-Books`` (config ``verbmem`` split ``forget``;
config ``knowmem`` splits ``forget_qa``, ``retain_qa``, ``forget_qa_icl``, ``retain_qa_icl``; config ``privleak``
splits ``forget``, ``holdout``), or a local folder with the same layout as JSON Lines files:
``<data_dir>/verbmem/forget.json`` (``prompt``, ``gt``), ``<data_dir>/knowmem/forget_qa.json`` (``question``,
``answer``), ... , ``<data_dir>/privleak/holdout.json`` (``text``).

Metrics (fractions in [0, 1], MUSE reports them x100):

* ``verbmem_f``: ROUGE-L F1 between a 128-token greedy continuation of each forget prompt and its true continuation.
* ``knowmem_f`` / ``knowmem_r``: ROUGE-L F1 between the answer generated (32 new tokens, cut at the first stop
  string) after a few-shot prompt built from the ICL examples, and the true answer.
* ``privleak``: Min-K% (k = 40%) AUC of forget vs holdout texts, every token scored, relative to the retain model's
  AUC (or 0.5); see :func:`hf_unlearn.benchmarks.metrics.privleak`.

``original=True`` reproduces the MUSE code's choices: stemmer off and VerbMem ground truth cut to its first 128
tokens. Otherwise the stemmer is on and the ground truth is whole.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from datasets import load_dataset

from hf_unlearn.benchmarks import metrics
from hf_unlearn.benchmarks.base import Benchmark, BenchmarkResult
from hf_unlearn.benchmarks.engine import generate_greedy, require_pad_token, score_examples
from hf_unlearn.benchmarks.sharding import gather_in_order, process_info, shard
from hf_unlearn.data import check_columns


HUB_IDS = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
RETAIN_STATS_FORMAT = "hf_unlearn.muse_retain_stats/v1"
STOP_STRINGS = ("\n\n", "\nQuestion", "Question:")
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
    """``Question: q\\nAnswer: a\\n\\n`` for each ICL example, then the question with an open answer."""
    shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in icl_rows)
    return f"{shots}Question: {question}\nAnswer:"


class MuseBenchmark(Benchmark):
    """MUSE evaluator: ``MuseBenchmark(corpus="news", data_dir=...).evaluate(model, tokenizer)``.

    Args:
        corpus: ``news`` or ``books``.
        data_dir: local folder (layout in the module docstring); ``None`` reads the Hub.
        original: MUSE code's choices (stemmer off, VerbMem ground truth cut to 128 tokens).
        max_examples: evaluate only the first N rows of each split.
        verbmem_new_tokens / knowmem_new_tokens: generation lengths (128 / 32 in MUSE).
        max_length: token cap of each PrivLeak text.
        retain_model / retain_stats: source of the reference AUC, as in :class:`TofuBenchmark`.
    """

    name = "muse"
    retain_stats_format = RETAIN_STATS_FORMAT

    def __init__(
        self,
        corpus: str = "news",
        data_dir: str | Path | None = None,
        original: bool = False,
        max_examples: int | None = None,
        batch_size: int = 16,
        verbmem_new_tokens: int = 128,
        knowmem_new_tokens: int = 32,
        max_length: int = 2048,
        retain_model: str | Path | None = None,
        retain_stats: str | Path | dict | None = None,
        min_k: float = metrics.MIN_K_FRACTION,
        show_progress: bool = True,
    ):
        if corpus not in HUB_IDS:
            raise ValueError(f"Unknown MUSE corpus {corpus!r}; choose one of {', '.join(HUB_IDS)}.")
        self.corpus, self.data_dir, self.original = corpus, data_dir, original
        self.max_examples, self.batch_size = max_examples, batch_size
        self.verbmem_new_tokens, self.knowmem_new_tokens = verbmem_new_tokens, knowmem_new_tokens
        self.max_length, self.min_k = max_length, min_k
        self.retain_model, self.retain_stats = retain_model, retain_stats
        self.show_progress = show_progress
        self.name = f"muse-{corpus}"

    def rows(self, config: str, split: str) -> list[dict[str, Any]]:
        rows = load_muse(self.corpus, config, split, self.data_dir)
        return rows if self.max_examples is None or split.endswith("_icl") else rows[: self.max_examples]

    def settings(self) -> dict[str, Any]:
        return {
            "corpus": self.corpus,
            "max_examples": self.max_examples,
            "max_length": self.max_length,
            "min_k": self.min_k,
        }

    def evaluate(self, model, tokenizer) -> BenchmarkResult:
        """VerbMem, KnowMem f/r, Min-K% AUC and PrivLeak, with per-example values."""
        start = time.perf_counter()
        require_pad_token(tokenizer)
        use_stemmer = not self.original
        icl = {side: self.rows("knowmem", f"{side}_qa_icl") for side in ("forget", "retain")}  # fail early if absent
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
        auc = metrics.auc(
            [r["min_k"] for r in records["privleak_forget"]], [r["min_k"] for r in records["privleak_holdout"]]
        )
        values["mia_min_k_auc"] = auc
        reference, reason = self.reference_statistics(model)
        unavailable = {}
        reference_auc = reference["mia_min_k_auc"] if reference else 0.5
        if reference_auc >= 1.0:
            values["privleak"] = None
            unavailable["privleak"] = "the retain model's Min-K% AUC is 1; privleak divides by 1 - AUC_ref"
        else:
            values["privleak"] = metrics.privleak(auc, reference_auc)
        config = {
            **self.settings(),
            "original": self.original,
            "use_stemmer": use_stemmer,
            "data_dir": str(self.data_dir) if self.data_dir else HUB_IDS[self.corpus],
            "verbmem_new_tokens": self.verbmem_new_tokens,
            "knowmem_new_tokens": self.knowmem_new_tokens,
            "privleak_reference": "retain model" if reference else f"0.5 ({reason})",
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
        """The retain model's Min-K% AUC on forget vs holdout texts (the PrivLeak reference)."""
        forget = self._membership(model, tokenizer, "forget")
        holdout = self._membership(model, tokenizer, "holdout")
        return {
            "format": RETAIN_STATS_FORMAT,
            **self.settings(),
            "mia_min_k_auc": metrics.auc([r["min_k"] for r in forget], [r["min_k"] for r in holdout]),
        }

    def _generate(self, model, tokenizer, rows, prompts, max_new_tokens, stop_strings, desc):
        rank, world_size = process_info()
        local = shard(list(zip(rows, prompts)), rank, world_size)
        texts = generate_greedy(
            model,
            tokenizer,
            [p for _, (_, p) in local],
            max_new_tokens,
            self.batch_size,
            stop_strings,
            desc,
            self.show_progress and rank == 0,
        )
        pairs = [
            (index, {"index": index, **row, "generation": text.strip() if stop_strings else text})
            for (index, (row, _)), text in zip(local, texts)
        ]
        return gather_in_order(pairs, len(rows), world_size)

    def _verbmem(self, model, tokenizer) -> list[dict[str, Any]]:
        rows = self.rows("verbmem", "forget")
        if self.original:
            rows = [
                {
                    **r,
                    "gt": tokenizer.decode(
                        tokenizer(r["gt"], add_special_tokens=False)["input_ids"][: self.verbmem_new_tokens],
                        skip_special_tokens=True,
                    ),
                }
                for r in rows
            ]
        prompts = [tokenizer(r["prompt"])["input_ids"] for r in rows]
        return self._generate(model, tokenizer, rows, prompts, self.verbmem_new_tokens, (), "MUSE verbmem")

    def _knowmem(self, model, tokenizer, side: str, icl_rows) -> list[dict[str, Any]]:
        rows = self.rows("knowmem", f"{side}_qa")
        prompts = [tokenizer(few_shot_prompt(icl_rows, r["question"]))["input_ids"] for r in rows]
        return self._generate(
            model, tokenizer, rows, prompts, self.knowmem_new_tokens, STOP_STRINGS, f"MUSE knowmem {side}"
        )

    def _membership(self, model, tokenizer, split: str) -> list[dict[str, Any]]:
        rows = self.rows("privleak", split)
        rank, world_size = process_info()
        local = shard(rows, rank, world_size)
        sequences = []
        for _, row in local:
            ids = tokenizer(row["text"])["input_ids"][: self.max_length]
            sequences.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)})
        scores = score_examples(
            model,
            sequences,
            tokenizer.pad_token_id,
            self.batch_size,
            self.min_k,
            f"MUSE privleak {split}",
            self.show_progress and rank == 0,
        )
        pairs = [
            (index, {"index": index, "num_tokens": s["num_tokens"], "nll_mean": s["nll_mean"], "min_k": s["min_k"]})
            for (index, _), s in zip(local, scores)
        ]
        return gather_in_order(pairs, len(rows), world_size)
