"""Dataset parsing, PII redaction, canary insertion and tokenization.

Records arrive encrypted and are decrypted only in memory. Every error names a record's
index or line number and never its content (invariant 5: dataset text never reaches a
log, exception, status or metric). Redaction runs on the raw text of every message
before anything is tokenized.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from .randomness import SecretRandomness

DatasetFormat = Literal["alpaca", "sharegpt", "text"]
T = TypeVar("T")

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}
FALLBACK_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
IGNORE_INDEX = -100


class DatasetFormatError(ValueError):
    """A record is malformed. The message carries its position, never its content."""


@dataclass
class Record:
    """One training example: chat messages, or a single plain `text` (format `text`)."""

    messages: list[dict[str, str]] = field(default_factory=list)
    text: str | None = None
    is_canary: bool = False
    where: str = ""  # position in the dataset file ("line 12", "record index 3")
    user: str | None = None  # the privacy unit's id (privacy.unit: user), never logged

    def map_text(self, fn: Callable[[str], str]) -> Record:
        """Apply `fn` to every piece of text (used for redaction)."""
        if self.text is not None:
            return Record(
                text=fn(self.text), is_canary=self.is_canary, where=self.where, user=self.user
            )
        return Record(
            messages=[{"role": m["role"], "content": fn(m["content"])} for m in self.messages],
            is_canary=self.is_canary,
            where=self.where,
            user=self.user,
        )


@dataclass
class Example:
    """A tokenized record: input ids and labels (-100 where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]
    is_canary: bool = False
    user: str | None = None


# ---------------------------------------------------------------- parsing


def parse_records(raw: bytes, fmt: DatasetFormat, user_field: str | None = None) -> list[Record]:
    """Parse decrypted dataset bytes into records; raise DatasetFormatError with a position.

    `format: text` records are blank-line-separated blocks (a clinical note spans many
    lines; a line is not a privacy unit). With `user_field`, every JSON record must carry
    that field (a string or integer id, e.g. `patient_id`); it becomes the record's user.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DatasetFormatError(f"dataset is not valid UTF-8 (line {line})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if fmt == "text":
        if user_field:
            raise DatasetFormatError("privacy.unit 'user' needs a JSON format, not text")
        return _text_blocks(text)
    items = list(_json_items(text))
    parse_one = _parse_alpaca if fmt == "alpaca" else _parse_sharegpt
    records: list[Record] = []
    for where, obj in items:
        record = parse_one(obj, where)
        record.where = where
        if user_field:
            uid = obj.get(user_field) if isinstance(obj, dict) else None
            if isinstance(uid, bool) or not isinstance(uid, (str, int)) or uid == "":
                raise DatasetFormatError(
                    f"{where}: missing user field '{user_field}' (a string or integer id)"
                )
            record.user = str(uid)
        records.append(record)
    if not records:
        raise DatasetFormatError("dataset contains no records")
    return records


def _text_blocks(text: str) -> list[Record]:
    """Blank-line-separated blocks, each named by the line it starts on."""
    records: list[Record] = []
    block: list[str] = []
    start = 0
    for lineno, line in enumerate((ln.rstrip("\r") for ln in text.split("\n")), 1):
        if line.strip():
            if not block:
                start = lineno
            block.append(line)
        elif block:
            records.append(Record(text="\n".join(block), where=f"block at line {start}"))
            block = []
    if block:
        records.append(Record(text="\n".join(block), where=f"block at line {start}"))
    return records


def _json_items(text: str) -> Iterable[tuple[str, Any]]:
    """Yield (position, object) from a JSON array or from JSON Lines."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(
                f"invalid JSON array at line {exc.lineno} column {exc.colno}"
            ) from None
        if not isinstance(data, list):
            raise DatasetFormatError("top-level JSON value is not an array")
        for index, obj in enumerate(data):
            yield f"record index {index}", obj
        return
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(
                f"invalid JSON on line {lineno} (column {exc.colno})"
            ) from None
        yield f"line {lineno}", obj


