import json

import pytest

from hf_unlearn.benchmarks.synthetic import make_synthetic_tofu, write_synthetic_tofu
from hf_unlearn.benchmarks.tofu_data import TOFU_CONFIGS, default_tofu_dir, load_tofu, tofu_split_names
from hf_unlearn.errors import UserInputError


def test_real_tofu_sizes_and_split_relationships(real_tofu_dir):
    TOFU_DIR = real_tofu_dir
    full = load_tofu("full", TOFU_DIR)
    assert len(full) == 4000
    perturbed = load_tofu("forget10_perturbed", TOFU_DIR)
    assert len(perturbed) == 400 and all(len(p) == 5 for p in perturbed["perturbed_answer"])
    retain, forget = load_tofu("retain90", TOFU_DIR), load_tofu("forget10", TOFU_DIR)
    questions = list(full["question"])
    assert list(retain["question"]) == questions[:-400] and list(forget["question"]) == questions[-400:]
    assert list(retain["answer"]) == list(full["answer"])[:-400]
    assert not set(load_tofu("holdout10", TOFU_DIR)["question"]) & set(full["question"])
    assert len(load_tofu("world_facts_perturbed", TOFU_DIR)) == 117


def test_synthetic_benchmark_has_tofu_columns_and_relationships(tmp_path):
    folder = write_synthetic_tofu(tmp_path, num_authors=10, qa_per_author=4)
    for name in TOFU_CONFIGS:  # load_tofu checks each config's required columns
        load_tofu(name, folder)
    full, splits = load_tofu("full", folder), make_synthetic_tofu(num_authors=10, qa_per_author=4)
    assert len(full) == 40
    for pct, keep in (("10", "retain90"), ("05", "retain95"), ("01", "retain99")):
        forget = load_tofu(f"forget{pct}", folder)
        assert list(load_tofu(keep, folder)["question"]) + list(forget["question"]) == list(full["question"])
        assert len(load_tofu(f"holdout{pct}", folder)) == len(forget)
        assert list(load_tofu(f"forget{pct}_perturbed", folder)["question"]) == list(forget["question"])
    assert not set(load_tofu("holdout10", folder)["question"]) & set(full["question"])
    for row in splits["forget10_perturbed"]:
        assert len(row["perturbed_answer"]) == 5 and row["answer"] not in row["perturbed_answer"]
        assert row["paraphrased_answer"] not in row["perturbed_answer"]
    assert all(len(r["perturbed_answer"]) == 3 for r in splits["world_facts_perturbed"])


def test_synthetic_benchmark_is_deterministic_in_its_seed():
    assert make_synthetic_tofu(seed=3) == make_synthetic_tofu(seed=3)
    assert make_synthetic_tofu(seed=3)["full"] != make_synthetic_tofu(seed=4)["full"]


def test_split_names_and_bad_input(tmp_path):
    assert tofu_split_names("forget05")["retain"] == "retain95"
    with pytest.raises(ValueError, match="forget01, forget05, forget10"):
        tofu_split_names("forget20")
    with pytest.raises(ValueError, match="available: full, forget01"):
        load_tofu("forget50", tmp_path)
    (tmp_path / "full.json").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"full.json:1: missing field 'answer'"):
        load_tofu("full", tmp_path)
    with pytest.raises(FileNotFoundError, match="splits present in .*: full"):
        load_tofu("forget10", tmp_path)
    (tmp_path / "forget10.json").write_text("{not json\n")
    with pytest.raises(ValueError, match="forget10.json:1: not a JSON object"):
        load_tofu("forget10", tmp_path)


def test_local_tofu_is_found_through_the_variable_only(monkeypatch, synthetic_data_dir, tmp_path):
    monkeypatch.delenv("HF_UNLEARN_TOFU_DIR", raising=False)
    assert default_tofu_dir() is None  # unset: the Hub, never a folder guessed beside the checkout
    monkeypatch.setenv("HF_UNLEARN_TOFU_DIR", str(synthetic_data_dir))
    assert default_tofu_dir() == synthetic_data_dir
    monkeypatch.setenv("HF_UNLEARN_TOFU_DIR", str(tmp_path))
    with pytest.raises(UserInputError, match=rf"HF_UNLEARN_TOFU_DIR={tmp_path}: no full.json there; point it at"):
        default_tofu_dir()
