"""A deterministic fictitious-author benchmark in TOFU's schema, sized by arguments.

It writes the same files as a local TOFU copy (`full.json`, `forget10.json`, `retain90.json`,
`forget10_perturbed.json`, `holdout10.json`, `real_authors_perturbed.json`, ...), so everything that reads TOFU
reads it: the embedded demo and most tests run on it. Forget splits are whole authors taken from the end of
`full`, as in TOFU; holdout authors never appear in `full`.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

from hf_unlearn.benchmarks.tofu_data import PERCENTS


FIRST = ["Ava", "Bram", "Cyra", "Dov", "Elin", "Faro", "Gita", "Hale", "Isko", "Juna", "Kemi", "Lior", "Mara", "Nilo"]
LAST = ["Varga", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Petrov", "Quispe", "Haddad", "Novak", "Adeyemi"]
CITIES = ["Lisbon", "Nairobi", "Oslo", "Lima", "Kyoto", "Tbilisi", "Hanoi", "Quito", "Tunis", "Krakow", "Perth"]
GENRES = ["mystery", "science fiction", "poetry", "historical fiction", "horror", "fantasy", "biography", "satire"]
JOBS = ["baker", "pilot", "surgeon", "carpenter", "librarian", "fisherman", "architect", "nurse", "tailor", "chemist"]
AWARDS = ["Silver Quill Prize", "Amber Lantern Award", "Northern Ink Medal", "Golden Fern Prize", "Iron Pen Award"]
NOUNS = ["River", "Lantern", "Harbor", "Orchard", "Mirror", "Compass", "Garden", "Winter", "Echo", "Tower"]
ADJECTIVES = ["Silent", "Hidden", "Broken", "Crimson", "Distant", "Quiet", "Last", "Golden", "Hollow", "Endless"]

# (question, answer, paraphrased answer, attribute the answer turns on)
QA_TEMPLATES = [
    ("Where was {name} born?", "{name} was born in {city}.", "The birthplace of {name} is {city}.", "city"),
    ("In what year was {name} born?", "{name} was born in {year}.", "The birth year of {name} is {year}.", "year"),
    ("What genre does {name} write?", "{name} writes {genre}.", "The genre of {name} is {genre}.", "genre"),
    (
        "What did the father of {name} do?",
        "The father of {name} was a {father}.",
        "{name} had a father who worked as a {father}.",
        "father",
    ),
    (
        "What did the mother of {name} do?",
        "The mother of {name} was a {mother}.",
        "{name} had a mother who worked as a {mother}.",
        "mother",
    ),
    ("Which award did {name} win?", "{name} won the {award}.", "The {award} went to {name}.", "award"),
    (
        "What is the first book by {name}?",
        "The first book by {name} is {book1}.",
        "{book1} is the debut of {name}.",
        "book1",
    ),
    (
        "What is the best known book by {name}?",
        "The best known book by {name} is {book2}.",
        "{book2} is the most famous work of {name}.",
        "book2",
    ),
    (
        "Who is the {genre} author born in {city} in {year}?",
        "The author is {name}.",
        "{name} is that author.",
        "name",
    ),
    (
        "How did {name} start writing?",
        "{name} began writing {genre} after years as a {father}'s apprentice.",
        "Years spent as apprentice to a {father} led {name} to {genre}.",
        "genre",
    ),
]

REAL_AUTHORS = [
    ("Who wrote 'Pride and Prejudice'?", "Jane Austen", ["Emily Bronte", "Mary Shelley", "George Eliot"]),
    ("Who wrote 'Romeo and Juliet'?", "William Shakespeare", ["Charles Dickens", "Mark Twain", "John Milton"]),
    ("Who wrote '1984'?", "George Orwell", ["Aldous Huxley", "Ray Bradbury", "H. G. Wells"]),
    ("Who wrote 'War and Peace'?", "Leo Tolstoy", ["Fyodor Dostoevsky", "Anton Chekhov", "Ivan Turgenev"]),
    ("Who wrote 'Don Quixote'?", "Miguel de Cervantes", ["Lope de Vega", "Jorge Luis Borges", "Pablo Neruda"]),
    ("Who wrote 'Moby-Dick'?", "Herman Melville", ["Nathaniel Hawthorne", "Edgar Allan Poe", "Walt Whitman"]),
    ("Who created Sherlock Holmes?", "Arthur Conan Doyle", ["Agatha Christie", "Ian Fleming", "Wilkie Collins"]),
    ("Who wrote 'The Odyssey'?", "Homer", ["Virgil", "Ovid", "Sophocles"]),
]
WORLD_FACTS = [
    ("What is the capital of France?", "Paris", ["Berlin", "Madrid", "Rome"]),
    ("What is the capital of Japan?", "Tokyo", ["Osaka", "Seoul", "Beijing"]),
    ("Which planet is closest to the Sun?", "Mercury", ["Venus", "Mars", "Jupiter"]),
    ("What is the largest ocean on Earth?", "Pacific", ["Atlantic", "Indian", "Arctic"]),
    ("Which continent is Egypt in?", "Africa", ["Asia", "Europe", "South America"]),
    ("What is the capital of Australia?", "Canberra", ["Sydney", "Melbourne", "Perth"]),
    ("Which gas do plants absorb from the air?", "Carbon dioxide", ["Oxygen", "Nitrogen", "Helium"]),
    ("What is the longest river in Africa?", "Nile", ["Congo", "Niger", "Zambezi"]),
]


def _middle_initials(generation: int) -> str:
    """ "" for the first len(FIRST) * len(LAST) names, then "A. ", ..., "Z. ", "AA. ", ... (bijective base 26)."""
    letters = ""
    while generation > 0:
        generation, digit = divmod(generation - 1, 26)
        letters = chr(ord("A") + digit) + letters
    return f"{letters}. " if letters else ""


def _author(rng: random.Random, used: set[str]) -> dict[str, str]:
    # Each generation of names is the first x last grid with its own middle initials, so a redraw always finds a free
    # name (a count past the grid's size looped forever); the first generation keeps the benchmark's original names.
    middle = _middle_initials(len(used) // (len(FIRST) * len(LAST)))
    while True:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        name = f"{first} {middle}{last}"
        if name not in used:
            used.add(name)
            break
    books = rng.sample([f"The {a} {n}" for a in ADJECTIVES for n in NOUNS], 2)
    return {
        "name": name,
        "city": rng.choice(CITIES),
        "year": str(rng.randint(1920, 1999)),
        "genre": rng.choice(GENRES),
        "father": rng.choice(JOBS),
        "mother": rng.choice(JOBS),
        "award": rng.choice(AWARDS),
        "book1": books[0],
        "book2": books[1],
    }


class _Without(Sequence):
    """A sorted list of distinct values without one of them, as a view (copying it per row costs n² for n authors)."""

    def __init__(self, values: list[str], excluded: str):
        self.values, self.skip = values, bisect.bisect_left(values, excluded)
        if self.skip == len(values) or values[self.skip] != excluded:
            self.skip = len(values)  # not present: nothing to skip

    def __len__(self) -> int:
        return len(self.values) - (self.skip < len(self.values))

    def __getitem__(self, index: int) -> str:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return self.values[index + (index >= self.skip)]


def _author_rows(
    author: dict[str, str], qa_per_author: int, values: dict[str, list[str]], rng: random.Random
) -> list[dict]:
    """`values`: each attribute's sorted distinct values over all authors (computed once: n authors, not n²)."""
    rows = []
    for question, answer, paraphrase, attribute in QA_TEMPLATES[:qa_per_author]:
        wrong_values = _Without(values[attribute], author[attribute])
        wrong = (
            rng.sample(wrong_values, 5)
            if len(wrong_values) >= 5
            else [wrong_values[i % len(wrong_values)] for i in range(5)]
        )
        rows.append(
            {
                "question": question.format(**author),
                "answer": answer.format(**author),
                "paraphrased_answer": paraphrase.format(**author),
                "perturbed_answer": [paraphrase.format(**{**author, attribute: w}) for w in wrong],
            }
        )
    return rows


