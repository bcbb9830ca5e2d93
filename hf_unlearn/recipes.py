"""Recipes: a YAML file gives defaults, command-line flags override them, unknown keys are errors.

A recipe names the method (`method: npo`); its keys are the fields of `ScriptArguments` below, of the method's
config dataclass (`UnlearnConfig` + the method's own fields + `TrainingArguments` + the optimizer fields) and of
`RobustnessConfig`, so one file holds the whole run and `hf-unlearn run recipe.yaml --help` lists every key.

Parsing follows TRL's `TrlParser`: the YAML's values become the argument parser's defaults and flags override them,
so a YAML value is never turned back into a command-line string (`margin: -1.0e-5` stays a float). Every field is
checked in its dataclass's `__post_init__`, before any weight is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hf_unlearn.errors import UserInputError


DATA_SOURCES = ("tofu", "synthetic", "muse", "wmdp", "jsonl")
# A self-launching recipe's first line (see hf_unlearn.launch): Python runs it, YAML reads a key the parser drops.
LAUNCH_KEY = "launch"
# A recipe's `sweep:` section (optimizers, seeds) is read by `hf-unlearn sweep`; a single run ignores it.
SWEEP_KEY = "sweep"
LAUNCH_LINE = f'{LAUNCH_KEY}: str = __import__("hf_unlearn.launch").launch.run_this_recipe(__file__)'
# Old key -> (new key, old value -> new value). Each warns once per parse and keeps working.
DEPRECATED_KEYS = {
    "benchmark": ("data_source", {"text": "jsonl"}),
    "retain_model_path": ("retain_model", {}),
}


@dataclass
class ScriptArguments:
    """What to unlearn, from which model and with which data; the method's hyperparameters live in its config."""

    method: str | None = field(default=None, metadata={"help": "Unlearning method (required): {methods}."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Model to unlearn: a local folder or a Hub id (loaded with from_pretrained)."}
    )
    data_source: str = field(
        default="tofu",
        metadata={
            "help": "Where forget/retain data comes from, and so which benchmark evaluates and attacks the result: "
            "tofu (QA splits), synthetic (TOFU-shaped, written on the spot), muse / wmdp (raw forget and retain "
            "corpora; evaluated with MUSE / WMDP), jsonl (your own JSON Lines texts; evaluated by answer NLL). "
            "Replaces the deprecated key `benchmark`."
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "tofu: local folder of <config>.json JSON Lines (unset = the Hub, locuslab/TOFU). synthetic: "
            "where "
            "the data is written (default <output_dir>/data; never into a folder holding other files). muse / "
            "wmdp: the local evaluation sets (MUSE layout / WMDP JSON Lines)."
        },
    )
    forget_file: str | None = field(
        default=None, metadata={"help": "muse / wmdp / jsonl: JSON Lines forget corpus, cut into max_length blocks."}
    )
    retain_file: str | None = field(
        default=None, metadata={"help": "muse / wmdp / jsonl: JSON Lines retain corpus (e.g. wikitext), cut the same."}
    )
    text_field: str = field(default="text", metadata={"help": "muse / wmdp / jsonl: the field holding each text."})
    muse_corpus: str = field(default="news", metadata={"help": "muse: the MUSE corpus, news or books."})
    forget_split: str = field(
        default="forget10", metadata={"help": "TOFU forget split: forget01, forget05, forget10."}
    )
    retain_split: str | None = field(
        default=None, metadata={"help": "TOFU retain split (default: the complement of forget_split, e.g. retain90)."}
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
    synthetic_num_authors: int = field(default=20, metadata={"help": "synthetic: number of fictitious authors."})
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter (TRL's name); rank lora_r or 16."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; > 0 implies use_peft; 0 without use_peft: full."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules LoRA adapts (default: peft's choice for the architecture)."}
    )
    evaluate: bool = field(
        default=False, metadata={"help": "Evaluate the unlearned model with the data source's benchmark."}
    )
    robustness: bool = field(
        default=False,
        metadata={"help": "After training, attack the model (relearn_* and quantization fields) and re-evaluate."},
    )
    retain_model: str | None = field(
        default=None,
        metadata={"help": "Model trained without the forget set: its statistics give forget quality and privleak."},
    )
    eval_max_new_tokens: int = field(default=200, metadata={"help": "Generation length of the TOFU evaluation."})
    eval_max_examples: int | None = field(
        default=None,
        metadata={"help": "Evaluate only the first N examples of each set (TOFU, MUSE): quick checks; unset: all."},
    )
    report_answers: int = field(
        default=3,
        metadata={
            "help": "With evaluate or robustness on QA data (TOFU): show this many forget and retain questions with "
            "the model's greedy answers before and after unlearning (and after relearning) in the report and the "
            "card; 0: none."
        },
    )
    report_codes_changed: bool = field(
        default=False,
        metadata={"help": "Robustness: load the original model again to report the share of 4-bit codes changed."},
    )
    pad_token: str | None = field(
        default=None,
        metadata={
            "help": "The token batches are padded with when the tokenizer has none: 'eos' (its eos token) or a "
            "token of its vocabulary. Unset: the tokenizer's own pad token (a tokenizer without one is an error)."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Let from_pretrained run the model repository's own Python code. Off unless set here."},
    )
    evaluate_before_training: bool = field(
        default=True,
        metadata={
            "help": "With evaluate or robustness: also evaluate the model before unlearning (the report's baseline)."
        },
    )

    def __post_init__(self):
        from hf_unlearn.loading import check_model_path

        if self.data_source not in DATA_SOURCES:
            raise ValueError(f"data_source={self.data_source!r} is unknown; choose one of {', '.join(DATA_SOURCES)}.")
        self.model_name_or_path = check_model_path(self.model_name_or_path, "model_name_or_path")
        if self.retain_model is not None:
            self.retain_model = check_model_path(self.retain_model, "retain_model")
        if self.eval_max_examples is not None and self.eval_max_examples < 1:
            raise UserInputError(f"eval_max_examples={self.eval_max_examples} must be >= 1 (unset: every example).")
        if self.report_answers < 0:
            raise UserInputError(f"report_answers={self.report_answers} must be >= 0 (0: no sample answers).")
        if self.eval_max_new_tokens < 1:
            raise UserInputError(
                f"eval_max_new_tokens={self.eval_max_new_tokens} must be >= 1: the TOFU evaluation generates that "
                "many tokens per answer (at 0 every ROUGE score is 0)."
            )
        if self.synthetic_num_authors < 2:
            raise UserInputError(
                f"synthetic_num_authors={self.synthetic_num_authors} must be >= 2 (one to forget, one to retain)."
            )
        if self.max_length < 8:
            raise ValueError(f"max_length={self.max_length} is too small for any QA example; use e.g. 512.")
        if self.lora_r < 0:
            raise ValueError(f"lora_r={self.lora_r} must be >= 0 (0 = full fine-tuning unless use_peft).")
        if self.data_source in ("muse", "wmdp", "jsonl"):
            if not self.forget_file:
                raise ValueError(f"data_source={self.data_source} needs forget_file: JSON Lines with a text per line.")
            for name in ("forget_file", "retain_file"):
                path = getattr(self, name)
                if path and not Path(path).is_file():
                    raise FileNotFoundError(f"{name} {path} not found.")
        if self.muse_corpus not in ("news", "books"):
            raise ValueError(f"muse_corpus={self.muse_corpus!r}: choose news or books.")
        if self.data_source == "tofu" and self.data_dir and not Path(self.data_dir).is_dir():
            raise FileNotFoundError(f"data_dir {self.data_dir} is not a folder; point it at a local TOFU copy.")
        if self.data_source in ("muse", "wmdp") and (self.evaluate or self.robustness) and not self.data_dir:
            raise ValueError(
                f"data_source={self.data_source} evaluates from local files here: set data_dir to the folder of "
                "its evaluation sets, or set evaluate=false and robustness=false."
            )
        if self.qa_template is not None and "{question}" not in self.qa_template:
            raise ValueError(f"qa_template {self.qa_template!r} has no '{{question}}' field; add one.")

    @property
    def peft_rank(self) -> int:
        """The LoRA rank to train with, 0 for full fine-tuning (TRL's default rank 16 under use_peft)."""
        return self.lora_r or (16 if self.use_peft else 0)


@dataclass
class Recipe:
    """A parsed recipe: what to run, the method's typed config, and the robustness checks."""

    script: ScriptArguments
    config: Any  # the method's config dataclass (a subclass of UnlearnConfig)
    robustness: Any  # RobustnessConfig
    path: str | None = None
    overrides: list[str] = field(default_factory=list)

    def command(self) -> str:
        """The command that reproduces this run (the recipe and the flags given; tokens never appear here)."""
        import shlex

        flags, skip = [], False
        for token in self.overrides:
            if skip:
                skip = False
                continue
            if token.split("=")[0] == "--hub_token":
                skip = "=" not in token
                continue
            flags.append(token)
        return shlex.join(["hf-unlearn", "run", *([self.path] if self.path else []), *flags])


def field_names(*classes) -> set[str]:
    return {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}


def yaml_mapping(text: str, source: str) -> dict:
    """The YAML mapping in `text`; a one-line ``ValueError`` naming `source` and the line when it is not one."""
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ValueError(f"{source}{line} is not valid YAML: {getattr(err, 'problem', err)}.") from None
    if not isinstance(values, dict):
        raise ValueError(f"{source} must be a YAML mapping of key: value lines.")
    return values


def load_recipe(path: str | Path) -> dict:
    """The recipe's keys and values; a one-line error when the file is missing or not a YAML mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {path} not found; recipes ship in the repository's recipes/ folder.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserInputError(
            f"Recipe {path} is not a text file (not UTF-8); give a YAML recipe such as recipes/demo.yaml."
        ) from None
    if "\x00" in text:
        raise UserInputError(f"Recipe {path} is a binary file; give a YAML recipe such as recipes/demo.yaml.")
    values = yaml_mapping(text, f"Recipe {path}")
    values.pop(LAUNCH_KEY, None)  # a self-launching recipe's first line, for Python's eyes only (hf_unlearn.launch)
    values.pop(SWEEP_KEY, None)
    return values


def _apply_deprecated(values: dict, source: str) -> dict:
    values = dict(values)
    for old, (new, value_map) in DEPRECATED_KEYS.items():
        if old in values:
            value = values.pop(old)
            value = value_map.get(value, value) if isinstance(value, str) else value
            warnings.warn(f"{source}: key {old!r} is deprecated; use {new}: {value}", FutureWarning, stacklevel=3)
            values.setdefault(new, value)
    return values


def _normalise_flags(argv: list[str]) -> list[str]:
    """`--key -1e-5` -> `--key=-1e-5`: argparse would read a negative number in scientific notation as a flag."""
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if token.startswith("--") and "=" not in token and nxt is not None and _is_negative_number(nxt):
            out.append(f"{token}={nxt}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def _is_negative_number(text: str) -> bool:
    return bool(re.fullmatch(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text))


def _flag_keys(argv: list[str]) -> dict[str, str]:
    """``--key value`` / ``--key=value`` pairs of `argv` (flags without a value map to "")."""
    keys = {}
    for i, token in enumerate(argv):
        if token.startswith("--"):
            key, _, value = token[2:].partition("=")
            if not value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
            keys[key] = value
    return keys


def _hint_parts(hint) -> tuple:
    """The alternatives of a type hint (``int | None`` -> ``(int, NoneType)``); a plain type is its own one."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _value_fits(value, hint) -> bool:
    """Whether a YAML value may stand for a field of type `hint`.

    A string fits every scalar field: the argument parser converts it with the field's type and refuses it in one
    line if it cannot (``learning_rate: 1e-3`` is a string to YAML). Lists and mappings fit only list and mapping
    fields, null only optional ones, and a list field never takes a scalar (a string would be read letter by letter).
    """
    for part in _hint_parts(hint):
        origin = typing.get_origin(part) or part
        if part is Any:
            return True
        if part is type(None):
            if value is None:
                return True
        elif origin is typing.Literal:
            if value in typing.get_args(part):
                return True
        elif origin in (list, tuple, set):
            element = (typing.get_args(part) or (Any,))[0]
            # A list is taken as it is (never converted), so its strings fit only text elements.
            if isinstance(value, list) and all(
                _takes_text(element) if isinstance(v, str) else _value_fits(v, element) for v in value
            ):
                return True
        elif origin is dict:
            if isinstance(value, dict):
                return True
        elif isinstance(value, str):
            if part in (str, int, float, bool) or isinstance(part, type) and issubclass(part, enum.Enum):
                return True
        elif part is bool:
            if isinstance(value, bool):
                return True
        elif part is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif part is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
        elif part is not str:
            return True  # a type YAML cannot write (a config object): left to the dataclass
    return False


def _takes_text(hint) -> bool:
    return any(p is str or p is Any or isinstance(p, type) and issubclass(p, enum.Enum) for p in _hint_parts(hint))


def _describe(hint) -> str:
    names = {str: "text", int: "an integer", float: "a number", bool: "true or false", type(None): "null"}
    described = []
    for part in _hint_parts(hint):
        origin = typing.get_origin(part) or part
        if origin in (list, tuple, set):
            element = (typing.get_args(part) or (Any,))[0]
            plural = {"text": "text values", "an integer": "integers", "a number": "numbers"}
            described.append(f"a list of {plural.get(_describe(element), 'values')}")
        elif origin is dict:
            described.append("a mapping")
        elif part in names:
            described.append(names[part])
        elif isinstance(part, type) and issubclass(part, enum.Enum):
            described.append("text")
    return " or ".join(dict.fromkeys(described)) or "a value of another type"


def _yaml_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else type(value).__name__


# List keys whose single string means something of its own: peft reads `target_modules: all-linear` (or a regex) as
# one string, not as a list of module names.
ONE_STRING_LIST_KEYS = {"lora_target_modules"}


def check_value_types(values: dict, classes, source: str) -> None:
    """Refuse, in one line naming the key, a recipe value of the wrong type (checked where recipe keys and flags
    merge: the argument parser converts flags, but takes a recipe's values as they are)."""
    hints = {}
    for cls in classes:
        hints.update(typing.get_type_hints(cls))
    for key, value in values.items():
        if key not in hints or _value_fits(value, hints[key]):
            continue
        if key in ONE_STRING_LIST_KEYS and isinstance(value, str):
            continue
        hint = hints[key]
        fix = f"set it to {_describe(hint)}"
        if key == "method":
            fix = "name one method (method: npo); run one recipe per method"
        elif isinstance(value, (str, int, float)) and any(
            (typing.get_origin(p) or p) in (list, tuple, set) for p in _hint_parts(hint)
        ):
            fix = f"write {key}: [{value}]"
        elif isinstance(value, float) and any(p is int for p in _hint_parts(hint)):
            fix = f"use a whole number such as {key}: {math.ceil(value)}"
        given = "null" if value is None else f"{_yaml_kind(value)} ({value!r})"
        raise UserInputError(f"{source}: {key} is {given} but takes {_describe(hint)}; {fix}.")


def _unknown_error(unknown: list[str], known: set[str], where: str, method: str) -> ValueError:
    hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, known, 1)) else k for k in unknown]
    return ValueError(
        f"{where}: unknown key(s) for method {method}: {', '.join(hints)}; "
        f"`hf-unlearn run --method {method} --help` lists every key."
    )


