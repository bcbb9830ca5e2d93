"""The two model calls every benchmark is built from: batched teacher-forced scoring and batched greedy generation.

Both sort inputs by length before batching (less padding, so fewer wasted FLOPs) and return results in input
order. Scoring pads on the right (positions stay 0..n-1, labels shift naturally); examples sharing a prompt (the
answers to one question) run it once into a KV cache, left-padded, and their continuations on top of it, prompts and
continuations each in runs of similar length; the output head runs on the scored positions only. Generation pads on
the left so every row's next token is at the same position, appends to its KV cache in place, and on a CPU reads
per run of rows only the cache columns they attend to (:mod:`hf_unlearn.benchmarks.decode_attention`).
Tokens every prompt of a call starts with (a chat template's system message) run once and are copied into each
batch's cache (:class:`hf_unlearn.benchmarks.kv_cache.SharedPrefix`).
Prompts the scoring pass already ran (the true answers') can be kept from it, with their first greedy token, so
that generation starts from them without a prefill (:class:`hf_unlearn.benchmarks.kv_cache.PromptStates`).
Both restore the model's train/eval mode on exit.
docs/evaluation_speed.md has the measurements and the tolerances.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from hf_unlearn.benchmarks.decode_attention import (
    GROUPED_SDPA,
    column_bytes,
    decode_groups,
    grouped_decoding,
    takes_grouped_decoding,
)
from hf_unlearn.benchmarks.kv_cache import (
    PromptStates,
    SharedPrefix,
    accepts_cache,
    full_attention,
    left_padded_concat,
    new_cache,
    rows_of,
)
from hf_unlearn.benchmarks.metrics import MIN_K_FRACTION, AnswerStats, packed_answer_stats
from hf_unlearn.data import IGNORE_INDEX, pad_batch
from hf_unlearn.modeling import eval_mode, labelled_logits, model_device, scored_positions


# Padding tokens a continuation forward must spare to be worth one more forward: a forward's fixed cost in tokens,
# measured on one CPU thread at 31 for the 2M-parameter TOFU model (dispatch) and 21 for SmolLM2-135M (its weights'
# read); see docs/evaluation_speed.md.
CHUNK_WORTH_TOKENS = 32


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


def _first_target(labels: Sequence[int]) -> int:
    """Index of the first scored token (position 0 never is: nothing predicts it); ``len(labels)`` if none."""
    return next((t for t in range(1, len(labels)) if labels[t] != IGNORE_INDEX), len(labels))


def _scoring_batches(examples: Sequence[dict[str, list[int]]], batch_size: int) -> list[list[list[int]]]:
    """Batches of groups of example indices; the examples of a group of two or more share a prompt prefix.

    An example's prefix is its tokens before the position that predicts its first scored token: answers to one
    question (true, paraphrased, perturbed) share it, so it is run once per group (:func:`_score_shared`). Groups are
    kept whole unless larger than a batch; examples without a partner are batched alone by length.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    groups: dict[tuple[int, ...], list[int]] = {}
    single: list[int] = []
    for index, example in enumerate(examples):
        prefix = example["input_ids"][: max(_first_target(example["labels"]) - 1, 0)]
        groups.setdefault(tuple(prefix), []).append(index)
    shared = []
    for prefix, members in groups.items():
        if prefix and len(members) > 1:
            shared += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
        else:
            single += members
    # Longest answers first, so a batch's continuations have similar lengths (little right padding).
    answer_length = {
        i: len(examples[i]["input_ids"]) - _first_target(examples[i]["labels"]) for g in shared for i in g
    }
    shared.sort(key=lambda group: -max(answer_length[i] for i in group))
    batches: list[list[list[int]]] = []
    rows = 0
    for group in shared:
        if not batches or rows + len(group) > batch_size:
            batches.append([])
            rows = 0
        batches[-1].append(group)
        rows += len(group)
    lengths = [len(examples[i]["input_ids"]) for i in single]
    batches += [[[single[j]] for j in batch] for batch in _length_sorted_batches(lengths, batch_size)]
    return batches