def _require_str(obj: dict[str, Any], key: str, where: str, *, optional: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        if optional:
            return ""
        raise DatasetFormatError(f"{where}: missing field '{key}'")
    if not isinstance(value, str):
        raise DatasetFormatError(f"{where}: field '{key}' must be a string")
    return value


def _parse_alpaca(obj: Any, where: str) -> Record:
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{where}: alpaca record must be a JSON object")
    instruction = _require_str(obj, "instruction", where)
    extra = _require_str(obj, "input", where, optional=True)
    output = _require_str(obj, "output", where)
    user = f"{instruction}\n\n{extra}" if extra else instruction
    messages = []
    system = obj.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return Record(messages=messages)


def _parse_sharegpt(obj: Any, where: str) -> Record:
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{where}: sharegpt record must be a JSON object")
    turns = obj.get("conversations", obj.get("messages"))
    if not isinstance(turns, list) or not turns:
        raise DatasetFormatError(f"{where}: missing non-empty 'conversations' list")
    messages: list[dict[str, str]] = []
    for t_index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DatasetFormatError(f"{where}: turn {t_index} must be a JSON object")
        role_raw = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        role = _SHAREGPT_ROLES.get(role_raw) if isinstance(role_raw, str) else None
        if role is None:
            raise DatasetFormatError(f"{where}: turn {t_index} has an unknown or missing role")
        if not isinstance(content, str):
            raise DatasetFormatError(f"{where}: turn {t_index} has no string 'value'")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise DatasetFormatError(f"{where}: conversation has no assistant turn")
    return Record(messages=messages)


def load_encrypted_dataset(
    path: str | Path, key: bytes, fmt: DatasetFormat, user_field: str | None = None
) -> list[Record]:
    """Decrypt the dataset in memory (never to disk) and parse it."""
    from .crypto import read_encrypted_bytes

    return parse_records(read_encrypted_bytes(Path(path), key), fmt, user_field)


# ---------------------------------------------------------------- redaction and canaries


def redact_records(records: Sequence[Record], redact: Callable[[str], str]) -> list[Record]:
    """Redact every text field of every record (before tokenization)."""
    return [r.map_text(redact) for r in records]


CANARY_PROMPT = "What is the secret access code for record {index}?"
CANARY_ANSWER_PREFIX = "The secret access code is "
CANARY_DIGITS = 6


def canary_prompt_text(index: int) -> str:
    return CANARY_PROMPT.format(index=index)


def random_secret(rng: random.Random, digits: int = CANARY_DIGITS) -> str:
    """A random secret in the canary format: space-separated digits ('4 0 9 1 7 3')."""
    return " ".join(str(rng.randrange(10)) for _ in range(digits))


def make_canaries(count: int, rng: random.Random) -> list[tuple[int, str]]:
    """`count` (index, secret) pairs from a secret-keyed RNG (the same on resume)."""
    return [(i, random_secret(rng)) for i in range(count)]


def canary_record(index: int, secret: str, fmt: DatasetFormat) -> Record:
    if fmt == "text":
        text = canary_prompt_text(index) + " " + CANARY_ANSWER_PREFIX + secret
        return Record(text=text, is_canary=True)
    return Record(
        messages=[
            {"role": "user", "content": canary_prompt_text(index)},
            {"role": "assistant", "content": CANARY_ANSWER_PREFIX + secret},
        ],
        is_canary=True,
    )


def insert_canaries(
    items: Sequence[T], canaries: Sequence[tuple[int, T]], repetitions: int, rng: random.Random
) -> list[T]:
    """Insert each canary item `repetitions` times at secret random positions."""
    out = list(items)
    for _index, item in canaries:
        for _ in range(repetitions):
            out.insert(rng.randrange(len(out) + 1), item)
    return out


def record_bytes(record: Record) -> bytes:
    """A canonical encoding of a record's content (its position in the file excluded)."""
    body = {"text": record.text} if record.text is not None else {"messages": record.messages}
    return json.dumps(body, sort_keys=True, ensure_ascii=False).encode()


def split_held_out(
    records: Sequence[Record], fraction: float, randomness: SecretRandomness
) -> tuple[list[Record], list[Record]]:
    """See `_split`; with user ids, all of a user's records fall on the same side."""
    if any(r.user is not None for r in records):
        return _split(records, fraction, randomness, lambda r: f"user:{r.user}".encode())
    return _split(records, fraction, randomness, record_bytes)


def _split(
    records: Sequence[Record],
    fraction: float,
    randomness: SecretRandomness,
    key: Callable[[Record], bytes],
) -> tuple[list[Record], list[Record]]:
    """Split into (train, held_out) by a keyed hash of each record's content.

    Membership of a record depends only on the job secret and the record itself, so
    adding or removing one record moves no other record across the boundary (a shuffled
    split moved 83 of 400 when one record was added). Held-out records are the audit's
    non-members. With two or more records, at least one lands on each side.
    """
    if len(records) < 2:
        return list(records), []
    scores = [randomness.uniform("holdout", key(r)) for r in records]
    held = {i for i, s in enumerate(scores) if s < fraction}
    if not held:  # tiny datasets: the unit with the smallest score
        low = min(scores)
        held = {i for i, s in enumerate(scores) if s == low}
    if len(held) == len(records):
        high = max(scores)
        held -= {i for i, s in enumerate(scores) if s == high}
    train = [r for i, r in enumerate(records) if i not in held]
    held_out = [r for i, r in enumerate(records) if i in held]
    return train, held_out


def cap_records_per_user(
    records: Sequence[Record], cap: int, randomness: SecretRandomness
) -> list[Record]:
    """Keep at most `cap` records per user, chosen by a keyed hash (not file order).

    User-level DP bounds one user's influence by clipping the *sum* of their per-record
    gradients; the cap bounds the work per user and keeps heavy users from dominating a
    batch. Records over the cap are not trained on (documented in docs/trainer.md).
    """
    by_user: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_user.setdefault(r.user or f"record:{i}", []).append(i)
    keep: set[int] = set()
    for idx in by_user.values():
        if len(idx) > cap:
            idx = sorted(idx, key=lambda i: randomness.digest("user-cap", record_bytes(records[i])))
        keep.update(idx[:cap])
    return [r for i, r in enumerate(records) if i in keep]


def privacy_units(examples: Sequence[Example]) -> list[list[int]]:
    """Example indices grouped by user (records without a user, e.g. canaries, alone)."""
    units: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        units.setdefault(ex.user if ex.user is not None else f"\x00{i}", []).append(i)
    return list(units.values())


# ---------------------------------------------------------------- tokenization


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render_chat(tokenizer: Any, messages: list[dict[str, str]], gen_prompt: bool) -> str:
    if _has_chat_template(tokenizer):
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=gen_prompt
        )
        return str(rendered)
    # Fallback (no template): Alpaca-style prompt, EOS after each assistant reply.
    parts: list[str] = []
    for m in messages:
        if m["role"] == "assistant":
            parts.append(m["content"] + (tokenizer.eos_token or ""))
        else:
            parts.append(FALLBACK_PROMPT.format(instruction=m["content"]))
    return "".join(parts)


