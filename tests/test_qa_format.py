"""The QA format: prompt + answer tokenised together, labels after the prompt, the same at training and evaluation."""

import argparse
import importlib
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from hf_unlearn.benchmarks.synthetic import make_synthetic_tofu, write_synthetic_tofu
from hf_unlearn.cli.common import add_qa_format
from hf_unlearn.data import (
    IGNORE_INDEX,
    DataCollatorForUnlearning,
    QADataset,
    QAFormat,
    tokenize_qa,
    tokenize_qa_rows,
)
from hf_unlearn.tiny import ASSISTANT, USER, build_tiny_model, train_tokenizer


TOFU_TEMPLATE = "Question: {question}\nAnswer: "


def whitespace_attaching_tokenizer(texts) -> PreTrainedTokenizerFast:
    """A byte-level BPE whose pre-tokenizer keeps each word's trailing whitespace: "Answer: " is one piece."""
    return train_tokenizer(texts, vocab_size=600, chat_template=False, whitespace_attaching=True)


def answer_probabilities(model, batch) -> list[float]:
    """exp(-mean NLL of the labelled tokens) per row, by hand from one forward of a training batch."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    log_probs = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    labels = batch["labels"][:, 1:]
    probs = []
    for row in range(labels.shape[0]):
        positions = (labels[row] != IGNORE_INDEX).nonzero()[:, 0]
        token_log_probs = log_probs[row, positions, labels[row, positions]]
        probs.append(math.exp(token_log_probs.mean().item()))
    return probs


def test_eval_reproduces_training_probability_on_a_whitespace_attaching_tokenizer(tmp_path, cli):
    from hf_unlearn.report import UnlearnReport

    def summary_of(folder):
        evaluated = UnlearnReport.load(folder).evaluations["evaluated_model"]
        return {"metrics": evaluated.values, "config": evaluated.settings}

    splits = make_synthetic_tofu(num_authors=10, qa_per_author=4, seed=0)
    data_dir = write_synthetic_tofu(tmp_path / "tofu", num_authors=10, qa_per_author=4, seed=0)
    texts = [TOFU_TEMPLATE.format(question=r["question"]) + r["answer"] for r in splits["full"]]
    tokenizer = whitespace_attaching_tokenizer(texts)
    assert tokenizer.tokenize("Answer: ") == ["Answer:Ġ"]  # the space belongs to the prompt's last token

    fmt = QAFormat(template=TOFU_TEMPLATE)
    forget = QADataset(splits["forget10"], tokenizer, max_length=128, qa_format=fmt)
    batch = DataCollatorForUnlearning(tokenizer)([forget[i] for i in range(len(forget))])
    model = build_tiny_model(tokenizer, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    model.train()
    for _ in range(80):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    training_probs = answer_probabilities(model, batch)
    assert min(training_probs) > 0.9

    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    flags = ["eval", "--model", str(model_dir), "--benchmark", "tofu", "--data_dir", str(data_dir)]
    flags += ["--max_examples", "4", "--max_new_tokens", "40", "--no_progress"]
    code, _, err = cli(*flags, "--qa_template", r"Question: {question}\nAnswer: ")  # typed \n, as in a shell
    assert code == 0, err
    summary = summary_of(model_dir / "eval")
    assert summary["config"]["qa_format"]["template"] == TOFU_TEMPLATE
    assert summary["metrics"]["forget_prob"] == pytest.approx(sum(training_probs) / len(training_probs), rel=1e-4)
    assert summary["metrics"]["forget_rouge_l_recall"] > 0.95
    assert set(summary["config"]["timings"]["sets_s"]["forget"]) >= {"scoring", "truth_ratio"}
    assert {"generation", "mia"} <= set(summary["config"]["timings"]["stages_s"])  # one generation for every set
    cpu = summary["config"]["timings"]["stages_cpu_s"]
    assert cpu["scoring"] > 0 and cpu["generation"] > 0 and summary["config"]["timings"]["total_cpu_s"] > 0
    # The default template is TOFU's for a tokenizer without a chat template; eval says so on stderr.
    code, _, err = cli(*flags, "--output_dir", tmp_path / "default")
    assert code == 0 and "no chat template" in err
    default = summary_of(tmp_path / "default")
    assert default["metrics"]["forget_prob"] == summary["metrics"]["forget_prob"]

    # The old separate tokenisation ("Answer:" + " answer") is a sequence this model never saw.
    legacy = QAFormat(template="Question: {question}\nAnswer:", separate_answer=True)
    legacy_batch = DataCollatorForUnlearning(tokenizer)(
        [tokenize_qa(tokenizer, r["question"], r["answer"], qa_format=legacy) for r in splits["forget10"]]
    )
    assert legacy_batch["input_ids"].tolist() != batch["input_ids"].tolist()
    legacy_probs = answer_probabilities(model, legacy_batch)
    assert sum(legacy_probs) / len(legacy_probs) < sum(training_probs) / len(training_probs) - 0.2


def test_joint_and_separate_tokenisation_agree_on_a_gpt2_style_tokenizer():
    rows = make_synthetic_tofu(num_authors=10, qa_per_author=4, seed=0)["full"]
    tokenizer = train_tokenizer([r["question"] + " " + r["answer"] for r in rows], vocab_size=400, chat_template=False)
    pairs = [(r["question"], r["answer"]) for r in rows]
    # GPT-2-style pre-tokenisation puts the space before a word: "Answer: " ends in a lone space token that
    # merges into the answer's first word in the full text. The labels start where the two first differ.
    with pytest.warns(UserWarning, match=rf"in {len(pairs)} of {len(pairs)} examples"):
        joint = tokenize_qa_rows(tokenizer, pairs, qa_format=QAFormat())
    separate = tokenize_qa_rows(tokenizer, pairs, qa_format=QAFormat(separate_answer=True))
    assert joint == separate
    first = joint[0]
    start = next(i for i, label in enumerate(first["labels"]) if label != IGNORE_INDEX)
    assert tokenizer.decode(first["input_ids"][:start]).endswith("\nAnswer:")
    assert tokenizer.decode(first["input_ids"][start:]) == " " + rows[0]["answer"] + "</s>"


def test_chat_template_path_pinned_on_a_hand_built_template():
    rows = make_synthetic_tofu(num_authors=10, qa_per_author=4, seed=0)["full"]
    tokenizer = train_tokenizer([r["question"] + " " + r["answer"] for r in rows], vocab_size=400)
    tokenizer.chat_template = (
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ m['content'] }}\n"
        "{% elif m['role'] == 'user' %}" + USER + "{{ m['content'] }}"
        "{% else %}" + ASSISTANT + "{{ m['content'] }}</s>{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
    )
    user, assistant, eos = tokenizer.convert_tokens_to_ids([USER, ASSISTANT, "</s>"])

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    question, answer = "Where was Ava Varga born?", "Ava Varga was born in Oslo."
    example = tokenize_qa(tokenizer, question, answer, qa_format=QAFormat(system_prompt="Be brief."))
    prompt = ids("Be brief.\n") + [user] + ids(question) + [assistant]
    assert example["input_ids"] == prompt + ids(answer) + [eos]  # the template's own eos, not a second one
    assert example["labels"] == [IGNORE_INDEX] * len(prompt) + ids(answer) + [eos]
    assert QAFormat(system_prompt="Be brief.").prompt_ids(tokenizer, question) == prompt
    plain = tokenize_qa(tokenizer, question, answer, qa_format=QAFormat(use_chat_template=False))
    assert user not in plain["input_ids"] and QAFormat(use_chat_template=False).describe(tokenizer)["kind"] == "plain"
    assert QAFormat().describe(tokenizer) == {
        "kind": "chat_template",
        "template": None,
        "template_is_default": False,
        "system_prompt": None,
        "separate_answer": False,
    }


def test_text_after_the_turns_eos_is_not_labelled():
    """ChatML-style templates write a newline after the turn's eos: the answer and that one eos are the labels."""
    rows = make_synthetic_tofu(num_authors=10, qa_per_author=4, seed=0)["full"]
    tokenizer = train_tokenizer([r["question"] + " " + r["answer"] for r in rows], vocab_size=400)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ '" + USER + "' if m['role'] == 'user' else '" + ASSISTANT + "' }}"
        "{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
    )
    eos = tokenizer.eos_token_id
    question, answer = "Where was Ava Varga born?", "Ava Varga was born in Oslo."
    example = tokenize_qa(tokenizer, question, answer)
    prompt = QAFormat().prompt_ids(tokenizer, question)
    answer_ids = example["input_ids"][len(prompt) : -1]
    assert tokenizer.decode(answer_ids).strip() == answer
    assert example["input_ids"][-1] == eos and example["input_ids"].count(eos) == 2  # the user's turn and the answer's
    assert example["labels"] == [IGNORE_INDEX] * len(prompt) + answer_ids + [eos]


