"""Local TFLite inference: backend selection, models, a hot-reloading registry, vision pipelines.

Import the submodules you need; nothing here loads a native library at import time.
"""

from __future__ import annotations

from edge.inference.errors import InferenceError

__all__ = ["InferenceError"]
