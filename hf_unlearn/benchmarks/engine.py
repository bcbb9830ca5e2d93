"""The two model calls every benchmark is built from: batched teacher-forced scoring and batched greedy generation.

Both sort inputs by length before batching (less padding, so fewer wasted FLOPs) and return results in input
order. Scoring pads on the right (positions stay 0..n-1, labels shift naturally); generation pads on the left so
every row's next token is at the same position. Both restore the model's train/eval mode on exit.
"""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm

from hf_unlearn.benchmarks.metrics import MIN_K_FRACTION, answer_token_stats
from hf_unlearn.data import pad_batch
from hf_unlearn.modeling import eval_mode, model_device


def require_pad_token(tokenizer) -> int:
    """The tokenizer's pad id; a one-line error naming the fix when it has none."""
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "The tokenizer has no pad token, which batched evaluation needs; set one first, "
            "e.g. tokenizer.pad_token = tokenizer.eos_token."
        )
    return tokenizer.pad_token_id


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def score_examples(
    model,
    examples: Sequence[dict[str, list[int]]],
    pad_token_id: int,
    batch_size: int = 16,
    k: float = MIN_K_FRACTION,
    desc: str = "scoring",
    show_progress: bool = True,
    min_k_at_least_one: bool = True,
) -> list[dict[str, float]]:
    """Per-example answer statistics (``nll_sum``, ``nll_mean``, ``num_tokens``, ``min_k``, ``extraction_strength``).

    ``examples`` are tokenised sequences with ``input_ids`` and ``labels`` (-100 on unscored tokens), such as
    :func:`hf_unlearn.data.tokenize_qa` returns. One forward per batch yields all statistics.
    ``min_k_at_least_one``: see :func:`hf_unlearn.benchmarks.metrics.min_k_scores`.
    """
    results: list[dict[str, float] | None] = [None] * len(examples)
    batches = _length_sorted_batches([len(e["input_ids"]) for e in examples], batch_size)
    device = model_device(model)
    with eval_mode(model):
        for batch_indices in tqdm(batches, desc=desc, disable=not show_progress, leave=False):
            batch = pad_batch([examples[i] for i in batch_indices], pad_token_id, padding_side="right")
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            stats = answer_token_stats(logits, batch["labels"].to(device), k, min_k_at_least_one).to_lists()
            for row, index in enumerate(batch_indices):
                results[index] = {name: values[row] for name, values in stats.items()}
    return results


def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[list[int]],
    max_new_tokens: int | Sequence[int],
    batch_size: int = 16,
    stop_strings: Sequence[str] = (),
    desc: str = "generating",
    show_progress: bool = True,
) -> list[str]:
    """Greedy continuations of tokenised ``prompts``, decoded without special tokens.

    ``max_new_tokens`` may be one cap or one per prompt; each row is cut to its own cap, so the text does not
    depend on which prompts share its batch. Generation stops at EOS; the text is then cut before the first
    of ``stop_strings``.
    """
    pad_token_id = require_pad_token(tokenizer)
    caps = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(caps) != len(prompts):
        raise ValueError(f"Got {len(caps)} max_new_tokens values for {len(prompts)} prompts.")
    texts: list[str | None] = [None] * len(prompts)
    device = model_device(model)
    with eval_mode(model):
        for batch_indices in tqdm(
            _length_sorted_batches([len(p) for p in prompts], batch_size),
            desc=desc,
            disable=not show_progress,
            leave=False,
        ):
            batch_cap = max(caps[i] for i in batch_indices)
            if batch_cap <= 0:
                for i in batch_indices:
                    texts[i] = ""
                continue
            rows = [{"input_ids": prompts[i], "attention_mask": [1] * len(prompts[i])} for i in batch_indices]
            batch = pad_batch(rows, pad_token_id, padding_side="left")
            input_ids = batch["input_ids"].to(device)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=batch_cap,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = output[:, input_ids.shape[1] :].tolist()
            for row, index in enumerate(batch_indices):
                tokens = _until_eos(new_tokens[row][: max(caps[index], 0)], tokenizer.eos_token_id)
                texts[index] = _cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stop_strings)
    return texts


def _until_eos(tokens: list[int], eos_token_id: int | None) -> list[int]:
    if eos_token_id is not None and eos_token_id in tokens:
        return tokens[: tokens.index(eos_token_id)]
    return tokens


def _cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stop_strings if s and s in text), default=len(text))
    return text[:cut]