def recipe_parser(method: str):
    """The argument parser of a recipe for `method`: ScriptArguments + the method's config + RobustnessConfig."""
    from transformers import HfArgumentParser  # here, not at the top: a missing recipe is reported in a blink

    from hf_unlearn.attacks.robustness import RobustnessConfig
    from hf_unlearn.trainers import get_method, method_names

    parser = HfArgumentParser((ScriptArguments, get_method(method).config_class, RobustnessConfig))

    def one_line_error(message: str):
        # argparse would print the whole usage (150 lines) before the message; the command boundary prints one line.
        raise ValueError(f"{message}; `hf-unlearn run --method {method} --help` lists every key")

    parser.error = one_line_error
    for action in parser._actions:
        if action.dest == "method" and action.help:
            action.help = action.help.replace("{methods}", ", ".join(method_names()))
    return parser


def check_output_folders(script: ScriptArguments, config) -> None:
    """Where the run writes, checked before anything loads: `output_dir` is not a file, not the model's or the data's
    own folder, and (main process) holds no other files unless overwrite_output_dir or a resume; a synthetic
    `data_dir` holds nothing but this benchmark."""
    import os

    from hf_unlearn.io import check_output_dir

    protected = {
        "model_name_or_path": script.model_name_or_path,
        "retain_model": script.retain_model,
        "ref_model_path": getattr(config, "ref_model_path", None),
    }
    if script.data_source != "synthetic":
        protected["data_dir"] = script.data_dir
    check_output_dir(
        config.output_dir,
        overwrite=config.overwrite_output_dir,
        resume=bool(config.resume_from_checkpoint),
        protected=protected,
        check_contents=int(os.environ.get("RANK", "0")) == 0,  # other ranks may start after rank 0 has written
    )
    if script.data_source == "synthetic" and script.data_dir:
        from hf_unlearn.benchmarks.synthetic import check_synthetic_folder

        check_synthetic_folder(script.data_dir, num_authors=script.synthetic_num_authors, seed=config.seed)


