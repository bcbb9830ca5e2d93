"""`hf-unlearn bench`: speed and memory ratios, written as JSON.

The measurements live in the top-level ``benchmarks_perf`` package of a source checkout, outside the library and
its wheel; this module loads it only when the command runs.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
from pathlib import Path

import torch

from hf_unlearn.io import atomic_write_text, check_output_file


PERF_PACKAGE = "benchmarks_perf"
REAL_DEFAULT_MODEL = "smollm2-135m-instruct"
# The entries, listed here so that `--help` works without the measurements installed.
ENTRIES = (
    "npo_cached_vs_graddiff", "zo_step_vs_forwards", "zo_peak_memory", "hybrid_vs_adam_wall", "tofu_eval_throughput",
    "bf16_zo_trajectory", "tofu_full_eval_2m", "shapes_6m_100m", "real_model",
)  # fmt: skip


def load_perf_package():
    """``benchmarks_perf``: importable as is, or found beside the ``hf_unlearn`` folder of a source checkout.

    A wheel does not ship it: then one line says where to get it.
    """
    try:
        return importlib.import_module(PERF_PACKAGE)
    except ModuleNotFoundError as error:
        if error.name != PERF_PACKAGE:
            raise
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / PERF_PACKAGE / "__init__.py").is_file():
        raise ImportError(
            f"hf-unlearn bench needs the {PERF_PACKAGE}/ folder of a source checkout, which the wheel does not "
            "ship: run it from a clone of the repository (pip install -e .)."
        )
    sys.path.insert(0, str(checkout))
    return importlib.import_module(PERF_PACKAGE)


def add_arguments(parser):
    parser.add_argument("--output", default="bench.json", help="JSON file the measurements are written to.")
    parser.add_argument("--only", nargs="+", choices=ENTRIES, help="Run only these entries.")
    parser.add_argument(
        "--scale", action="store_true", help="Also measure the 6M and ~100M shapes side by side (minutes more)."
    )
    parser.add_argument(
        "--model",
        help="Bench this real model (a packaged model's name, e.g. smollm2-135m-instruct, or a local folder): ZO "
        "step vs two forwards, ZO memory vs inference, NPO vs SFT step, hybrid vs AdamW run, answer-only vs "
        "full-vocabulary scoring, side by side. Runs only the real-model entry unless --only names more.",
    )
    parser.add_argument("--real", action="store_true", help=f"Also bench the real model ({REAL_DEFAULT_MODEL}).")
    parser.add_argument("--batch_size", type=int, default=8, help="Real model: rows per side (default 8).")
    parser.add_argument("--seq_len", type=int, default=256, help="Real model: tokens per row (default 256).")
    parser.add_argument(
        "--repeats", type=int, default=5, help="Real model: alternating repeats of each side after the warm-up (>= 2)."
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="Real model: discarded rounds of every side before the timed ones (default 1). The hybrid row's sides "
        "are whole 2N-step runs whose first steps pay the one-off costs anyway: --warmup 0 halves its time.",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Real model: continue a stopped run. Every value is journaled beside --output "
        "(<output>.journal.jsonl) as it is taken; with the same flags, --resume measures only what is missing.",
    )
    parser.add_argument(
        "--hybrid_steps", type=int, default=20, help="Real model: N of the hybrid run (N AdamW + N AdaZO steps)."
    )
    parser.add_argument("--threads", type=int, default=1, help="Real model: torch CPU threads (default 1).")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="Real model: where to run (auto: cuda when a GPU is visible). Times are process CPU seconds on a CPU, "
        "wall seconds between CUDA synchronisations on a GPU; memory is RSS on a CPU, allocated CUDA memory on a GPU.",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="Real model: the weights' dtype for every side (bfloat16: the model loaded in bf16, as open-unlearning "
        "loads it; default float32).",
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=("scoring", "training_head", "npo_step", "zo_step", "hybrid", "zo_memory"),
        help="Real model: only these comparisons (default: all six, cheapest first).",
    )


def check_real_settings(args) -> None:
    """Every real-model flag, checked before anything loads (one line each)."""
    from hf_unlearn.loading import check_model_path
    from hf_unlearn.packaged_models import PACKAGED_MODELS

    minimums = (("batch_size", 1), ("seq_len", 64), ("repeats", 2), ("warmup", 0), ("hybrid_steps", 1), ("threads", 1))
    for flag, minimum in minimums:
        if getattr(args, flag) < minimum:
            raise ValueError(f"--{flag} {getattr(args, flag)} must be at least {minimum}.")
    model = args.model or REAL_DEFAULT_MODEL
    if model not in PACKAGED_MODELS and not Path(model).expanduser().exists():
        raise FileNotFoundError(
            f"--model {model} is neither a packaged model ({', '.join(PACKAGED_MODELS)}) nor a local model "
            "folder; `hf-unlearn models list` shows the packaged ones."
        )
    check_model_path(model, "--model")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu (or auto).")


def resolve_device(device: str) -> str:
    """``auto``: ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def machine_identity(device: str = "cpu") -> dict:
    """What tells one machine from another in a journal's starts: a resumed run on another host says so."""
    identity = {"host": platform.node(), "cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__}
    return {**identity, "gpu": torch.cuda.get_device_name()} if device == "cuda" else identity


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def main(args):
    check_output_file(args.output)  # before minutes of measuring, not after
    if args.only:
        names = list(args.only)
    elif args.model:
        names = ["real_model"]
    else:
        names = [n for n in ENTRIES if n not in ("shapes_6m_100m", "real_model")]
        names += (["shapes_6m_100m"] if args.scale else []) + (["real_model"] if args.real else [])
    settings = {}
    if args.resume and "real_model" not in names:
        raise ValueError("--resume continues a stopped real-model run: give --model (or --real) as that run did.")
    if "real_model" in names:
        check_real_settings(args)
        settings["real_model"] = {
            "model": args.model or REAL_DEFAULT_MODEL,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "hybrid_steps": args.hybrid_steps,
            "threads": args.threads,
            "rows": tuple(args.rows or ()),
            "device": resolve_device(args.device),
            "dtype": args.dtype,
        }
    perf = load_perf_package()
    identity = machine_identity(settings["real_model"]["device"] if "real_model" in names else "cpu")
    journal = None
    if "real_model" in names:
        journals = importlib.import_module(f"{PERF_PACKAGE}.journal")
        journal = journals.Journal(
            journals.journal_path(args.output), settings["real_model"], resume=args.resume, machine=identity
        )
        settings["real_model"]["journal"] = journal
    report = {
        "machine": {
            "platform": platform.platform(),
            **identity,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
        },
        "results": perf.run_measurements(names, settings),
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    if journal is not None:
        journal.remove()  # its values are in the report now
    print(f"Wrote {args.output}")
