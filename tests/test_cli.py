import json
import subprocess
import sys

from hf_unlearn.benchmarks.tofu_data import load_tofu
from hf_unlearn.cli import main


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "hf_unlearn", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout and "synthetic" in out.stdout


def test_synthetic_subcommand_writes_a_loadable_tofu_folder(tmp_path, capsys):
    assert main(["synthetic", str(tmp_path), "--num_authors", "5", "--qa_per_author", "2"]) == 0
    assert len(load_tofu("full", tmp_path)) == 10
    assert "Wrote the synthetic TOFU benchmark" in capsys.readouterr().out
    first = json.loads((tmp_path / "forget10_perturbed.json").read_text().splitlines()[0])
    assert set(first) == {"question", "answer", "paraphrased_answer", "perturbed_answer"}


def test_public_names_resolve_lazily():
    code = (
        "import sys, hf_unlearn; assert 'torch' not in sys.modules; "
        "assert all(getattr(hf_unlearn, n) is not None for n in hf_unlearn.__all__)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
