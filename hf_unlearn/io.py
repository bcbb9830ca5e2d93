"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of the new one.

The data goes to a temporary file in the destination's folder (same filesystem, so the rename is atomic), is flushed
to disk, and replaces the destination with ``os.replace``. If writing fails, the temporary file is removed and the
previous file is left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


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
