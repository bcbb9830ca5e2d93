"""Bad input and faults, as a new user meets them, in every command: one clear line on stderr, the right exit code.

Each case asserts the exit code (2: bad input, 1: a failure such as divergence), exactly one line on stderr naming
the field or the file and the fix, no traceback, and that nothing outside the run's own new output folder changed
(every input folder is hashed before and after). All cases but the divergence one fail before any weight loads, and
leave no output folder behind.
"""

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "recipes" / "demo.yaml")
RMU = str(ROOT / "recipes" / "wmdp_rmu_hybrid.yaml")


@dataclass
class Case:
    id: str
    argv: list[str]  # {model} {data} {out} {in} are filled in per test
    code: int
    says: list[str]  # substrings of the one stderr line: the field or file, and the fix
    output: bool = False  # the command writes its output folder (the divergence case)
    check: object = None  # extra check on the output folder


def run_flags(**extra) -> list[str]:
    flags = {"model_name_or_path": "{model}", "data_source": "tofu", "data_dir": "{data}", "output_dir": "{out}"}
    flags.update(max_steps=2, hybrid_fo_steps=1, hybrid_zo_steps=1, disable_tqdm="true", max_length=64)
    flags.update(extra)
    argv = []
    for key, value in flags.items():
        if value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def run(*extra_argv, recipe=DEMO, **flags) -> list[str]:
    return ["run", recipe, *run_flags(**flags), *extra_argv]


def diverged(out: Path) -> None:
    report = json.loads((out / "unlearn_report.json").read_text())
    # step 1 runs at lr 0 (warm-up); step 2's update blows the weights up: the guard sees it in the weights
    assert report["stopped"]["step"] == 2 and report["stopped"]["quantity"] == "weight_norm"
    assert not (out / "model.safetensors").exists() and not (out / "README.md").exists()  # no NaN final model
    assert (out / "checkpoint-1" / "trainer_state.json").is_file()  # the last good checkpoint stays
    assert not (out / "checkpoint-2").exists()


