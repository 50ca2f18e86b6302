"""Packaging hook: the wheel carries the built WebAssembly components and the device docs.

Everything else is declared in pyproject.toml. ``build_py`` builds every component with
components/build.py (clang for wasm32; the modules do not depend on the CPU, so one wheel serves
every board), or takes them prebuilt from $EDGE_PREBUILT_COMPONENTS (the Nix derivation), and
copies the manifests, modules and docs into ``edge/data/`` of the wheel, where
:func:`edge.demo.fleet.components_dir` finds them. Editable installs use the source tree instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithComponents(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        source = HERE / "components"
        prebuilt = os.environ.get("EDGE_PREBUILT_COMPONENTS")  # e.g. the Nix components derivation
        if prebuilt:
            source = Path(prebuilt)
        else:
            subprocess.run([sys.executable, str(source / "build.py")], check=True)
        data = Path(self.build_lib) / "edge" / "data"
        comps = data / "components"
        shutil.rmtree(comps, ignore_errors=True)
        for manifest in sorted(source.glob("*/manifest.toml")):
            (comps / manifest.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(manifest, comps / manifest.parent.name / "manifest.toml")
        (comps / "build").mkdir(parents=True, exist_ok=True)
        for module in sorted((source / "build").glob("*.wasm")):
            shutil.copy2(module, comps / "build" / module.name)
        docs = data / "docs"
        shutil.rmtree(docs, ignore_errors=True)
        shutil.copytree(HERE / "docs", docs, ignore=shutil.ignore_patterns("*.png", "*.svg"))


setup(cmdclass={"build_py": BuildPyWithComponents})
