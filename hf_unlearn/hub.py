"""Pushing a finished run to the Hub: weights, tokenizer, model card, report, plots and recipe, nothing else.

What goes up is an allow-list of top-level files (:func:`files_to_upload`): checkpoints, data, per-example
evaluations and pickled training arguments stay local. :func:`check_push_possible` is what a recipe parser calls
so that an offline or tokenless push fails before training; :func:`push_to_hub` checks again at the end, and
fails in one line that says what to do, leaving the saved model where it is.

The token is passed to ``huggingface_hub`` and nowhere else: it is never written, logged or put in the card.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
from pathlib import Path

from hf_unlearn.loading import hub_offline
from hf_unlearn.model_card import CARD_FILE
from hf_unlearn.report_schema import EVAL_PLOT, LOSS_PLOT, MARKDOWN_FILE, RECIPE_FILE, RELEARN_PLOT, REPORT_FILE


logger = logging.getLogger(__name__)

# Top-level files of an output folder that belong on the Hub (fnmatch patterns).
UPLOAD_ALLOW = (
    "*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json", "adapter_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
    "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json",
    CARD_FILE, REPORT_FILE, MARKDOWN_FILE, RECIPE_FILE, LOSS_PLOT, RELEARN_PLOT, EVAL_PLOT,
)  # fmt: skip


class HubPushError(ValueError):
    """A push that cannot happen; the message is one line that says what to do."""


def _resolve_token(token: str | None) -> str | None:
    from huggingface_hub import get_token

    return token or get_token()


def check_push_possible(hub_model_id: str | None, token: str | None = None) -> None:
    """Raise :class:`HubPushError` if pushing to ``hub_model_id`` cannot work: no or malformed id, offline mode, no
    token (neither given, nor ``HF_TOKEN``, nor a stored login). Reaches no server; safe at recipe-parse time."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not hub_model_id:
        raise HubPushError("push_to_hub needs hub_model_id, e.g. --hub_model_id your-name/model-unlearned.")
    try:
        validate_repo_id(hub_model_id)
    except HFValidationError:
        raise HubPushError(
            f"hub_model_id={hub_model_id!r} is not a Hub repo id; use 'name' or 'owner/name' (letters, digits, "
            "'-', '_', '.')."
        ) from None
    if hub_offline():
        raise HubPushError(
            "Cannot push to the Hub while HF_HUB_OFFLINE=1: unset HF_HUB_OFFLINE, or set push_to_hub=false."
        )
    if not _resolve_token(token):
        raise HubPushError(
            "Cannot push to the Hub without a token: run `hf auth login` or set HF_TOKEN, or set push_to_hub=false."
        )


def files_to_upload(output_dir: str | Path) -> list[str]:
    """The files of ``output_dir`` a push uploads: the top-level files matching :data:`UPLOAD_ALLOW`, sorted."""
    out = Path(output_dir)
    return sorted(
        path.name
        for path in out.iterdir()
        if path.is_file() and any(fnmatch.fnmatchcase(path.name, pattern) for pattern in UPLOAD_ALLOW)
    )


def push_to_hub(
    output_dir: str | Path,
    hub_model_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    api=None,
) -> str:
    """Upload a finished run's files (:func:`files_to_upload`) to ``hub_model_id``; returns the repo URL.

    The card is rebuilt from the report first, naming ``hub_model_id``. ``api`` defaults to a
    ``huggingface_hub.HfApi``; any object with its ``create_repo`` and ``upload_folder`` will do.
    """
    from hf_unlearn.model_card import write_card
    from hf_unlearn.report import UnlearnReport

    out = Path(output_dir)
    if not out.is_dir():
        raise HubPushError(f"Nothing to push: {out} is not a folder.")
    later = f"the model stays in {out}; push it later with `hf-unlearn push {out} --hub_model_id {hub_model_id}`."
    if not (out / REPORT_FILE).is_file():  # the folder's own problems first: they need no network to find
        raise HubPushError(f"No {REPORT_FILE} in {out}: push a folder written by `hf-unlearn run` (or `eval`).")
    try:
        check_push_possible(hub_model_id, token)
    except HubPushError as error:
        raise HubPushError(f"{error} Nothing was uploaded: {later}") from None
    files = files_to_upload(out)
    if not any(name.endswith(".safetensors") for name in files):
        raise HubPushError(f"No *.safetensors weights in {out}: save the model there before pushing.")

    report = UnlearnReport.load(out)
    if report.hub_model_id != hub_model_id:
        report.hub_model_id = hub_model_id
        report.save(out)
    write_card(out)
    files = files_to_upload(out)

    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    token = _resolve_token(token)
    repo = api.create_repo(hub_model_id, token=token, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=hub_model_id,
        folder_path=str(out),
        allow_patterns=[glob.escape(name) for name in files],
        commit_message=commit_message or f"Upload {report.method or 'unlearned'} model with hf_unlearn",
        token=token,
        repo_type="model",
    )
    url = str(getattr(repo, "url", None) or f"https://huggingface.co/{hub_model_id}")
    logger.info("Pushed %d files from %s to %s", len(files), out, url)
    return url
