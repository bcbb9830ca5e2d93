"""Tokenisation with answer-only labels, forget/retain pairing and the collator every unlearning trainer reads.

A training batch is `{"forget": {...}, "retain": {...}}`, each side padded on its own. Forget examples carry
their dataset `index`, so methods can key cached per-example statistics (NPO's reference log-likelihoods).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


IGNORE_INDEX = -100
DEFAULT_QA_TEMPLATE = "Question: {question}\nAnswer:"


def tokenize_prompt(tokenizer, question: str, template: str | None = None) -> list[int]:
    """Token ids of the prompt for `question`: the chat template if the tokenizer has one, else `template`.

    An explicit `template` (a format string with `{question}`) always wins over the chat template.
    """
    if template is None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if "{question}" not in (template or DEFAULT_QA_TEMPLATE):
        raise ValueError(
            f"QA template {template!r} has no '{{question}}' field; add one, e.g. {DEFAULT_QA_TEMPLATE!r}."
        )
    return tokenizer((template or DEFAULT_QA_TEMPLATE).format(question=question))["input_ids"]


def _answer_text(tokenizer, answer: str, template: str | None) -> str:
    # Plain templates end in "Answer:", so the answer starts after a space; chat templates end on a role marker.
    uses_chat = template is None and getattr(tokenizer, "chat_template", None)
    return answer if uses_chat else " " + answer


def tokenize_qa(
    tokenizer, question: str, answer: str, max_length: int = 512, template: str | None = None
) -> dict[str, list[int]]:
    """`input_ids`, `attention_mask` and `labels` for one QA pair: prompt tokens -100, answer tokens + eos labelled.

    The answer is tokenised on its own, so the prompt/answer boundary is exact whatever the tokenizer merges.
    Sequences longer than `max_length` lose answer tokens from the right.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token; set tokenizer.eos_token before tokenising answers.")
    prompt = tokenize_prompt(tokenizer, question, template)
    if len(prompt) >= max_length:
        raise ValueError(f"A prompt of {len(prompt)} tokens leaves no room for its answer; raise max_length.")
    answer_ids = tokenizer(_answer_text(tokenizer, answer, template), add_special_tokens=False)["input_ids"]
    input_ids = (prompt + answer_ids + [tokenizer.eos_token_id])[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + input_ids[len(prompt) :])[:max_length]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def check_columns(rows, required: Sequence[str], source: str) -> None:
    """Raise a one-line error naming `source` when `rows` lacks any of the `required` columns."""
    columns = list(rows.column_names) if hasattr(rows, "column_names") else list(rows[0].keys()) if rows else []
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; expected {list(required)}, found {columns}.")


class QADataset(Dataset):
    """Tokenised question/answer rows (a `datasets.Dataset` or a list of dicts), ready for the collator."""

    def __init__(
        self,
        rows,
        tokenizer,
        question_key: str = "question",
        answer_key: str = "answer",
        max_length: int = 512,
        template: str | None = None,
        source: str = "QA data",
    ):
        if len(rows) == 0:
            raise ValueError(f"{source} is empty; unlearning needs at least one example.")
        check_columns(rows, [question_key, answer_key], source)
        self.examples = [
            tokenize_qa(tokenizer, row[question_key], row[answer_key], max_length, template) for row in rows
        ]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]


class TextBlockDataset(Dataset):
    """Raw text (MUSE / WMDP corpora) cut into blocks of `block_size` tokens, every token labelled."""

    def __init__(self, texts: Sequence[str], tokenizer, block_size: int = 512, source: str = "text corpus"):
        self.examples = chunk_text(texts, tokenizer, block_size)
        if not self.examples:
            raise ValueError(f"{source} has no text to cut into blocks.")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]


