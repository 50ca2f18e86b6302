"""Render ``edge.service`` from the one service description (``edge/service/service.toml``).

Usage: ``python -m edge.service.unit [--exec PATH] [--check FILE]``: print the unit for the
``edge`` program at PATH (default: the image's ``/opt/edge/venv/bin/edge``), or exit 1 if FILE
differs from it. The NixOS module (``nix/service.nix``) applies the same rules to the same file.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from edge.errors import ConfigError

#: The ``edge`` program of the Debian/Raspberry Pi image.
IMAGE_EXEC = "/opt/edge/venv/bin/edge"
EXEC_MARK = "@EXEC@"
SECTIONS = (("unit", "Unit"), ("service", "Service"), ("install", "Install"))
HEADER = "# Rendered from edge/service/service.toml by `python -m edge.service.unit`; do not edit.\n"


def description_text() -> str:
    return resources.files("edge.service").joinpath("service.toml").read_text(encoding="utf-8")


def description() -> dict[str, Any]:
    """The parsed service description."""
    return tomllib.loads(description_text())


def _value(value: Any, *, key: str) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | str):
        return str(value)
    raise ConfigError(f"unit setting must be a string, integer, boolean or list of them, not {type(value).__name__}",
                      key=key, file="edge/service/service.toml")


def directives(section: Mapping[str, Any], *, exec_path: str, name: str = "") -> list[tuple[str, str]]:
    """(key, value) pairs of one unit section, a list spread into one pair per item."""
    out: list[tuple[str, str]] = []
    for key, value in section.items():
        items: Sequence[Any] = value if isinstance(value, list) else [value]
        for item in items:
            out.append((key, _value(item, key=f"{name}.{key}").replace(EXEC_MARK, exec_path)))
    return out


def render(exec_path: str = IMAGE_EXEC, desc: Mapping[str, Any] | None = None) -> str:
    """The text of ``edge.service`` for the ``edge`` program at ``exec_path``."""
    desc = description() if desc is None else desc
    parts = [HEADER]
    for key, title in SECTIONS:
        parts.append(f"\n[{title}]\n")
        parts.extend(f"{k}={v}\n" for k, v in directives(desc.get(key, {}), exec_path=exec_path, name=key))
    return "".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.service.unit", description=__doc__.splitlines()[0])
    parser.add_argument("--exec", dest="exec_path", default=IMAGE_EXEC, help="path of the edge program")
    parser.add_argument("--check", type=Path, help="exit 1 if this unit file is not the rendered one")
    args = parser.parse_args(argv)
    text = render(args.exec_path)
    if args.check is not None:
        if args.check.read_text(encoding="utf-8") != text:
            print(f"{args.check} differs from the rendered unit; regenerate it with "
                  f"`python -m edge.service.unit > {args.check}`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
