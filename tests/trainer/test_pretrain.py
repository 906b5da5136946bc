"""Public pretraining of the tiny model: it learns (held-out public text loss falls), the
public corpus is deterministic and distinct from the private demo notes, and the saved
model still passes the trainer's manifest check (and a pinned digest moves with it)."""

from __future__ import annotations

from pathlib import Path

from tests.trainer.trainerkit import TINY

from sealtune_devkit.demo import make_patient_notes
from sealtune_devkit.pretrain import (
    PUBLIC_HELD_OUT_SEED,
    PUBLIC_SEED,
    pretrain,
    public_corpus,
    text_loss,
)
from sealtune_devkit.tinymodel import make_tiny_llama, manifest_digest
from sealtune_trainer.model_loading import (
    ModelIntegrityError,
    load_tokenizer,
    verify_model_dir,
)


def test_public_corpus_is_deterministic_and_not_the_private_notes(tiny_model: Path) -> None:
    tok = load_tokenizer(tiny_model)
    a = public_corpus(300, PUBLIC_SEED, chat_template=tok)
    assert a == public_corpus(300, PUBLIC_SEED, chat_template=tok)
    assert a != public_corpus(300, PUBLIC_HELD_OUT_SEED, chat_template=tok)
    assert any(t.startswith(tok.bos_token) for t in a)  # chat-format public Q&A
    assert any(not t.startswith(tok.bos_token) for t in a)  # plain text
    private = make_patient_notes(50, seed=7)
    # neither the private summary format nor the notes' opening appear in public text
    assert not any("; plan:" in t or "presented with" in t for t in a)
    assert not any(r["output"] in t for r in private for t in a)


def test_pretraining_lowers_held_out_loss_and_manifest_verifies(tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    model_dir = make_tiny_llama(tmp_path / "tiny", seed=0, **TINY)  # type: ignore[arg-type]
    random_digest = manifest_digest(model_dir)
    tok = load_tokenizer(model_dir)
    held_out = public_corpus(100, PUBLIC_HELD_OUT_SEED, chat_template=tok)
    before = text_loss(model_dir, held_out)

    result = pretrain(
        model_dir, public_corpus(800, PUBLIC_SEED, chat_template=tok), 60, 3e-3, seed=0
    )

    after = text_loss(model_dir, held_out)
    assert after < before - 1.0, (before, after)
    assert result.last_loss < result.first_loss
    # saved in place, manifest regenerated exactly as tinymodel writes it
    assert result.manifest_sha256 == manifest_digest(model_dir) != random_digest
    assert verify_model_dir(model_dir, result.manifest_sha256) == result.manifest_sha256
    try:
        verify_model_dir(model_dir, random_digest)
    except ModelIntegrityError:
        pass
    else:  # pragma: no cover - the old pin must not match the new weights
        raise AssertionError("the random-init digest still verifies the pretrained model")
    assert (model_dir / "model.safetensors").is_file()
    assert not list(model_dir.glob("*.bin"))
