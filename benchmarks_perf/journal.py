"""A journal of measurements, for comparisons that take hours: each value is appended to a JSON-lines file as soon as
it is taken, so that a stopped `hf-unlearn bench` continues where it stopped (``--resume``) instead of starting over.

The first line holds the settings of the run; a resumed run must ask for the same ones (a ratio whose repeats mix
shapes or thread counts would mean nothing). Each start of the command appends a line with its time, load, commit
and machine, and the finished JSON lists them, so a figure measured over several sittings says so.

A ratio pairs the sides of one round (A_i / B_i), so a round is measured within one sitting: the values of a round
cut by the stop are discarded on resume (the discard is journaled and listed in the JSON) and the round is measured
again whole.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path


JOURNAL_SUFFIX = ".journal.jsonl"
START_KEYS = ("start", "load_average", "commit", "machine")


def journal_path(output: str | Path) -> Path:
    """Where the journal of a run writing ``output`` lives: beside it, ``<output>.journal.jsonl``."""
    return Path(str(output) + JOURNAL_SUFFIX)


def _commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    except OSError:
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


class Journal:
    """The measurements of one run, kept on disk as they are taken.

    ``resume=False`` refuses an existing journal (a stopped run's measurements are never overwritten silently);
    ``resume=True`` reads it, refuses other settings, and hands its values back through :meth:`values` and
    :meth:`whole_rounds`. ``machine``: what identifies the machine of this start (CPU, host, torch); a resume on
    another machine is said on stderr, since its rounds then compare across machines.
    """

    def __init__(self, path: str | Path, settings: dict, resume: bool = False, machine: dict | None = None):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # as it reads back: tuples become lists
        self.starts: list[dict] = []
        self.discarded: list[dict] = []
        self._values: dict[tuple[str, str], list[float]] = {}
        if self.path.exists():
            if not resume:
                raise FileExistsError(
                    f"{self.path} holds the measurements of a stopped run: add --resume to continue it, or delete "
                    "the file to start over."
                )
            self._read()
        elif resume:
            raise FileNotFoundError(f"--resume: there is no stopped run to continue ({self.path} does not exist).")
        start = {
            "start": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "commit": _commit(),
            **({"machine": machine} if machine is not None else {}),
        }
        earlier = [old["machine"] for old in self.starts if old.get("machine")]
        if machine is not None and earlier and earlier[-1] != machine:
            print(
                f"note: the stopped run was measured on {earlier[-1]}, this start runs on {machine}; each round "
                "stays on one machine, but the rounds compare across machines.",
                file=sys.stderr,
            )
        self.starts.append(start)
        self._append({"settings": self.settings, **start} if len(self.starts) == 1 else start)

    def _read(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines):
                    break  # the line being written when the run was stopped: that value is measured again
                raise ValueError(f"{self.path} line {number} is not JSON; delete the file to start over.") from None
        if not records or "settings" not in records[0]:
            raise ValueError(f"{self.path} does not start with a run's settings; delete the file to start over.")
        for key in sorted(set(records[0]["settings"]) | set(self.settings)):
            old, new = records[0]["settings"].get(key), self.settings.get(key)
            if old != new:
                raise ValueError(
                    f"--resume: the stopped run in {self.path} measured {key}={old!r}, this one asks for {new!r}; "
                    "give the same flags, or delete the file to start over."
                )
        for record in records:
            if "start" in record:
                self.starts.append({key: record[key] for key in START_KEYS if key in record})
            elif "discarded" in record:
                self.discarded.append(record)
                for side in record["discarded"]:
                    del self._values[(record["row"], side)][record["round"] - 1 :]
            elif "value" in record:
                self._values.setdefault((record["row"], record["side"]), []).append(float(record["value"]))

    def _append(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def values(self, row: str, side: str) -> list[float]:
        """The values of ``side`` in comparison ``row`` measured so far, in order (a copy)."""
        return list(self._values.get((row, side), []))

    def whole_rounds(self, row: str, sides: list[str], repeats: int) -> dict[str, list[float]]:
        """Each side's values in the rounds of ``row`` measured whole, at most ``repeats``.

        The values of a round cut by the stop (some sides measured, not all) are discarded, in the journal too, so
        that the round is measured again within one sitting and a later resume reads the same values.
        """
        values = {side: self.values(row, side)[:repeats] for side in sides}
        whole = min(len(measured) for measured in values.values())
        cut = {side: measured[whole:] for side, measured in values.items() if len(measured) > whole}
        if cut:
            record = {"row": row, "round": whole + 1, "discarded": cut}
            self._append(record)
            self.discarded.append(record)
            for side in cut:
                del self._values[(row, side)][whole:]
            print(
                f"note: {row}: round {whole + 1} was cut by the stop; its values {cut} are discarded and the round is "
                "measured again whole.",
                file=sys.stderr,
            )
        return {side: measured[:whole] for side, measured in values.items()}

    def record(self, row: str, side: str, value: float) -> None:
        self._values.setdefault((row, side), []).append(float(value))
        load = [round(x, 2) for x in os.getloadavg()]
        self._append({"row": row, "side": side, "value": float(value), "load_average": load})

    def summary(self) -> dict:
        """What the finished JSON says of the journal: the starts the measurements span, the rounds discarded."""
        return {"starts": self.starts, "resumed": len(self.starts) > 1, "discarded_rounds": self.discarded}

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
