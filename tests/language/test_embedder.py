"""The embedders: the real int8 MiniLM (the `language` extra) and the lexical fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.language.embedder import LexicalEmbedder, OnnxEmbedder, default_model_path, load_embedder
from edge.language.errors import EmbedderError


def test_the_language_extra_and_model_are_installed() -> None:
    # the tests run against the real model: make setup installs it (a missing one must fail here)
    assert default_model_path() is not None
    loaded = load_embedder("auto")
    assert loaded.embedder.kind == "minilm" and loaded.fallback_reason is None


def test_minilm_puts_paraphrases_closer_than_unrelated_text() -> None:
    emb = load_embedder("minilm").embedder
    v = emb.embed(["the battery is almost empty", "battery level critically low",
                   "a face was detected by the camera"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    again = emb.embed(["a face was detected by the camera", "the battery is almost empty"])
    assert np.allclose(again[1], v[0], atol=1e-5)  # batch order does not change a vector
    assert emb.digest == load_embedder("minilm").embedder.digest


def test_auto_falls_back_to_lexical_and_says_why(tmp_path: Path) -> None:
    loaded = load_embedder("auto", model_path=tmp_path / "missing.onnx")
    assert loaded.embedder.kind == "lexical"
    assert loaded.fallback_reason and "missing.onnx" in loaded.fallback_reason


def test_minilm_asked_for_explicitly_refuses_a_missing_or_bad_model(tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match="cannot read"):
        load_embedder("minilm", model_path=tmp_path / "missing.onnx")
    with pytest.raises(EmbedderError) as err:
        load_embedder("minilm", model=b"this is not an onnx graph")
    assert err.value.reason == "bad-model"
    with pytest.raises(EmbedderError, match="vocab"):
        OnnxEmbedder(b"x", tmp_path / "no-vocab.txt")


def test_lexical_matches_shared_words_and_spellings() -> None:
    emb = LexicalEmbedder()
    v = emb.embed(["GPS fix lost", "gps fix was lost again", "battery low", ""])
    assert np.allclose(np.linalg.norm(v[:3], axis=1), 1.0, atol=1e-5)
    assert not v[3].any()  # nothing to say: a zero vector, not NaN
    assert v[0] @ v[1] > 0.5 > v[0] @ v[2]
