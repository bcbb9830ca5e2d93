"""A TOFU subset that a small model can be fine-tuned on: one forget split's authors plus the first N retain authors.

TOFU's protocol fine-tunes on all 200 authors. On a CPU that is days of work for a 135M model; a subset keeps the
protocol (target on `full`, retain model on `full` minus the forget authors, the same evaluation splits) at a size
that trains in minutes. The subset is written as an ordinary local TOFU folder, so `finetune`, `run`, `sweep`,
`eval` and `attack` read it through `--data_dir` without knowing it is one:

- `full` = the first N authors + the forget split's authors (TOFU orders `full` by author, 20 QA each; the forget
  splits are its last 2/10/20 authors);
- `retainNN` (the forget split's complement) = the first N authors;
- `retain_perturbed` (TOFU: `full[:400]`, the first 20 authors) = its rows of those first N authors, so that model
  utility is measured on authors the target was fine-tuned on;
- the forget split, its perturbed set, the holdout set, real authors and world facts: copied unchanged.

Other forget splits are left out: they would name authors the subset does not hold.
"""

from __future__ import annotations

from pathlib import Path

from hf_unlearn.benchmarks.tofu_data import tofu_split_names


QA_PER_AUTHOR = 20
PERTURBED_AUTHORS = 20  # retain_perturbed holds TOFU's first 20 authors
UNCHANGED = ("forget", "holdout", "forget_perturbed", "real_authors", "world_facts")


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def tofu_subset_files(source: str | Path, forget_split: str, retain_authors: int) -> dict[str, str]:
    """The subset's files, name -> JSON Lines text, read from a local TOFU folder `source`."""
    from hf_unlearn.benchmarks.tofu_data import check_tofu_file

    splits = tofu_split_names(forget_split)
    source = Path(source)
    if not 1 <= retain_authors <= PERTURBED_AUTHORS:
        raise ValueError(
            f"retain_authors={retain_authors}: choose 1..{PERTURBED_AUTHORS} (model utility is scored on "
            f"retain_perturbed, which holds TOFU's first {PERTURBED_AUTHORS} authors)."
        )
    names = {"full", splits["retain_perturbed"], *(splits[key] for key in UNCHANGED)}
    names |= {"real_authors", "world_facts"}
    for name in sorted(names):
        path = source / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; point --data_dir at a local TOFU folder (see docs/models.md).")
        check_tofu_file(path, name)
    full, forget = _lines(source / "full.json"), _lines(source / f"{forget_split}.json")
    if full[len(full) - len(forget) :] != forget:
        raise ValueError(f"{source}: {forget_split} is not the tail of full, as in TOFU; is this a TOFU folder?")
    keep = retain_authors * QA_PER_AUTHOR
    if keep > len(full) - len(forget):
        raise ValueError(f"retain_authors={retain_authors}: {source} holds fewer retain authors than that.")
    retain = full[:keep]
    files = {
        "full": retain + forget,
        splits["retain"]: retain,
        "retain_perturbed": _lines(source / "retain_perturbed.json")[:keep],
    }
    for name in sorted(names - set(files)):
        files[name] = _lines(source / f"{name}.json")
    return {f"{name}.json": "\n".join(rows) + "\n" for name, rows in files.items()}


def write_tofu_subset(
    source: str | Path, out_dir: str | Path, forget_split: str = "forget01", retain_authors: int = 8,
    overwrite: bool = False,
) -> Path:  # fmt: skip
    """Write the subset into a new or empty folder (or over one with `overwrite`); each file atomically."""
    from hf_unlearn.io import atomic_write_text, check_output_dir

    out = check_output_dir(
        out_dir, flag="output_dir", overwrite=overwrite, overwrite_flag="--overwrite", protected={"source": source}
    )
    files = tofu_subset_files(source, forget_split, retain_authors)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        atomic_write_text(out / name, text)
    atomic_write_text(
        out / "SOURCE.txt",
        f"A subset of the TOFU folder {Path(source).resolve()} written by `hf-unlearn subset`: {forget_split}'s "
        f"authors and TOFU's first {retain_authors} authors ({len(files)} files).\n",
    )
    return out
