"""The embedded demo (what `make demo` runs), shrunk: it must produce the whole report, end to end."""

import json

from hf_unlearn.cli import main


def test_demo_writes_the_report_with_every_row(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--output_dir", str(out), "--num_authors", "6", "--finetune_epochs", "8"]
    argv += ["--variants", "adam", "zo"]
    assert main(argv) == 0
    rows = json.loads((out / "report.json").read_text())
    assert [r["model"] for r in rows] == [
        "original", "retain (target)", "NPO + adam", "NPO + zo", "noise of the size of NPO + zo"
    ]  # fmt: skip
    assert rows[1]["unlearned"]["forget_quality"] == 1.0  # the retain model against its own statistics
    for row in rows[2:4]:
        assert [p["step"] for p in row["relearn"]["curve"]] == [5, 10, 20]
        assert 0 < row["quantization"]["fp4"]["codes_changed_fraction"] <= 1
    # AdamW unlearning lowers the forget probability below the original model's
    assert rows[2]["unlearned"]["forget_prob"] < rows[0]["unlearned"]["forget_prob"]
    printed = capsys.readouterr().out
    assert "| NPO + adam |" in printed and "of the 4-bit codes" in printed
    assert (out / "report.md").read_text().startswith("# hf_unlearn demo")
