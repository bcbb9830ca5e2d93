"""The real-model bench (`hf-unlearn bench --model`) on one CUDA GPU in bf16, at two shapes: SmolLM2-135M's and a
~1.1B Llama (TinyLlama-1.1B's dimensions), both with SmolLM2's tokenizer and chat template.

A GPU machine that reaches no network cannot fetch SmolLM2's weights, and a step's time does not depend on the
weights' values: each shape is built from a config with random weights (saved in bf16 to a scratch folder), so only
SmolLM2's config and tokenizer files travel (``--like``, a few MB). Every comparison is the CPU bench's own, each side
alternating with the other, wall seconds between CUDA synchronisations, memory as allocated CUDA memory; the ZO rows
move the bf16 weights with stochastic rounding.

    PYTHONPATH=. python scripts/gpu_real_bench.py --like path/to/smollm2-135m-instruct --output_dir gpu_bench

writes ``gpu_bench/bench_gpu_<shape>.json``. Packages the bench needs beyond torch and transformers: datasets (and
its dill, multiprocess), as wheels where nothing can be fetched.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path


# TinyLlama-1.1B's dimensions; the vocabulary stays the tokenizer's
SHAPES = {
    "smollm2_135m": {},
    "llama_1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                 "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 64, "tie_word_embeddings": False},
}  # fmt: skip


def build_shape(like: Path, folder: Path, **overrides) -> Path:
    """A model folder: ``like``'s config with ``overrides``, random weights in bf16, ``like``'s tokenizer files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(like)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(like).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--like", required=True, type=Path, help="Folder with SmolLM2's config.json and tokenizer.")
    parser.add_argument("--output_dir", required=True, type=Path, help="Where the JSON files are written.")
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu checks the script on a CPU.")
    parser.add_argument("--bench_args", nargs=argparse.REMAINDER, default=[], help="Passed on to hf-unlearn bench.")
    args = parser.parse_args(argv)
    if not (args.like / "config.json").is_file():
        parser.error(f"--like {args.like} has no config.json: give the folder of SmolLM2-135M-Instruct.")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for shape in args.shapes:
            folder = build_shape(args.like, Path(scratch) / shape, **SHAPES[shape])
            output = args.output_dir / f"bench_gpu_{shape}.json"
            command = [sys.executable, "-m", "hf_unlearn", "bench", "--model", str(folder), "--device", args.device,
                       "--dtype", "bfloat16", "--repeats", str(args.repeats), "--output", str(output)]  # fmt: skip
            command += args.bench_args
            print(" ".join(command), flush=True)
            if subprocess.run(command).returncode != 0:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
