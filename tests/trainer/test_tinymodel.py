"""The generated tiny model: deterministic per seed, loadable offline, with a chat template."""

from __future__ import annotations

from pathlib import Path

from tests.trainer.trainerkit import TINY

from sealtune_devkit.tinymodel import make_tiny_llama, manifest_digest


def test_same_seed_same_bytes_and_other_seed_differs(tiny_model: Path, tmp_path: Path) -> None:
    again = make_tiny_llama(tmp_path / "again", seed=0, **TINY)  # type: ignore[arg-type]
    other = make_tiny_llama(tmp_path / "other", seed=1, **TINY)  # type: ignore[arg-type]
    assert manifest_digest(again) == manifest_digest(tiny_model)
    assert manifest_digest(other) != manifest_digest(tiny_model)
    assert (again / "SHA256SUMS").read_text() == (tiny_model / "SHA256SUMS").read_text()


def test_loads_offline_with_chat_template(tiny_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), local_files_only=True)
    assert model.config.hidden_size == TINY["hidden_size"]
    assert model.config.model_type == "llama"
    assert {tok.pad_token, tok.bos_token, tok.eos_token} == {"<pad>", "<s>", "</s>"}
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi 王伟"}, {"role": "assistant", "content": "ok"}],
        tokenize=False,
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte-level BPE round-trips any text
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok))
    sums = (tiny_model / "SHA256SUMS").read_text().splitlines()
    files = {line.split("  ", 1)[1] for line in sums}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= files
