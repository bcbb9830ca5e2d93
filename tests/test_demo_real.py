"""`hf-unlearn demo --real` end to end, with a tiny model standing in for the fetched SmolLM2 (no download).

The command's own path runs: the packaged-model lookup, the TOFU subset, TRL fine-tuning, the AdamW and hybrid
sweep with its attacks and controls, and the printed table and sample answers.
"""

import json

import pytest

from hf_unlearn import demo_real
from hf_unlearn.packaged_models import SOURCE_FILE
from hf_unlearn.report import UnlearnReport
from hf_unlearn.tiny import build_tiny_model


@pytest.fixture
def tofu_dir(tmp_path):
    """TOFU-shaped data: 4 authors x 20 QA (forget01 = the last 2), the perturbed and general sets."""
    folder = tmp_path / "tofu"
    folder.mkdir()
    full = [{"question": f"Who is author {a} number {i}?", "answer": f"Author {a} wrote book {i}."}
            for a in range(4) for i in range(20)]  # fmt: skip
    extra = {"paraphrased_answer": "A book.", "perturbed_answer": ["No book.", "A poem."], "paraphrased_question": "?"}
    general = [{"question": f"Fact {i}?", "answer": f"Fact {i} holds.", "perturbed_answer": ["It does not."]}
               for i in range(4)]  # fmt: skip
    options = {f"option{k}": "x" for k in range(1, 5)}
    files = {
        "full": full, "forget01": full[-40:], "holdout01": full[:40],
        "forget01_perturbed": [{**r, **extra} for r in full[-40:]],
        "retain_perturbed": [{**r, **extra} for r in full[:40]],
        "real_authors": [{**r, **options} for r in general], "world_facts": [{**r, **options} for r in general],
        "real_authors_perturbed": general, "world_facts_perturbed": general,
    }  # fmt: skip
    for name, rows in files.items():
        (folder / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.mark.slow
def test_real_demo_finetunes_unlearns_attacks_and_prints_answers(tofu_dir, tokenizer, tmp_path, monkeypatch, capsys):
    home = tmp_path / "models"
    stand_in = home / demo_real.MODEL
    build_tiny_model(tokenizer, hidden_size=32, intermediate_size=64).save_pretrained(stand_in)
    tokenizer.save_pretrained(stand_in)
    (stand_in / SOURCE_FILE).write_text("a tiny stand-in for the test\n")
    monkeypatch.setenv("HF_UNLEARN_MODELS", str(home))
    monkeypatch.setitem(demo_real.FINETUNE, "num_train_epochs", 1)

    out = tmp_path / "demo"
    report = demo_real.run_real_demo(out, str(tofu_dir))

    assert [row.optimizer for row in report.summary] == ["adamw", "hybrid"]
    for optimizer in ("adamw", "hybrid"):
        cell = UnlearnReport.load(out / "sweep" / f"{optimizer}_seed0")
        (attack,) = cell.attacks
        assert [p.step for p in attack.relearn] == [6] and {q.kind for q in attack.quantization} >= {"nf4", "int8"}
        assert [r["set"] for r in cell.answers] == ["forget", "forget", "retain", "retain"]
        assert list(cell.answers[0]["generations"]) == ["before unlearning", "after unlearning", "relearned (6 steps)"]
    printed = capsys.readouterr().out
    assert "Answers, NPO + hybrid" in printed and "Who is author 2 number 0?" in printed and "Demo done in" in printed
    assert (out / "finetuned" / "target" / "model.safetensors").is_file()


def test_real_demo_refuses_a_missing_tofu_folder_before_writing(tmp_path, cli):
    code, _, err = cli("demo", "--real", "--tofu_dir", tmp_path / "nowhere", "--output_dir", tmp_path / "demo")
    assert code == 2 and "is not a local TOFU folder" in err and "--tofu_dir DIR" in err
    assert not (tmp_path / "demo").exists()


def test_a_failed_side_by_side_run_stops_the_demo_with_its_last_log_line(tmp_path):
    """Each run's process writes its own log; a run that fails stops the demo naming the run and its error."""
    out = tmp_path / "demo"
    out.mkdir()
    with pytest.raises(RuntimeError, match=r"The demo's runs failed \(adamw: .*nowhere\.yaml.*; hybrid: .*\); see "):
        demo_real.run_cells_side_by_side(tmp_path / "nowhere.yaml", out)
    assert {p.name for p in (out / "logs").iterdir()} == {"adamw.log", "hybrid.log"}
