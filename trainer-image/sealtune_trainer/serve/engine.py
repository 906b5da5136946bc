"""The generation engine: base model + in-memory adapter, one KV-cached decoding loop.

One small loop instead of `model.generate` because the server needs, per token, three
things `generate` makes awkward: text deltas that never cross a stop sequence,
cancellation when a client goes away, and exact token counts for the audit log. The
benchmark's bare server calls the same `Engine.generate`, so the overhead it measures is
the server's, not the loop's.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from sealtune_api.serve_config import ServeConfig

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class SamplingParams:
    """What a request may set about decoding."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None


@dataclass
class Generation:
    """One finished completion."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    token_ids: list[int] = field(default_factory=list)


class Engine:
    """A causal LM and its tokenizer; `generate` is thread-safe (one sequence at a time)."""

    def __init__(self, model: Any, tokenizer: Any, *, model_name: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.device = next(model.parameters()).device
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        eos = tokenizer.eos_token_id
        self.eos_ids: set[int] = {eos} if isinstance(eos, int) else set(eos or ())
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self._lock = threading.Lock()

    @classmethod
    def load(cls, cfg: ServeConfig) -> Engine:
        """Load the base model offline and apply the decrypted adapter in memory."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = _pick_device(cfg.device)
        dtype = _pick_dtype(cfg.dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(cfg.model_dir, local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(
            cfg.model_dir, local_files_only=True, dtype=dtype
        )
        model = model.to(device)
        if cfg.adapter_path:
            from sealtune_trainer.serve.adapter import apply_adapter, load_adapter

            state, adapter_cfg = load_adapter(Path(cfg.adapter_path), Path(cfg.adapter_key_file))
            model = apply_adapter(model, state, adapter_cfg, merge=cfg.merge_adapter)
            del state
        return cls(model, tokenizer, model_name=cfg.model_name)

    # -- prompts ---------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a plain completion prompt."""
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat, rendered with the model's own chat template."""
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, text: str) -> int:
        """Number of tokens in `text` (for audit counts of filtered output)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- decoding --------------------------------------------------------------------------
    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Generation:
        """Decode up to `params.max_tokens` tokens; `on_text` receives text deltas as they
        become final (never past a stop sequence, never half a UTF-8 character)."""
        with self._lock, torch.inference_mode():
            return self._generate(prompt_ids, params, on_text, cancel)

    def _generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        on_text: Callable[[str], None] | None,
        cancel: threading.Event | None,
    ) -> Generation:
        rng = torch.Generator(device=self.device)
        rng.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
        stops = [s for s in params.stop if s]
        hold = max((len(s) for s in stops), default=1) - 1
        generated: list[int] = []
        emitted = ""
        text = ""
        finish: FinishReason = "length"
        out = self.model(input_ids=torch.tensor([prompt_ids], device=self.device), use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1, :]
        for step in range(params.max_tokens):
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            token = _sample(logits, params.temperature, params.top_p, rng)
            if token in self.eos_ids:
                finish = "stop"
                break
            generated.append(token)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            cut = _first_stop(text, stops)
            if cut is not None:
                text = text[:cut]
                finish = "stop"
                break
            safe = text[: len(text) - hold] if hold else text
            if (
                on_text is not None
                and len(safe) > len(emitted)
                and not safe.endswith("\ufffd")
                and safe.startswith(emitted)
            ):
                on_text(safe[len(emitted) :])
                emitted = safe
            if step + 1 < params.max_tokens:
                out = self.model(
                    input_ids=torch.tensor([[token]], device=self.device),
                    past_key_values=past,
                    use_cache=True,
                )
                past, logits = out.past_key_values, out.logits[:, -1, :]
        if on_text is not None and len(text) > len(emitted) and text.startswith(emitted):
            on_text(text[len(emitted) :])
        return Generation(
            text=text,
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(generated),
            finish_reason=finish,
            token_ids=generated,
        )


def _sample(logits: torch.Tensor, temperature: float, top_p: float, rng: torch.Generator) -> int:
    """Greedy at temperature 0, otherwise temperature + nucleus sampling."""
    if temperature <= 0:
        return int(torch.argmax(logits, dim=-1).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)[0]
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=0) - sorted_probs < top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=rng).item())


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
