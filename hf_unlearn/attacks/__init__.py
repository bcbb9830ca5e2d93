"""Robustness attacks on an unlearned model: relearning and weight quantization (protocols: ``docs/definitions.md``).

Both leave the caller's model as it was: `relearn` trains a copy, `quantize` returns a copy and
`quantized_weights` restores the weights bit for bit on exit. bitsandbytes is imported only when used.
"""

from hf_unlearn.attacks.quantize import (
    codes_changed_fraction,
    fake_quantize_rtn,
    parse_kind,
    quantize,
    quantized_weights,
    rtn_codes,
)
from hf_unlearn.attacks.relearn import RelearnPreset, RelearnResult, get_preset, relearn, relearn_dataset


__all__ = [
    "RelearnPreset",
    "RelearnResult",
    "codes_changed_fraction",
    "fake_quantize_rtn",
    "get_preset",
    "parse_kind",
    "quantize",
    "quantized_weights",
    "relearn",
    "relearn_dataset",
    "rtn_codes",
]
