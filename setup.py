"""Build hook of the ``attestmesh`` distribution: ship the compiled contract artifacts inside the package.

Everything else about the distribution (metadata, dependencies, entry points, package discovery) is declared
in pyproject.toml; this file owns only one step. The committed artifacts live in ``contracts/artifacts``
(written and checked by ``contracts/build.py``), outside every Python package, so a plain wheel would not
carry them and an installed sidecar (the image) could not bind to its contracts. ``build_py`` therefore
copies ``contracts/artifacts/*.json`` into ``sidecar/chain/compiled/`` of the built package, where
``sidecar.chain.artifacts`` finds them without any configuration.

Must not: compile contracts, alter an artifact, or add files to the source tree (the copy goes to the build
directory only). An editable install gets no copy: it reads ``contracts/artifacts`` of the checkout itself.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import FileError

ARTIFACTS = Path(__file__).resolve().parent / "contracts" / "artifacts"
PACKAGED = Path("sidecar") / "chain" / "compiled"


class BuildPyWithArtifacts(build_py):
    """``build_py`` that also copies the committed contract artifacts into the built ``sidecar`` package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        sources = sorted(ARTIFACTS.glob("*.json"))
        if not sources:
            raise FileError(f"no contract artifacts in {ARTIFACTS}: the package would be unusable")
        target = Path(self.build_lib) / PACKAGED
        self.mkpath(str(target))
        for source in sources:
            self.copy_file(str(source), str(target / source.name))


setup(cmdclass={"build_py": BuildPyWithArtifacts})
