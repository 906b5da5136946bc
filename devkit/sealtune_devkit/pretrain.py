"""Give the tiny generated model something a base model has: a little language, learned
from PUBLIC text.

`make_tiny_llama` writes random weights, and LoRA on a random network learns almost
nothing in a demo's few steps (privacy review 2026-11, section 2.8): with or without DP,
"loss before -> after" was no evidence. `pretrain` trains the *whole* tiny model (every
weight, plain AdamW, no DP: the text is public) for a short while on clinical-style
sentences generated here from templates with a fixed public seed, then saves it in place
(safetensors) and rewrites the directory's `SHA256SUMS` exactly as `tinymodel` does, so the
new manifest digest pins the pretrained weights and the trainer's integrity check passes.

The public corpus uses the same public vocabulary as the demo (name lists, conditions,
treatments: general medical knowledge) in *other* templates, and a share of public
question/answer pairs in the model's chat template. It never contains the private demo
notes or their summary format, nor the benchmark's private rule (which ward a condition
goes to): those are what the private fine-tune has to learn.

    python -m sealtune_devkit.pretrain MODEL_DIR [--steps 300] [--lr 3e-3]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealtune_devkit.demo import CONDITIONS, GIVEN, PLANS, SURNAMES
from sealtune_devkit.tinymodel import manifest_digest, write_manifest

# Public seeds (documented, anyone may regenerate the text): one for the pretraining
# corpus, one for held-out public text.
PUBLIC_SEED = 20261101
PUBLIC_HELD_OUT_SEED = 20261102

_PLAIN = (
    "{name} is {age} years old and came to the clinic with {cond}. The doctor advised "
    "{plan}. {name} will come back for a follow up visit.",
    "Discharge letter for {name}, aged {age}. Reason for the visit: {cond}. Treatment "
    "given: {plan}. {name} went home stable.",
    "For {cond} the usual treatment is {plan}.",
    "Ward round: {name} is stable today. {name} was admitted with {cond} and is on {plan}.",
    "Clinic note. {name}, {age} years, ID [CN_ID], phone [PHONE]. Complaint: {cond}. "
    "Advice: {plan}.",
    "The nurse called {name} at [PHONE] about the follow up for {cond}.",
    "Patients with {cond} often recover well with {plan}.",
)
_CHAT = (
    ("What is the usual treatment for {cond}?", "The usual treatment for {cond} is {plan}."),
    ("Who is the patient in this note? {name}, {age} years, came in with {cond}.", "{name}."),
    ("How old is {name}? The note says {name} is {age} years old.", "{name} is {age}."),
    ("What did {name} come in with? {name} reported {cond}.", "{name} came in with {cond}."),
    ("Write one line about {cond}.", "{cond} is treated with {plan}."),
    # Short answers (a weekday) in the chat format: a base model knows *how* to answer;
    # *which* day a private rule gives is for the fine-tune to learn.
    ("Which day is the {place} open this week?", "{day}"),
)
PLACES = ("pharmacy", "blood test lab", "x-ray room", "vaccine desk", "dental clinic", "eye clinic")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
CHAT_SHARE = 0.35


def _fill(template: str, rng: random.Random) -> str:
    k = rng.randrange(len(CONDITIONS))
    text = template.format(
        name=f"{rng.choice(GIVEN)} {rng.choice(SURNAMES)}",
        age=rng.randint(18, 90),
        cond=CONDITIONS[k],
        plan=PLANS[k],
        place=rng.choice(PLACES),
        day=rng.choice(DAYS),
    )
    if template == "{day}":  # a bare answer stays lower case, as the private answers are
        return text
    return text[0].upper() + text[1:]


def public_corpus(n: int, seed: int = PUBLIC_SEED, *, chat_template: Any = None) -> list[str]:
    """`n` public clinical-style documents from templates (deterministic per seed).

    With `chat_template` (a tokenizer), about a third are public question/answer pairs
    rendered with its chat template; otherwise all are plain text.
    """
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        if chat_template is not None and rng.random() < CHAT_SHARE:
            q, a = _CHAT[rng.randrange(len(_CHAT))]
            # One fill for both turns: the answer copies the question's name and condition.
            state = rng.getstate()
            user = _fill(q, rng)
            rng.setstate(state)
            assistant = _fill(a, rng)
            msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
            out.append(str(chat_template.apply_chat_template(msgs, tokenize=False)))
        else:
            parts = [
                _fill(_PLAIN[rng.randrange(len(_PLAIN))], rng) for _ in range(rng.randint(1, 3))
            ]
            out.append(" ".join(parts))
    return out


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per document: BOS + text + EOS (chat-rendered text carries its own)."""
    docs: list[list[int]] = []
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if not text.startswith(tokenizer.bos_token or "\x00"):
            ids = [bos, *ids, eos]
        docs.append(ids)
    return docs


def _load(model_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), local_files_only=True, dtype=torch.float32
    )
    return model, tok


