"""Dataset parsing (alpaca, sharegpt, text), errors without content, labels, canaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.trainer.trainerkit import encrypt_records, write_key

from sealtune_trainer.data import (
    IGNORE_INDEX,
    DatasetFormatError,
    Record,
    insert_canaries,
    load_encrypted_dataset,
    make_canaries,
    parse_records,
    redact_records,
    split_held_out,
    tokenize_record,
)
from sealtune_trainer.model_loading import load_tokenizer
from sealtune_trainer.randomness import SecretRandomness
from sealtune_trainer.redact import Redactor

SECRET = "Zhang Wei 13912345678 TOPSECRET"


def test_alpaca_jsonl_and_array() -> None:
    recs = [
        {"instruction": "i1", "input": "x", "output": "o1"},
        {"instruction": "i2", "output": "o2"},
    ]
    jsonl = "\n".join(json.dumps(r) for r in recs).encode()
    array = json.dumps(recs).encode()
    for raw in (jsonl, array):
        parsed = parse_records(raw, "alpaca")
        assert [m["role"] for m in parsed[0].messages] == ["user", "assistant"]
        assert parsed[0].messages[0]["content"] == "i1\n\nx"
        assert parsed[1].messages[1]["content"] == "o2"


def test_sharegpt_and_text() -> None:
    conv = {
        "conversations": [
            {"from": "system", "value": "s"},
            {"from": "human", "value": "q"},
            {"from": "gpt", "value": "a"},
            {"from": "human", "value": "q2"},
            {"from": "gpt", "value": "a2"},
        ]
    }
    parsed = parse_records(json.dumps(conv).encode(), "sharegpt")
    assert [m["role"] for m in parsed[0].messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    text = parse_records(b"line one\n\n  \nline two\n", "text")
    assert [r.text for r in text] == ["line one", "line two"]


@pytest.mark.parametrize(
    ("raw", "fmt", "where"),
    [
        (
            b'{"instruction": "a", "output": "b"}\n{"instruction": "' + SECRET.encode() + b'"}\n',
            "alpaca",
            "line 2",
        ),
        (
            b'{"instruction": "a", "output": "b"}\n\n{"instruction": "'
            + SECRET.encode()
            + b'", \n',
            "alpaca",
            "line 3",
        ),
        (
            json.dumps(
                [{"instruction": "a", "output": "b"}, {"instruction": SECRET, "output": 5}]
            ).encode(),
            "alpaca",
            "index 1",
        ),
        (
            json.dumps({"conversations": [{"from": "alien", "value": SECRET}]}).encode(),
            "sharegpt",
            "line 1",
        ),
        (
            json.dumps({"conversations": [{"from": "human", "value": SECRET}]}).encode(),
            "sharegpt",
            "line 1",
        ),
        (
            b'{"instruction": "ok", "output": "ok"}\n' + SECRET.encode() + b"\xff\xfe\n",
            "alpaca",
            "line 2",
        ),
    ],
)
def test_malformed_record_names_position_never_content(raw: bytes, fmt: str, where: str) -> None:
    with pytest.raises(DatasetFormatError) as info:
        parse_records(raw, fmt)  # type: ignore[arg-type]
    message = str(info.value)
    assert where in message
    for fragment in ("Zhang", "13912345678", "TOPSECRET"):
        assert fragment not in message


def test_encrypted_dataset_roundtrip(tmp_path: Path) -> None:
    key = write_key(tmp_path / "k")
    encrypt_records(tmp_path / "d.enc", [{"instruction": "i", "output": "o"}], key, jsonl=False)
    recs = load_encrypted_dataset(tmp_path / "d.enc", key.read_bytes(), "alpaca")
    assert recs[0].messages[1]["content"] == "o"
    assert b"instruction" not in (tmp_path / "d.enc").read_bytes()


def test_labels_cover_only_assistant_reply(tiny_model: Path) -> None:
    tok = load_tokenizer(tiny_model)
    rec = Record(
        messages=[
            {"role": "user", "content": "what is the plan"},
            {"role": "assistant", "content": "rest and water"},
        ]
    )
    ex = tokenize_record(tok, rec, 256)
    labelled = [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX]
    decoded = tok.decode(labelled)
    assert "rest and water" in decoded
    assert "what is the plan" not in decoded
    assert tok.eos_token in decoded  # the model learns to stop
    text_ex = tokenize_record(tok, Record(text="plain words"), 256)
    assert text_ex.labels[1:] == text_ex.input_ids[1:]
    assert tokenize_record(tok, Record(text="plain words " * 50), 16).input_ids.__len__() == 16


def test_redaction_happens_before_tokenization(tiny_model: Path) -> None:
    tok = load_tokenizer(tiny_model)
    rec = Record(
        messages=[
            {"role": "user", "content": "call 13912345678 today"},
            {"role": "assistant", "content": "ID 11010519491231002X noted"},
        ]
    )
    redactor = Redactor(["PHONE", "CN_ID"], "mask")
    (clean,) = redact_records([rec], redactor.redact)
    ex = tokenize_record(tok, clean, 256)
    decoded = tok.decode(ex.input_ids)
    assert "13912345678" not in decoded and "11010519491231002X" not in decoded
    assert "[PHONE]" in decoded and "[CN_ID]" in decoded
    assert dict(redactor.counts) == {"PHONE": 1, "CN_ID": 1}


def _secret(n: int) -> SecretRandomness:
    return SecretRandomness.derive(bytes([n]) * 32, "uid-1")


def test_canaries_keyed_by_the_job_secret_and_inserted_repeatedly() -> None:
    canaries = make_canaries(3, _secret(5).rng("canary-secrets"))
    assert canaries == make_canaries(3, _secret(5).rng("canary-secrets"))
    assert canaries != make_canaries(3, _secret(6).rng("canary-secrets"))
    rng = _secret(5).rng("canary-positions")
    items = insert_canaries(list(range(10)), [(i, -1 - i) for i, _ in canaries], 4, rng)
    assert len(items) == 22
    assert sorted(x for x in items if x < 0) == [-3] * 4 + [-2] * 4 + [-1] * 4


def test_held_out_split_is_keyed_and_disjoint() -> None:
    recs = [Record(text=f"note {i}") for i in range(400)]
    train, held = split_held_out(recs, 0.2, _secret(1))
    assert 50 <= len(held) <= 110 and len(train) + len(held) == 400
    assert {r.text for r in train}.isdisjoint({r.text for r in held})
    assert [r.text for r in held] == [r.text for r in split_held_out(recs, 0.2, _secret(1))[1]]
    # another job's secret draws another split
    assert {r.text for r in held} != {r.text for r in split_held_out(recs, 0.2, _secret(2))[1]}


def test_held_out_split_is_stable_under_adding_and_removing_records() -> None:
    """Review repro: adding one record moved 83 of 400 records across the boundary."""
    recs = [Record(text=f"note {i}") for i in range(400)]
    _, held = split_held_out(recs, 0.1, _secret(3))
    _, held_added = split_held_out([*recs, Record(text="a new patient")], 0.1, _secret(3))
    _, held_removed = split_held_out(recs[1:], 0.1, _secret(3))
    before = {r.text for r in held}
    assert {r.text for r in held_added} - {"a new patient"} == before
    assert {r.text for r in held_removed} == before - {"note 0"}


def test_tiny_datasets_keep_one_record_on_each_side() -> None:
    for n in (2, 3, 5):
        train, held = split_held_out([Record(text=str(i)) for i in range(n)], 0.1, _secret(4))
        assert len(held) >= 1 and len(train) >= 1


def test_truncated_away_response_names_the_line(tiny_model: Path) -> None:
    from sealtune_trainer.data import tokenize_records

    tok = load_tokenizer(tiny_model)
    raw = "\n".join(
        [
            json.dumps({"instruction": "short", "output": "ok"}),
            "",
            json.dumps({"instruction": "long " * 80 + SECRET, "output": "ok"}),
        ]
    ).encode()
    recs = parse_records(raw, "alpaca")
    with pytest.raises(DatasetFormatError, match=r"line 3: no response tokens.*=32") as info:
        tokenize_records(tok, recs, 32)
    assert "Zhang" not in str(info.value)
