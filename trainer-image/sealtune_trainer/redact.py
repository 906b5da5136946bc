"""PII redaction before tokenization: regex candidates, then checksum/semantic validation.

Why validate: a bare regex for "18 digits" or "16 digits" fires on every order number. Each
detector here confirms its candidate where the format allows it (ISO 7064 MOD 11-2 and a
plausible birth date for Chinese IDs, Luhn for cards, mod 97 and the country length for
IBANs, `ipaddress` for IPs, SSA rules for SSNs), so precision stays high on numeric text.

Why it is fast: the text is scanned as UTF-8 bytes mapped to a "skeleton" (digits to b"0",
capitals to b"A") where every candidate shape begins with a multi-byte literal, so the regex
engine's literal search skips ahead in C; e-mail and IPv6 scans are anchored on `@` and `:`;
Python-level validation runs only on candidates. Replacement happens on the bytes too.

Counts per entity type are kept (`Redactor.counts`); values never leave this module.
"""

from __future__ import annotations

import bisect
import collections
import datetime as _dt
import functools
import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Iterable
from typing import NamedTuple

from sealtune_api.trainer_config import PII_ENTITIES

__all__ = [
    "IBAN_LENGTHS",
    "MODES",
    "Redactor",
    "Span",
    "cn_id_check_char",
    "iban_valid",
    "luhn_valid",
]

MODES = ("mask", "pseudonymize")


class Span(NamedTuple):
    """A detected entity: text[start:end] is of type `entity`."""

    start: int
    end: int
    entity: str


# --------------------------------------------------------------------------------------------
# validators (pure functions, also used by the corpus generator)

_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_ID_CHECK = "10X98765432"