def _docs_loss(model: Any, docs: Sequence[list[int]], pad_id: int, batch: int = 32) -> float:
    """Mean next-token NLL over every token of `docs` (eval mode, no grad)."""
    import torch
    from torch.nn import functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(docs), batch):
            chunk = docs[i : i + batch]
            width = max(len(d) for d in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, d in enumerate(chunk):
                ids[j, : len(d)] = torch.tensor(d)
                mask[j, : len(d)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            nll = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                target.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total += float(nll)
            count += int((target != -100).sum())
    return total / max(1, count)


def text_loss(model_dir: str | Path, texts: Sequence[str]) -> float:
    """Mean per-token loss of the model in `model_dir` on `texts` (public text only)."""
    model, tok = _load(Path(model_dir))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return _docs_loss(model, _encode(tok, texts), pad)


@dataclass(frozen=True)
class PretrainResult:
    steps: int
    seconds: float
    tokens: int
    first_loss: float  # training loss of the first step (public text: free to print)
    last_loss: float  # mean training loss of the last 10% of steps
    manifest_sha256: str  # the new manifest digest a FineTuneJob pins
    held_out_before: float | None = None  # loss on held-out public text, if given
    held_out_after: float | None = None


def pretrain(
    model_dir: str | Path,
    texts: Sequence[str],
    steps: int,
    lr: float,
    seed: int = 0,
    *,
    batch_size: int = 16,
    seq_len: int = 128,
    weight_decay: float = 0.01,
    threads: int | None = None,
    held_out: Sequence[str] = (),
) -> PretrainResult:
    """Train every weight of the model in `model_dir` on public `texts`, save it in place.

    Documents are packed into one token stream (BOS ... EOS between them) and cut into
    `seq_len` blocks; each step takes `batch_size` random blocks. AdamW at `lr` with a 10%
    warmup and cosine decay, gradient norm clipped at 1 (optimisation hygiene, not DP).
    The weights are written back as safetensors and `SHA256SUMS` is regenerated.
    With `held_out` (public text never trained on), its loss before and after is reported.
    """
    import torch
    from torch.nn import functional as F

    if steps < 1:
        raise ValueError("steps must be >= 1")
    root = Path(model_dir)
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, tok = _load(root)
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            held_docs = _encode(tok, held_out)
            before = _docs_loss(model, held_docs, pad) if held_docs else None
            stream = [t for doc in _encode(tok, texts) for t in doc]
            if len(stream) < seq_len + 1:
                raise ValueError("not enough public text for one training block")
            data = torch.tensor(stream, dtype=torch.long)
            n_blocks = (len(stream) - 1) // seq_len
            gen = torch.Generator().manual_seed(seed)
            model.train()
            model.config.use_cache = False
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
            warm = max(1, steps // 10)

            def schedule(s: int) -> float:
                if s < warm:
                    return (s + 1) / warm
                return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
            losses: list[float] = []
            for _ in range(steps):
                starts = torch.randint(0, n_blocks, (batch_size,), generator=gen) * seq_len
                idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
                block = data[idx]
                logits = model(input_ids=block[:, :-1]).logits
                loss = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), block[:, 1:].reshape(-1)
                )
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
            after = _docs_loss(model, held_docs, pad) if held_docs else None
            model.eval()
            model.save_pretrained(root, safe_serialization=True)
    finally:
        torch.set_num_threads(old_threads)
    write_manifest(root)
    tail = losses[-max(1, steps // 10) :]
    return PretrainResult(
        steps=steps,
        seconds=time.perf_counter() - t0,
        tokens=steps * batch_size * seq_len,
        first_loss=losses[0],
        last_loss=sum(tail) / len(tail),
        manifest_sha256=manifest_digest(root),
        held_out_before=before,
        held_out_after=after,
    )


def make_pretrained_tiny_llama(
    out_dir: str | Path,
    *,
    seed: int = 0,
    docs: int = 4000,
    steps: int = 400,
    lr: float = 3e-3,
    held_out_docs: int = 200,
    **sizes: Any,
) -> tuple[Path, PretrainResult]:
    """`make_tiny_llama(out_dir, seed=seed, **sizes)`, then `pretrain` it on the public corpus.

    Held-out public text (another public seed) measures what pretraining taught. On 2 CPU
    cores the demo size (hidden 64, 2 layers) takes about 7 s per 100 steps.
    """
    from transformers import AutoTokenizer

    from sealtune_devkit.tinymodel import make_tiny_llama

    path = make_tiny_llama(out_dir, seed=seed, **sizes)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    result = pretrain(
        path,
        public_corpus(docs, PUBLIC_SEED, chat_template=tok),
        steps,
        lr,
        seed,
        threads=1,
        held_out=public_corpus(held_out_docs, PUBLIC_HELD_OUT_SEED, chat_template=tok),
    )
    return path, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sealtune_devkit.pretrain", description=__doc__)
    ap.add_argument("model_dir")
    ap.add_argument("--docs", type=int, default=4000, help="public documents to generate")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    res = pretrain(
        args.model_dir,
        public_corpus(args.docs, PUBLIC_SEED, chat_template=tok),
        args.steps,
        args.lr,
        args.seed,
        threads=1,
        held_out=public_corpus(200, PUBLIC_HELD_OUT_SEED, chat_template=tok),
    )
    print(
        f"pretrained {res.steps} steps in {res.seconds:.0f}s; held-out public loss "
        f"{res.held_out_before:.3f} -> {res.held_out_after:.3f}; "
        f"manifestSha256 {res.manifest_sha256}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