def _own_tokens(example: dict[str, list[int]], start: int, stop: int | None = None) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` of ``example`` from ``start`` (to ``stop``), with their attention mask."""
    part = {key: example[key][start:stop] for key in ("input_ids", "labels") if key in example}
    return part | {"attention_mask": [1] * len(part["input_ids"])}


def _score_whole(
    model, examples, rows, shared, pad_token_id, device, k, min_k_at_least_one, vocab_stats
) -> AnswerStats:
    """One forward over whole sequences (after the shared prefix, if any), right-padded."""
    skip = shared.length if shared is not None else 0
    batch = pad_batch([_own_tokens(examples[i], skip) for i in rows], pad_token_id, padding_side="right")
    keep, targets = scored_positions(batch["labels"].to(device))
    mask = batch["attention_mask"].to(device)
    inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": mask}
    if shared is not None:
        inputs |= {
            "attention_mask": shared.mask_for(mask),
            "position_ids": skip + torch.arange(mask.shape[1], device=device).expand(len(rows), -1),
            "cache": shared.cache_for(len(rows)),
            "use_cache": True,
        }
    logits = labelled_logits(model, keep, **inputs)
    return packed_answer_stats(logits, targets, keep[:, :-1], k, min_k_at_least_one, vocab_stats)


def _score_shared(
    model, examples, groups, shared, pad_token_id, device, k, min_k_at_least_one, vocab_stats, prompt_states=None
) -> list[tuple[list[int], AnswerStats]] | None:
    """Each group's shared prefix once (left-padded, into a KV cache), then every member's continuation on it.

    The continuation of an example starts at the token whose logits predict its first scored token; its positions
    continue the prefix's, so each continuation sees exactly the tokens it would see in a whole-sequence forward.
    With a prefix all prompts share (``shared``), each group's prefix runs on top of it. The continuations run in
    runs of similar length (:func:`_length_chunks`); returns each run's example indices and statistics, or ``None``
    when the model filled no cache (then the caller scores whole sequences). Members in ``prompt_states.wanted``
    leave their prompt's cache columns and first greedy token there
    (:class:`hf_unlearn.benchmarks.kv_cache.PromptStates`).
    """
    skip = shared.length if shared is not None else 0
    cut = [_first_target(examples[g[0]]["labels"]) - 1 for g in groups]
    prefixes = [_own_tokens(examples[g[0]], skip, c) for g, c in zip(groups, cut)]
    prompts = _run_prompts(model, prefixes, shared, pad_token_id, device)
    if prompts is None:
        return None
    cache, prefix_mask, row_of = prompts
    owner = [g for g, members in enumerate(groups) for _ in members]
    rows = [i for members in groups for i in members]
    row_cuts = [cut[g] for g in owner]
    continuations = [_own_tokens(examples[i], c) for i, c in zip(rows, row_cuts)]
    parts = []
    for chunk in _length_chunks([len(c["input_ids"]) for c in continuations]):
        batch = pad_batch([continuations[j] for j in chunk], pad_token_id, padding_side="right")
        keep, targets = scored_positions(batch["labels"].to(device))
        mask = batch["attention_mask"].to(device)
        index = torch.tensor([row_of[owner[j]] for j in chunk], device=device)
        chunk_cache = rows_of(cache, index)
        logits = labelled_logits(
            model,
            keep,
            input_ids=batch["input_ids"].to(device),
            attention_mask=torch.cat([prefix_mask[index], mask], dim=1),
            position_ids=torch.tensor([row_cuts[j] for j in chunk], device=device)[:, None]
            + torch.arange(mask.shape[1], device=device),
            cache=chunk_cache,
            use_cache=True,
        )
        chunk_rows = [rows[j] for j in chunk]
        if prompt_states is not None and full_attention(chunk_cache):
            chunk_cuts = [row_cuts[j] for j in chunk]
            _keep_prompts(prompt_states, chunk_rows, chunk_cuts, skip, prefix_mask.shape[1], chunk_cache, keep, logits)
        parts.append(
            (chunk_rows, packed_answer_stats(logits, targets, keep[:, :-1], k, min_k_at_least_one, vocab_stats))
        )
    return parts


def _run_prompts(model, prompts, shared, pad_token_id, device):
    """The groups' prompts (after ``shared``) into one left-padded KV cache, in runs of similar length
    (:func:`_length_chunks`) stacked afterwards: ``(cache, attention mask, cache row of each group)``, or ``None``
    when the model filled no cache."""
    skip = shared.length if shared is not None else 0
    runs = _length_chunks([len(p["input_ids"]) for p in prompts]) if full_attention(new_cache(model)) else []
    if len(runs) < 2:  # one forward, in group order
        runs = [list(range(len(prompts)))]
    caches, masks = [], []
    for run in runs:
        batch = pad_batch([prompts[g] for g in run], pad_token_id, padding_side="left")
        mask = batch["attention_mask"].to(device)
        if shared is not None:
            mask = shared.mask_for(mask)
        cache = shared.cache_for(len(run)) if shared is not None else new_cache(model)
        model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, skip:],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        if cache.get_seq_length() == 0:
            return None
        caches.append(cache)
        masks.append(mask)
    cache, mask = left_padded_concat(caches, masks) if len(caches) > 1 else (caches[0], masks[0])
    return cache, mask, {g: row for row, g in enumerate(g for run in runs for g in run)}


def _length_chunks(lengths: Sequence[int]) -> list[list[int]]:
    """Indices of ``lengths`` split into runs of similar length, each run one right-padded forward.

    Longest first; a run ends where the padding the next rows would add costs more than one more forward
    (:data:`CHUNK_WORTH_TOKENS`). The answers to one question differ in length (a true answer, its paraphrase, five
    perturbed ones), so a batch of whole questions is ragged.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = [0.0] + [float("inf")] * len(order)
    start_of = [0] * (len(order) + 1)
    for stop in range(1, len(order) + 1):
        for start in range(stop):
            # sorted longest first: the run's width is its first row's length
            cost = best[start] + (stop - start) * lengths[order[start]] + CHUNK_WORTH_TOKENS
            if cost < best[stop]:
                best[stop], start_of[stop] = cost, start
    chunks, stop = [], len(order)
    while stop > 0:
        chunks.append(order[start_of[stop] : stop])
        stop = start_of[stop]
    return chunks[::-1]


def _keep_prompts(prompt_states, rows, row_cuts, skip, prefix_end, cache, keep, logits) -> None:
    """Hand ``prompt_states`` the wanted rows' prompts: the cache columns of their own prompt tokens (the group's
    left-padded prefix, which ends at column ``prefix_end``, and the continuation's first column, the prompt's last
    token) and the first greedy token, the argmax at the row's first scored position."""
    counts = keep.sum(dim=1)
    first = (counts.cumsum(0) - counts).tolist()  # each row's first row in the labelled logits
    for row, (example, cut) in enumerate(zip(rows, row_cuts)):
        if example in prompt_states.wanted and bool(keep[row, 0]):
            token = int(logits[first[row]].argmax())
            prompt_states.keep(example, cache, row, prefix_end - (cut - skip), prefix_end + 1, token)


def score_examples(
    model,
    examples: Sequence[dict[str, list[int]]],
    pad_token_id: int,
    batch_size: int = 16,
    k: float = MIN_K_FRACTION,
    desc: str = "scoring",
    show_progress: bool = True,
    min_k_at_least_one: bool = True,
    vocab_stats: bool = False,
    prompt_states: PromptStates | None = None,
) -> list[dict[str, float]]:
    """Per-example answer statistics (``nll_sum``, ``nll_mean``, ``num_tokens``, ``min_k``, ``extraction_strength``,
    ``exact_memorization``; with ``vocab_stats`` also ``min_k_plus_plus``).

    ``examples`` are tokenised sequences with ``input_ids`` and ``labels`` (-100 on unscored tokens), such as
    :func:`hf_unlearn.data.tokenize_qa` returns. One forward per batch yields all statistics; examples that share
    their prompt (the answers to one question) share one forward of it and its KV cache, and the output head and
    every statistic run on the scored positions only. ``min_k_at_least_one``: see
    :func:`hf_unlearn.benchmarks.metrics.min_k_scores`; ``vocab_stats``: see
    :func:`hf_unlearn.benchmarks.metrics.answer_token_stats`. ``prompt_states``: keep the prompts of its wanted
    examples for :func:`generate_greedy` (see :class:`hf_unlearn.benchmarks.kv_cache.PromptStates`).
    """
    results: list[dict[str, float] | None] = [None] * len(examples)
    batches = _scoring_batches(examples, batch_size)
    device = model_device(model)
    share = accepts_cache(model)
    settings = (pad_token_id, device, k, min_k_at_least_one, vocab_stats)
    with eval_mode(model):
        # every example's context up to the position that predicts its first scored token
        contexts = [e["input_ids"][: max(_first_target(e["labels"]) - 1, 0)] for e in examples]
        shared = SharedPrefix.build(model, contexts) if share else None
        if prompt_states is not None:
            prompt_states.shared = shared
        for groups in tqdm(batches, desc=desc, disable=not show_progress, leave=False):
            rows = [i for group in groups for i in group]
            parts = None
            if share and len(rows) > len(groups):
                parts = _score_shared(model, examples, groups, shared, *settings, prompt_states)
                share = parts is not None
            if parts is None:
                parts = [(rows, _score_whole(model, examples, rows, shared, *settings))]
            for part_rows, stats in parts:
                lists = stats.to_lists()
                for position, row in enumerate(part_rows):
                    results[row] = {name: values[position] for name, values in lists.items()}
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
    prompt_states: PromptStates | None = None,
) -> list[str]:
    """Greedy continuations of tokenised ``prompts``, decoded without special tokens.

    ``max_new_tokens`` may be one cap or one per prompt; each row is cut to its own cap, so the text does not
    depend on which prompts share its batch. Generation stops at EOS; the text is then cut before the first
    of ``stop_strings``. At most ``batch_size`` prompts are decoded together: a row leaves the batch when it
    ends and the next prompts take its place (see :class:`_GreedyBatch`), so one long answer does not keep a
    whole batch stepping. ``prompt_states`` (keyed by prompt index, :meth:`PromptStates.by_prompt`): prompts the
    scoring pass already ran start from their kept cache and first token instead of a prefill of their own.
    """
    pad_token_id = require_pad_token(tokenizer)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    caps = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(caps) != len(prompts):
        raise ValueError(f"Got {len(caps)} max_new_tokens values for {len(prompts)} prompts.")
    # Longest prompts first: rows that decode together have similar lengths, so little left padding.
    queue = deque(sorted((i for i in range(len(prompts)) if caps[i] > 0), key=lambda i: -len(prompts[i])))
    tokens: list[list[int]] = [[] for _ in prompts]
    progress = tqdm(total=len(queue), desc=desc, disable=not show_progress, leave=False)
    grouped = takes_grouped_decoding(model, model_device(model))
    with eval_mode(model), grouped_decoding(model) if grouped else nullcontext():
        if prompt_states is None:
            shared = SharedPrefix.build(model, [prompts[i] for i in queue], growing=True) if queue else None
            states = {}
        else:  # the scoring pass's prefix, which the kept caches continue
            shared = prompt_states.shared.growing_copy() if prompt_states.shared is not None else None
            if shared is not None and not all(shared.starts(prompts[i]) for i in queue):
                raise ValueError("prompt_states come from a scoring pass whose prompts are not these prompts.")
            states = prompt_states.states
        running = None
        while queue or running is not None:
            free = batch_size - (running.size if running is not None else 0)
            threshold = max(1, batch_size // 4)
            if queue and (running is None or (running.can_merge and free >= threshold)):
                rows = [queue.popleft() for _ in range(min(free, len(queue)))]
                fresh = _GreedyBatch.start(model, prompts, rows, pad_token_id, shared, states)
                progress.update(fresh.record(tokens, caps, tokenizer.eos_token_id))
                if running is not None and running.compact().size == 0:
                    running = None
                if fresh.size:
                    running = fresh.compact() if running is None else running.merge(fresh)
            else:
                if running.dead >= threshold or (not queue and running.dead and not running.can_merge):
                    running.compact()
                running.step(model, grouped)
                progress.update(running.record(tokens, caps, tokenizer.eos_token_id))
                if running.size == 0:
                    running = None
    progress.close()
    eos = tokenizer.eos_token_id
    return [_cut_at_stop(tokenizer.decode(_until_eos(t, eos), skip_special_tokens=True), stop_strings) for t in tokens]


class _GreedyBatch:
    """The rows decoding together: their KV cache, attention mask, next positions and last greedy tokens.

    Rows are left-padded to a common cache length; ``position_ids`` count each row's own tokens, so a row's
    logits do not depend on its padding. A finished row stays in the batch (its tokens are ignored) until
    :meth:`compact` drops finished rows, which happens when enough have finished that the copy is worth it
    or new rows join; new rows join after their own prefill by left-padding the shorter of the two caches, and
    cache columns no row attends to any more are dropped. A model that keeps no cache is fed the whole sequence
    at each step.
    """

    def __init__(self, rows, cache, mask, positions, last, sequences):
        self.rows, self.cache, self.mask, self.positions, self.last = rows, cache, mask, positions, last
        self.alive = [True] * len(rows)
        self.sequences = sequences  # full token rows, only for models without a cache
        self.groups: list[tuple[int, int, int]] | None = None  # for grouped decoding; recomputed when rows change
        self.groups_stale = True

    @property
    def size(self) -> int:
        return sum(self.alive)

    @property
    def dead(self) -> int:
        return len(self.alive) - self.size

    @property
    def can_merge(self) -> bool:
        return self.sequences is None and full_attention(self.cache)

    @classmethod
    def start(cls, model, prompts, rows, pad_token_id, shared, states) -> _GreedyBatch:
        """The rows' first greedy tokens: from their kept scoring states where there are, else by a prefill."""
        kept, others = [r for r in rows if r in states], [r for r in rows if r not in states]
        batches = []
        if kept:
            lengths = [len(prompts[r]) for r in kept]
            batches.append(cls.from_states(model, [states[r] for r in kept], kept, lengths, shared))
        if others:
            batches.append(cls.prefill(model, [prompts[r] for r in others], others, pad_token_id, shared))
        return batches[0] if len(batches) == 1 else batches[0].merge(batches[1])

    @classmethod
    def from_states(cls, model, states, rows: list[int], lengths: list[int], shared) -> _GreedyBatch:
        """A batch of prompts scoring already ran (:class:`PromptStates`): ``shared``'s keys and values and their
        own, left-padded, and the first greedy token scoring found."""
        device = model_device(model)
        skip = shared.length if shared is not None else 0
        own = [keys[0].shape[-2] for keys, _, _ in states]
        if any(n != length - skip for n, length in zip(own, lengths)):
            raise ValueError("prompt_states hold caches of other lengths than these prompts; pass the scoring's own.")
        width = skip + max(own)

        def left_padded(tensors):
            return torch.stack([torch.nn.functional.pad(t, (0, 0, width - t.shape[-2], 0)) for t in tensors])

        cache = new_cache(model, growing=True)
        for index, layer in enumerate(cache.layers):
            keys = [state[0][index] for state in states]
            values = [state[1][index] for state in states]
            if shared is not None:
                head = shared.cache.layers[index]
                keys = [torch.cat([head.keys[0], k], dim=-2) for k in keys]
                values = [torch.cat([head.values[0], v], dim=-2) for v in values]
            keys, values = left_padded(keys), left_padded(values)
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
        mask = torch.tensor([[0] * (width - skip - n) + [1] * (skip + n) for n in own], device=device)
        last = torch.tensor([token for _, _, token in states], device=device)
        return cls(list(rows), cache, mask, torch.tensor(lengths, device=device), last, None)

    @classmethod
    def prefill(
        cls, model, prompts: list[list[int]], rows: list[int], pad_token_id: int, shared: SharedPrefix | None = None
    ) -> _GreedyBatch:
        """The rows' prompts (after ``shared``'s tokens, when given) into a new cache; their first greedy token."""
        device = model_device(model)
        skip = shared.length if shared is not None else 0
        own = [{"input_ids": p[skip:], "attention_mask": [1] * (len(p) - skip)} for p in prompts]
        batch = pad_batch(own, pad_token_id, "left")
        input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        if shared is not None:
            mask = shared.mask_for(mask)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = shared.cache_for(len(prompts)) if shared is not None else new_cache(model, growing=True)
        logits = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions[:, skip:],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits
        sequences = None if cache.get_seq_length() > 0 else input_ids
        last = logits[:, -1].argmax(dim=-1)
        if shared is not None:
            mask = _right_aligned(cache, mask)
        return cls(list(rows), cache, mask, positions[:, -1] + 1, last, sequences)

    def step(self, model, grouped: bool = False) -> None:
        """One greedy token for every row; ``grouped``: attention in runs of rows (see
        :mod:`hf_unlearn.benchmarks.decode_attention`), the model being inside :func:`grouped_decoding`."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        if self.sequences is not None:
            self.sequences = torch.cat([self.sequences, self.last[:, None]], dim=1)
            positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(
                input_ids=self.sequences, attention_mask=self.mask, position_ids=positions, logits_to_keep=1
            ).logits
        else:
            # runs are cut from the batch's mask, which only full-attention layers' columns follow
            extra = {"decode_groups": self.decode_groups()} if grouped and self.can_merge else {}
            logits = model(
                input_ids=self.last[:, None],
                attention_mask=self.decode_mask(model),
                position_ids=self.positions[:, None],
                cache=self.cache,
                use_cache=True,
                **extra,
            ).logits
        self.positions = self.positions + 1
        self.last = logits[:, -1].argmax(dim=-1)

    def decode_mask(self, model) -> torch.Tensor | None:
        """The attention mask of a one-token step, in the form sdpa takes it, or as given to the model.

        Under sdpa with full-attention layers, transformers would turn the 2-D mask into the boolean
        ``[rows, 1, 1, columns]`` mask built here (nothing, without padding) at every step, a per-step cost of the
        same order as a small model's forward; a 4-D mask is taken as already prepared.
        """
        if getattr(getattr(model, "config", None), "_attn_implementation", None) not in ("sdpa", GROUPED_SDPA):
            return self.mask
        if not full_attention(self.cache):
            return self.mask
        return None if bool(self.mask.all()) else self.mask.bool()[:, None, None, :]

    def decode_groups(self) -> list[tuple[int, int, int]] | None:
        """The runs of rows whose attention reads only the columns from their first attended one on; the same
        until rows leave or join (columns are only appended in between)."""
        if self.groups_stale:
            first_columns = self.mask.int().argmax(dim=1).tolist()
            width = self.mask.shape[1]
            self.groups = decode_groups(first_columns, self.alive, width, column_bytes(self.cache))
            self.groups_stale = False
        return self.groups

    def record(self, tokens: list[list[int]], caps: list[int], eos_token_id: int | None) -> int:
        """Append each live row's new token; rows that produced EOS or reached their cap finish; return how many."""
        finished = 0
        for slot, (row, token) in enumerate(zip(self.rows, self.last.tolist())):
            if not self.alive[slot]:
                continue
            tokens[row].append(token)
            if token == eos_token_id or len(tokens[row]) >= caps[row]:
                self.alive[slot] = False
                self.groups_stale = True
                finished += 1
        return finished

    def compact(self) -> _GreedyBatch:
        """Drop finished rows (and cache columns no remaining row attends to)."""
        if self.dead == 0:
            return self
        slots = [slot for slot, alive in enumerate(self.alive) if alive]
        self.rows, self.alive = [self.rows[s] for s in slots], [True] * len(slots)
        self.groups_stale = True
        if not slots:
            return self
        index = torch.tensor(slots, device=self.mask.device)
        self.mask, self.positions, self.last = self.mask[index], self.positions[index], self.last[index]
        if self.sequences is not None:
            self.sequences = self.sequences[index]
            return self
        self.cache.batch_select_indices(index)
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0]) if used.numel() else self.mask.shape[1]
        if first > 0 and self.can_merge:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        return self

    def merge(self, other: _GreedyBatch) -> _GreedyBatch:
        """One batch of both sets of live rows; the shorter cache is left-padded with masked zeros."""
        other.compact()
        self.cache, self.mask = left_padded_concat([self.cache, other.cache], [self.mask, other.mask])
        self.positions = torch.cat([self.positions, other.positions])
        self.last = torch.cat([self.last, other.last])
        self.rows, self.alive = self.rows + other.rows, self.alive + other.alive
        self.groups_stale = True
        return self


def _right_aligned(cache, mask: torch.Tensor) -> torch.Tensor:
    """Move each row's attended cache columns to the right end, in their order, and return the matching mask.

    A shared prefix leaves a row's left padding between the prefix's columns and its own; with every row's columns
    a suffix, a batch's rows differ only in where theirs start (what grouped decoding and :meth:`compact` use).
    Attention does not depend on where a column is: the positions are in the keys already.
    """
    if bool(mask.all()):
        return mask
    order = torch.sort(mask.int(), dim=1, stable=True).indices  # padding first, then the attended columns
    for layer in cache.layers:
        index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
        layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)
    return mask.gather(1, order)


def _until_eos(tokens: list[int], eos_token_id: int | None) -> list[int]:
    if eos_token_id is not None and eos_token_id in tokens:
        return tokens[: tokens.index(eos_token_id)]
    return tokens


def _cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stop_strings if s and s in text), default=len(text))
    return text[:cut]
