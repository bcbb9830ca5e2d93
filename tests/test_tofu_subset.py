"""`hf-unlearn subset`: a TOFU folder cut to a forget split's authors plus TOFU's first N authors."""

import json

import pytest

from hf_unlearn.benchmarks.tofu_data import load_tofu
from hf_unlearn.benchmarks.tofu_subset import write_tofu_subset
from hf_unlearn.cli import main


def _rows(prefix, n, **extra):
    return [{"question": f"{prefix} q{i}?", "answer": f"{prefix} a{i}.", **extra} for i in range(n)]


@pytest.fixture
def tofu_dir(tmp_path):
    """A TOFU-shaped folder: 5 authors x 20 QA in `full`, forget01 = its last 2 authors, as in TOFU."""
    folder = tmp_path / "tofu"
    folder.mkdir()
    full = [row for author in range(5) for row in _rows(f"author{author}", 20)]
    perturbed = {"paraphrased_answer": "p.", "perturbed_answer": ["w1.", "w2."], "paraphrased_question": "pq?"}
    options = {f"option{k}": "o" for k in range(1, 5)}
    files = {
        "full": full, "forget01": full[-40:], "retain99": full[:-40], "holdout01": _rows("holdout", 40),
        "forget01_perturbed": [{**r, **perturbed} for r in full[-40:]],
        "retain_perturbed": [{**r, **perturbed} for r in full[:60]],
        "real_authors": _rows("real", 4, **options), "world_facts": _rows("world", 4, **options),
        "real_authors_perturbed": _rows("real", 4, perturbed_answer=["x."]),
        "world_facts_perturbed": _rows("world", 4, perturbed_answer=["x."]),
    }  # fmt: skip
    for name, rows in files.items():
        (folder / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_subset_keeps_the_forget_authors_and_the_first_retain_authors(tofu_dir, tmp_path):
    out = write_tofu_subset(tofu_dir, tmp_path / "sub", "forget01", retain_authors=2)
    full = load_tofu("full", out)["question"]
    assert full == [f"author{a} q{i}?" for a in (0, 1, 3, 4) for i in range(20)]
    assert load_tofu("retain99", out)["question"] == full[:40]  # the complement of forget01: the target's others
    assert load_tofu("forget01", out)["question"] == full[40:]
    assert load_tofu("retain_perturbed", out)["question"] == full[:40]  # utility on authors the target learned
    assert load_tofu("holdout01", out)["question"] == load_tofu("holdout01", tofu_dir)["question"]
    assert not (out / "forget05.json").exists()  # other forget splits would name authors the subset lacks


def test_subset_refusals_name_the_fix(tofu_dir, tmp_path, capsys):
    sub = ["subset", str(tmp_path / "sub"), "--data_dir", str(tofu_dir)]
    for flags, message in (
        (["--retain_authors", "0"], "retain_authors=0: choose 1..20"),
        (["--retain_authors", "4"], "holds fewer retain authors"),
        (["--forget_split", "forget02"], "Unknown TOFU forget split"),
    ):
        assert main([*sub, *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "sub").exists()  # nothing written before the checks pass
    (tofu_dir / "forget01.json").write_text((tofu_dir / "full.json").read_text().splitlines()[0] + "\n")
    assert main(sub) == 2 and "is not the tail of full" in capsys.readouterr().err
    assert main(["subset", str(tofu_dir), "--data_dir", str(tofu_dir)]) == 2  # never into the source itself
    assert "source folder" in capsys.readouterr().err
