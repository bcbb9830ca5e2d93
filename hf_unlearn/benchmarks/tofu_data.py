"""TOFU splits from the Hub (`locuslab/TOFU`) or from a local folder of `<config>.json` JSON Lines files."""

from __future__ import annotations

import os
from pathlib import Path

from datasets import Dataset, load_dataset

from hf_unlearn.data import QADataset, QAFormat, TextBlockDataset, check_columns
from hf_unlearn.errors import UserInputError


HUB_ID = "locuslab/TOFU"
TOFU_DIR_VARIABLE = "HF_UNLEARN_TOFU_DIR"
PERCENTS = ("01", "05", "10")
QA = ("question", "answer")
PERTURBED = (*QA, "paraphrased_answer", "perturbed_answer")

TOFU_CONFIGS: dict[str, tuple[str, ...]] = {
    "full": QA,
    **{f"forget{p}": QA for p in PERCENTS},
    **{f"retain{100 - int(p)}": QA for p in PERCENTS},
    **{f"holdout{p}": QA for p in PERCENTS},
    **{f"forget{p}_perturbed": PERTURBED for p in PERCENTS},
    "retain_perturbed": PERTURBED,
    "real_authors": (*QA, "option1", "option2", "option3", "option4"),
    "world_facts": (*QA, "option1", "option2", "option3", "option4"),
    "real_authors_perturbed": (*QA, "perturbed_answer"),
    "world_facts_perturbed": (*QA, "perturbed_answer"),
}


def tofu_split_names(forget_split: str = "forget10") -> dict[str, str]:
    """The config names that go with a forget split: retain, holdout and the perturbed evaluation sets."""
    if forget_split not in {f"forget{p}" for p in PERCENTS}:
        raise ValueError(f"Unknown TOFU forget split {forget_split!r}; choose one of forget01, forget05, forget10.")
    pct = forget_split[-2:]
    return {
        "forget": forget_split,
        "retain": f"retain{100 - int(pct)}",
        "holdout": f"holdout{pct}",
        "forget_perturbed": f"{forget_split}_perturbed",
        "retain_perturbed": "retain_perturbed",
        "real_authors": "real_authors_perturbed",
        "world_facts": "world_facts_perturbed",
    }


def default_tofu_dir() -> Path | None:
    """The local TOFU copy `$HF_UNLEARN_TOFU_DIR` names (a folder of `<config>.json` JSON Lines files), or None when
    the variable is unset: TOFU then comes from the Hub (or from `--data_dir`). No other folder is looked in."""
    env = os.environ.get(TOFU_DIR_VARIABLE)
    if not env:
        return None
    folder = Path(env).expanduser()
    if not (folder / "full.json").is_file():
        raise UserInputError(
            f"{TOFU_DIR_VARIABLE}={env}: no full.json there; point it at a folder of TOFU <config>.json files "
            "(JSON Lines) or unset it to read TOFU from the Hub."
        )
    return folder


def check_tofu_file(path: str | Path, config_name: str) -> None:
    """One line naming the file, the line and the field when a local TOFU file is malformed (see read_json_rows)."""
    from hf_unlearn.data import read_json_rows

    read_json_rows(path, TOFU_CONFIGS[config_name], what=f"TOFU {config_name} rows")


def load_tofu(config_name: str, data_dir: str | Path | None = None) -> Dataset:
    """Load one TOFU config by name, from `data_dir` (JSON Lines named `<config>.json`) or else from the Hub."""
    if config_name not in TOFU_CONFIGS:
        raise ValueError(f"Unknown TOFU split {config_name!r}; available: {', '.join(TOFU_CONFIGS)}.")
    if data_dir is None:
        rows = load_dataset(HUB_ID, config_name, split="train")
        source = f"{HUB_ID}:{config_name}"
    else:
        path = Path(data_dir) / f"{config_name}.json"
        if not path.is_file():
            present = sorted(p.stem for p in Path(data_dir).glob("*.json")) if Path(data_dir).is_dir() else []
            raise FileNotFoundError(f"{path} not found; splits present in {data_dir}: {', '.join(present) or 'none'}.")
        check_tofu_file(path, config_name)  # names the line and the field, which datasets' own errors do not
        try:
            rows = load_dataset("json", data_files=str(path), split="train")
        except Exception as err:  # datasets raises several types for malformed JSON; keep the file name in view
            raise ValueError(f"{path}: unreadable as JSON Lines ({type(err).__name__}: {err}).") from err
        source = str(path)
    check_columns(rows, TOFU_CONFIGS[config_name], source)
    if config_name.startswith("forget") and len(rows) == 0:
        raise ValueError(f"{source}: the forget split is empty.")
    return rows


def load_split(
    data: str | None, split: str, tokenizer, max_examples: int | None = None, qa_format: QAFormat | None = None
):
    """Tokenised examples of one split: a TOFU config from a folder, or the rows of one JSON Lines file."""
    from hf_unlearn.benchmarks.base import check_counts

    check_counts(max_examples=max_examples)
    if data is not None and Path(data).is_file():
        rows = load_dataset("json", data_files=data, split="train")
    else:
        folder = data or default_tofu_dir()
        if folder is None:
            raise FileNotFoundError("No --data_dir given and no local TOFU copy found; pass --data_dir DIR_OR_FILE.")
        rows = load_tofu(split, folder)
    if max_examples is not None:
        rows = rows.select(range(min(max_examples, len(rows))))
    if "question" in rows.column_names:
        return QADataset(rows, tokenizer, qa_format=qa_format, source=f"{data}:{split}")
    if "text" in rows.column_names:
        return TextBlockDataset(rows["text"], tokenizer, block_size=512, source=f"{data}:{split}")
    raise ValueError(f"{data}: rows need question/answer or text columns, found {rows.column_names}.")
