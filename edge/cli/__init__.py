"""The ``edge`` command. Thin: parsing and printing; the work is done by the runtime and its API."""