def check_data_files(script: ScriptArguments) -> None:
    """Read the local training data once, before any weight loads: a malformed file fails in one line naming the
    file, the line and the field (TOFU splits in data_dir; the forget / retain corpora of the text sources)."""
    from hf_unlearn.data import read_texts

    if script.data_source == "tofu" and script.data_dir:
        from hf_unlearn.benchmarks.tofu_data import check_tofu_file, tofu_split_names

        for split in (script.forget_split, script.retain_split or tofu_split_names(script.forget_split)["retain"]):
            path = Path(script.data_dir) / f"{split}.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"data_dir {script.data_dir} has no {split}.json; point data_dir at a TOFU copy."
                )
            check_tofu_file(path, split)
    elif script.data_source in ("muse", "wmdp", "jsonl"):
        for name in ("forget_file", "retain_file"):
            if getattr(script, name):
                read_texts(getattr(script, name), script.text_field)


def check_in_run_evaluation(script: ScriptArguments, config) -> None:
    """`eval_strategy` evaluates with the data source's benchmark: it needs that benchmark's data, and
    `metric_for_best_model` must name (or combine) metrics that benchmark reports."""
    if config.eval_strategy == "no":
        if config.load_best_model_at_end:
            raise ValueError(
                "load_best_model_at_end needs evaluations to choose from: set eval_strategy steps or epoch."
            )
        return
    if script.data_source in ("muse", "wmdp") and not script.data_dir:
        raise ValueError(
            f"eval_strategy={config.eval_strategy.value} evaluates data_source={script.data_source} from local "
            "files: set data_dir to the folder of its evaluation sets."
        )
    if config.metric_for_best_model in ("loss", "eval_loss"):
        raise ValueError(
            "metric_for_best_model=loss (Trainer's default under load_best_model_at_end) is an eval_dataset's loss, "
            "which a recipe run does not have: set metric_for_best_model to a metric of the data source's benchmark, "
            "e.g. mean(forget_quality, model_utility) (docs/recipes.md lists them)."
        )
    if config.metric_for_best_model is not None:
        from hf_unlearn.benchmarks.selection import check_source_selection

        check_source_selection(config.metric_for_best_model, script.data_source, script.retain_model)


