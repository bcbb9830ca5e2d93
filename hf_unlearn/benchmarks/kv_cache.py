"""KV caches for evaluation: a layer that grows in place, and the prefix every prompt shares, computed once.

Chat templates put the same tokens before every question (a default system message, the turn markers): SmolLM2's
are 24 of a TOFU prompt's 48 tokens. :class:`SharedPrefix` runs them once per scoring or generation call and copies
their KV cache into each batch, whose forwards then start after them (positions and attention masks as if the
whole prompt had run).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from hf_unlearn.modeling import model_device


# Below this many shared tokens a prefix is not worth a forward of its own.
MIN_SHARED_TOKENS = 8


def new_cache(model, growing: bool = False) -> DynamicCache:
    """A fresh KV cache; ``growing``: full-attention layers append into spare room (:class:`GrowingLayer`)."""
    from transformers import PretrainedConfig

    config = getattr(model, "config", None)
    if not isinstance(config, PretrainedConfig):
        return DynamicCache()
    cache = DynamicCache(config=config)
    if growing:
        cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


class GrowingLayer(DynamicLayer):
    """A :class:`DynamicLayer` that appends into spare room instead of concatenating.

    ``DynamicLayer.update`` copies the whole cache at every decode step (``torch.cat``), a cost that grows with the
    answer; here a step writes its one token into a buffer with room to spare, and ``keys``/``values`` are views of
    the filled part. When the batch code replaces ``keys`` (rows dropped or merged), the next update re-buffers.
    """

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, new = self.get_seq_length(), key_states.shape[-2]
        buffers = getattr(self, "_room", None)
        if buffers is None or self.keys is not self._view or length + new > buffers[0].shape[-2]:
            room = length + new + max(32, (length + new) // 2)
            buffers = tuple(s.new_empty(*s.shape[:2], room, s.shape[-1]) for s in (key_states, value_states))
            if length:
                buffers[0][:, :, :length] = self.keys
                buffers[1][:, :, :length] = self.values
            self._room = buffers
        buffers[0][:, :, length : length + new] = key_states
        buffers[1][:, :, length : length + new] = value_states
        self.keys, self.values = buffers[0][:, :, : length + new], buffers[1][:, :, : length + new]
        self._view = self.keys
        return self.keys, self.values


def rows_of(cache: DynamicCache, index: torch.Tensor) -> DynamicCache:
    """A cache holding rows ``index`` of ``cache``, which is left as it was (each layer keeps its own state, e.g. a
    sliding window's position; what either cache appends later stays its own)."""
    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    selected.batch_select_indices(index)
    return selected


def left_padded_concat(
    caches: Sequence[DynamicCache], masks: Sequence[torch.Tensor]
) -> tuple[DynamicCache, torch.Tensor]:
    """The rows of full-attention ``caches`` in one cache (the first, refilled), each left-padded with masked zero
    columns to the widest, and their attention ``masks`` likewise."""
    width = max(mask.shape[1] for mask in masks)

    def left_pad(tensor: torch.Tensor, dim: int) -> torch.Tensor:
        missing = width - tensor.shape[dim]
        if missing == 0:
            return tensor
        shape = list(tensor.shape)
        shape[dim] = missing
        return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)

    merged = caches[0]
    for index, layer in enumerate(merged.layers):
        layer.keys = torch.cat([left_pad(cache.layers[index].keys, 2) for cache in caches])
        layer.values = torch.cat([left_pad(cache.layers[index].values, 2) for cache in caches])
    return merged, torch.cat([left_pad(mask, 1) for mask in masks])