CASES = [
    # ---- recipes: files, keys, types, values, combinations ----
    Case("recipe-missing", ["run", "{in}/nope.yaml"], 2, ["nope.yaml", "not found"]),
    Case("recipe-not-yaml", ["run", "{in}/broken.yaml"], 2, ["broken.yaml", "line", "not valid YAML"]),
    Case("recipe-not-mapping", ["run", "{in}/list.yaml"], 2, ["list.yaml", "key: value"]),
    Case(
        "recipe-unknown-key",
        ["run", "{in}/typo.yaml", *run_flags()],
        2,
        ["learnig_rate", "did you mean learning_rate"],
    ),
    Case("flag-unknown-key", run("--learnig_rate", "1e-3"), 2, ["learnig_rate", "did you mean learning_rate"]),
    Case("recipe-no-method", ["run", "{in}/no_method.yaml"], 2, ["method", "--method"]),
    Case("flag-unknown-method", run(method="nope"), 2, ["'nope'", "known methods"]),
    Case("flag-type-int", run(max_steps="two"), 2, ["--max_steps", "invalid int value", "--help"]),
    Case("flag-type-float", run(learning_rate="fast"), 2, ["--learning_rate", "invalid float value", "--help"]),
    Case("flag-type-bool", run(evaluate="maybe"), 2, ["--evaluate", "--help"]),
    Case("lr-zero", run(learning_rate=0), 2, ["learning_rate", "finite number > 0"]),
    Case("lr-inf", run(learning_rate="inf"), 2, ["learning_rate", "finite number > 0"]),
    Case("lr-nan", run(learning_rate="nan"), 2, ["learning_rate", "finite number > 0"]),
    Case("gamma-zero", run(gamma=0), 2, ["gamma", "> 0"]),
    Case("alpha-negative", run(alpha=-1), 2, ["alpha", ">= 0"]),
    Case("retain-loss-unknown", run(retain_loss="mse"), 2, ["retain_loss", "nll, kl"]),
    Case("batch-size-zero", run(per_device_train_batch_size=0), 2, ["per_device_train_batch_size", ">= 1"]),
    Case("grad-accum-zero", run(gradient_accumulation_steps=0), 2, ["gradient_accumulation_steps", ">= 1"]),
    Case("max-length-tiny", run(max_length=4), 2, ["max_length=4", "512"]),
    Case("data-source-unknown", run(data_source="csv"), 2, ["data_source='csv'", "tofu"]),
    Case("qa-template-no-field", run(qa_template="Q: A:"), 2, ["qa_template", "{question}"]),
    Case("lora-r-negative", run(lora_r=-1), 2, ["lora_r=-1", ">= 0"]),
    Case("divergence-bound-negative", run(divergence_max_forget_loss=-5), 2, ["divergence_max_forget_loss", "> 0"]),
    Case("optimizer-unknown", run(optimizer="lion9"), 2, ["optimizer", "lion9"]),
    Case("zo-mu-zero", run(zo_mu=0), 2, ["zo_mu"]),
    Case("hybrid-steps-not-multiple", run(max_steps=3), 2, ["max_steps", "hybrid"]),
    Case("muse-without-forget-file", run(data_source="muse", data_dir=None), 2, ["forget_file"]),
    Case(
        "forget-file-missing", run(data_source="jsonl", forget_file="{in}/nope.jsonl"), 2, ["nope.jsonl", "not found"]
    ),
    Case("push-without-hub-id", run(push_to_hub="true"), 2, ["hub_model_id"]),
    Case("pad-token-not-in-vocab", run(pad_token="<nope>"), 2, ["pad_token='<nope>'", "pad_token: eos"]),
    # ---- models ----
    Case("model-missing", run(model_name_or_path="{in}/no_model"), 2, ["model_name_or_path", "does not exist"]),
    Case("model-is-a-file", run(model_name_or_path="{in}/broken.yaml"), 2, ["model_name_or_path", "is a file"]),
    Case("model-without-config", run(model_name_or_path="{in}/empty_model"), 2, ["model_name_or_path", "config.json"]),
    Case("model-corrupt-config", run(model_name_or_path="{in}/corrupt_model"), 2, ["config.json"]),
    Case("tokenizer-without-pad", run(model_name_or_path="{in}/nopad_model"), 2, ["no pad token", "pad_token: eos"]),
    Case("retain-model-missing", run(retain_model="{in}/no_retain"), 2, ["retain_model", "does not exist"]),
    Case(
        "model-not-a-causal-lm", run(model_name_or_path="{in}/t5_model"), 2, ["is a t5 model", "causal"]
    ),  # fmt: skip
    Case(
        "rmu-pattern-matches-nothing",
        run(
            recipe=RMU,
            data_source="jsonl",
            data_dir=None,
            forget_file="{in}/texts.jsonl",
            retain_file="{in}/texts.jsonl",
            layer=1,
            trainable_layers=1,
            trainable_pattern="attention_nope",
            bf16="false",  # the WMDP recipe trains in bf16 autocast, which this CPU refuses
        ),
        2,
        ["trainable_pattern 'attention_nope'", "names:"],
    ),  # fmt: skip
    Case(
        "rmu-layer-out-of-range",
        run(
            recipe=RMU,
            data_source="jsonl",
            data_dir=None,
            forget_file="{in}/texts.jsonl",
            retain_file="{in}/texts.jsonl",
            layer=7,
            bf16="false",
        ),
        2,
        ["layer=7", "decoder layers"],
    ),  # fmt: skip
    # ---- data files ----
    Case("data-row-missing-field", run(data_dir="{in}/data_missing_field"), 2, ["forget10.json:3", "'answer'"]),
    Case("data-line-not-json", run(data_dir="{in}/data_not_json"), 2, ["forget10.json:2", "not a JSON object"]),
    Case("data-not-utf8", run(data_dir="{in}/data_not_utf8"), 2, ["forget10.json:1", "UTF-8"]),
    Case("data-empty-file", run(data_dir="{in}/data_empty"), 2, ["forget10.json", "is empty"]),
    Case("data-split-missing", run(data_dir="{in}/data_no_retain"), 2, ["retain90.json", "data_dir"]),
    Case("data-dir-missing", run(data_dir="{in}/no_data"), 2, ["data_dir", "not a folder"]),
    Case(
        "jsonl-text-field-missing",
        run(data_source="jsonl", data_dir=None, forget_file="{in}/texts_no_field.jsonl"),
        2,
        ["texts_no_field.jsonl:2", "'text'"],
    ),  # fmt: skip
    Case(
        "jsonl-text-not-string",
        run(data_source="jsonl", data_dir=None, forget_file="{in}/texts_number.jsonl"),
        2,
        ["texts_number.jsonl row 1", "must be text"],
    ),  # fmt: skip
    # ---- output folders and faults ----
    Case("output-is-model", run(output_dir="{model}"), 2, ["model_name_or_path folder", "choose another output_dir"]),
    Case("output-inside-model", run(output_dir="{model}/out"), 2, ["is inside the model_name_or_path", "another"]),
    Case("output-inside-data", run(output_dir="{data}/out"), 2, ["is inside the data_dir", "another output_dir"]),
    Case("output-holds-files", run(output_dir="{in}/occupied"), 2, ["already holds files", "overwrite_output_dir"]),
    Case("output-is-a-file", run(output_dir="{in}/broken.yaml"), 2, ["output_dir", "is a file"]),
    Case("output-under-a-file", run(output_dir="{in}/broken.yaml/out"), 2, ["cannot be created", "is a file"]),
    Case(
        "synthetic-over-real-data",
        run(data_source="synthetic", data_dir="{in}/occupied"),
        2,
        ["already holds other data", "choose another data_dir"],
    ),  # fmt: skip
    Case("resume-without-checkpoint", run(resume_from_checkpoint="true"), 2, ["no complete checkpoint", "drop"]),
    Case(
        "divergence",
        run(
            learning_rate="1e30",
            save_strategy="steps",
            save_steps=1,
            hybrid_fo_steps=2,
            max_steps=3,
            lr_scheduler_type="linear",
            warmup_steps=2,
        ),
        1,
        ["diverged at step 2", "divergence_max_update_ratio", "learning rate", "lower it"],
        output=True,
        check=diverged,
    ),  # fmt: skip
    # ---- the other commands' flags ----
    Case("eval-model-missing", ["eval", "--model", "{in}/no_model", "--benchmark", "tofu"], 2, ["--model", "exist"]),
    Case(
        "eval-benchmark-unknown",
        ["eval", "--model", "{model}", "--benchmark", "glue"],
        2,
        ["invalid choice", "--help"],
    ),
    Case(
        "eval-batch-size-type",
        ["eval", "--model", "{model}", "--benchmark", "tofu", "--batch_size", "x"],
        2,
        ["--batch_size", "invalid int value"],
    ),  # fmt: skip
    Case(
        "eval-output-is-model",
        ["eval", "--model", "{model}", "--benchmark", "tofu", "--output_dir", "{model}"],
        2,
        ["--model folder", "choose another --output_dir"],
    ),  # fmt: skip
    Case(
        "eval-output-holds-files",
        ["eval", "--model", "{model}", "--benchmark", "tofu", "--data_dir", "{data}", "--output_dir", "{in}/occupied"],
        2,
        ["already holds files", "--overwrite"],
    ),  # fmt: skip
    Case(
        "eval-retain-missing",
        ["eval", "--model", "{model}", "--benchmark", "tofu", "--retain_model", "{in}/nr"],
        2,
        ["--retain_model", "does not exist"],
    ),  # fmt: skip
    Case("attack-model-missing", ["attack", "--model", "{in}/no_model"], 2, ["--model", "does not exist"]),
    Case(
        "attack-relearn-data-missing",
        ["attack", "--model", "{model}", "--relearn_data", "{in}/nope.jsonl"],
        2,
        ["--relearn_data", "not found"],
    ),  # fmt: skip
    Case("attack-steps-type", ["attack", "--model", "{model}", "--relearn_steps", "ten"], 2, ["--relearn_steps"]),
    Case(
        "attack-output-is-data",
        ["attack", "--model", "{model}", "--data_dir", "{data}", "--output_dir", "{data}"],
        2,
        ["--data_dir folder", "choose another --output_dir"],
    ),  # fmt: skip
    Case("lmc-model-missing", ["lmc", "{model}", "{in}/no_model"], 2, ["model_b", "does not exist"]),
    Case("lmc-points-type", ["lmc", "{model}", "{model}", "--points", "many"], 2, ["--points", "invalid int value"]),
    Case(
        "lmc-output-is-a-file",
        ["lmc", "{model}", "{model}", "--output_dir", "{in}/broken.yaml"],
        2,
        ["--output_dir", "is a file"],
    ),  # fmt: skip
    Case("synthetic-over-real-data-cmd", ["synthetic", "{in}/occupied"], 2, ["already holds other data"]),
    Case("synthetic-type", ["synthetic", "{out}", "--num_authors", "lots"], 2, ["--num_authors", "invalid int"]),
    Case(
        "finetune-unknown-flag",
        ["finetune", "--model_name_or_path", "{model}", "--use_cpu", "true", "--epochs", "3"],
        2,
        ["--epochs", "--help"],
    ),  # fmt: skip
    Case(
        "finetune-output-is-model",
        ["finetune", "--model_name_or_path", "{model}", "--output_dir", "{model}", "--use_cpu", "true"],
        2,
        ["model_name_or_path folder", "choose another"],
    ),  # fmt: skip
    Case("card-without-report", ["card", "{in}/occupied"], 2, ["unlearn_report.json"]),
    Case("push-without-report", ["push", "{in}/occupied", "--hub_model_id", "me/model"], 2, ["unlearn_report.json"]),
    Case("bench-unknown-entry", ["bench", "--only", "nope"], 2, ["--only", "invalid choice"]),
    Case("demo-unknown-flag", ["demo", "--fast"], 2, ["--fast", "unrecognized"]),
    Case("command-unknown", ["unlearn"], 2, ["invalid choice", "hf-unlearn --help"]),
    Case("command-missing", [], 2, ["COMMAND", "required"]),
]


