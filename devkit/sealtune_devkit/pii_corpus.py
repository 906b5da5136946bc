# ruff: noqa: RUF001  (Chinese sentences use full-width punctuation on purpose)
"""A seeded, labelled PII corpus for measuring the redactor (tests and benchmarks share it).

Every value is synthetic and valid by construction (check digits, Luhn, mod 97 computed here),
embedded in English and Chinese sentences next to hard negatives: dates, times, amounts,
versions, order numbers. `checksum_failures` yields look-alikes whose checksums fail, which a
validating detector must not report.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from sealtune_trainer.redact import (
    IBAN_LENGTHS,
    Redactor,
    Span,
    cn_id_check_char,
    iban_valid,
    luhn_valid,
)

CHECKSUM_ENTITIES = ("CN_ID", "BANK_CARD", "IBAN")

_FIRST = ["alice", "bob", "wei", "li.na", "zhang_san", "maria", "omar", "yuki", "j.smith", "chen"]
_DOMAINS = ["example.com", "hospital.org.cn", "mail.example.co.uk", "bank-corp.de", "163.com"]
_CN_REGIONS = ["110105", "310101", "440305", "510107", "330106", "420111", "120104", "650102"]
_E164 = [("1", 10), ("44", 10), ("49", 11), ("33", 9), ("81", 10), ("91", 10), ("61", 9)]
_CARD_PREFIXES = [("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("6011", 16), ("62", 19),
                  ("62", 16), ("35", 16), ("34", 15), ("37", 15)]  # fmt: skip
# country -> BBAN shape: 'A' upper letter, 'N' digit
_IBAN_SHAPES = {
    "DE": "N" * 18, "GB": "AAAA" + "N" * 14, "NL": "AAAA" + "N" * 10, "FR": "N" * 23,
    "ES": "N" * 20, "IT": "A" + "N" * 22, "CH": "N" * 17, "BE": "N" * 12, "PL": "N" * 24,
}  # fmt: skip

_EN = [
    "Patient {name} was seen on 2024-03-{day:02d} at 10:{day:02d}:15; contact: {pii}.",
    "Please send the invoice (total $1,{day:03d}.50) to {pii} before Friday.",
    "Record #{order} updated by nurse; reachable at {pii}, room {room}.",
    "Customer {name} paid 3 x 12.5 EUR using {pii} on v2.{day}.1 of the app.",
    "Escalated ticket {order}: identifier {pii} flagged (ref 2023/{day})",
    "{pii}",
    "Lab result 5.{day} mmol/L, follow-up in 10-14 days. Value on file: {pii}",
]
_ZH = [
    "患者{name}于2024年3月{day}日就诊，联系方式：{pii}。",
    "客户{name}的信息为{pii}，订单号{order}，金额{room}元。",
    "备注：{pii}（已核实），体温36.{day}度。",
]
_FILLER = [
    "Blood pressure 120/80 mmHg, heart rate 72 bpm at 08:30:00 on 2024-05-01.",
    "Order 4821375 shipped; tracking 1Z999AA10123456784 expected 2024-06-{day:02d}.",
    "Dose 2.5 mg twice daily for 7-10 days; review in version 3.2.1 of the protocol.",
    "Account balance: 12,345.67 CNY as of 2023-12-31 23:59:59.",
    "患者血压130/85，心率76次/分，复查时间2024-07-{day:02d}。",
    "Meeting at 14:00 in room 1203, budget 250000, code ABC-123-XY.",
]


@dataclass
class Record:
    """One labelled text: `spans` are the PII occurrences, exact character offsets."""

    text: str
    spans: list[Span] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# valid values


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def email(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)}{rng.randint(1, 999)}@{rng.choice(_DOMAINS)}"


def phone(rng: random.Random) -> str:
    if rng.random() < 0.5:
        num = rng.choice("3456789") + _digits(rng, 9)
        num = "1" + num
        style = rng.randrange(4)
        if style == 1:
            return f"{num[:3]} {num[3:7]} {num[7:]}"
        if style == 2:
            return f"{num[:3]}-{num[3:7]}-{num[7:]}"
        if style == 3:
            return f"+86 {num}"
        return num
    cc, n = rng.choice(_E164)
    national = rng.choice("23456789") + _digits(rng, n - 1)
    if rng.random() < 0.5:
        return f"+{cc}{national}"
    return f"+{cc} {national[:3]} {national[3:6]} {national[6:]}"


def cn_id(rng: random.Random) -> str:
    born = _dt.date(1930, 1, 1) + _dt.timedelta(days=rng.randrange(80 * 365))
    first17 = f"{rng.choice(_CN_REGIONS)}{born:%Y%m%d}{_digits(rng, 3)}"
    return first17 + cn_id_check_char(first17)


def _luhn_complete(partial: str) -> str:
    for d in "0123456789":
        if luhn_valid(partial + d):
            return partial + d
    raise AssertionError("unreachable")


def _group_card(num: str, rng: random.Random) -> str:
    style = rng.randrange(3)
    if style == 0:
        return num
    sep = " " if style == 1 else "-"
    if len(num) == 15:
        return sep.join((num[:4], num[4:10], num[10:]))
    return sep.join(num[i : i + 4] for i in range(0, len(num), 4))


def bank_card(rng: random.Random) -> str:
    prefix, n = rng.choice(_CARD_PREFIXES)
    return _group_card(_luhn_complete(prefix + _digits(rng, n - len(prefix) - 1)), rng)


def _bban(rng: random.Random, shape: str) -> str:
    return "".join(
        rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") if c == "A" else rng.choice("0123456789")
        for c in shape
    )


def _iban_with_check(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in rearranged)) % 97
    return f"{country}{check:02d}{bban}"


def _group_iban(iban: str, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return iban
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


def iban(rng: random.Random) -> str:
    country = rng.choice(sorted(_IBAN_SHAPES))
    value = _iban_with_check(country, _bban(rng, _IBAN_SHAPES[country]))
    assert iban_valid(value) and IBAN_LENGTHS[country] == len(value)
    return _group_iban(value, rng)


def ip_address(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return str(ipaddress.IPv4Address(rng.randrange(1 << 24, 0xE0000000)))
    addr = ipaddress.IPv6Address(rng.getrandbits(128) & ~(0xFFFF << 64) if rng.random() < 0.5
                                 else (0x2001_0DB8 << 96) | rng.getrandbits(16))  # fmt: skip
    return addr.compressed if rng.random() < 0.7 else addr.exploded


def us_ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


GENERATORS = {
    "EMAIL": email,
    "PHONE": phone,
    "CN_ID": cn_id,
    "BANK_CARD": bank_card,
    "IBAN": iban,
    "IP_ADDRESS": ip_address,
    "US_SSN": us_ssn,
}


# --------------------------------------------------------------------------------------------
# corpus


def _sentence(rng: random.Random, entity: str | None) -> tuple[str, Span | None]:
    slots = {
        "name": rng.choice(["Wang", "Smith", "李雷", "Müller", "García"]),
        "day": rng.randint(1, 28),
        "order": rng.randint(100000, 9999999),
        "room": rng.randint(100, 9999),
    }
    if entity is None:
        return rng.choice(_FILLER).format(**slots), None
    template = rng.choice(_ZH if rng.random() < 0.3 else _EN)
    value = GENERATORS[entity](rng)
    before, after = template.split("{pii}")
    prefix = before.format(**slots)
    return prefix + value + after.format(**slots), Span(
        len(prefix), len(prefix) + len(value), entity
    )


def generate_corpus(n_records: int = 2000, seed: int = 0, pii_rate: float = 0.7) -> list[Record]:
    """`n_records` labelled records of 1-4 sentences; about `pii_rate` of sentences carry PII."""
    rng = random.Random(seed)
    entities = list(GENERATORS)
    out: list[Record] = []
    for _ in range(n_records):
        text, spans = "", []
        for k in range(rng.randint(1, 4)):
            ent = rng.choice(entities) if rng.random() < pii_rate else None
            sentence, span = _sentence(rng, ent)
            sep = " " if k else ""
            if span is not None:
                offset = len(text) + len(sep)
                spans.append(Span(offset + span.start, offset + span.end, span.entity))
            text += sep + sentence
        out.append(Record(text, spans))
    return out


_WORDS = [
    "the",
    "patient",
    "reports",
    "mild",
    "pain",
    "in",
    "left",
    "knee",
    "since",
    "last",
    "week",
    "no",
    "fever",
    "noted",
    "appetite",
    "normal",
    "sleep",
    "poor",
    "advised",
    "rest",
    "and",
    "fluids",
    "follow",
    "up",
    "with",
    "general",
    "practitioner",
    "blood",
    "pressure",
    "stable",
    "medication",
    "continued",
    "allergy",
    "to",
    "penicillin",
    "denied",
    "smoking",
    "history",
    "of",
    "asthma",
    "in",
    "childhood",
    "family",
    "history",
    "unremarkable",
    "plan",
    "review",
    "results",
    "next",
    "visit",
]


def notes_text(n_bytes: int = 1 << 20, seed: int = 2, pii_per_kb: float = 1.0) -> str:
    """Clinical-note-like prose with about `pii_per_kb` PII values per KiB (throughput runs)."""
    rng = random.Random(seed)
    entities = list(GENERATORS)
    parts: list[str] = []
    size = 0
    while size < n_bytes:
        words = rng.choices(_WORDS, k=rng.randint(8, 20))
        words[0] = words[0].capitalize()
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), f"{rng.randint(1, 500)} mg")
        sentence = " ".join(words) + "."
        if rng.random() < pii_per_kb * len(sentence) / 1024:
            sentence += f" Contact {GENERATORS[rng.choice(entities)](rng)}."
        parts.append(sentence)
        size += len(sentence) + 1
    return " ".join(parts)


def checksum_failures(n: int = 1000, seed: int = 1) -> list[str]:
    """Texts holding CN-ID-, card- and IBAN-shaped values whose checksums all fail."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        kind = rng.randrange(3)
        if kind == 0:
            good = cn_id(rng)
            value = good[:17] + rng.choice([c for c in "0123456789X" if c != good[17]])
            if luhn_valid(value.replace("X", "0")) and value[-1] != "X":
                continue
        elif kind == 1:
            prefix, length = rng.choice(_CARD_PREFIXES)
            raw = prefix + _digits(rng, length - len(prefix))
            if luhn_valid(raw):
                continue
            value = _group_card(raw, rng)
        else:
            country = rng.choice(sorted(_IBAN_SHAPES))
            good = _iban_with_check(country, _bban(rng, _IBAN_SHAPES[country]))
            bad = good[:2] + f"{(int(good[2:4]) + rng.randint(1, 96)) % 97:02d}" + good[4:]
            if iban_valid(bad):
                continue
            value = _group_iban(bad, rng)
        out.append(f"Reference value {value} recorded on the form.")
    return out