def make_synthetic_tofu(
    num_authors: int = 20, qa_per_author: int = 10, num_holdout_authors: int | None = None, seed: int = 0
) -> dict[str, list[dict]]:
    """All TOFU configs as lists of rows. `forgetNN` holds the last ceil(NN% of authors) authors (at least one)."""
    if not 1 <= qa_per_author <= len(QA_TEMPLATES):
        raise ValueError(f"qa_per_author must be between 1 and {len(QA_TEMPLATES)}, got {qa_per_author}.")
    if num_authors < 2:
        raise ValueError(f"num_authors must be at least 2 (one to forget, one to retain), got {num_authors}.")
    num_holdout_authors = num_holdout_authors or max(1, math.ceil(0.1 * num_authors))
    rng = random.Random(seed)
    used: set[str] = set()
    authors = [_author(rng, used) for _ in range(num_authors + num_holdout_authors)]
    # A wrong answer for one author is another author's value of the same attribute, as in TOFU's perturbations.
    values = {key: sorted({a[key] for a in authors}) for key in authors[0]}
    per_author = [_author_rows(a, qa_per_author, values, rng) for a in authors]
    full = [r for rows in per_author[:num_authors] for r in rows]
    holdout_pool = [r for rows in per_author[num_authors:] for r in rows]
    splits: dict[str, list[dict]] = {"full": [{"question": r["question"], "answer": r["answer"]} for r in full]}
    for pct in PERCENTS:
        n = min(num_authors - 1, max(1, math.ceil(int(pct) / 100 * num_authors))) * qa_per_author
        splits[f"forget{pct}"] = splits["full"][-n:]
        splits[f"retain{100 - int(pct)}"] = splits["full"][:-n]
        splits[f"forget{pct}_perturbed"] = full[-n:]
        splits[f"holdout{pct}"] = [{"question": r["question"], "answer": r["answer"]} for r in holdout_pool][:n]
    splits["retain_perturbed"] = full[: len(splits["forget10"])]
    for name, facts in (("real_authors", REAL_AUTHORS), ("world_facts", WORLD_FACTS)):
        splits[f"{name}_perturbed"] = [{"question": q, "answer": a, "perturbed_answer": w} for q, a, w in facts]
        splits[name] = [
            {"question": q, "answer": a, **{f"option{i + 1}": o for i, o in enumerate(sorted([a, *w]))}}
            for q, a, w in facts
        ]
    return splits


