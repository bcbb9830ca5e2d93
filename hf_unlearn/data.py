"""Tokenisation with answer-only labels, forget/retain pairing and the collator every unlearning trainer reads.

A training batch is `{"forget": {...}, "retain": {...}}`, each side padded on its own. Forget examples carry
their dataset `index`, so methods can key cached per-example statistics (NPO's reference log-likelihoods).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


IGNORE_INDEX = -100
# TOFU's original plain format: the space after "Answer:" belongs to the prompt, the answer follows it directly.
DEFAULT_QA_TEMPLATE = "Question: {question}\nAnswer: "


@dataclass(frozen=True)
class QAFormat:
    """How a question/answer pair becomes tokens; every entry point (training, evaluation, attacks) takes one.

    The convention of TOFU's code and open-unlearning: the prompt is rendered first, prompt + answer is tokenised
    as one text, and the labels are the full text's tokens after the prompt's (+ eos). With a plain template the
    prompt is the template rendered with the question and the answer follows it with nothing inserted; with the
    tokenizer's chat template the prompt is ``[user]`` + generation prompt and the full text ``[user, assistant]``.
    """

    template: str | None = field(
        default=None,
        metadata={
            "help": "Plain prompt template with {question}; the answer follows the rendered template directly. "
            f"Unset: the tokenizer's chat template if it has one, else {DEFAULT_QA_TEMPLATE!r}."
        },
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "System prompt: a system message in chat templates, text put verbatim before a plain one."},
    )
    use_chat_template: bool = field(
        default=True, metadata={"help": "Use the tokenizer's chat template when no template is given."}
    )
    separate_answer: bool = field(
        default=False,
        metadata={
            "help": "Tokenise the answer on its own (with the prompt's trailing spaces moved in front of it) and "
            "append it to the prompt's tokens: hf_unlearn's earlier tokenisation, for models fine-tuned that way."
        },
    )

    def __post_init__(self):
        if self.template is not None and "{question}" not in self.template:
            raise ValueError(
                f"qa_template {self.template!r} has no '{{question}}' field; add one, e.g. {DEFAULT_QA_TEMPLATE!r}."
            )

    @classmethod
    def from_args(cls, args) -> QAFormat:
        """The format from parsed ``hf_unlearn.cli.common.add_qa_format`` flags (a typed backslash-n is a newline)."""
        return cls(
            template=unescape_newlines(getattr(args, "qa_template", None)),
            system_prompt=unescape_newlines(getattr(args, "system_prompt", None)),
            use_chat_template=not getattr(args, "no_chat_template", False),
        )

    def uses_chat_template(self, tokenizer) -> bool:
        return self.template is None and self.use_chat_template and bool(getattr(tokenizer, "chat_template", None))

    def describe(self, tokenizer) -> dict[str, Any]:
        """The resolved format, as reports record it."""
        chat = self.uses_chat_template(tokenizer)
        return {
            "kind": "chat_template" if chat else "plain",
            "template": None if chat else self.template or DEFAULT_QA_TEMPLATE,
            "template_is_default": not chat and self.template is None,
            "system_prompt": self.system_prompt,
            "separate_answer": self.separate_answer,
        }

    def _messages(self, question: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": question}]

    def prompt_ids(self, tokenizer, question: str) -> list[int]:
        """Token ids of the prompt alone (what generation starts from when no answer is known)."""
        if self.uses_chat_template(tokenizer):
            text = tokenizer.apply_chat_template(self._messages(question), add_generation_prompt=True, tokenize=False)
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        text = (self.system_prompt or "") + (self.template or DEFAULT_QA_TEMPLATE).format(question=question)
        if self.separate_answer:
            text = text.rstrip(" ")
        return tokenizer(text)["input_ids"]

    def full_ids(self, tokenizer, question: str, answer: str) -> list[int]:
        """Token ids of prompt + answer tokenised as one text (joint tokenisation), without the closing eos."""
        if self.uses_chat_template(tokenizer):
            messages = [*self._messages(question), {"role": "assistant", "content": answer}]
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        prompt = (self.system_prompt or "") + (self.template or DEFAULT_QA_TEMPLATE).format(question=question)
        return tokenizer(prompt + answer)["input_ids"]

    def answer_ids(self, tokenizer, question: str, answer: str) -> list[int]:
        """``separate_answer``: the answer's own tokens, led by the spaces the plain prompt ended with."""
        if self.uses_chat_template(tokenizer):
            return tokenizer(answer, add_special_tokens=False)["input_ids"]
        prompt = (self.template or DEFAULT_QA_TEMPLATE).format(question=question)
        trailing = prompt[len(prompt.rstrip(" ")) :]
        return tokenizer(trailing + answer, add_special_tokens=False)["input_ids"]