def read_json_rows(path: str | Path, required: Sequence[str] = (), what: str = "rows") -> list[dict[str, Any]]:
    """The rows of a JSON Lines file (or of a JSON array of objects), each checked to hold every `required` field.

    Every problem is one line naming the file, the line (or row) and the field: bytes that are not UTF-8, a line
    that is not a JSON object, a missing or null field, an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; give a JSON Lines file of {what} (one JSON object per line).")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: bytes that are not UTF-8 (at byte {err.start}); save the file as UTF-8."
        ) from None
    if not text.strip():
        raise ValueError(f"{path} is empty; it must hold {what}, one JSON object per line.")
    if text.lstrip().startswith("["):  # a JSON array of objects, which datasets' json loader also reads
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); fix that line.") from None
        numbered = [(f"{path} row {i}", row) for i, row in enumerate(values, start=1)]
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON object ({err.msg}); fix or remove that line.") from None
    rows = []
    for where, row in numbered:
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object with {list(required)}, got {type(row).__name__}.")
        missing = [name for name in required if row.get(name) is None]
        if missing:
            raise ValueError(f"{where}: missing field {missing[0]!r}; every row needs {list(required)}.")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no rows; it must hold {what}, one JSON object per line.")
    return rows


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """The `field` of every row of a JSON Lines file (a raw-text forget or retain corpus)."""
    rows = read_json_rows(path, [field], what=f"texts (a {field!r} field per line)")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row[field], str):
            raise ValueError(f"{path} row {number}: field {field!r} must be text, got {type(row[field]).__name__}.")
    return [row[field] for row in rows]


def chunk_text(texts: Sequence[str], tokenizer, block_size: int) -> list[dict[str, list[int]]]:
    """Concatenate `texts` (eos between documents) and cut into `block_size` blocks; the last may be shorter."""
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2 tokens, got {block_size}.")
    stream: list[int] = []
    for text in texts:
        if text:
            stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = [stream[i : i + block_size] for i in range(0, len(stream), block_size)]
    blocks = [b for b in blocks if len(b) >= 2]
    return [{"input_ids": b, "attention_mask": [1] * len(b), "labels": list(b)} for b in blocks]


class ForgetRetainDataset(Dataset):
    """One item per forget example, paired with a retain example drawn from (seed, epoch, index).

    The pairing is a permutation of the retain set per epoch, so a run is reproducible and every rank that
    builds the dataset with the same seed agrees. `set_epoch` (called by accelerate's dataloader) reshuffles it.
    """

    def __init__(self, forget: Dataset, retain: Dataset | None = None, seed: int = 0):
        if len(forget) == 0:
            raise ValueError("The forget set is empty; unlearning needs at least one forget example.")
        if retain is not None and len(retain) == 0:
            raise ValueError("The retain set is empty; pass retain=None for methods that need no retain data.")
        self.forget, self.retain, self.seed = forget, retain, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.retain is not None:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.retain))

    def retain_index(self, index: int) -> int:
        return int(self._order[index % len(self._order)])

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"forget": {**self.forget[index], "index": index}}
        if self.retain is not None:
            item["retain"] = self.retain[self.retain_index(index)]
        return item


def pad_batch(
    examples: Sequence[dict[str, Any]], pad_token_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad token lists to a batch: `input_ids` with `pad_token_id`, `attention_mask` with 0, `labels` with -100."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    length = max(len(e["input_ids"]) for e in examples)
    fills = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    batch = {}
    for key, fill in fills.items():
        if key not in examples[0]:
            continue
        rows = []
        for e in examples:
            pad = [fill] * (length - len(e[key]))
            rows.append(pad + list(e[key]) if padding_side == "left" else list(e[key]) + pad)
        batch[key] = torch.tensor(rows, dtype=torch.long)
    if "index" in examples[0]:
        batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
    return batch


class DataCollatorForUnlearning:
    """Collate `{"forget": ..., "retain": ...}` items, padding each side on its own; plain items pass through."""

    def __init__(self, tokenizer=None, pad_token_id: int | None = None, padding_side: str = "right"):
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        if pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos token).")
        self.pad_token_id, self.padding_side = pad_token_id, padding_side

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if "forget" not in features[0]:
            return pad_batch(features, self.pad_token_id, self.padding_side)
        return {
            side: pad_batch([f[side] for f in features], self.pad_token_id, self.padding_side)
            for side in ("forget", "retain")
            if side in features[0]
        }
