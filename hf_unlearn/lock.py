"""One run per output folder: an exclusive lock file that the main process holds while it writes there.

The lock is ``<output_dir>/.hf_unlearn.lock``, a small JSON record (pid, host, start time) that appears complete or
not at all (written aside, then hard-linked into place, which fails when a lock is already there). A second run
into the same folder is refused in one line naming the holder. A lock whose process is gone on this host (a run
killed with SIGKILL, say) is stale: it is replaced, not obeyed. The lock is released on every exit of the ``with``
block, including errors and Ctrl-C; only the process that took it removes it.

Only the main process of a launch takes the lock: the other ranks of the same run write nowhere but where rank 0
tells them, and must not refuse themselves because rank 0 holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


LOCK_FILE = ".hf_unlearn.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def read_lock(folder: str | Path) -> dict | None:
    """The lock record in `folder`, or None when there is none (an unreadable record counts as none)."""
    path = Path(folder) / LOCK_FILE
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):
        return {"pid": None, "host": None, "unreadable": True}
    return record if isinstance(record, dict) else {"pid": None, "host": None, "unreadable": True}


def is_stale(record: dict) -> bool:
    """Whether a lock's holder is certainly gone: an unreadable record, or a pid that no longer runs on this host.
    A lock taken on another host cannot be checked from here and is obeyed."""
    if record.get("unreadable"):
        return True
    pid = record.get("pid")
    if not isinstance(pid, int):
        return True
    return record.get("host") == socket.gethostname() and not _alive(pid)


def locked_error(folder: str | Path, record: dict, flag: str = "output_dir") -> FileExistsError:
    since = record.get("started")
    started = f", since {since}" if since else ""
    return FileExistsError(
        f"{flag} {folder} is in use by another run (pid {record.get('pid')} on {record.get('host')}{started}); "
        f"wait for it to finish or choose another {flag} (if that run is gone, delete {Path(folder) / LOCK_FILE})."
    )


def check_unlocked(folder: str | Path, flag: str = "output_dir") -> bool:
    """Raise when a live run holds `folder`; return whether a (stale) lock file is there."""
    record = read_lock(folder)
    if record is None:
        return False
    if not is_stale(record):
        raise locked_error(folder, record, flag)
    return True


def _take(folder: Path) -> None:
    path = folder / LOCK_FILE
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{LOCK_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
        for _ in range(3):
            try:
                os.link(tmp, path)  # atomic, and fails if a lock exists: the record is whole when it appears
                return
            except FileExistsError:
                held = read_lock(folder)
                if held is not None and not is_stale(held):
                    raise locked_error(folder, held) from None
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # stale: its run is gone
        raise FileExistsError(f"output_dir {folder}: could not take {LOCK_FILE}; another run keeps replacing it.")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _release(folder: Path) -> None:
    record = read_lock(folder)
    if record is not None and record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            (folder / LOCK_FILE).unlink()


@contextlib.contextmanager
def output_lock(folder: str | Path, main_process: bool = True) -> Iterator[Path]:
    """Hold `folder`'s lock for the block (creating the folder; removed again if this run created it and left it
    empty). On other processes than the main one, a no-op."""
    folder = Path(folder)
    if not main_process:
        yield folder
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _take(folder)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    try:
        yield folder
    finally:
        _release(folder)
        if created:
            with contextlib.suppress(OSError):  # only an empty folder is removed
                folder.rmdir()