def unescape_newlines(value: str | None) -> str | None:
    """A typed backslash-n (as users write it inside single quotes on a command line) becomes a newline."""
    return None if value is None else value.replace("\\n", "\n")


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def tokenize_qa(
    tokenizer,
    question: str,
    answer: str,
    max_length: int = 512,
    qa_format: QAFormat | None = None,
    prompt: list[int] | None = None,
) -> dict[str, Any]:
    """``input_ids``, ``attention_mask`` and ``labels`` of one QA pair: prompt tokens -100, answer + eos labelled.

    The labelled tokens are the answer's and one eos: a chat template's turn-closing eos, with whatever the template
    writes after it (ChatML's newline) dropped, or an eos appended when the text has none.

    Joint tokenisation (the default): the labels start after the longest common prefix of the prompt's tokens and
    the full text's tokens. That is the prompt's token count when the prompt's tokens are a prefix of the full
    text's; when the tokenizer merges across the boundary (e.g. a prompt's trailing space joins the answer's first
    word) it is where the two first differ, so no answer character goes unlabelled. ``prompt_mismatch`` says which
    case it was. Sequences longer than ``max_length`` lose answer tokens from the right. ``prompt``: the prompt's
    tokens (``qa_format.prompt_ids``), when the caller already has them.
    """
    qa_format = qa_format or QAFormat()
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token; set tokenizer.eos_token before tokenising answers.")
    prompt = qa_format.prompt_ids(tokenizer, question) if prompt is None else prompt
    if len(prompt) >= max_length:
        raise ValueError(f"A prompt of {len(prompt)} tokens leaves no room for its answer; raise max_length.")
    if qa_format.separate_answer:
        full, start = prompt + qa_format.answer_ids(tokenizer, question, answer), len(prompt)
    else:
        full = qa_format.full_ids(tokenizer, question, answer)
        start = _common_prefix(prompt, full)
    eos = tokenizer.eos_token_id
    if eos in full[start:]:
        # A chat template closes the turn with eos and may add text after it (ChatML's newline): the answer ends there.
        full = full[: full.index(eos, start) + 1]
    else:
        full = full + [eos]
    input_ids = full[:max_length]
    labels = [IGNORE_INDEX] * start + input_ids[start:]
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": labels[:max_length],
        "prompt_mismatch": start != len(prompt),
    }


def tokenize_qa_rows(
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    max_length: int = 512,
    qa_format: QAFormat | None = None,
    source: str = "QA data",
) -> list[dict[str, list[int]]]:
    """:func:`tokenize_qa` over ``(question, answer)`` pairs (each question's prompt tokenised once); one warning
    with the count of boundary merges."""
    qa_format = qa_format or QAFormat()
    prompts: dict[str, list[int]] = {}
    for question, _ in pairs:
        if question not in prompts:
            prompts[question] = qa_format.prompt_ids(tokenizer, question)
    examples = [tokenize_qa(tokenizer, q, a, max_length, qa_format, prompts[q]) for q, a in pairs]
    merged = sum(e.pop("prompt_mismatch") for e in examples)
    if merged:
        warnings.warn(
            f"{source}: in {merged} of {len(examples)} examples the prompt's tokens are not a prefix of "
            "prompt + answer's (the tokenizer merges across the boundary, e.g. a trailing space into the answer's "
            "first word); their labels start after the longest common prefix. Check that the QA format is the one "
            "the model was fine-tuned with.",
            stacklevel=2,
        )
    return examples


def tokenize_prompt(tokenizer, question: str, qa_format: QAFormat | None = None) -> list[int]:
    """Token ids of the prompt for ``question`` in ``qa_format`` (default: chat template if any, else TOFU's)."""
    return (qa_format or QAFormat()).prompt_ids(tokenizer, question)


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
        qa_format: QAFormat | None = None,
        source: str = "QA data",
    ):
        if len(rows) == 0:
            raise ValueError(f"{source} is empty; unlearning needs at least one example.")
        check_columns(rows, [question_key, answer_key], source)
        pairs = [(row[question_key], row[answer_key]) for row in rows]
        self.pairs, self.max_length = pairs, max_length  # the source text, for methods that re-tokenise answers
        self.qa_format = qa_format or QAFormat()
        self.examples = tokenize_qa_rows(tokenizer, pairs, max_length, self.qa_format, source)

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
