"""`Paper`: the publication a method comes from, as model cards and reports cite it.

A leaf module (it imports nothing of hf_unlearn), so the report reads a trainer's paper without importing trainers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paper:
    """The paper a method comes from, as the model card cites it."""

    title: str
    authors: str  # BibTeX order: "Last, First and Last, First"
    year: int
    arxiv: str  # arXiv id, e.g. "2404.05868"
    key: str  # BibTeX key

    @property
    def url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv}"

    def short(self) -> str:
        """ "Zhang et al. 2024, Negative Preference Optimization: ... (arXiv:2404.05868)"."""
        first = self.authors.split(" and ")[0].split(",")[0]
        return f"{first} et al. {self.year}, {self.title} (arXiv:{self.arxiv})"

    def bibtex(self) -> str:
        return (
            f"@article{{{self.key},\n  title={{{self.title}}},\n  author={{{self.authors}}},\n"
            f"  journal={{arXiv preprint arXiv:{self.arxiv}}},\n  year={{{self.year}}}\n}}"
        )
