"""Alternate answers for AltPO: the model itself rewrites each forget answer with other, plausible facts.

`generate_alternates` prompts the model, in the QA format it is trained with, with the question, its true answer and
an instruction to change every fact; `hf-unlearn alternates` writes the result as JSON Lines (question, answer,
alternate), which an `altpo` recipe names in `alternates_file`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from hf_unlearn.data import QAFormat, pad_batch, read_json_rows
from hf_unlearn.modeling import eval_mode


ALTERNATE_FIELDS = ("question", "answer", "alternate")
DEFAULT_INSTRUCTION = (
    "Question: {question}\nAnswer: {answer}\n"
    "Answer the same question again, just as fluently and plausibly, but change every fact the answer above gives "
    "(names, places, dates, titles, numbers). Reply with the new answer only."
)


def check_instruction(instruction: str) -> None:
    missing = [name for name in ("{question}", "{answer}") if name not in instruction]
    if missing:
        raise ValueError(f"The alternates instruction has no {' or '.join(missing)} field; it needs both.")


def read_alternates(path: str | Path) -> dict[tuple[str, str], str]:
    """`(question, answer) -> alternate` from an alternates file; one line per problem (missing, empty, repeated)."""
    rows = read_json_rows(path, ALTERNATE_FIELDS, what="alternate answers (question, answer, alternate)")
    alternates: dict[tuple[str, str], str] = {}
    for number, row in enumerate(rows, start=1):
        if not all(isinstance(row[name], str) for name in ALTERNATE_FIELDS) or not row["alternate"].strip():
            raise ValueError(f"{path} row {number}: question, answer and alternate must be text, alternate non-empty.")
        key = (row["question"], row["answer"])
        if alternates.get(key, row["alternate"]) != row["alternate"]:
            raise ValueError(f"{path} row {number}: a second, different alternate for {row['question']!r}; keep one.")
        alternates[key] = row["alternate"]
    return alternates


@torch.no_grad()
def generate_alternates(
    model,
    tokenizer,
    rows: Sequence[dict],
    qa_format: QAFormat | None = None,
    instruction: str = DEFAULT_INSTRUCTION,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[dict[str, str]]:
    """One `{"question", "answer", "alternate"}` per row, in row order; greedy unless `do_sample`.

    Each prompt is `instruction` (with the row's question and answer) rendered as the question of `qa_format`, so a
    chat model sees it as a user turn of its own chat template; the alternate is the decoded continuation, stripped.
    """
    check_instruction(instruction)
    qa_format = qa_format or QAFormat()
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos token).")
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
    out = []
    with eval_mode(model):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            prompts = [
                qa_format.prompt_ids(tokenizer, instruction.format(question=r["question"], answer=r["answer"]))
                for r in chunk
            ]
            batch = pad_batch([{"input_ids": p, "attention_mask": [1] * len(p)} for p in prompts],
                              tokenizer.pad_token_id, padding_side="left")  # fmt: skip
            generated = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            for row, tokens in zip(chunk, new_tokens.tolist()):
                text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                out.append({"question": row["question"], "answer": row["answer"], "alternate": text})
    return out


def alternates_jsonl(rows: Sequence[dict[str, str]]) -> str:
    """The rows as JSON Lines; an empty alternate fails here, before any file is written."""
    empty = [r for r in rows if not r["alternate"].strip()]
    if empty:
        raise ValueError(
            f"{len(empty)} of {len(rows)} generated alternates are empty (first: {empty[0]['question']!r}); raise "
            "--max_new_tokens, sample with --do_sample, or change --instruction."
        )
    return "".join(json.dumps({k: r[k] for k in ALTERNATE_FIELDS}, ensure_ascii=False) + "\n" for r in rows)
