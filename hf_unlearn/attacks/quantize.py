"""Weight-quantization attack (Zhang et al., ICLR 2025): quantize the unlearned weights, then re-evaluate.

Kinds:
    ``fp4`` / ``nf4``: bitsandbytes 4-bit blockwise quantization (FP4 is bitsandbytes' default and what the
        published attack used); the dequantized weights give the same logits as loading the saved model with
        ``BitsAndBytesConfig(load_in_4bit=True[, bnb_4bit_quant_type="nf4"])``.
    ``int8``: bitsandbytes LLM.int8 row-wise absmax weight codes (weights only; the int8 activation path of
        ``load_in_8bit`` is not simulated).
    ``rtnN`` (N in 2..8): plain-torch symmetric per-group absmax round-to-nearest, on any device.

Only the linear layers that ``load_in_4bit`` would replace are quantized (not the output embeddings, tied
weights, norms or input embeddings), so every kind perturbs the same weights.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


BNB_KINDS = ("fp4", "nf4", "int8")
RTN_BITS = range(2, 9)
DEFAULT_BLOCK_SIZE = 64  # bitsandbytes' 4-bit block size, also used by load_in_4bit


def parse_kind(kind: str) -> tuple[str, int]:
    """``"fp4" -> ("fp4", 4)``, ``"int8" -> ("int8", 8)``, ``"rtn3" -> ("rtn", 3)``; a clear error otherwise."""
    name = kind.strip().lower()
    if name in ("fp4", "nf4"):
        return name, 4
    if name == "int8":
        return name, 8
    match = re.fullmatch(r"rtn(\d+)", name)
    if match:
        bits = int(match.group(1))
        if bits not in RTN_BITS:
            raise ValueError(f"Unsupported bit width {bits} in {kind!r}; round-to-nearest supports 2 to 8 bits.")
        return "rtn", bits
    raise ValueError(f"Unknown quantization kind {kind!r}; choose fp4, nf4, int8 or rtnN with N in 2..8 (e.g. rtn4).")


def require_bitsandbytes():
    """Import bitsandbytes or fail with the extra to install."""
    try:
        import bitsandbytes.functional as bnb_functional
    except ImportError as err:
        raise ImportError(
            "The fp4/nf4/int8 quantization attacks need bitsandbytes: pip install 'hf_unlearn[quant]' "
            "(or use kind='rtn4', the plain-torch round-to-nearest quantizer)."
        ) from err
    return bnb_functional


# ------------------------------------------------------------------------------------------ round-to-nearest
def _groups(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """The flattened weight as rows of `group_size`, zero-padded (zeros never change a group's absmax)."""
    if group_size < 1:
        raise ValueError(f"group_size must be positive, got {group_size}.")
    flat = weight.detach().reshape(-1).float()
    pad = (-flat.numel()) % group_size
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, group_size)


