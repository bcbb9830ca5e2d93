"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of the new one; and
:func:`json_safe`, the one conversion of values into JSON that reports, evaluations and checkpoints share.

The data goes to a temporary file in the destination's folder (same filesystem, so the rename is atomic), is flushed
to disk, and replaces the destination with ``os.replace``. If writing fails, the temporary file is removed and the
previous file is left as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any


def json_safe(value: Any) -> Any:
    """Plain JSON values: enums by value, mappings with text keys, tuples and sets as lists, dataclasses as dicts,
    anything else (a path, a dtype) as its text.

    A non-finite float (NaN, ±inf) becomes ``None`` (JSON null): the value is unavailable, never a number. A NaN
    mean is an evaluation over no examples; reports keep the reason beside the null (``Metrics.unavailable``).
    """
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    return str(value)


def _atomic_write(path: str | Path, mode: str, write: Callable[[IO], None], encoding: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    return _atomic_write(path, "wb", lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    return _atomic_write(path, "w", lambda handle: handle.write(text), encoding=encoding)


def atomic_write_json(path: str | Path, value: Any, indent: int | None = 2) -> Path:
    """Serialise ``value`` first (so a value that is not JSON fails before any file is touched), then write it."""
    return atomic_write_text(path, json.dumps(value, indent=indent, allow_nan=False) + "\n")


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def check_output_dir(
    path: str | Path,
    *,
    flag: str = "output_dir",
    overwrite: bool = False,
    overwrite_flag: str = "overwrite_output_dir=true",
    resume: bool = False,
    protected: dict[str, str | Path | None] | None = None,
    inside_ok: tuple[str, ...] = (),
    check_contents: bool = True,
    check_lock: bool | None = None,
) -> Path:
    """Check, before anything is loaded or written, that a command may write into `path`; return it as a Path.

    Refused in one line (nothing is created): a file where the folder should be; a folder that is, or lies inside,
    one of the `protected` folders (the model, the data: name -> path; `inside_ok` names may hold it as a
    subfolder but never be it); a folder that cannot be written; a folder another live run holds the lock of
    (`check_lock`, default: as `check_contents`; see :mod:`hf_unlearn.lock`); and, with `check_contents`, a folder
    that already holds files, unless `overwrite` is set or `resume` is set and the folder holds the run's own
    checkpoints. A stale lock file left by a killed run does not count as a file.
    """
    from hf_unlearn.lock import LOCK_FILE, check_unlocked

    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{flag} {path} is a file; point {flag} at a new or empty folder.")
    target = _resolved(out)
    for name, folder in (protected or {}).items():
        if not folder or not Path(folder).expanduser().is_dir():
            continue
        own = _resolved(folder)
        if target == own or (name not in inside_ok and _within(target, own)):
            where = "is" if target == own else "is inside"
            raise ValueError(
                f"{flag} {path} {where} the {name} folder {folder}: writing there would replace or mix with its "
                f"files; choose another {flag}."
            )
    existing = next((p for p in (target, *target.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise NotADirectoryError(f"{flag} {path} cannot be created: {existing} is a file; choose another folder.")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: {existing} is not writable; choose a folder you can write to.")
    stale_lock = False
    if out.is_dir() and (check_contents if check_lock is None else check_lock):
        stale_lock = check_unlocked(out, flag)
    if check_contents and out.is_dir() and not overwrite:
        present = sorted(p.name for p in out.iterdir() if not (stale_lock and p.name == LOCK_FILE))
        checkpoints = [name for name in present if name.startswith("checkpoint-")]
        if present and not (resume and checkpoints):
            shown = ", ".join(present[:3]) + (f" and {len(present) - 3} more" if len(present) > 3 else "")
            raise FileExistsError(
                f"{flag} {path} already holds files ({shown}); choose a new folder, or set {overwrite_flag} to "
                "write over them."
            )
    return out


def check_output_file(path: str | Path, flag: str = "--output") -> Path:
    """Check, before any work, that a command can write the file `path` (an existing file is replaced).

    Refused in one line: a folder where the file should be, a parent that is a file, a folder that cannot be written.
    """
    out = Path(path).expanduser()
    if out.is_dir():
        raise IsADirectoryError(
            f"{flag} {path} is a folder; give a file name, e.g. {flag} {Path(path) / 'bench.json'}."
        )
    target = _resolved(out)
    existing = next((p for p in target.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise NotADirectoryError(f"{flag} {path} cannot be created: {existing} is a file; choose another path.")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: {existing} is not writable; choose a folder you can write to.")
    return out


def read_json(path: str | Path, what: str, fix: str) -> Any:
    """The JSON value in `path`; an empty, truncated or binary file fails in one line naming `what`, the file and
    `fix` (what to do about it), instead of json's bare "Expecting value: line 1 column 1"."""
    from hf_unlearn.errors import UserInputError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserInputError(f"{what} {path} is not a text (JSON) file; {fix}.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        state = "empty" if not text.strip() else f"not valid JSON (line {err.lineno}: {err.msg}; cut short?)"
        raise UserInputError(f"{what} {path} is {state}; {fix}.") from None
