"""Command groups contributed by the drivers, sync and inference layers (hw, cloud, fleet)."""

from __future__ import annotations

import argparse
from typing import Any

from edge.errors import EdgeError


def register(sub: Any) -> None:
    """Add the extra command groups to the ``edge`` parser."""


async def dispatch(args: argparse.Namespace) -> int:
    raise EdgeError(f"unknown command {args.command!r}")