def cn_id_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits of a Chinese resident ID."""
    b = first17.encode("ascii")
    total = sum([(d - 48) * w for d, w in zip(b, _CN_ID_WEIGHTS, strict=True)])
    return _CN_ID_CHECK[total % 11]


def _cn_id_valid(value: str) -> bool:
    if cn_id_check_char(value[:17]) != value[17].upper():
        return False
    try:
        born = _dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    return _dt.date(1900, 1, 1) <= born <= _today()


@functools.lru_cache(maxsize=1)
def _today_cached(hour_bucket: int) -> _dt.date:
    return _dt.date.today()


def _today() -> _dt.date:
    """Today's date, re-read at most once an hour (birth dates must not lie in the future)."""
    return _today_cached(int(time.monotonic() // 3600))


_LUHN_SINGLE = bytes.maketrans(b"0123456789", bytes(range(10)))
_LUHN_DOUBLE = bytes.maketrans(b"0123456789", bytes((0, 2, 4, 6, 8, 1, 3, 5, 7, 9)))


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check over a string of ASCII digits."""
    b = digits.encode("ascii")
    total = sum(b[-1::-2].translate(_LUHN_SINGLE)) + sum(b[-2::-2].translate(_LUHN_DOUBLE))
    return total % 10 == 0


# ISO 13616 registry: country code -> IBAN length.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


_IBAN_DIGITS = str.maketrans({c: str(ord(c) - 55) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"})


def _iban_mod97(iban: str) -> int:
    return int((iban[4:] + iban[:4]).translate(_IBAN_DIGITS)) % 97


def iban_valid(iban: str) -> bool:
    """Country length and ISO 7064 mod 97-10 check of a compact, upper-case IBAN."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum() or not iban.isascii():
        return False
    return _iban_mod97(iban) == 1


def _ssn_valid(area: str, group: str, serial: str) -> bool:
    a = int(area)
    return a != 0 and a != 666 and a < 900 and group != "00" and serial != "0000"


# --------------------------------------------------------------------------------------------
# scanning
#
# The text is encoded to UTF-8 and mapped byte-for-byte to a "skeleton": every ASCII digit
# becomes b"0", every upper-case ASCII letter b"A". Regexes find shapes on the skeleton; the
# exact characters are then checked on the original bytes. Offsets are identical in both (the
# mapping is 1:1); `find` converts them to str offsets, `redact` replaces on the bytes.

_SKELETON = bytes(
    ord("0") if 0x30 <= b <= 0x39 else ord("A") if 0x41 <= b <= 0x5A else b for b in range(256)
)

# Regexes run on the skeleton and start with a multi-byte literal (b"000", b"0.", b"+", b"A"),
# so the engine's literal search skips ahead in C and full match attempts are rare. Shapes
# that start with three digits share one regex; a trailing empty group names the shape
# (`Match.lastgroup`), and branch order is the priority at one start (an 18-digit ID before an
# 18-digit card).
_DIGIT_SHAPES: dict[str, tuple[str, ...]] = {
    "CN_ID": (r"0{14}[0Ax](?![0A-Za-z])(?P<cnid>)",),
    "BANK_CARD": (
        r"(?<![.,-]000)0(?P<s>[ -]?)0000(?P=s)0000(?P=s)0{1,4}(?:(?P=s)0{1,3})?(?![0-])(?P<card>)",
        r"(?<![.,-]000)0[ -]?000000[ -]?00000(?![0-])(?P<card15>)",
    ),
    "US_SSN": (r"(?<![-]000)(?P<t>[- ])00(?P=t)0000(?![0-])(?P<ssn>)",),
    "PHONE": (r"(?<![+]000)(?P<m>[ -]?)0000(?P=m)0000(?!0)(?P<mobile>)",),
}
_ORDER = ("CN_ID", "IBAN", "BANK_CARD", "US_SSN", "PHONE", "IP_ADDRESS")
# Every IBAN shape is found, valid or not: a mistyped IBAN must not be read as a card or phone.
_IBAN_RE = re.compile(rb"AA00(?<![0A-Za-z]AA00)(?: ?[0A]){11,34}(?![0A-Za-z])")
_IPV4_RE = re.compile(rb"0\.0{1,3}\.0{1,3}\.0{1,3}(?!\.?0)")  # starts at the 1st octet's last digit
_E164_RE = re.compile(rb"\+(?<![0A-Za-z+]\+)0(?:[ -]?0){6,14}(?!0)")


@functools.lru_cache(maxsize=64)
def _digit_regex(entities: frozenset[str]) -> re.Pattern[bytes] | None:
    shapes = [b for e, bs in _DIGIT_SHAPES.items() if e in entities for b in bs]
    if "CN_ID" not in entities and "BANK_CARD" in entities:
        shapes.insert(0, _DIGIT_SHAPES["CN_ID"][0])  # ID-shaped values may still be cards
    if not shapes:
        return None
    return re.compile(("000(?<![0A-Za-z]000)(?:" + "|".join(shapes) + ")").encode())


_IPV6_RE = re.compile(
    rb"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,8}(?:\d{1,3}(?:\.\d{1,3}){3}(?![\d.])|[0-9A-Fa-f]{1,4})?"
    rb"(?!\w)(?!\.\d)"
)
_EMAIL_LOCAL_TAIL = re.compile(rb"[A-Za-z0-9._%+-]{1,64}$")
_EMAIL_DOMAIN = re.compile(
    rb"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SEPARATORS = str.maketrans("", "", " -")

Hit = tuple[int, int, str, str]  # start, end (byte offsets), entity, normalized value


def _card_value(digits: str) -> str | None:
    ok = 13 <= len(digits) <= 19 and digits[0] in "234569" and luhn_valid(digits)
    return digits if ok else None


def _validate(kind: str, raw: str, entities: frozenset[str]) -> tuple[str, str] | None:
    """(entity, normalized value) for a digit-shape match, or None if its checks fail."""
    if kind == "cnid":
        if "CN_ID" in entities and _cn_id_valid(raw):
            return "CN_ID", raw.upper()
        if "BANK_CARD" in entities and raw.isdigit() and (card := _card_value(raw)):
            return "BANK_CARD", card
        return None
    if kind in ("card", "card15"):
        card = _card_value(raw.translate(_SEPARATORS))
        return ("BANK_CARD", card) if card else None
    if kind == "ssn":
        area, group, serial = raw[:3], raw[4:6], raw[7:]
        return ("US_SSN", area + group + serial) if _ssn_valid(area, group, serial) else None
    if kind == "mobile":
        ok = raw[0] == "1" and raw[1] in "3456789"
        return ("PHONE", "+86" + raw.translate(_SEPARATORS)) if ok else None
    raise AssertionError(kind)


def _iban_end(raw: str, want: int) -> int:
    """Length of the prefix of a grouped IBAN candidate that holds `want` characters."""
    count = 0
    for i, c in enumerate(raw):
        if c != " ":
            count += 1
            if count == want:
                return i + 1
    return len(raw)


def _scan_shapes(data: bytes, entities: frozenset[str]) -> list[Hit]:
    sk = data.translate(_SKELETON)
    hits: list[Hit] = []
    shadows: list[tuple[int, int]] = []
    pos = 0
    while (m := _IBAN_RE.search(sk, pos)) is not None:
        start, end = m.span()
        raw = data[start:end].decode("ascii")
        want = IBAN_LENGTHS.get(raw[:2])
        compact = raw.replace(" ", "")
        if want is not None and len(compact) >= want:
            # A grouped IBAN may run into the next number; cut at the country's length.
            end = start + _iban_end(raw, want)
            if "IBAN" in entities and iban_valid(compact[:want]):
                hits.append((start, end, "IBAN", compact[:want]))
        shadows.append((start, end))
        pos = end  # a second IBAN may follow right after the cut
    rx = _digit_regex(entities)
    if rx is not None:
        # A shape that fails validation is rescanned from its next byte, so it cannot hide a
        # valid value that starts inside it and runs past it ("204 2093 3456 957139 17038");
        # values lying wholly inside a failed shape are parts of one bad number and ignored.
        pos = failed_end = 0
        while (d := rx.search(sk, pos)) is not None:
            start, end = d.span()
            kind = d.lastgroup
            assert kind is not None
            got = None if end <= failed_end else _validate(kind, data[start:end].decode(), entities)
            if got is not None:
                hits.append((start, end, got[0], got[1]))
                pos = end
            else:
                failed_end = max(failed_end, end)
                pos = start + 1
    if "IP_ADDRESS" in entities:
        for m in _IPV4_RE.finditer(sk):
            start, end = m.span()
            while start > 0 and m.start() - start < 2 and sk[start - 1] == 0x30:
                start -= 1
            if start > 0 and sk[start - 1] in b"0.":
                continue
            try:
                addr = str(ipaddress.IPv4Address(data[start:end].decode("ascii")))
            except ValueError:
                continue
            hits.append((start, end, "IP_ADDRESS", addr))
    if "PHONE" in entities and b"+" in data:
        for m in _E164_RE.finditer(sk):
            raw = _e164_cut(data[m.start() : m.end()].decode("ascii"))
            hits.append((m.start(), m.start() + len(raw), "PHONE", raw.translate(_SEPARATORS)))
    if shadows and hits:
        hits = [h for h in hits if h[2] == "IBAN" or not _overlaps(h, shadows)]
    return hits


# Fixed national number lengths of some calling codes: a grouped number followed by another
# number ("+1 301 204 2093 3456 ...") is cut where the national number ends.
_E164_NATIONAL = {"1": 10, "7": 10, "33": 9, "44": 10, "61": 9, "81": 10, "86": 11, "91": 10}


def _e164_cut(raw: str) -> str:
    digits = raw[1:].translate(_SEPARATORS)
    for cc_len in (1, 2):
        national = _E164_NATIONAL.get(digits[:cc_len])
        if national is None or len(digits) <= cc_len + national:
            continue
        count, want = 0, cc_len + national
        for i, c in enumerate(raw):
            if c.isdigit():
                count += 1
                if count == want:
                    return raw[: i + 1] if raw[i + 1] in " -" else raw
    return raw


def _overlaps(hit: Hit, regions: list[tuple[int, int]]) -> bool:
    i = bisect.bisect_right(regions, (hit[0], 1 << 62)) - 1
    if i >= 0 and regions[i][1] > hit[0]:
        return True
    return i + 1 < len(regions) and regions[i + 1][0] < hit[1]


def _scan_email(data: bytes) -> list[Hit]:
    hits: list[Hit] = []
    pos = data.find(b"@")
    while pos != -1:
        m = _EMAIL_LOCAL_TAIL.search(data, max(0, pos - 64), pos)
        d = _EMAIL_DOMAIN.match(data, pos)
        nxt = pos + 1
        if m is not None and d is not None:
            local = m.group().lstrip(b".")
            start = pos - len(local)
            if local and not local.endswith(b".") and b".." not in local:
                hits.append((start, d.end(), "EMAIL", data[start : d.end()].decode().lower()))
                nxt = d.end()
        pos = data.find(b"@", nxt)
    return hits


def _ipv6(cand: bytes) -> str | None:
    try:
        return str(ipaddress.IPv6Address(cand.decode("ascii")))
    except ValueError:
        return None


_IPV6_TRIGGER = re.compile(rb":(?::|(?:[0-9A-Fa-f]{1,4}:){6})")  # "::" or a full 8-group form
_HEX_COLON = frozenset(b"0123456789abcdefABCDEF:")


def _scan_ipv6(data: bytes) -> list[Hit]:
    hits: list[Hit] = []
    pos = 0
    while (t := _IPV6_TRIGGER.search(data, pos)) is not None:
        start = t.start()
        while start > 0 and t.start() - start < 40 and data[start - 1] in _HEX_COLON:
            start -= 1
        pos = t.start() + 1
        m = _IPV6_RE.match(data, start)
        if m is None:
            continue
        cand = m.group()
        addr = _ipv6(cand)
        if addr is None and cand.endswith(b":") and not cand.endswith(b"::"):
            cand = cand[:-1]  # "fe80::1:" before a colon in prose
            addr = _ipv6(cand)
        if addr is not None:
            hits.append((start, start + len(cand), "IP_ADDRESS", addr))
            pos = start + len(cand)
    return hits


def _char_offsets(text: str, data: bytes, hits: list[Hit]) -> list[Hit]:
    """Map byte offsets to str offsets (identity for ASCII text)."""
    if len(data) == len(text):
        return hits
    marks = sorted({p for h in hits for p in h[:2]})
    table: dict[int, int] = {}
    prev_b = prev_c = 0
    for b in marks:
        prev_c += len(data[prev_b:b].decode("utf-8"))
        prev_b = b
        table[b] = prev_c
    return [(table[s], table[e], ent, v) for s, e, ent, v in hits]


_PRIORITY = {e: i for i, e in enumerate(("EMAIL", *_ORDER))}
assert set(_PRIORITY) == set(PII_ENTITIES)


class Redactor:
    """Find and replace PII of the configured entity types.

    `mask` writes `[PHONE]`; `pseudonymize` writes `[PHONE:3f9a1c2b]`, an HMAC-SHA256 token of
    the normalized value under `hmac_key` (a random per-instance key when none is given), so
    one value maps to one token for one key. `counts` accumulates per-type totals over all
    `redact()` calls; it never holds values.
    """

    def __init__(
        self,
        entities: Iterable[str] = PII_ENTITIES,
        mode: str = "mask",
        hmac_key: bytes | None = None,
    ) -> None:
        chosen = list(dict.fromkeys(entities))
        unknown = [e for e in chosen if e not in PII_ENTITIES]
        if unknown:
            raise ValueError(f"unknown PII entities {unknown}; known: {list(PII_ENTITIES)}")
        if mode not in MODES:
            raise ValueError(f"unknown redaction mode {mode!r}; expected one of {MODES}")
        self.entities: tuple[str, ...] = tuple(e for e in PII_ENTITIES if e in chosen)
        self._set = frozenset(self.entities)
        self.mode = mode
        self._key = hmac_key if hmac_key is not None else secrets.token_bytes(32)
        self.counts: collections.Counter[str] = collections.Counter()

    def _hits(self, data: bytes) -> list[Hit]:
        """Validated, non-overlapping detections in byte offsets of the UTF-8 text."""
        found = _scan_shapes(data, self._set)
        if "EMAIL" in self._set and b"@" in data:
            found += _scan_email(data)
        if "IP_ADDRESS" in self._set and b":" in data:
            found += _scan_ipv6(data)
        if len(found) > 1:
            # Leftmost, then longest, then by priority; drop whatever overlaps a kept span.
            found.sort(key=lambda f: (f[0], f[0] - f[1], _PRIORITY[f[2]]))
            kept: list[Hit] = []
            last_end = -1
            for f in found:
                if f[0] >= last_end:
                    kept.append(f)
                    last_end = f[1]
            found = kept
        return found

    def find(self, text: str) -> list[Span]:
        """Non-overlapping detections, in text order (does not update `counts`)."""
        data = text.encode("utf-8")
        hits = _char_offsets(text, data, self._hits(data))
        return [Span(s, e, ent) for s, e, ent, _ in hits]

    def token(self, entity: str, value: str) -> str:
        """The replacement for one normalized value."""
        if self.mode == "mask":
            return f"[{entity}]"
        digest = hmac.new(self._key, f"{entity}\x00{value}".encode(), hashlib.sha256).hexdigest()
        return f"[{entity}:{digest[:8]}]"

    def redact(self, text: str) -> str:
        """`text` with every detected entity replaced; updates `counts`."""
        data = text.encode("utf-8")
        hits = self._hits(data)
        if not hits:
            return text
        parts: list[bytes] = []
        pos = 0
        for start, end, entity, value in hits:
            parts.append(data[pos:start])
            parts.append(self.token(entity, value).encode())
            pos = end
            self.counts[entity] += 1
        parts.append(data[pos:])
        return b"".join(parts).decode("utf-8")
