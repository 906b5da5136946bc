"""Generate a tiny, seeded, Llama-shaped model with its tokenizer, entirely offline.

Air-gapped tests, the demo and the serving runtime need a real `LlamaForCausalLM`
directory that looks exactly like a downloaded one (safetensors weights, config,
`tokenizer.json` with a chat template, a `SHA256SUMS` manifest) but nothing can be
fetched from a hub. The weights are random-init from `seed`; the tokenizer is a
byte-level BPE trained on a seeded built-in corpus, so the same seed gives byte-identical
files (and therefore the same manifest digest) on every machine.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

# Special tokens, in id order (ids 0..3).
PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)

# A minimal chat template in the Llama/ChatML spirit: role headers, one EOS per turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

MANIFEST_NAME = "SHA256SUMS"

_WORDS = (  # noqa: SIM905
    "the patient was admitted with reported pain fever cough after surgery on day "
    "and discharged home stable follow up in clinic blood pressure heart rate normal "
    "prescribed medication dose daily twice tablet history of diabetes asthma allergy "
    "doctor nurse ward hospital visit note summary name phone number id card address "
    "contact family mother father son daughter age years old male female record "
    "instruction input response question answer explain describe list write short "
    "what is how why when where who please give a an of to in for with on at by from "
    "user assistant system secret code account bank card email mail result test scan "
    "negative positive mild severe acute chronic treatment plan review labs glucose "
    "insulin antibiotic infection recovery rest diet water sleep monday tuesday friday"
).split()


def _corpus(seed: int, lines: int = 4000) -> list[str]:
    """A seeded pseudo-text corpus covering words, digits, punctuation and CJK names."""
    rng = random.Random(seed)
    surnames = "王李张刘陈杨黄赵吴周"
    out: list[str] = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
        if rng.random() < 0.4:
            words.insert(
                rng.randrange(len(words) + 1), str(rng.randint(0, 10 ** rng.randint(1, 11)))
            )
        if rng.random() < 0.1:
            words.append(rng.choice(surnames) + rng.choice(surnames))
        sentence = " ".join(words)
        out.append(sentence[0].upper() + sentence[1:] + rng.choice([".", "?", "!", ":", ","]))
    out.append("".join(chr(c) for c in range(32, 127)))
    out.append("<|user|>\n<|assistant|>\n<|system|>\n[EMAIL] [PHONE] [CN_ID] [BANK_CARD] [IBAN]")
    return out


def build_tokenizer(vocab_size: int = 512, seed: int = 0) -> Any:
    """Train a byte-level BPE tokenizer on the seeded corpus; returns a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def write_manifest(model_dir: Path) -> str:
    """Write `SHA256SUMS` (sha256sum format, sorted); return the manifest's own sha256."""
    lines = []
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        if rel == MANIFEST_NAME:
            continue
        lines.append(f"{_sha256_of(path)}  {rel}\n")
    manifest = model_dir / MANIFEST_NAME
    manifest.write_text("".join(lines), encoding="utf-8")
    return _sha256_of(manifest)


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_tiny_llama(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 512,
    max_position: int = 1024,
    intermediate_size: int | None = None,
    tie_word_embeddings: bool = True,
) -> Path:
    """Write a random-init seeded `LlamaForCausalLM` + tokenizer + SHA256SUMS into `out_dir`.

    Returns the directory. The manifest digest (sha256 of `SHA256SUMS`) is what a
    FineTuneJob pins in `spec.model.manifestSha256`; get it with `manifest_digest()`.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size=vocab_size, seed=seed)
    real_vocab = len(tokenizer)
    config = LlamaConfig(
        vocab_size=real_vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_manifest(out)
    return out


def manifest_digest(model_dir: str | Path) -> str:
    """sha256 of the model directory's SHA256SUMS manifest (what a job pins)."""
    return _sha256_of(Path(model_dir) / MANIFEST_NAME)
