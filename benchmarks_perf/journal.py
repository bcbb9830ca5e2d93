"""A journal of measurements, for comparisons that take hours: each value is appended to a JSON-lines file as soon as
it is taken, so that a stopped `hf-unlearn bench` continues where it stopped (``--resume``) instead of starting over.

The first line holds the settings of the run; a resumed run must ask for the same ones (a ratio whose repeats mix
shapes or thread counts would mean nothing). Each start of the command appends a line with its time, load and
commit, and the finished JSON lists them, so a figure measured over several sittings says so.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path


JOURNAL_SUFFIX = ".journal.jsonl"


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
    ``resume=True`` reads it, refuses other settings, and hands its values back through :meth:`values`.
    """

    def __init__(self, path: str | Path, settings: dict, resume: bool = False):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # as it reads back: tuples become lists
        self.starts: list[dict] = []
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
        }
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
                self.starts.append({key: record.get(key) for key in ("start", "load_average", "commit")})
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

    def record(self, row: str, side: str, value: float) -> None:
        self._values.setdefault((row, side), []).append(float(value))
        load = [round(x, 2) for x in os.getloadavg()]
        self._append({"row": row, "side": side, "value": float(value), "load_average": load})

    def summary(self) -> dict:
        """What the finished JSON says of the journal: the starts the measurements span."""
        return {"starts": self.starts, "resumed": len(self.starts) > 1}

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
