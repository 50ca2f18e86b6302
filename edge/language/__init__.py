"""The language system: the device's text (events, status texts, decisions, command results, log
lines, tool calls, notes, manuals) embedded and searchable by meaning, on the device (docs/language.md)."""
