"""`hf-unlearn bench`: speed and memory measurements (``hf_unlearn.perf``), written as JSON."""

from __future__ import annotations

import json
import platform

import torch

from hf_unlearn.io import atomic_write_text, check_output_file
from hf_unlearn.perf import MEASUREMENTS, REAL_MEASUREMENTS, SCALE_MEASUREMENTS, run_measurements


def add_arguments(parser):
    parser.add_argument("--output", default="bench.json", help="JSON file the measurements are written to.")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=sorted({**MEASUREMENTS, **SCALE_MEASUREMENTS, **REAL_MEASUREMENTS}),
        help="Run only these entries.",
    )
    parser.add_argument(
        "--scale", action="store_true", help="Also measure the 6M and ~100M shapes side by side (minutes more)."
    )
    parser.add_argument(
        "--real", action="store_true", help="Also measure the fetched SmolLM2-135M-Instruct (forward, NPO step)."
    )


def main(args):
    check_output_file(args.output)  # before minutes of measuring, not after
    names = args.only or list(MEASUREMENTS)
    if not args.only:
        names += (list(SCALE_MEASUREMENTS) if args.scale else []) + (list(REAL_MEASUREMENTS) if args.real else [])
    report = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
        },
        "results": run_measurements(names),
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    print(f"Wrote {args.output}")
