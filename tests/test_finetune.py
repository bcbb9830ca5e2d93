"""`hf-unlearn finetune`: the target and retain models, fine-tuned with trl.SFTTrainer in hf_unlearn's QA format."""

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from hf_unlearn.benchmarks.engine import score_examples
from hf_unlearn.benchmarks.metrics import probability
from hf_unlearn.benchmarks.synthetic import write_synthetic_tofu
from hf_unlearn.benchmarks.tofu_data import load_tofu
from hf_unlearn.cli import main
from hf_unlearn.data import QADataset
from hf_unlearn.finetune import parse_finetune_args, qa_sft_dataset
from hf_unlearn.tiny import build_tiny_model
from tests.helpers import synthetic_tokenizer


ROOT = Path(__file__).resolve().parents[1]


def forget_probability(model_dir, rows, tokenizer) -> float:
    """TOFU's forget probability: mean over examples of exp(-mean answer-token NLL), as evaluation scores it."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    stats = score_examples(
        model, QADataset(rows, tokenizer, max_length=128), tokenizer.pad_token_id, show_progress=False
    )
    return float(np.mean(probability([s["nll_mean"] for s in stats])))


def test_sft_examples_are_the_unlearning_format(tmp_path):
    tokenizer = synthetic_tokenizer()
    rows = load_tofu("forget10", write_synthetic_tofu(tmp_path, num_authors=10, qa_per_author=4))
    dataset = qa_sft_dataset(rows, tokenizer, max_length=128, qa_format=None, source="forget10")
    reference = QADataset(rows, tokenizer, max_length=128)
    assert dataset.column_names == ["input_ids", "attention_mask", "labels"]
    assert [dict(dataset[i]) for i in range(len(dataset))] == [reference[i] for i in range(len(reference))]
    assert dataset[0]["labels"][0] == -100  # the prompt is not trained on


def test_finetune_memorises_the_target_and_keeps_the_forget_set_from_the_retain_model(tmp_path, capsys):
    tokenizer = synthetic_tokenizer()
    base = tmp_path / "base"
    build_tiny_model(tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    data_dir = write_synthetic_tofu(tmp_path / "data", num_authors=10, qa_per_author=4)
    out = tmp_path / "finetuned"
    options = ["--model_name_or_path", str(base), "--data_dir", str(data_dir), "--forget_split", "forget10"]
    options += ["--output_dir", str(out), "--learning_rate", "5e-3", "--num_train_epochs", "15", "--max_length", "128"]
    options += ["--per_device_train_batch_size", "8", "--lr_scheduler_type", "constant", "--use_cpu", "true"]
    options += ["--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "0"]
    assert main(["finetune", *options]) == 0

    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index('{\n  "data_dir"') :])  # after the trainers' own log lines
    assert (summary["target"]["split"], summary["retain"]["split"]) == ("full", "retain90")
    forget, retain = load_tofu("forget10", data_dir), load_tofu("retain90", data_dir)
    target_forget = forget_probability(out / "target", forget, tokenizer)
    retain_forget = forget_probability(out / "retain", forget, tokenizer)
    assert forget_probability(base, forget, tokenizer) < 0.05  # nothing known before fine-tuning
    assert target_forget > 0.8 and retain_forget < 0.5, (target_forget, retain_forget)
    assert forget_probability(out / "retain", retain, tokenizer) > 0.8  # the retain model learned what it saw


def test_bad_finetune_arguments_fail_before_any_weight_loads():
    with pytest.raises(ValueError, match="data_source='wmdp' has no QA data to fine-tune on; choose tofu, synthetic"):
        parse_finetune_args(["--model_name_or_path", "m", "--output_dir", "o", "--data_source", "wmdp"])
    with pytest.raises(ValueError, match=r"models=\['target', 'reatin'\]: choose one or both of target, retain"):
        parse_finetune_args(["--model_name_or_path", "m", "--output_dir", "o", "--models", "target", "reatin"])
    with pytest.raises(ValueError, match="Unknown TOFU forget split .forget07.; choose one of forget01"):
        parse_finetune_args(["--model_name_or_path", "m", "--output_dir", "o", "--forget_split", "forget07"])