def rtn_codes(
    weight: torch.Tensor, bits: int, group_size: int = DEFAULT_BLOCK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-group absmax round-to-nearest: integer codes in [-(2^(b-1)-1), 2^(b-1)-1] and group scales.

    ``scale = absmax / (2^(b-1) - 1)``; ``code = round(w / scale)``, so ``|w - code·scale| <= scale / 2``.
    Codes are ``(num_groups, group_size)`` over the flattened, zero-padded weight.
    """
    if bits not in RTN_BITS:
        raise ValueError(f"Unsupported bit width {bits}; round-to-nearest supports 2 to 8 bits.")
    groups = _groups(weight, group_size)
    levels = 2 ** (bits - 1) - 1
    scale = groups.abs().amax(dim=1, keepdim=True) / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group stays exactly zero
    codes = torch.round(groups / safe).clamp_(-levels, levels).to(torch.int8)
    return codes, scale


def fake_quantize_rtn(weight: torch.Tensor, bits: int, group_size: int = DEFAULT_BLOCK_SIZE) -> torch.Tensor:
    """Round-to-nearest quantize then dequantize `weight` (same shape and dtype)."""
    codes, scale = rtn_codes(weight, bits, group_size)
    values = (codes.float() * scale).reshape(-1)[: weight.numel()]
    return values.view(weight.shape).to(weight.dtype)


# ------------------------------------------------------------------------------------------------ bitsandbytes
def bnb_codes(weight: torch.Tensor, kind: str, block_size: int = DEFAULT_BLOCK_SIZE, double_quant: bool = False):
    """bitsandbytes codes of `weight`: ``(codes, state)``; 4-bit codes unpacked to one uint8 (0..15) per weight."""
    functional = require_bitsandbytes()
    if kind == "int8":
        codes, row_absmax, _ = functional.int8_vectorwise_quant(weight.detach().to(torch.float16))
        return codes, row_absmax
    packed, state = functional.quantize_4bit(
        weight.detach(), blocksize=block_size, compress_statistics=double_quant, quant_type=kind
    )
    flat = packed.reshape(-1)
    codes = torch.stack([flat >> 4, flat & 0x0F], dim=1).reshape(-1)[: weight.numel()]
    return codes, (packed, state)


def fake_quantize_bnb(
    weight: torch.Tensor, kind: str, block_size: int = DEFAULT_BLOCK_SIZE, double_quant: bool = False
) -> torch.Tensor:
    """bitsandbytes quantize then dequantize `weight` (same shape and dtype)."""
    functional = require_bitsandbytes()
    if kind == "int8":
        codes, row_absmax = bnb_codes(weight, kind)
        # LLM.int8 keeps int8 codes and a per-row absmax in fp16: w ≈ code · absmax / 127.
        return (codes.float() * row_absmax.float().unsqueeze(1) / 127).to(weight.dtype)
    _, (packed, state) = bnb_codes(weight, kind, block_size, double_quant)
    return functional.dequantize_4bit(packed, state).to(weight.dtype).view(weight.shape)


# ------------------------------------------------------------------------------------------------ model level
def quantizable_linears(model: nn.Module, skip_modules: list[str] | None = None) -> dict[str, nn.Module]:
    """The modules ``load_in_4bit`` replaces: plain ``nn.Linear`` (and GPT-2 ``Conv1D``) outside the skip list.

    The default skip list is transformers' own (output embeddings, tied weights, the last module), so the
    in-memory attack perturbs exactly the weights a 4-bit load would.
    """
    from transformers.pytorch_utils import Conv1D

    skipped = set(skip_modules or [])
    if hasattr(model, "get_output_embeddings"):
        from transformers.quantizers.base import get_keys_to_not_convert

        skipped |= set(get_keys_to_not_convert(model))
    selected = {}
    for name, module in model.named_modules():
        if not (type(module) is nn.Linear or isinstance(module, Conv1D)):
            continue
        if any(name == key or name.startswith(key + ".") or name.endswith("." + key) for key in skipped):
            continue
        selected[name] = module
    return selected


def _fake_quantized_weight(module: nn.Module, kind: str, bits: int, block_size: int, double_quant: bool):
    from transformers.pytorch_utils import Conv1D

    # Conv1D stores (in, out); bitsandbytes quantizes the (out, in) layout of a Linear.
    weight = module.weight.T if isinstance(module, Conv1D) else module.weight
    if kind == "rtn":
        result = fake_quantize_rtn(weight, bits, block_size)
    else:
        result = fake_quantize_bnb(weight, kind, block_size, double_quant)
    return result.T if isinstance(module, Conv1D) else result


@contextmanager
def quantized_weights(
    model: nn.Module,
    kind: str = "fp4",
    block_size: int = DEFAULT_BLOCK_SIZE,
    double_quant: bool = False,
    skip_modules: list[str] | None = None,
) -> Iterator[nn.Module]:
    """Temporarily replace the weights of `model` by their quantized values; restore them bit for bit on exit.

    Memory-light: only the replaced weights are saved (on their device). Use :func:`quantize` for a copy.
    """
    name, bits = parse_kind(kind)
    if name in BNB_KINDS:
        require_bitsandbytes()
    modules = quantizable_linears(model, skip_modules)
    if not modules:
        raise ValueError("The model has no linear layers to quantize (all were skipped or none exist).")
    saved = {}
    try:
        with torch.no_grad():
            for module_name, module in modules.items():
                saved[module_name] = module.weight.detach().clone()
                module.weight.copy_(_fake_quantized_weight(module, name, bits, block_size, double_quant))
        yield model
    finally:
        with torch.no_grad():
            for module_name, original in saved.items():
                modules[module_name].weight.copy_(original)


def quantize(
    model: nn.Module,
    kind: str = "fp4",
    block_size: int = DEFAULT_BLOCK_SIZE,
    double_quant: bool = False,
    skip_modules: list[str] | None = None,
) -> nn.Module:
    """A deep copy of `model` whose linear weights are quantized and dequantized (`kind`: fp4, nf4, int8, rtnN).

    The copy keeps the original dtype, so it runs anywhere the original runs; the caller's model is untouched.
    """
    name, bits = parse_kind(kind)
    if name in BNB_KINDS:
        require_bitsandbytes()
    copied = copy.deepcopy(model)
    modules = quantizable_linears(copied, skip_modules)
    if not modules:
        raise ValueError("The model has no linear layers to quantize (all were skipped or none exist).")
    with torch.no_grad():
        for module in modules.values():
            module.weight.copy_(_fake_quantized_weight(module, name, bits, block_size, double_quant))
    return copied


def codes_changed_fraction(
    original: nn.Module,
    unlearned: nn.Module,
    kind: str = "fp4",
    block_size: int = DEFAULT_BLOCK_SIZE,
    skip_modules: list[str] | None = None,
) -> dict[str, float | dict[str, float]]:
    """Fraction of quantization codes that differ between two models of one architecture (see ``docs/definitions.md``).

    The quantization attack bites only where unlearning moved weights by less than a quantization step, so
    the codes snap back to the original's; a large fraction means it cannot. Returns
    ``{"fraction": overall, "num_weights": n, "per_module": {name: fraction}}`` over the quantizable linears.
    """
    name, bits = parse_kind(kind)
    from transformers.pytorch_utils import Conv1D

    left = quantizable_linears(original, skip_modules)
    right = quantizable_linears(unlearned, skip_modules)
    if left.keys() != right.keys():
        raise ValueError("The two models have different linear layers; compare checkpoints of one architecture.")
    per_module, changed, total = {}, 0, 0
    for module_name, module in left.items():
        weights = []
        for m in (module, right[module_name]):
            weights.append(m.weight.T if isinstance(m, Conv1D) else m.weight)
        if weights[0].shape != weights[1].shape:
            raise ValueError(f"{module_name}: weight shapes differ ({weights[0].shape} vs {weights[1].shape}).")
        if name == "rtn":
            codes = [rtn_codes(w, bits, block_size)[0].reshape(-1)[: w.numel()] for w in weights]
        else:
            codes = [bnb_codes(w, name, block_size)[0].reshape(-1) for w in weights]
        diff = int((codes[0] != codes[1]).sum())
        per_module[module_name] = diff / codes[0].numel()
        changed, total = changed + diff, total + codes[0].numel()
    return {"fraction": changed / total, "num_weights": total, "per_module": per_module}
