# ruff: noqa: RUF001  (full-width punctuation in Chinese text on purpose)
"""PII redaction: checksum-validated detectors, modes, counts, and a labelled corpus."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealtune_api.trainer_config import PII_ENTITIES
from sealtune_devkit import pii_corpus
from sealtune_trainer.redact import Redactor, Span, cn_id_check_char, iban_valid, luhn_valid


@pytest.fixture(scope="module")
def corpus() -> list[pii_corpus.Record]:
    return pii_corpus.generate_corpus(2500, seed=7)


def test_corpus_recall_and_precision(corpus: list[pii_corpus.Record]) -> None:
    score = pii_corpus.evaluate(Redactor(), corpus)
    for entity in PII_ENTITIES:
        assert score.tp[entity] + score.fn[entity] > 200, entity  # every type is exercised
    for checked in pii_corpus.CHECKSUM_ENTITIES:
        assert score.recall(checked) >= 0.99, (checked, score.fn[checked])
    for entity in PII_ENTITIES:
        assert score.recall(entity) >= 0.98, (entity, score.fn[entity])
        assert score.precision(entity) >= 0.99, (entity, score.fp[entity])


def test_no_detection_on_checksum_failures() -> None:
    texts = pii_corpus.checksum_failures(3000, seed=11)
    r = Redactor()
    hits = [(t, r.find(t)) for t in texts if r.find(t)]
    assert hits == []
    assert all(r.redact(t) == t for t in texts[:200])


def test_each_entity_masked() -> None:
    text = (
        "mail Li.Na+x@Hospital.org.cn, mobile 138 1234 5678, intl +44 20 7946 0958, "
        "id 11010519491231002X, card 4111-1111-1111-1111, amex 3782 822463 10005, "
        "iban GB82 WEST 1234 5698 7654 32, ip 192.168.1.10 / 2001:db8::8a2e:370:7334, "
        "ssn 123-45-6789."
    )
    out = Redactor().redact(text)
    assert out == (
        "mail [EMAIL], mobile [PHONE], intl [PHONE], id [CN_ID], card [BANK_CARD], "
        "amex [BANK_CARD], iban [IBAN], ip [IP_ADDRESS] / [IP_ADDRESS], ssn [US_SSN]."
    )


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # Luhn fails
        "11010519491231002Y",  # not a check character
        "110105194902300021",  # 30 February (check digit recomputed below)
        "GB83 WEST 1234 5698 7654 32",  # mod 97 fails
        "ZZ82 WEST 1234 5698 7654 32",  # no such country
        "000-12-3456 666-12-3456 912-12-3456 123-00-4567 123-45-0000",  # SSA rules
        "256.1.1.1 and 1.2.3 and 10.0.0.01",  # not IPv4
        "at 12:30:45 with MAC 00:1a:2b:3c:4d:5e",  # not IPv6
        "version 1.2.3.4.5 and 12345678901",  # dotted run; 11 digits not a mobile
        "user@localhost and @handle and a@b",  # no domain
    ],
)
def test_near_misses_are_not_detected(text: str) -> None:
    if text.startswith("110105194902300"):
        text = text[:17] + cn_id_check_char(text[:17])  # valid check digit, impossible date
    assert Redactor().find(text) == []


def test_future_birth_date_is_rejected() -> None:
    first17 = "11010520990101002"
    assert Redactor().find(first17 + cn_id_check_char(first17)) == []


def test_validators() -> None:
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE89370400440532013001")
    assert cn_id_check_char("11010519491231002") == "X"


def test_find_offsets_are_str_offsets_with_cjk() -> None:
    text = "患者电话：13812345678，邮箱 wang@example.com。"
    spans = Redactor().find(text)
    assert [text[s.start : s.end] for s in spans] == ["13812345678", "wang@example.com"]
    assert spans[0] == Span(5, 16, "PHONE")


def test_pseudonymize_is_stable_per_key_and_normalizes_format() -> None:
    a = Redactor(mode="pseudonymize", hmac_key=b"k" * 32)
    b = Redactor(mode="pseudonymize", hmac_key=b"k" * 32)
    c = Redactor(mode="pseudonymize", hmac_key=b"j" * 32)
    t1 = a.redact("call 13812345678 now")
    assert t1 == b.redact("call 138-1234-5678 now")  # same value, same token
    assert t1 != c.redact("call 13812345678 now")  # another key, another token
    assert t1 != a.redact("call 13912345678 now")  # another value, another token
    token = t1.split()[1]
    assert token.startswith("[PHONE:") and len(token) == len("[PHONE:12345678]")
    assert "13812345678" not in t1


def test_counts_accumulate_and_hold_no_values() -> None:
    r = Redactor()
    r.redact("a@example.com b@example.com 123-45-6789")
    r.redact("c@example.com")
    assert dict(r.counts) == {"EMAIL": 3, "US_SSN": 1}
    r.find("d@example.com")  # find does not count
    assert r.counts["EMAIL"] == 3


def test_entity_selection_and_errors() -> None:
    r = Redactor(entities=["EMAIL"])
    assert r.redact("x@example.com 123-45-6789") == "[EMAIL] 123-45-6789"
    # An 18-digit ID that also passes Luhn: an ID first, a card when CN_ID is not selected.
    both = next(
        v
        for v in (pii_corpus.cn_id(random.Random(i)) for i in range(5000))
        if v[0] in "3456" and v[-1] != "X" and luhn_valid(v)
    )
    assert [s.entity for s in Redactor().find(both)] == ["CN_ID"]
    assert [s.entity for s in Redactor(entities=["BANK_CARD"]).find(both)] == ["BANK_CARD"]
    with pytest.raises(ValueError, match="unknown PII entities"):
        Redactor(entities=["NAME"])
    with pytest.raises(ValueError, match="unknown redaction mode"):
        Redactor(mode="hash")


def test_mistyped_iban_is_not_a_card() -> None:
    # A Luhn-valid 16-digit run inside an IBAN-shaped value with a bad check is not a card.
    for seed in range(300):
        rng = random.Random(seed)
        good = pii_corpus.iban(rng).replace(" ", "")
        bad = good[:2] + f"{(int(good[2:4]) + 1) % 100:02d}" + good[4:]
        grouped = " ".join(bad[i : i + 4] for i in range(0, len(bad), 4))
        assert all(s.entity == "IBAN" for s in Redactor().find(f"acct {grouped} ok"))


_FILLER = st.text(alphabet="abcdefghij klmnop,;!?", max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    entity=st.sampled_from(sorted(pii_corpus.GENERATORS)),
    seed=st.integers(0, 2**32),
    before=_FILLER,
    after=_FILLER,
)
def test_generated_values_never_survive(entity: str, seed: int, before: str, after: str) -> None:
    value = pii_corpus.GENERATORS[entity](random.Random(seed))
    text = f"{before} {value} {after}"
    r = Redactor()
    out = r.redact(text)
    assert value not in out
    assert f"[{entity}]" in out
    assert r.counts[entity] == 1