def tree_hash(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir, synthetic_data_dir):
    """The bad inputs, built once: recipes, model folders, data folders and files, an occupied folder."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    (folder / "broken.yaml").write_text("method: npo\nlearning_rate: [1e-3\n")
    (folder / "list.yaml").write_text("- method: npo\n")
    (folder / "no_method.yaml").write_text("learning_rate: 1.0e-3\n")
    typo = (ROOT / "recipes" / "demo.yaml").read_text().replace("learning_rate: 1.0e-3", "learnig_rate: 1.0e-3")
    (folder / "typo.yaml").write_text(typo)
    (folder / "empty_model").mkdir()
    (folder / "t5_model").mkdir()
    (folder / "t5_model" / "config.json").write_text(json.dumps({"model_type": "t5", "num_layers": 2}))
    shutil.copytree(tiny_model_dir, folder / "corrupt_model")
    (folder / "corrupt_model" / "config.json").write_text('{"model_type": "llama", ')
    shutil.copytree(tiny_model_dir, folder / "nopad_model")
    config = json.loads((folder / "nopad_model" / "tokenizer_config.json").read_text())
    config.pop("pad_token")
    (folder / "nopad_model" / "tokenizer_config.json").write_text(json.dumps(config))
    forget = (Path(synthetic_data_dir) / "forget10.json").read_text().splitlines(keepends=True)
    variants = {
        "data_missing_field": forget[:2] + [json.dumps({"question": "Who?"}) + "\n"] + forget[3:],
        "data_not_json": forget[:1] + ["{'question': 'single quotes'}\n"] + forget[2:],
        "data_empty": [],
    }
    for name, lines in variants.items():
        shutil.copytree(synthetic_data_dir, folder / name)
        (folder / name / "forget10.json").write_text("".join(lines))
    shutil.copytree(synthetic_data_dir, folder / "data_not_utf8")
    (folder / "data_not_utf8" / "forget10.json").write_bytes(b'{"question": "caf\xe9", "answer": "x"}\n')
    shutil.copytree(synthetic_data_dir, folder / "data_no_retain")
    (folder / "data_no_retain" / "retain90.json").unlink()
    (folder / "texts.jsonl").write_text("".join(json.dumps({"text": f"text number {i}"}) + "\n" for i in range(8)))
    (folder / "texts_no_field.jsonl").write_text('{"text": "one"}\n{"body": "two"}\n')
    (folder / "texts_number.jsonl").write_text('{"text": 12}\n')
    (folder / "occupied").mkdir()
    (folder / "occupied" / "forget10.json").write_text('{"question": "real", "answer": "data"}\n')
    return folder


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, cli, inputs, tiny_model_dir, synthetic_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_UNLEARN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    values = {"model": str(tiny_model_dir), "data": str(synthetic_data_dir), "out": str(out), "in": str(inputs)}
    argv = [a.format(**values) for a in case.argv]
    watched = {
        "model": Path(tiny_model_dir),
        "data": Path(synthetic_data_dir),
        "inputs": inputs,
        "recipes": ROOT / "recipes",
    }
    before = {name: tree_hash(path) for name, path in watched.items()}

    code, stdout, stderr = cli(*argv)

    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == case.code, f"exit {code}; stderr: {stderr[-1500:]}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr[-1500:]}"
    assert "Traceback" not in stderr and "Traceback" not in stdout
    for text in case.says:
        assert text in lines[0], f"{text!r} not in: {lines[0]}"
    assert {name: tree_hash(path) for name, path in watched.items()} == before, "an input was modified"
    if case.output:
        case.check(out)
    else:
        assert not out.exists(), "a refused command left an output folder behind"
