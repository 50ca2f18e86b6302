"""``edge cloud`` and ``edge fleet``: hub-side commands (filled in by the sync layer)."""

from __future__ import annotations

import argparse
from typing import Any

from edge.errors import EdgeError


def register(sub: Any) -> None:
    """Add ``cloud`` and ``fleet`` command groups."""


async def dispatch(args: argparse.Namespace) -> int:
    raise EdgeError(f"unknown command {args.command!r}")
