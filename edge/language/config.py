"""The ``[language]`` config table -> :class:`LanguageConfig`.

::

    [language]
    enabled = true                 # false: no language layer at all
    embedder = "auto"              # auto (MiniLM when the `language` extra is installed, else lexical) | minilm | lexical
    model_path = ""                # an int8 ONNX sentence model; default: the one of the model package
    vocab_path = ""                # its WordPiece vocab.txt; default: the copy shipped with edge
    model_bucket = ""              # JetStream object store bucket holding the model (over-the-air updates)
    model_object = "minilm.onnx"   # the object in that bucket
    threads = 1                    # ONNX Runtime intra-op threads
    documents = []                 # files or directories (*.md, *.txt) indexed as manuals; default: docs/ of the install
    skip_kinds = ["detection", "novelty"]   # event kinds not indexed (high rate, or our own output)
    novelty_threshold = 0.55       # a line whose nearest earlier line of its entity is less similar than 1 - this is novel
    max_entries = 200000           # index size limit (oldest stream entries evicted first; documents kept)

Read with the config reader (:class:`edge.config.table.Table`); errors name ``language.<key>`` and the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config.table import Table

EMBEDDERS = ("auto", "minilm", "lexical")
DEFAULT_MODEL_OBJECT = "minilm.onnx"
DEFAULT_SKIP_KINDS = ("detection", "novelty")
DEFAULT_NOVELTY_THRESHOLD = 0.55
DEFAULT_MAX_ENTRIES = 200_000
MAX_TEXT_CHARS = 2000  # one indexed text is cut to this many characters
BUCKET_RE_DOC = "A-Z a-z 0-9 _ -"


@dataclass(frozen=True)
class LanguageConfig:
    """The validated ``[language]`` table (see the module docstring for every key)."""

    enabled: bool = True
    embedder: str = "auto"
    model_path: Path | None = None
    vocab_path: Path | None = None
    model_bucket: str = ""
    model_object: str = DEFAULT_MODEL_OBJECT
    threads: int = 1
    documents: tuple[Path, ...] | None = None  # None = the docs/ directory of the install, if present
    skip_kinds: tuple[str, ...] = DEFAULT_SKIP_KINDS
    novelty_threshold: float = DEFAULT_NOVELTY_THRESHOLD
    max_entries: int = DEFAULT_MAX_ENTRIES
    manifests: tuple[Path, ...] = field(default_factory=tuple)  # component manifests (from [[components]])


def read_language(t: Table) -> LanguageConfig:
    """The ``[language]`` table (absent -> defaults: enabled, auto embedder)."""
    import re

    enabled = t.flag("enabled", True)
    embedder = t.choice("embedder", EMBEDDERS, "auto")
    model_path = t.path("model_path", None)
    vocab_path = t.path("vocab_path", None)
    bucket = t.text("model_bucket", "")
    if bucket and not re.match(r"^[A-Za-z0-9_-]{1,64}$", bucket):
        raise t.error("model_bucket", f"bucket names are 1-64 characters of {BUCKET_RE_DOC}")
    obj = t.text("model_object", DEFAULT_MODEL_OBJECT, nonempty=True)
    threads = t.integer("threads", 1, lo=1, hi=8)
    docs: tuple[Path, ...] | None = None
    if t.has("documents"):
        names = t.strings("documents")
        docs = tuple(Path(n).expanduser() if Path(n).expanduser().is_absolute() else t.base / n for n in names)
    skip = tuple(t.strings("skip_kinds", list(DEFAULT_SKIP_KINDS)))
    novelty = t.number("novelty_threshold", DEFAULT_NOVELTY_THRESHOLD, lo=0.0, hi=2.0)
    max_entries = t.integer("max_entries", DEFAULT_MAX_ENTRIES, lo=100, hi=10_000_000, unit="entries")
    t.finish()
    return LanguageConfig(enabled, embedder, model_path, vocab_path, bucket, obj, threads, docs, skip,
                          novelty, max_entries)


def parse_language_config(raw: Any, *, file: str | None = None) -> LanguageConfig:
    """:func:`read_language` over a parsed ``[language]`` value (None -> defaults)."""
    return read_language(Table(raw if raw is not None else {}, key="language", file=file))
