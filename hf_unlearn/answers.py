"""A few questions of the forget and retain sets, answered by the model before and after unlearning (and relearning).

Users judge unlearning by reading answers: a forget probability of 0.2 says less than the model's reply to "Who is
Basil Mahfouz Al-Kuwaiti?". The run's report and model card show the first `per_set` questions of each QA set with
the greedy answer of each model, generated from the prompt exactly as training and evaluation format it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


ANSWER_SETS = ("forget", "retain")
QUESTIONS_PER_SET = 3
ANSWER_MAX_NEW_TOKENS = 64


@dataclass
class SampleAnswers:
    """The sample questions of a run and, per model label (``before``, ``after``, ``relearned``), their answers."""

    questions: list[dict[str, str]] = field(default_factory=list)  # {"set", "question", "answer"}
    answers: dict[str, list[str]] = field(default_factory=dict)
    max_new_tokens: int = ANSWER_MAX_NEW_TOKENS

    def generate(self, model, tokenizer, qa_format) -> list[str]:
        """Greedy answers of `model` to every sample question."""
        return generate_answers(model, tokenizer, self.questions, qa_format, self.max_new_tokens)

    def to_records(self) -> list[dict[str, Any]]:
        """One record per question: set, question, true answer, and each label's generated answer."""
        return [
            {**question, "generations": {label: texts[i] for label, texts in self.answers.items() if texts}}
            for i, question in enumerate(self.questions)
        ]


def sample_questions(source, per_set: int = QUESTIONS_PER_SET) -> list[dict[str, str]]:
    """The first `per_set` rows of the source's forget and retain QA splits; none for text corpora (MUSE, WMDP)."""
    from hf_unlearn.benchmarks.sources import TofuSource

    if not isinstance(source, TofuSource):
        return []
    settings = source.settings
    return tofu_questions(settings.data_dir, settings.forget_split, source.retain_split, per_set)


def tofu_questions(data_dir, forget_split: str, retain_split: str, per_set: int = QUESTIONS_PER_SET) -> list[dict]:
    """The first `per_set` rows of a TOFU forget split and of its retain split."""
    from hf_unlearn.benchmarks.tofu_data import load_tofu

    questions = []
    splits = {"forget": forget_split, "retain": retain_split}
    for set_name in ANSWER_SETS if per_set > 0 else ():
        rows = load_tofu(splits[set_name], data_dir)
        for row in rows.select(range(min(per_set, len(rows)))):
            questions.append({"set": set_name, "question": row["question"], "answer": row["answer"]})
    return questions


def generate_answers(model, tokenizer, questions, qa_format, max_new_tokens: int = ANSWER_MAX_NEW_TOKENS) -> list[str]:
    """Greedy answers to `questions` (records with a ``question``), prompted in `qa_format`."""
    from hf_unlearn.benchmarks.engine import generate_greedy

    prompts = [qa_format.prompt_ids(tokenizer, q["question"]) for q in questions]
    texts = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size=len(prompts), show_progress=False)
    return [text.strip() for text in texts]
