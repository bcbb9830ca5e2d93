import pytest
import torch

from hf_unlearn.data import (
    IGNORE_INDEX,
    DataCollatorForUnlearning,
    ForgetRetainDataset,
    QADataset,
    QAFormat,
    TextBlockDataset,
    chunk_text,
    pad_batch,
    tokenize_qa,
)
from tests.helpers import synthetic_splits, synthetic_tokenizer


def test_labels_cover_exactly_the_answer_and_eos_with_chat_template():
    tok = synthetic_tokenizer()
    ex = tokenize_qa(tok, "Where was Ava Varga born?", "Ava Varga was born in Oslo.")
    tokens = tok.convert_ids_to_tokens(ex["input_ids"])
    boundary = tokens.index("<|assistant|>") + 1
    assert tokens[0] == "<|user|>" and tokens[-1] == "</s>"
    assert ex["labels"][:boundary] == [IGNORE_INDEX] * boundary
    assert ex["labels"][boundary:] == ex["input_ids"][boundary:]
    assert tok.decode(ex["input_ids"][boundary:]) == "Ava Varga was born in Oslo.</s>"
    assert ex["attention_mask"] == [1] * len(ex["input_ids"])


def test_plain_template_masks_prompt_and_answer_follows_it_directly():
    tok = synthetic_tokenizer()
    fmt = QAFormat(template="Q: {question}\nA:")
    ex = tokenize_qa(tok, "Where?", "Oslo.", qa_format=fmt)
    n_prompt = len(tok("Q: Where?\nA:")["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert tok.decode(ex["input_ids"]) == "Q: Where?\nA:Oslo.</s>"  # nothing inserted between prompt and answer
    assert tok.decode(ex["input_ids"][n_prompt:]) == "Oslo.</s>"
    with pytest.raises(ValueError, match="question"):
        QAFormat(template="no field here")


def test_truncation_keeps_prompt_and_errors_when_prompt_fills_max_length():
    tok = synthetic_tokenizer()
    full = tokenize_qa(tok, "Where?", "Ava Varga was born in Oslo.")
    cut = tokenize_qa(tok, "Where?", "Ava Varga was born in Oslo.", max_length=len(full["input_ids"]) - 2)
    assert cut["input_ids"] == full["input_ids"][:-2] and cut["labels"] == full["labels"][:-2]
    with pytest.raises(ValueError, match="max_length"):
        tokenize_qa(tok, "Where was Ava Varga born?", "Oslo.", max_length=3)


def test_pairing_is_deterministic_and_reshuffles_per_epoch():
    tok = synthetic_tokenizer()
    rows = synthetic_splits()
    forget, retain = QADataset(rows["forget10"], tok), QADataset(rows["retain90"], tok)
    a, b = ForgetRetainDataset(forget, retain, seed=7), ForgetRetainDataset(forget, retain, seed=7)
    pairs = [a.retain_index(i) for i in range(len(a))]
    assert pairs == [b.retain_index(i) for i in range(len(b))]
    assert len(a) == len(forget) and len(set(pairs)) == len(pairs)  # a permutation: no retain example twice
    assert a[2]["forget"]["index"] == 2 and a[2]["retain"] == retain[pairs[2]]
    a.set_epoch(1)
    assert [a.retain_index(i) for i in range(len(a))] != pairs
    assert pairs != [ForgetRetainDataset(forget, retain, seed=8).retain_index(i) for i in range(len(a))]


def test_collator_pads_each_side_on_its_own():
    collate = DataCollatorForUnlearning(pad_token_id=0)
    forget = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7], "index": 4}]
    forget.append({"input_ids": [5], "attention_mask": [1], "labels": [5], "index": 9})
    retain = [{"input_ids": [1, 2], "attention_mask": [1, 1], "labels": [1, 2]}] * 2
    batch = collate([{"forget": f, "retain": r} for f, r in zip(forget, retain)])
    assert batch["forget"]["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["forget"]["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["forget"]["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["forget"]["index"].tolist() == [4, 9]
    assert batch["retain"]["input_ids"].shape == (2, 2)
    left = pad_batch(forget, pad_token_id=0, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 5]] and left["labels"][1].tolist() == [-100, -100, 5]
    plain = collate(retain)
    assert set(plain) == {"input_ids", "attention_mask", "labels"} and plain["input_ids"].dtype == torch.long


def test_raw_text_blocks_label_every_token():
    tok = synthetic_tokenizer()
    texts = ["Ava Varga was born in Oslo. " * 5, "Bram Okafor writes poetry."]
    blocks = chunk_text(texts, tok, block_size=8)
    stream = [t for b in blocks for t in b["input_ids"]]
    assert all(len(b["input_ids"]) == 8 for b in blocks[:-1]) and len(blocks[-1]["input_ids"]) <= 8
    assert stream.count(tok.eos_token_id) == 2 and all(b["labels"] == b["input_ids"] for b in blocks)
    assert len(TextBlockDataset(texts, tok, block_size=8)) == len(blocks)


def test_bad_input_errors_name_the_problem():
    tok = synthetic_tokenizer()
    with pytest.raises(ValueError, match=r"forget set is empty"):
        ForgetRetainDataset([], None)
    with pytest.raises(ValueError, match=r"my.json: missing column\(s\) \['answer'\]"):
        QADataset([{"question": "q"}], tok, source="my.json")
    with pytest.raises(ValueError, match="is empty"):
        QADataset([], tok, source="forget split")
    with pytest.raises(ValueError, match="pad token"):
        DataCollatorForUnlearning(tokenizer=object())


def test_read_texts_reads_a_field_and_names_bad_lines(tmp_path):
    from hf_unlearn.data import read_texts

    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b", "id": 2}\n')
    assert read_texts(path) == ["a", "b"]
    path.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: missing field 'text'"):
        read_texts(path)
    path.write_text("{oops\n")
    with pytest.raises(ValueError, match=r"corpus.jsonl:1: not a JSON object"):
        read_texts(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl not found"):
        read_texts(tmp_path / "missing.jsonl")
