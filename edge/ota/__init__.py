"""Signed over-the-air updates of components (docs/ota.md)."""
