"""Retain-model reference statistics (forget quality, privleak's AUC_ref): read from JSON, or computed once and cached.

:class:`RetainReference` is the one object a benchmark's ``retain`` setting holds: the retain model and/or the
statistics given, and how to resolve them. A statistics dict carries a ``format`` tag and the evaluation settings
it was computed with; it is only used when both match the current evaluation, so a cache never silently feeds
numbers from another split or mode.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def model_fingerprint(path: str | Path) -> str:
    """Weights-file names, sizes and modification times of a local model folder; the id itself for a Hub id."""
    folder = Path(path)
    if not folder.is_dir():
        return str(path)
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def cache_root() -> Path:
    """``$HF_UNLEARN_CACHE``, else ``hf_unlearn`` under the Hugging Face cache home (``$HF_HOME``)."""
    if os.environ.get("HF_UNLEARN_CACHE"):
        return Path(os.environ["HF_UNLEARN_CACHE"]).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hf_unlearn"


def default_cache_path(retain_model: str | Path, fmt: str, settings: dict[str, Any]) -> Path:
    """Cache file for computed statistics, under :func:`cache_root` (never in the retain model's own folder: a
    user's model folder is not a cache), keyed by the model's resolved path and the evaluation settings."""
    key = hashlib.sha1(json.dumps([fmt, settings], sort_keys=True, default=str).encode()).hexdigest()[:12]
    name = f"hf_unlearn_{fmt.split('/')[0].split('.')[-1]}_{key}.json"
    folder = Path(retain_model).expanduser()
    model_id = str(folder.resolve()) if folder.is_dir() else str(retain_model)
    model_key = hashlib.sha1(model_id.encode()).hexdigest()[:12]
    return cache_root() / "retain_stats" / f"{folder.name or 'model'}-{model_key}_{name}"


def check_statistics(stats: dict, fmt: str, settings: dict[str, Any], source: str) -> tuple[dict | None, str | None]:
    """``(stats, None)`` when ``stats`` has format ``fmt`` and the same ``settings``, else ``(None, reason)``."""
    if stats.get("format") != fmt:
        return None, f"{source} is not a {fmt} file"
    mismatched = {k: (stats.get(k), v) for k, v in settings.items() if stats.get(k) != v}
    if mismatched:
        detail = ", ".join(f"{k}: {have!r} != {want!r}" for k, (have, want) in mismatched.items())
        return None, f"retain statistics in {source} were computed with other settings ({detail})"
    return stats, None


def read_stats_file(path: str | Path):
    """A retain statistics file's JSON; an empty or cut-short one fails in one line naming it."""
    from hf_unlearn.io import read_json

    fix = "delete it (it is recomputed from the retain model) or pass the right file"
    return read_json(path, "Retain statistics", fix)


def check_stats_file(retain_stats) -> None:
    """A given retain statistics file is read once when the benchmark is built, before any weight loads."""
    if isinstance(retain_stats, (str, Path)) and Path(retain_stats).is_file():
        read_stats_file(retain_stats)


def resolve_reference(
    retain_stats: str | Path | dict | None,
    retain_model: str | Path | None,
    fmt: str,
    settings: dict[str, Any],
    compute: Callable[[], dict[str, Any]],
) -> tuple[dict | None, str | None]:
    """Find the retain-model statistics: ``(stats, None)``, or ``(None, one-line reason they are unavailable)``.

    Order: a ``retain_stats`` dict; an existing ``retain_stats`` file; else, with ``retain_model``, the cache file
    (``retain_stats`` path or the default one) if it matches the settings and the model's weights, else
    ``compute()`` and write the cache (main process only).
    """
    if isinstance(retain_stats, dict):
        return check_statistics(retain_stats, fmt, settings, "the retain_stats dict")
    stats_path = Path(retain_stats) if retain_stats else None
    if stats_path is not None and stats_path.is_file():
        return check_statistics(read_stats_file(stats_path), fmt, settings, str(stats_path))
    if retain_model is None:
        if stats_path is not None:
            return None, f"retain statistics file {stats_path} not found and no retain_model to compute it"
        return None, "no retain-model statistics; pass retain_model=<path> (--retain_model) or retain_stats=<json>"
    cache = stats_path or default_cache_path(retain_model, fmt, settings)
    fingerprint = model_fingerprint(retain_model)
    if cache.is_file():
        stats, _ = check_statistics(read_stats_file(cache), fmt, settings, str(cache))
        if stats is not None and stats.get("fingerprint") == fingerprint:
            return stats, None
    stats = {**compute(), "format": fmt, **settings, "retain_model": str(retain_model), "fingerprint": fingerprint}
    from hf_unlearn.benchmarks.sharding import process_info

    if process_info()[0] == 0:
        from hf_unlearn.io import atomic_write_text

        atomic_write_text(cache, json.dumps(stats) + "\n")
    return stats, None


@dataclass(frozen=True)
class RetainReference:
    """Where a benchmark's retain-model statistics come from: ``stats`` given, or computed from ``model`` and cached.

    Built once from ``retain_model`` / ``retain_stats`` (recipe keys, ``--retain_model`` / ``--retain_stats``); a
    given statistics file is read here, before any weight loads, so an empty or cut-short one fails in one line.

    Attributes:
        model: path or Hub id of the retain model (trained without the forget set).
        stats: a statistics JSON file (read if it exists, else where computed statistics are written), or the
            statistics dict itself.
    """

    model: str | Path | None = None
    stats: str | Path | dict | None = None

    def __post_init__(self):
        check_stats_file(self.stats)

    def statistics(self, benchmark, model) -> tuple[dict | None, str | None]:
        """``(stats, None)`` for ``benchmark`` (its ``retain_stats_format`` and ``settings()``), the retain model
        loaded on ``model``'s device when they must be computed; else ``(None, one-line reason)``."""

        def compute() -> dict[str, Any]:
            from hf_unlearn.loading import load_model_and_tokenizer
            from hf_unlearn.modeling import model_device

            return benchmark.retain_statistics(*load_model_and_tokenizer(self.model, device=model_device(model)))

        return resolve_reference(self.stats, self.model, benchmark.retain_stats_format, benchmark.settings(), compute)
