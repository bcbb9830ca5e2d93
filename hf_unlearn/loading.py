"""Where a path becomes weights: path checks, device resolution, model and tokenizer loading (one place).

Every command and the recipe pipeline check their model paths with :func:`check_model_path` before any weight is
loaded, so a typo fails in one line instead of in a Hub lookup after minutes of work.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hf_unlearn.errors import UserInputError
from hf_unlearn.hub_ids import is_hub_id


def hub_offline() -> bool:
    """Whether the Hub is switched off: huggingface_hub's own setting (``HF_HUB_OFFLINE``, read when it is imported),
    the one every download obeys, so hf_unlearn's checks and the libraries' downloads never disagree."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def check_model_path(path: str | os.PathLike | None, name: str = "model") -> str:
    """Check that `path` is a model folder (holding config.json), a packaged model's name or a Hub id.

    Returns what to load: the folder or Hub id as a string, a packaged model's name resolved to its fetched folder
    (:mod:`hf_unlearn.models`). Raises ``FileNotFoundError`` / ``ValueError`` in one line naming `name` (the field or
    flag) and the fix. A Hub id is accepted as is, except offline (``HF_HUB_OFFLINE=1``) when it is not in the local
    Hugging Face cache.
    """
    from hf_unlearn.packaged_models import resolve_packaged_model

    if path is None or str(path) == "":
        raise ValueError(f"{name} is required: a local model folder, a packaged model's name or a Hub id.")
    text = resolve_packaged_model(path)
    folder = Path(text).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise NotADirectoryError(f"{name} {text} is a file; point it at a model folder (with config.json).")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{name} {text} is not a model folder: it has no config.json.")
        check_weight_files(folder, name)
        return text
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if looks_local or not is_hub_id(text):
        raise FileNotFoundError(f"{name} folder {text} does not exist; check the path.")
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(text, "config.json"), str):
            raise FileNotFoundError(
                f"{name} {text} is not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE=1; "
                "download it first or point at a local folder."
            )
    return text


def check_weight_files(folder: Path, name: str = "model") -> None:
    """Read the header of each ``*.safetensors`` file in `folder` (a few bytes, no weights): a truncated, empty or
    garbage file fails here in one line naming it, not inside from_pretrained after the other models loaded."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt"):
                pass
        except (SafetensorError, OSError) as err:
            reason = str(err).removeprefix("Error while deserializing header: ")
            state = "empty" if path.stat().st_size == 0 else f"not a complete safetensors file ({reason})"
            raise UserInputError(
                f"{name} {folder}: {path.name} is {state}; the download or save was cut short or the file is "
                "damaged: save or download the model again."
            ) from None


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/``None``: this rank's GPU (``LOCAL_RANK``) if CUDA is available, else the CPU; else as given."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def disable_progress_bars() -> None:
    """Hide the dataset-preparation, weight-loading and download bars (what `disable_tqdm` / `--no_progress` ask)."""
    import datasets
    import huggingface_hub
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False, **kwargs):
    from transformers import AutoTokenizer

    from hf_unlearn.packaged_models import resolve_packaged_model

    return AutoTokenizer.from_pretrained(resolve_packaged_model(path), trust_remote_code=trust_remote_code, **kwargs)


def load_model(path: str | os.PathLike, **model_kwargs):
    """The causal LM at a local folder or Hub id: the one place hf_unlearn turns a path into weights.

    ``dtype`` may be a string (``"bfloat16"``) or a torch dtype; ``"auto"`` keeps the checkpoint's. Weights are read
    from safetensors only (a pickled ``.bin`` can run code), or from the GGUF file named by ``gguf_file`` (a data
    format that runs no code either); ``trust_remote_code`` stays off unless passed. Other keyword arguments go to
    ``from_pretrained`` (``revision``, ``attn_implementation``, ...).
    """
    from transformers import AutoModelForCausalLM

    from hf_unlearn.packaged_models import resolve_packaged_model

    path = resolve_packaged_model(path)
    dtype = model_kwargs.pop("dtype", None)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    if dtype is not None:
        model_kwargs["dtype"] = dtype
    if model_kwargs.get("use_safetensors") is False:
        raise ValueError("hf_unlearn reads weights from safetensors only; convert the checkpoint to safetensors.")
    if not model_kwargs.get("gguf_file"):
        model_kwargs["use_safetensors"] = True
    model_kwargs["trust_remote_code"] = bool(model_kwargs.get("trust_remote_code", False))
    return AutoModelForCausalLM.from_pretrained(path, **model_kwargs)


def load_model_and_tokenizer(path: str | os.PathLike, device: str | torch.device | None = None, **model_kwargs):
    """``(model, tokenizer)`` from a local folder or Hub id (the model through :func:`load_model`, with its policy);
    on `device` in eval mode when one is given."""
    trust = bool(model_kwargs.get("trust_remote_code", False))
    tokenizer = load_tokenizer(path, trust_remote_code=trust)
    model = load_model(path, **model_kwargs)
    if device is not None:
        model = model.to(resolve_device(device)).eval()
    return model, tokenizer


# Architectures whose positions are a learned table (absolute position embeddings) and the config field that sizes
# it: a sequence longer than the table fails inside the forward with "index out of range in self". Rotary and ALiBi
# models have no such table and are not limited here.
LEARNED_POSITIONS = {
    "gpt2": "n_positions", "gpt_bigcode": "n_positions", "openai-gpt": "n_positions", "ctrl": "n_positions",
    "gpt_neo": "max_position_embeddings", "opt": "max_position_embeddings", "biogpt": "max_position_embeddings",
    "xglm": "max_position_embeddings",
}  # fmt: skip


def check_model_fits(
    path: str, name: str, tokenizer, max_length: int | None = None, trust_remote_code: bool = False
) -> None:
    """Check, from the model's config alone (no weights), that `tokenizer` and `max_length` fit the model at `path`.

    A tokenizer with more tokens than the model has embedding rows, or a `max_length` past a learned position table,
    would fail in the first forward with "index out of range in self"; here it fails in one line naming `name`.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    config = getattr(config, "text_config", None) or config
    rows = getattr(config, "vocab_size", None)
    if rows is not None and len(tokenizer) > rows:
        raise UserInputError(
            f"{name} {path} has {rows} embedding rows but the tokenizer has {len(tokenizer)} tokens: ids past "
            f"{rows - 1} cannot be embedded. Use the tokenizer the model was trained with, or resize the model's "
            "embeddings (model.resize_token_embeddings(len(tokenizer))) and save it."
        )
    field = LEARNED_POSITIONS.get(getattr(config, "model_type", None))
    limit = getattr(config, field, None) if field else None
    if max_length is not None and limit is not None and max_length > limit:
        raise UserInputError(
            f"max_length={max_length} is longer than {name} {path} can take: its {config.model_type} positions are "
            f"a learned table of {limit} ({field}); set max_length <= {limit}."
        )