@pytest.mark.parametrize("module", ["hf_unlearn.cli.eval", "hf_unlearn.cli.attack", "hf_unlearn.cli.lmc"], ids=str)
def test_every_command_takes_the_same_qa_format_flags(module):
    parser = argparse.ArgumentParser()
    importlib.import_module(module).add_arguments(parser)
    required = {
        "hf_unlearn.cli.eval": ["--model", "m", "--benchmark", "tofu"],
        "hf_unlearn.cli.attack": ["--model", "m"],
    }
    argv = required.get(module, ["a", "b"])
    args = parser.parse_args(
        [*argv, "--qa_template", r"Q: {question}\nA: ", "--system_prompt", "S", "--no_chat_template"]
    )
    assert QAFormat.from_args(args) == QAFormat(
        template="Q: {question}\nA: ", system_prompt="S", use_chat_template=False
    )


def test_recipe_keys_and_bad_template():
    from hf_unlearn.recipes import ScriptArguments

    fields = ScriptArguments.__dataclass_fields__
    assert {"qa_template", "system_prompt", "no_chat_template"} <= set(fields)
    args = SimpleNamespace(qa_template=r"Q: {question}\nA: ", no_chat_template=True)
    assert QAFormat.from_args(args) == QAFormat(template="Q: {question}\nA: ", use_chat_template=False)
    with pytest.raises(ValueError, match=r"qa_template 'Q: \{q\}' has no '\{question\}' field"):
        QAFormat(template="Q: {q}")
    parser = argparse.ArgumentParser()
    add_qa_format(parser)
    assert QAFormat.from_args(parser.parse_args([])) == QAFormat()