# --------------------------------------------------------------------------------------------
# scoring


@dataclass
class Score:
    """Exact-span true/false positives and false negatives per entity type."""

    tp: Counter[str] = field(default_factory=Counter)
    fp: Counter[str] = field(default_factory=Counter)
    fn: Counter[str] = field(default_factory=Counter)

    def recall(self, entity: str) -> float:
        total = self.tp[entity] + self.fn[entity]
        return self.tp[entity] / total if total else 1.0

    def precision(self, entity: str) -> float:
        total = self.tp[entity] + self.fp[entity]
        return self.tp[entity] / total if total else 1.0

    def overall(self) -> tuple[float, float]:
        tp, fp, fn = sum(self.tp.values()), sum(self.fp.values()), sum(self.fn.values())
        return tp / max(1, tp + fn), tp / max(1, tp + fp)


def score(found: Iterable[tuple[Record, Iterable[Span]]]) -> Score:
    """Compare predicted spans with the labels (a span counts only on an exact match)."""
    s = Score()
    for record, predicted in found:
        gold = set(record.spans)
        pred = set(predicted)
        for sp in pred & gold:
            s.tp[sp.entity] += 1
        for sp in pred - gold:
            s.fp[sp.entity] += 1
        for sp in gold - pred:
            s.fn[sp.entity] += 1
    return s


def evaluate(redactor: Redactor, corpus: list[Record]) -> Score:
    """Run `redactor.find` over a corpus and score it."""
    return score((r, redactor.find(r.text)) for r in corpus)