def full_attention(cache: DynamicCache) -> bool:
    """Whether every layer of ``cache`` keeps every past token (no sliding window, no linear or chunked attention):
    the caches whose columns can be copied between batches and padded anywhere."""
    return all(type(layer) in (DynamicLayer, GrowingLayer) for layer in cache.layers)


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix all ``sequences`` start with."""
    if not sequences:
        return 0
    first, length = sequences[0], min(len(s) for s in sequences)
    for sequence in sequences[1:]:
        n = 0
        while n < length and sequence[n] == first[n]:
            n += 1
        length = n
    return length


class SharedPrefix:
    """The first ``length`` tokens every prompt of a call starts with, run once into a batch-1 KV cache.

    :meth:`build` returns ``None`` when sharing does not apply: fewer than :data:`MIN_SHARED_TOKENS` shared tokens
    (each prompt must keep at least one token of its own, the one whose logits come next), a model that takes no
    cache, or a cache with other than full-attention layers. A batch then takes :meth:`cache_for` (a copy for its
    rows) and prepends :meth:`mask_for` columns to its attention mask; its own tokens are ``ids[length:]`` at
    positions from ``length`` on.
    """

    def __init__(self, model, tokens: list[int], cache: DynamicCache, growing: bool):
        self.model, self.tokens, self.cache, self.growing = model, tokens, cache, growing
        self.length = len(tokens)

    def growing_copy(self) -> SharedPrefix:
        """The same prefix (the same cache tensors) handing out growing caches, for generation."""
        return SharedPrefix(self.model, self.tokens, self.cache, growing=True)

    def truncated(self, length: int) -> SharedPrefix:
        """The first ``length`` tokens of this prefix (a view of its cache's first columns)."""
        if length == self.length:
            return self
        cache = new_cache(self.model, growing=self.growing)
        for mine, full in zip(cache.layers, self.cache.layers):
            mine.lazy_initialization(full.keys, full.values)
            mine.keys, mine.values = full.keys[:, :, :length], full.values[:, :, :length]
        return SharedPrefix(self.model, self.tokens[:length], cache, self.growing)

    def starts(self, prompt: Sequence[int]) -> bool:
        return len(prompt) > self.length and list(prompt[: self.length]) == self.tokens

    @classmethod
    def build(cls, model, prompts: Sequence[Sequence[int]], growing: bool = False) -> SharedPrefix | None:
        """Run the prompts' common prefix (``growing``: into :class:`GrowingLayer` s); call in eval mode."""
        length = min(common_prefix_length(prompts), min((len(p) for p in prompts), default=0) - 1)
        if length < MIN_SHARED_TOKENS or not accepts_cache(model):
            return None
        tokens = list(prompts[0][:length])
        cache = new_cache(model, growing=growing)
        model(
            input_ids=torch.tensor([tokens], device=model_device(model)),
            position_ids=torch.arange(length, device=model_device(model))[None],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        if cache.get_seq_length() != length or not full_attention(cache):
            return None
        return cls(model, tokens, cache, growing)

    def cache_for(self, rows: int) -> DynamicCache:
        """A cache for ``rows`` rows holding the prefix, to be extended by one batch's forwards.

        Its keys and values are broadcast views of the prefix's: the first update writes new tensors (caches append
        by concatenating or re-buffering, never in place into what they were given), so batches never share writes.
        """
        cache = new_cache(self.model, growing=self.growing)
        for mine, prefix in zip(cache.layers, self.cache.layers):
            mine.lazy_initialization(prefix.keys, prefix.values)
            mine.keys = prefix.keys.expand(rows, -1, -1, -1)
            mine.values = prefix.values.expand(rows, -1, -1, -1)
        return cache

    def mask_for(self, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` (a batch's attention mask over its own tokens) with the prefix's columns in front."""
        return torch.cat([mask.new_ones(mask.shape[0], self.length), mask], dim=1)


def accepts_cache(model) -> bool:
    """Whether the model's forward takes a KV cache (``cache`` or ``past_key_values``)."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" in parameters or "past_key_values" in parameters


# Prompt caches kept between scoring and generation at most (SmolLM2 in float32: ~1.2 MB per TOFU question).
PROMPT_STATES_BUDGET_BYTES = 256 * 2**20


class PromptStates:
    """Prompts that scoring has already run, kept for generation to start from instead of running them again.

    Scoring a question's answers runs its prompt (the tokens before the first answer token) and, at the first answer
    position, the logits whose argmax is the first greedy token. For the examples in ``wanted`` the scoring pass
    stores the keys and values of the prompt's own tokens (after ``shared``, the prefix every context shares) and
    that token; :func:`hf_unlearn.benchmarks.engine.generate_greedy` then skips their prefill. Kept until
    ``budget_bytes`` is reached (the rest prefill as before), so memory stays bounded whatever the set's size.
    """

    def __init__(self, wanted: Sequence[int], budget_bytes: int = PROMPT_STATES_BUDGET_BYTES):
        self.wanted, self.budget_bytes = set(wanted), budget_bytes
        self.shared: SharedPrefix | None = None  # scoring's; generation starts from the same one
        self.states: dict[int, tuple[list[torch.Tensor], list[torch.Tensor], int]] = {}
        self.bytes = 0
        self.size = 0  # prompts, once keyed by prompt (:meth:`by_prompt`)

    @classmethod
    def combine(cls, parts: Sequence[PromptStates]) -> PromptStates:
        """The states of several scoring passes keyed by prompt index (:meth:`by_prompt` of each, in order), for one
        generation over all their prompts. The prefix they start from is the longest the passes' prefixes share; the
        columns a pass's longer prefix held past it are put in front of its states."""
        shared = [part.shared for part in parts]
        length = 0 if any(s is None for s in shared) else common_prefix_length([s.tokens for s in shared])
        if length < MIN_SHARED_TOKENS:
            length = 0
        combined = cls([], budget_bytes=0)  # a view for generation: it keeps nothing more
        combined.shared = shared[0].truncated(length) if length else None
        offset = 0
        for part, prefix in zip(parts, shared):
            for prompt, (keys, values, token) in part.states.items():
                if prefix is not None and prefix.length > length:
                    heads = prefix.cache.layers
                    keys = [torch.cat([head.keys[0, :, length:], k], dim=-2) for head, k in zip(heads, keys)]
                    values = [torch.cat([head.values[0, :, length:], v], dim=-2) for head, v in zip(heads, values)]
                combined.states[offset + prompt] = (keys, values, token)
            offset += part.size
        combined.bytes, combined.size = sum(part.bytes for part in parts), offset
        return combined

    def by_prompt(self, examples: Sequence[int]) -> PromptStates:
        """The same states keyed by prompt index, prompt ``i`` being example ``examples[i]``."""
        keyed = PromptStates([], self.budget_bytes)
        keyed.shared, keyed.bytes, keyed.size = self.shared, self.bytes, len(examples)
        keyed.states = {i: self.states[e] for i, e in enumerate(examples) if e in self.states}
        return keyed

    def keep(self, example: int, cache: DynamicCache, row: int, start: int, stop: int, first_token: int) -> None:
        """Store cache columns ``start:stop`` of batch row ``row`` as ``example``'s prompt (within the budget)."""
        columns = [(layer.keys[row, :, start:stop], layer.values[row, :, start:stop]) for layer in cache.layers]
        size = sum(t.numel() * t.element_size() for pair in columns for t in pair)
        if self.bytes + size > self.budget_bytes:
            return
        self.bytes += size
        self.states[example] = ([k.clone() for k, _ in columns], [v.clone() for _, v in columns], first_token)