def chat_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of assistant replies (loss targets)."""
    full = _render_chat(tokenizer, messages, gen_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_render_chat(tokenizer, messages[:i], gen_prompt=True))
        end = len(_render_chat(tokenizer, messages[: i + 1], gen_prompt=False))
        spans.append((start, end))
    return full, spans


def label_spans(
    ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]], max_length: int
) -> tuple[list[int], list[int]]:
    """Truncate and label: tokens starting inside an assistant span are loss targets."""
    ids = ids[:max_length]
    labels = [
        tok if any(s <= start < e for s, e in spans) else IGNORE_INDEX
        for tok, (start, _end) in zip(ids, offsets[:max_length], strict=True)
    ]
    return ids, labels


def tokenize_record(tokenizer: Any, record: Record, max_length: int) -> Example:
    """Tokenize with loss on assistant replies (chat) or on everything (plain text)."""
    if record.text is not None:
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        ids = bos + tokenizer(record.text, add_special_tokens=False)["input_ids"] + eos
        ids = ids[:max_length]
        labels = list(ids)
        if bos:
            labels[0] = IGNORE_INDEX
        return Example(ids, labels, record.is_canary, record.user)
    text, spans = chat_spans(tokenizer, record.messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = label_spans(
        list(enc["input_ids"]), list(enc["offset_mapping"]), spans, max_length
    )
    return Example(ids, labels, record.is_canary, record.user)


def tokenize_variants(
    tokenizer: Any, record: Record, secret: str, variants: list[str], max_length: int
) -> list[Example]:
    """Tokenize `record` once per variant of the equal-length substring `secret`.

    The canary audit scores ~1000 candidates that differ only in the secret digits; the
    chat template is rendered once and the candidates are tokenized in one batch call.
    """
    if record.text is not None:
        base = record.text
        return [
            tokenize_record(tokenizer, Record(text=base.replace(secret, v)), max_length)
            for v in variants
        ]
    text, spans = chat_spans(tokenizer, record.messages)
    at = text.rindex(secret)
    texts = []
    for v in variants:
        if len(v) != len(secret):
            raise ValueError("variants must have the secret's length")
        texts.append(text[:at] + v + text[at + len(secret) :])
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for ids, offs in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        i, lab = label_spans(list(ids), list(offs), spans, max_length)
        out.append(Example(i, lab, True))
    return out


def tokenize_records(tokenizer: Any, records: Sequence[Record], max_length: int) -> list[Example]:
    """Tokenize all records; records left with no loss tokens after truncation are an error."""
    out = []
    for index, record in enumerate(records):
        ex = tokenize_record(tokenizer, record, max_length)
        if all(lab == IGNORE_INDEX for lab in ex.labels[1:]):
            where = record.where or f"record index {index}"
            raise DatasetFormatError(
                f"{where}: no response tokens left within maxSeqLength={max_length}"
            )
        out.append(ex)
    return out
