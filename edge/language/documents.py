"""Documents shipped on the device, cut into searchable passages.

* Markdown and text files (the manuals: ``docs/``, driver pages, README): one passage per
  paragraph-sized piece of a section, each led by the file's title and the section heading, so a
  passage read alone still says what it is about. ``source`` is ``<path>#<heading>``.
* Component manifests: ``component <name> <version>: <description>``.

Paths are named relative to the directory given as ``root`` (the install's top directory by
default), so sources read ``docs/agents.md#Decision records``.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

from edge.language.store import DOC_KIND, Entry

PASSAGE_CHARS = 600  # a passage is cut near this many characters (MiniLM reads ~128 word pieces)
DOC_SUFFIXES = (".md", ".txt")
HEADING_RE = re.compile(r"^(#{1,4})\s+(.*)$")
INSTALL_ROOT = Path(__file__).resolve().parent.parent.parent


PACKAGED_DOCS = Path(__file__).resolve().parent.parent / "data" / "docs"  # a wheel's copy (setup.py)


def default_documents() -> tuple[Path, ...]:
    """A source checkout's ``docs/`` and ``README.md``, else the docs a wheel carries in ``edge/data/docs``."""
    found = tuple(p for p in (INSTALL_ROOT / "docs", INSTALL_ROOT / "README.md") if p.exists())
    return found or ((PACKAGED_DOCS,) if PACKAGED_DOCS.is_dir() else ())


def files(paths: Iterable[Path]) -> list[Path]:
    """Every document file under ``paths`` (directories are walked), sorted."""
    out: set[Path] = set()
    for p in paths:
        if p.is_dir():
            out.update(f for f in p.rglob("*") if f.is_file() and f.suffix in DOC_SUFFIXES)
        elif p.is_file():
            out.add(p)
    return sorted(out)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _pieces(paragraphs: list[str]) -> Iterator[str]:
    buf = ""
    for para in paragraphs:
        if buf and len(buf) + len(para) > PASSAGE_CHARS:
            yield buf
            buf = ""
        while len(para) > PASSAGE_CHARS * 2:
            cut = para.rfind(" ", 0, PASSAGE_CHARS) + 1 or PASSAGE_CHARS
            yield para[:cut].strip()
            para = para[cut:]
        buf = f"{buf}\n{para}" if buf else para
    if buf.strip():
        yield buf


def passages(text: str, source: str) -> list[Entry]:
    """A markdown/text document as passages (see the module docstring)."""
    title = Path(source).stem
    heading = ""
    sections: list[tuple[str, list[str]]] = [("", [])]
    para: list[str] = []
    in_code = False

    def flush() -> None:
        if para:
            sections[-1][1].append(" ".join(s.strip() for s in para))
            para.clear()

    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code  # code lines are kept as text (config keys, commands)
            continue
        m = HEADING_RE.match(line) if not in_code else None
        if m:
            flush()
            if len(m.group(1)) == 1 and not sections[0][1] and not heading:
                title = m.group(2).strip()
            heading = m.group(2).strip()
            sections.append((heading, []))
        elif not line.strip():
            flush()
        else:
            para.append(line)
    flush()
    out = []
    for head, paras in sections:
        lead = f"{title} - {head}: " if head and head != title else f"{title}: "
        for piece in _pieces(paras):
            out.append(Entry(text=lead + piece, kind=DOC_KIND, entity="",
                             source=f"{source}#{head}" if head else source))
    return out


def manifest_entry(path: Path, source: str) -> Entry | None:
    """A component manifest's name, version and description (None if it has no description)."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    name, desc = raw.get("name"), raw.get("description")
    if not isinstance(name, str) or not isinstance(desc, str) or not desc.strip():
        return None
    return Entry(text=f"component {name} {raw.get('version', '')}: {desc.strip()}", kind=DOC_KIND,
                 entity=name, source=source)


def read_document(path: Path, root: Path = INSTALL_ROOT) -> tuple[str, str, list[Entry]]:
    """(relative path, sha256, passages) of one file; a ``manifest.toml`` gives one entry."""
    data = path.read_bytes()
    rel = _rel(path, root)
    digest = hashlib.sha256(data).hexdigest()
    if path.name == "manifest.toml":
        entry = manifest_entry(path, rel)
        return rel, digest, [entry] if entry else []
    return rel, digest, passages(data.decode("utf-8", errors="replace"), rel)
