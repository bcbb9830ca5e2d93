"""Run every multi-process test again and again under a parallel CPU load, and count the failures.

    python scripts/stress_multiprocess.py --rounds 20 --log stress.log
    python scripts/stress_multiprocess.py --rounds 50 --tests "tests/test_distributed_optim.py::test_ddp_hybrid_npo_\
matches_one_process_with_the_same_global_batch"  (one test id, on one line)

Each round is one `pytest` run of the tests below (every test that starts two or more ranks: `accelerate launch`,
`torchrun`, `torch.multiprocessing`; the `slow` marker does not deselect anything here). While the
rounds run, one busy loop per CPU core keeps the machine loaded, as a shared CI machine or a parallel `make test` is.
Each round's outcome per test goes to the log (one line per round, flushed), with any "terminate called" line the
ranks printed; the last line sums the rounds and failures. Exit code: 0 when no round failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timezone
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
MULTI_PROCESS_TESTS = [
    "tests/test_distributed_optim.py::test_ddp_hybrid_npo_matches_one_process_with_the_same_global_batch",
    "tests/test_distributed_optim.py::test_zero_zo_phase_survives_the_next_fo_step",
    "tests/test_distributed_optim.py::test_zero_bf16_zo_updates_reach_the_fp32_masters_and_restore_is_exact",
    "tests/test_smoothing_optim.py::test_ddp_sam_and_fo_rs_match_one_process_with_the_same_global_batch",
    "tests/test_launch.py::test_accelerate_launch_multi_gpu_runs_the_recipe_on_two_processes",
    "tests/test_launch_matrix.py::test_two_process_launch",
    "tests/test_launch_matrix.py::test_every_method_under_one_zero3_launch",
    "tests/test_robustness_callback.py::test_ddp_every_rank_runs_the_checks_and_rank0_writes",
    "tests/test_tofu_eval.py::test_two_process_evaluation_shards_and_gathers_the_same_result",
    "tests/test_wmdp_eval.py::test_two_processes_split_the_questions_and_agree_with_one",
]


def start_load(processes: int) -> list[subprocess.Popen]:
    """One pure-Python busy loop per process: each keeps one core at 100% until stopped."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]


def outcomes(junit: Path) -> dict[str, str]:
    """test id -> passed / failed / error / skipped, from pytest's JUnit XML."""
    results = {}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        results[name] = kinds[0] if kinds else "passed"
    return results


def run_round(tests: list[str], timeout: int) -> tuple[dict[str, str], int, str]:
    with tempfile.TemporaryDirectory() as folder:
        junit = Path(folder) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *tests]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        try:
            result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            output = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
            return {"round": "timeout"}, -1, output
        output = result.stdout + result.stderr
        return (outcomes(junit) if junit.is_file() else {"round": "no report"}), result.returncode, output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="How many rounds (default 20).")
    parser.add_argument("--tests", nargs="+", default=MULTI_PROCESS_TESTS, help="pytest ids (default: all above).")
    parser.add_argument("--log", type=Path, default=Path("stress_multiprocess.log"), help="Appended to.")
    parser.add_argument("--load", type=int, default=os.cpu_count() or 1, help="Busy loops (default: one a core).")
    parser.add_argument("--stop_after", help="UTC time HH:MM after which no new round starts.")
    parser.add_argument("--round_timeout", type=int, default=3600, help="Seconds before a round counts as hung.")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.load < 0:
        parser.error("--rounds must be >= 1 and --load >= 0")

    def log(line: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
        with args.log.open("a") as f:
            f.write(f"{stamp} {line}\n")

    log(f"start: {args.rounds} rounds of {len(args.tests)} ids under {args.load} busy loops: {' '.join(args.tests)}")
    load = start_load(args.load)
    rounds = failed_rounds = 0
    failures: dict[str, int] = {}
    try:
        for number in range(1, args.rounds + 1):
            if args.stop_after and datetime.now(timezone.utc).strftime("%H:%M") >= args.stop_after:
                log(f"stop: {args.stop_after} UTC reached before round {number}")
                break
            start = time.monotonic()
            results, code, output = run_round(args.tests, args.round_timeout)
            rounds += 1
            bad = {name: kind for name, kind in results.items() if kind not in ("passed", "skipped")}
            for name in bad:
                failures[name] = failures.get(name, 0) + 1
            failed_rounds += bool(bad) or code != 0
            aborts = [line for line in output.splitlines() if "terminate called" in line]
            passed = sum(kind == "passed" for kind in results.values())
            log(
                f"round {number}: exit {code}, {passed} passed, {len(bad)} failed {sorted(bad) or ''}, "
                f"{len(aborts)} 'terminate called' lines, {time.monotonic() - start:.0f} s"
            )
            if bad or code != 0:
                log("  output tail: " + output[-4000:].replace("\n", "\n  "))
    finally:
        for process in load:
            process.kill()
            process.wait()
    log(f"total: {rounds} rounds, {failed_rounds} failed rounds, failures per test: {failures or 'none'}")
    return 1 if failed_rounds else 0


if __name__ == "__main__":
    sys.exit(main())
