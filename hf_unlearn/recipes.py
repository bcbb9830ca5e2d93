"""Recipes: a YAML file gives defaults, command-line flags override them, unknown keys are errors.

A recipe names the method (`method: npo`); its keys are the fields of `ScriptArguments` below and of the method's
config dataclass (`UnlearnConfig` + the method's own fields + `TrainingArguments` + the optimizer fields), so one
file holds the whole run and `hf-unlearn run recipe.yaml --help` lists every key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser


BENCHMARKS_FOR_TRAINING = ("tofu", "synthetic", "text")


@dataclass
class ScriptArguments:
    """What to unlearn and from which model; the method's hyperparameters live in its config class."""

    method: str = field(metadata={"help": "Unlearning method: grad_ascent, grad_diff, npo, simnpo, rmu, idk_dpo."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Model to unlearn: a local folder or a Hub id (loaded with from_pretrained)."}
    )
    benchmark: str = field(
        default="tofu",
        metadata={"help": f"Where forget/retain data comes from: {', '.join(BENCHMARKS_FOR_TRAINING)}."},
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Local folder of <config>.json JSON Lines files (TOFU layout); unset = the Hub (locuslab/TOFU). "
            "For benchmark=synthetic the folder is written there (default: <output_dir>/data)."
        },
    )
    forget_file: str | None = field(
        default=None,
        metadata={
            "help": "benchmark=text: JSON Lines forget corpus (MUSE, WMDP forget text), cut into max_length blocks."
        },
    )
    retain_file: str | None = field(
        default=None, metadata={"help": "benchmark=text: JSON Lines retain corpus (e.g. wikitext), cut the same way."}
    )
    text_field: str = field(default="text", metadata={"help": "benchmark=text: the field that holds each text."})
    forget_split: str = field(
        default="forget10", metadata={"help": "TOFU forget split: forget01, forget05, forget10."}
    )
    retain_split: str | None = field(
        default=None, metadata={"help": "Retain split (default: the complement of forget_split, e.g. retain90)."}
    )
    max_length: int = field(default=512, metadata={"help": "Maximum tokens per QA example or text block."})
    qa_template: str | None = field(
        default=None,
        metadata={
            "help": "Plain prompt template with {question}; the answer follows the rendered template directly (TOFU: "
            "'Question: {question}\\nAnswer: ', the space in the prompt; a typed \\n is a newline). Unset: the "
            "tokenizer's chat template if any, else TOFU's template."
        },
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System prompt the model was fine-tuned with (chat: a system message)."}
    )
    no_chat_template: bool = field(
        default=False, metadata={"help": "Ignore the tokenizer's chat template; use qa_template or TOFU's template."}
    )
    synthetic_num_authors: int = field(default=20, metadata={"help": "benchmark=synthetic: number of authors."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains the full model."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules LoRA adapts (default: peft's choice for the architecture)."}
    )
    evaluate: bool = field(
        default=False, metadata={"help": "Evaluate the unlearned model on the benchmark after training."}
    )
    robustness: bool = field(
        default=False,
        metadata={"help": "After training, attack the model (relearn_* and quantization fields) and re-evaluate."},
    )
    retain_model_path: str | None = field(
        default=None,
        metadata={"help": "Model trained without the forget set: its statistics give forget quality and privleak."},
    )
    eval_max_new_tokens: int = field(default=200, metadata={"help": "Generation length of the TOFU evaluation."})
    report_codes_changed: bool = field(
        default=False,
        metadata={"help": "Robustness: load the original model again to report the share of 4-bit codes changed."},
    )


def _flags(values: dict) -> list[str]:
    """Turn recipe values into argv flags, so argparse applies each field's type exactly as on the command line."""
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            argv += [f"--{key}", str(value).lower()]
        elif isinstance(value, list | tuple):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def field_names(*classes) -> set[str]:
    return {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}


def load_recipe(path: str | Path) -> dict:
    """The recipe's keys and values; a one-line error when the file is missing or not a YAML mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {path} not found; recipes ship in the repository's recipes/ folder.")
    values = yaml.safe_load(path.read_text())
    if not isinstance(values, dict) or "method" not in values:
        raise ValueError(f"Recipe {path} must be a YAML mapping with at least a 'method:' key.")
    return values


def parse_recipe(path: str | Path | None, overrides: list[str] | None = None, method: str | None = None):
    """(ScriptArguments, method config, RobustnessConfig) from a recipe file and flags (later flags win).

    Every value is checked here, before any weight is loaded.
    """
    from hf_unlearn.optim.factory import validate_optimizer_args
    from hf_unlearn.robustness import RobustnessConfig
    from hf_unlearn.trainers import get_method

    values = load_recipe(path) if path is not None else {}
    method = method or values.get("method") or _flag_value(overrides or [], "method")
    if not method:
        raise ValueError("No method given: put 'method: <name>' in the recipe or pass --method.")
    trainer_cls = get_method(method)
    config_cls = trainer_cls.config_class
    known = field_names(ScriptArguments, config_cls, RobustnessConfig)
    unknown = sorted(set(values) - known)
    if unknown:
        hints = [
            f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, known, 1)) else k for k in unknown
        ]
        raise ValueError(f"Recipe {path}: unknown key(s) {', '.join(hints)}; see `hf-unlearn run --help`.")
    parser = HfArgumentParser((ScriptArguments, config_cls, RobustnessConfig))
    script_args, config, robustness = parser.parse_args_into_dataclasses(args=_flags(values) + list(overrides or []))
    validate_optimizer_args(config)
    if script_args.benchmark not in BENCHMARKS_FOR_TRAINING:
        raise ValueError(
            f"benchmark={script_args.benchmark!r} cannot provide training data yet; "
            f"choose one of {', '.join(BENCHMARKS_FOR_TRAINING)}."
        )
    if script_args.benchmark == "text":
        _check_text_files(script_args)
    if script_args.benchmark == "tofu" and script_args.data_dir and not Path(script_args.data_dir).is_dir():
        raise FileNotFoundError(f"data_dir {script_args.data_dir} is not a folder; point it at a local TOFU copy.")
    if not script_args.model_name_or_path:
        raise ValueError("model_name_or_path is required: a local model folder or a Hub id.")
    return script_args, config, robustness


def _check_text_files(script_args: ScriptArguments) -> None:
    if not script_args.forget_file:
        raise ValueError("benchmark=text needs forget_file: a JSON Lines file with a 'text' field per line.")
    for name in ("forget_file", "retain_file"):
        path = getattr(script_args, name)
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{name} {path} not found.")
    if script_args.evaluate or script_args.robustness:
        raise ValueError(
            "evaluate/robustness read TOFU-format QA data; with benchmark=text, evaluate the saved model with "
            "`hf-unlearn eval --benchmark muse|wmdp` and attack it with `hf-unlearn attack`."
        )


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, token in enumerate(argv[:-1]):
        if token == f"--{name}":
            return argv[i + 1]
    return None
