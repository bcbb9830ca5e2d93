"""scripts/open_unlearning_eval_speed.py: its input checks and its summary arithmetic, without open-unlearning."""

import importlib.util
from pathlib import Path

import pytest

from tests.helpers import load_script


@pytest.fixture(scope="module")
def speed():
    return load_script("open_unlearning_eval_speed")


@pytest.fixture
def inputs(tmp_path):
    """A fake open-unlearning checkout, model folder, TOFU folder and hydra install: every check passes."""
    checkout, model, tofu, deps = (tmp_path / name for name in ("ou", "model", "tofu", "deps"))
    (checkout / "src").mkdir(parents=True)
    (checkout / "configs").mkdir()
    (checkout / "src" / "eval.py").write_text("")
    (checkout / "configs" / "eval.yaml").write_text("")
    model.mkdir()
    (model / "config.json").write_text("{}")
    tofu.mkdir()
    for name in ("forget10_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed"):
        (tofu / f"{name}.json").write_text("")
    (tofu / "holdout10.json").write_text("")
    (deps / "hydra").mkdir(parents=True)
    (deps / "hydra" / "__init__.py").write_text("")
    argv = ["--open_unlearning", str(checkout), "--model", str(model), "--tofu_dir", str(tofu)]
    return argv + ["--ou_pythonpath", str(deps), "--out", str(tmp_path / "out.json")]


def _error(speed, argv) -> str:
    with pytest.raises(SystemExit) as caught:
        speed.main(argv)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_missing_open_unlearning_checkout_is_one_line_naming_the_fix(speed, inputs, tmp_path):
    argv = list(inputs)
    argv[1] = str(tmp_path / "nowhere")
    message = _error(speed, argv)
    assert str(tmp_path / "nowhere") in message and "locuslab/open-unlearning" in message and "archive" in message


def test_other_bad_inputs_are_one_line_each_and_nothing_is_written(speed, inputs, tmp_path):
    def replaced(flag, value):
        argv = list(inputs)
        argv[argv.index(flag) + 1] = value
        return argv

    (tmp_path / "tofu" / "holdout10.json").unlink()
    assert "holdout10.json" in _error(speed, inputs)
    (tmp_path / "tofu" / "holdout10.json").write_text("")
    assert "save_pretrained" in _error(speed, replaced("--model", str(tmp_path)))
    assert "hydra-core" in _error(speed, replaced("--ou_pythonpath", str(tmp_path / "empty")))
    assert "at least 1" in _error(speed, [*inputs, "--rounds", "0"])
    (tmp_path / "out.json").write_text("kept")
    assert "--overwrite" in _error(speed, inputs)
    assert (tmp_path / "out.json").read_text() == "kept"
    assert not list(tmp_path.glob("ou_eval_speed_*"))


def test_forget_split_picks_its_files(speed):
    assert speed.tofu_files("forget01") == (
        "forget01_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed", "holdout01",
    )  # fmt: skip


def _side(eval_cpu, process_cpu):
    return {"eval_wall_s": 2 * eval_cpu, "eval_cpu_s": eval_cpu, "process_wall_s": 2 * process_cpu,
            "process_cpu_s": process_cpu}  # fmt: skip


def test_summary_medians_spreads_and_ratios_against_hand_values(speed):
    rounds = [
        {"open_unlearning": _side(120.0, 130.0), "hf_unlearn": _side(40.0, 50.0)},
        {"open_unlearning": _side(100.0, 110.0), "hf_unlearn": _side(50.0, 55.0)},
        {"open_unlearning": _side(110.0, 125.0), "hf_unlearn": _side(44.0, 52.0)},
    ]
    summary = speed.summarise(rounds)
    cpu = summary["eval_cpu_s"]
    assert cpu["open_unlearning"] == {"median": 110.0, "min": 100.0, "max": 120.0}
    assert cpu["hf_unlearn"] == {"median": 44.0, "min": 40.0, "max": 50.0}
    assert cpu["ratio_of_medians"] == 2.5  # 110 / 44
    # each round's own ratio: 120/40 = 3, 100/50 = 2, 110/44 = 2.5
    assert cpu["per_round_ratio"] == {"median": 2.5, "min": 2.0, "max": 3.0}
    assert summary["eval_wall_s"]["ratio_of_medians"] == 2.5  # walls are twice the CPU on both sides
    process = summary["process_cpu_s"]
    assert process["open_unlearning"]["median"] == 125.0 and process["hf_unlearn"]["median"] == 52.0
    assert process["ratio_of_medians"] == round(125 / 52, 3)
    assert process["per_round_ratio"] == {"median": round(125 / 52, 4), "min": 2.0, "max": 2.6}