@pytest.mark.parametrize("style", ["whitespace_attaching", "gpt2"])
def test_idk_dpo_refusal_is_tokenised_like_a_joint_qa_example(style, tmp_path):
    from hf_unlearn.data import ForgetRetainDataset
    from hf_unlearn.trainers.idk_dpo import IdkDPOConfig, IdkDPOTrainer

    rows = make_synthetic_tofu(num_authors=10, qa_per_author=4, seed=0)["forget10"]
    texts = [TOFU_TEMPLATE.format(question=r["question"]) + r["answer"] for r in rows] + ["I don't know."]
    if style == "gpt2":
        tokenizer = train_tokenizer(texts, vocab_size=400, chat_template=False)
    else:
        tokenizer = whitespace_attaching_tokenizer(texts)
    fmt = QAFormat(template=TOFU_TEMPLATE)
    forget = QADataset(rows, tokenizer, qa_format=fmt)
    args = IdkDPOConfig(
        output_dir=str(tmp_path), report_to="none", idk_answers=["I don't know."], alpha=0.0, use_cpu=True
    )
    build_tiny_model(tokenizer).save_pretrained(tmp_path / "model")
    trainer = IdkDPOTrainer(
        str(tmp_path / "model"), args, train_dataset=ForgetRetainDataset(forget), processing_class=tokenizer
    )
    batch = DataCollatorForUnlearning(tokenizer)([{"forget": {**forget[i], "index": i}} for i in range(len(forget))])
    preferred = trainer.preferred_batch(batch["forget"])
    for i, row in enumerate(rows):
        expected = tokenize_qa(tokenizer, row["question"], "I don't know.", qa_format=fmt)
        n = len(expected["input_ids"])
        assert preferred["input_ids"][i, :n].tolist() == expected["input_ids"]
        labelled = [t for t in preferred["labels"][i].tolist() if t != IGNORE_INDEX]
        assert tokenizer.decode(labelled).strip() == "I don't know.</s>"  # no doubled or missing space


def test_eval_rejects_qa_format_flags_for_benchmarks_with_fixed_prompts():
    from hf_unlearn.cli.eval import add_arguments, benchmark_settings

    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--model", "m", "--benchmark", "muse", "--qa_template", "Q: {question} A: "]
    )
    with pytest.raises(ValueError, match="apply to TOFU; muse's prompts are fixed"):
        benchmark_settings(args)


def test_rows_tokenise_each_questions_prompt_once_and_equal_one_pair_at_a_time(tokenizer, monkeypatch):
    pairs = [("Who wrote it?", "Ava did."), ("Who wrote it?", "Bram did, in 1990."), ("Where?", "In Lagos.")]
    expected = [tokenize_qa(tokenizer, q, a) for q, a in pairs]
    for example in expected:
        example.pop("prompt_mismatch")
    asked = []
    original = QAFormat.prompt_ids
    monkeypatch.setattr(QAFormat, "prompt_ids", lambda self, tok, q: asked.append(q) or original(self, tok, q))
    assert tokenize_qa_rows(tokenizer, pairs) == expected
    assert asked == ["Who wrote it?", "Where?"]