def parse_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """The typed `Recipe` from a recipe file and flags (flags win; `--method` also switches the config class).

    Every value is checked here, before any weight is loaded.
    """
    overrides = _normalise_flags(list(overrides or []))
    source = str(path) if path is not None else "command line"
    values = _apply_deprecated(load_recipe(path), source) if path is not None else {}
    from hf_unlearn.trainers import get_method  # heavy (torch, transformers): after the recipe file is read

    flags = _flag_keys(overrides)
    for old, (new, value_map) in DEPRECATED_KEYS.items():
        if old in flags:
            warnings.warn(f"--{old} is deprecated; use --{new}", FutureWarning, stacklevel=2)
            overrides = [
                t.replace(f"--{old}", f"--{new}", 1) if t.split("=")[0] == f"--{old}" else t for t in overrides
            ]
            overrides = [value_map.get(t, t) for t in overrides]
    method = flags.get("method") or values.get("method")
    if "method" not in flags and "method" in values:
        check_value_types({"method": values["method"]}, (ScriptArguments,), f"Recipe {source}")
    if not method:
        raise ValueError("No method given: put 'method: <name>' in the recipe or pass --method.")
    trainer_cls = get_method(method)
    method = trainer_cls._name
    parser = recipe_parser(method)
    from hf_unlearn.attacks.robustness import RobustnessConfig

    known = field_names(ScriptArguments, trainer_cls.config_class, RobustnessConfig)
    unknown = sorted(set(values) - known)
    if unknown:
        raise _unknown_error(unknown, known, f"Recipe {source}", method)
    unknown_flags = sorted(k.replace("-", "_") for k in flags if k.replace("-", "_") not in known)
    if unknown_flags:
        raise _unknown_error(unknown_flags, known, "Command line", method)
    check_value_types(values, (ScriptArguments, trainer_cls.config_class, RobustnessConfig), f"Recipe {source}")
    values["method"] = method
    parser.set_defaults(**values)
    script, config, robustness = parser.parse_args_into_dataclasses(args=overrides)
    if config.push_to_hub:  # fail now, not after hours of training
        from hf_unlearn.hub import check_push_possible

        check_push_possible(config.hub_model_id, config.hub_token)
    check_output_folders(script, config)
    check_data_files(script)
    check_in_run_evaluation(script, config)
    return Recipe(script, config, robustness, None if path is None else str(path), overrides)
