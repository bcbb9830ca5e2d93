"""`hf-unlearn alternates` on the tiny model: the file AltPO reads, greedy and batch-independent, refusals."""

import json
import math

from hf_unlearn.alternates import generate_alternates
from hf_unlearn.loading import load_model_and_tokenizer
from hf_unlearn.pipeline import run
from hf_unlearn.recipes import parse_recipe


def test_alternates_command_writes_what_altpo_reads(cli, tmp_path, tiny_model_dir, synthetic_data_dir):
    out = tmp_path / "alternates.jsonl"
    flags = ["--model", tiny_model_dir, "--data_dir", synthetic_data_dir, "--forget_split", "forget10",
             "--max_new_tokens", "6", "--batch_size", "3", "--device", "cpu"]  # fmt: skip
    code, stdout, stderr = cli("alternates", *flags, "--output", out)
    assert code == 0, stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    forget = [json.loads(line) for line in (synthetic_data_dir / "forget10.json").read_text().splitlines()]
    assert [(r["question"], r["answer"]) for r in rows] == [(f["question"], f["answer"]) for f in forget]
    assert all(r["alternate"].strip() for r in rows)
    # greedy: the same prompt gives the same continuation, one prompt at a time as in batches of 3
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    single = generate_alternates(model, tok, forget[:2], max_new_tokens=6, batch_size=1)
    assert [r["alternate"] for r in single] == [r["alternate"] for r in rows[:2]]
    code, _, stderr = cli("alternates", *flags, "--output", out)
    assert code == 2 and "already exists; choose a new file, or pass --overwrite" in stderr
    code, _, stderr = cli("alternates", *flags, "--output", synthetic_data_dir / "alternates.jsonl")
    assert (
        code == 2 and "is inside the data folder" in stderr and not (synthetic_data_dir / "alternates.jsonl").exists()
    )
    code, _, stderr = cli("alternates", *flags, "--output", tmp_path / "x.jsonl", "--instruction", "Q: {question}")
    assert code == 2 and "has no {answer} field" in stderr and not (tmp_path / "x.jsonl").exists()
    # the file drives an altpo run on the same split
    recipe = parse_recipe(
        None,
        ["--method", "altpo", "--model_name_or_path", str(tiny_model_dir), "--data_dir", str(synthetic_data_dir),
         "--forget_split", "forget10", "--alternates_file", str(out), "--output_dir", str(tmp_path / "run"),
         "--max_steps", "2", "--per_device_train_batch_size", "2", "--use_cpu", "true", "--report_to", "none",
         "--save_strategy", "no", "--max_length", "64", "--disable_tqdm", "true"],
    )  # fmt: skip
    report = run(recipe)
    assert all(math.isfinite(log["loss"]) for log in report.training_log if "loss" in log)
