"""Whether a name is a Hub repository id: huggingface_hub's own rule, the one check model paths and the card use."""

from __future__ import annotations

from pathlib import Path


def is_hub_id(name: str | None, owner_required: bool = False) -> bool:
    """Whether ``name`` reads as a Hub repository id (``name`` or ``owner/name``; ``owner/name`` only with
    ``owner_required``) and is not a local path that exists."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name, str) or not name or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return "/" in name or not owner_required