def test_values_side_by_side_pair_each_quantity_and_keep_missing_ones_visible(speed):
    ou_logs = {"forget_Q_A_Prob": {"agg_value": 0.25, "value_by_index": {}}, "forget_quality": {"agg_value": None}}
    ours = {"forget_prob": 0.2, "forget_quality": 0.9, "model_utility": 0.5}
    rows = speed.compare_values(ou_logs, ours)
    assert rows["forget_Q_A_Prob"] == {
        "hf_unlearn_key": "forget_prob", "open_unlearning": 0.25, "hf_unlearn": 0.2, "abs_diff": pytest.approx(0.05),
    }  # fmt: skip
    assert rows["forget_quality"]["abs_diff"] is None and rows["forget_quality"]["hf_unlearn"] == 0.9
    assert rows["model_utility"]["open_unlearning"] is None  # absent from open-unlearning's logs: shown, not dropped
    assert set(rows) == set(speed.SAME_QUANTITY)


def test_the_lm_eval_stub_refuses_to_be_used(speed, tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    folder = speed.write_lm_eval_stub(tmp_path / "stub")
    source = (Path(folder) / "lm_eval" / "models" / "hf_vlms.py").read_text()
    namespace = {}
    exec(compile(source, "hf_vlms.py", "exec"), namespace)
    with pytest.raises(ImportError, match="stub"):
        namespace["HFLM"]()


def test_generated_words_read_from_open_unlearnings_rouge_logs(speed):
    logs = {
        "forget_Q_A_ROUGE": {"value_by_index": {"0": {"generation": "a b c"}, "1": {"generation": "d"}}},
        "wf_Q_A_ROUGE": {"value_by_index": {"5": {"generation": ""}}},
    }
    assert speed.ou_generated_words(logs) == {"forget": 2.0, "world_facts": 0.0}


def test_chat_template_mode_picks_a_chat_config_and_both_sides_use_the_chat_format(speed, tmp_path):
    from types import SimpleNamespace

    from hf_unlearn.data import QAFormat

    chat = SimpleNamespace(model=str(tmp_path), chat_template=True, forget_split="forget10")
    plain = SimpleNamespace(**{**vars(chat), "chat_template": False})
    overrides = speed.ou_base_overrides(chat)
    assert overrides[0] == f"model={speed.OU_CHAT_MODEL_CONFIG}"
    assert {"model.template_args.system_prompt=null", "model.model_args.torch_dtype=float32"} <= set(overrides)
    assert speed.ou_base_overrides(plain)[0] == f"model={speed.OU_MODEL_CONFIG}"
    assert speed.qa_format(chat) == QAFormat(use_chat_template=True)
    assert speed.qa_format(plain).template == speed.PLAIN_TEMPLATE


def test_open_unlearnings_chat_template_calls_get_token_lists_again(speed, tokenizer, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    monkeypatch.setattr(PreTrainedTokenizerBase, "apply_chat_template", PreTrainedTokenizerBase.apply_chat_template)
    chat = [{"role": "user", "content": "Who wrote it?"}]
    assert not isinstance(tokenizer.apply_chat_template(chat, tokenize=True), list)  # transformers 5: a BatchEncoding
    speed.restore_chat_template_lists()
    ids = tokenizer.apply_chat_template(chat, tokenize=True)
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