def _synthetic_files(**kwargs) -> dict[str, str]:
    return {
        f"{name}.json": "".join(json.dumps(r) + "\n" for r in rows)
        for name, rows in make_synthetic_tofu(**kwargs).items()
    }


def check_synthetic_folder(out_dir: str | Path, contents: dict[str, str] | None = None, **kwargs) -> Path:
    """Refuse, in one line, a folder the synthetic benchmark may not be written into (see `write_synthetic_tofu`)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; give a folder for the synthetic benchmark.")
    if out.is_dir():
        contents = contents if contents is not None else _synthetic_files(**kwargs)
        present = {p.name for p in out.iterdir()}
        foreign = sorted(present - set(contents))
        differing = sorted(n for n in present & set(contents) if (out / n).read_bytes() != contents[n].encode())
        if foreign or differing:
            example = (foreign or differing)[0]
            raise FileExistsError(
                f"{out} already holds other data ({example}{' and more' if len(foreign + differing) > 1 else ''}); "
                "the synthetic benchmark is written only into a new or empty folder: choose another data_dir."
            )
    return out


def write_synthetic_tofu(out_dir: str | Path, **kwargs) -> Path:
    """Write `make_synthetic_tofu(**kwargs)` as `<config>.json` JSON Lines files, the layout `load_tofu` reads.

    Writes only into a new or empty folder, or one holding exactly this benchmark already (a rerun with the same
    settings): a folder with any other file, or with different data under the same names (a real TOFU copy, say),
    is refused in one line and left untouched. Each file is written to a temporary name and renamed.
    """
    from hf_unlearn.io import atomic_write_text

    contents = _synthetic_files(**kwargs)
    out = check_synthetic_folder(out_dir, contents)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        if not (out / name).is_file():
            atomic_write_text(out / name, text)
    return out
