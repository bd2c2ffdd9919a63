"""Third-party packages a filter declares in ``[filter] dependencies``.

They come from the Python environment that runs ``meshext build`` (where
``pip install`` put them), never from the network: the files the installed
distribution recorded (``importlib.metadata``, its ``RECORD``) are bundled
into the module next to the filter.  Only pure Python can run there: a
distribution's C extensions are not bundled, and :mod:`.analysis` refuses a
dependency whose code imports one, or imports what a proxy cannot provide
(sockets, processes...), naming the distribution and the module.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import json
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from meshext.errors import MeshextError

# Files a distribution records that are not code or data of its packages.
_METADATA_SUFFIXES = (".dist-info", ".egg-info", ".data")
_NOT_SHIPPED_SUFFIXES = (".pyc", ".pyi", ".pth")


@dataclass(frozen=True)
class Dependency:
    """An installed distribution the module bundles."""

    name: str
    version: str
    root: Path  # the folder its recorded paths are relative to (site-packages)
    modules: dict[str, str]  # import name -> recorded path of its .py file
    data: tuple[str, ...]  # recorded paths of package data files
    extensions: dict[str, str]  # import name -> recorded path of a C extension (not bundled)

    @property
    def label(self) -> str:
        """How messages name it: ``humanize 4.9.0``."""
        return f"{self.name} {self.version}"


def _import_name(path: PurePosixPath, suffix: str) -> str:
    parts = list(path.parts[:-1]) + [path.name.removesuffix(suffix)]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _extension_suffix(name: str) -> str | None:
    return next((suffix for suffix in importlib.machinery.EXTENSION_SUFFIXES if name.endswith(suffix)), None)


def _from_distribution(distribution: importlib.metadata.Distribution, requested: str, where: str) -> Dependency:
    name = distribution.metadata["Name"] or requested
    files = distribution.files
    if files is None:
        raise MeshextError(
            f"dependency {name!r}: its installer recorded no file list, so its code cannot be found",
            where=where, fix=f"reinstall it with pip: pip install --force-reinstall {name}",
        )
    direct_url = distribution.read_text("direct_url.json")
    if direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"):
        raise MeshextError(
            f"dependency {name!r} is installed in editable mode (pip install -e): its code is not in the "
            "environment's site-packages",
            where=where, fix=f"install it normally for the build: pip install {name}",
        )
    modules: dict[str, str] = {}
    extensions: dict[str, str] = {}
    data: list[str] = []
    for recorded in files:
        path = PurePosixPath(recorded.as_posix())
        if (path.parts[0] == ".." or path.parts[0].endswith(_METADATA_SUFFIXES) or "__pycache__" in path.parts
                or path.name.endswith(_NOT_SHIPPED_SUFFIXES) or path.name == "py.typed"):
            continue
        suffix = _extension_suffix(path.name)
        if path.suffix == ".py":
            modules[_import_name(path, ".py")] = str(path)
        elif suffix:
            extensions[_import_name(path, suffix)] = str(path)
        elif len(path.parts) > 1:  # data inside a package (top-level files are not a package's)
            data.append(str(path))
    root = Path(str(distribution.locate_file("")))
    return Dependency(name, distribution.version, root, modules, tuple(sorted(data)), extensions)


def resolve(names: list[str], where: str) -> list[Dependency]:
    """The installed distributions ``names`` declares, in the order given.

    ``where`` names the declaration (``meshext.toml``) in errors.
    """
    resolved = []
    for requested in names:
        try:
            distribution = importlib.metadata.distribution(requested)
        except importlib.metadata.PackageNotFoundError:
            raise MeshextError(
                f"dependency {requested!r} is not installed in the Python environment that runs meshext build "
                f"({sys.prefix})",
                where=where,
                fix=f"install it there ({sys.executable} -m pip install {requested}); meshext build bundles the "
                    "installed files and never downloads",
            ) from None
        resolved.append(_from_distribution(distribution, requested, where))
    return resolved
