"""A filter project: a folder with ``meshext.toml`` and the filter's Python.

::

    [filter]
    name = "add-header"          # the extension's name (images, logs, metrics)
    entry = "filter:Root"        # module:RootContext subclass
    phase = "PostAuthZ"          # Maistra phase; WasmPlugin phases map onto these
    priority = 100               # higher runs first within a phase
    fail_policy = "open"         # or "closed": what an exception does to a request
    version = "0.1.0"
    description = "..."
    dependencies = ["humanize"]  # pure-Python distributions bundled into the module
    publisher = "example.com"    # who publishes it: only one publisher's projects share a module

Several projects of one publisher build into one module with one root per
project (`meshext build A B -o ab.wasm`, :mod:`.pipeline`).

Dependencies are taken from the Python environment that runs `meshext
build` (install them there with pip); see :mod:`.dependencies`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from meshext.errors import MeshextError, first_validation_problem
from meshext.phases import DEFAULT_PHASE, DEFAULT_PRIORITY, MAISTRA_PHASES, MaistraPhase

PROJECT_FILE = "meshext.toml"


# A distribution name as pip and PyPI spell it (PEP 508), without a version:
# the version bundled is the one installed.
DISTRIBUTION_NAME = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"


class FilterSettings(BaseModel):
    """The ``[filter]`` table of ``meshext.toml``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    entry: str
    phase: MaistraPhase = DEFAULT_PHASE
    priority: int = DEFAULT_PRIORITY
    fail_policy: Literal["open", "closed"] = "open"
    version: str = "0.1.0"
    description: str = ""
    dependencies: list[str] = []
    publisher: str = ""

    @field_validator("entry")
    @classmethod
    def _entry_shape(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            raise ValueError("must look like 'module:ClassName' (e.g. 'filter:Root')")
        return value

    @field_validator("dependencies")
    @classmethod
    def _dependency_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(DISTRIBUTION_NAME, name):
                raise ValueError(f"{name!r} is not a distribution name")
        return value

    @property
    def module(self) -> str:
        """The entry point's module (``filter`` in ``filter:Root``)."""
        return self.entry.split(":")[0]

    @property
    def class_name(self) -> str:
        """The entry point's RootContext subclass (``Root`` in ``filter:Root``)."""
        return self.entry.split(":")[1]


class Project(BaseModel):
    """A filter project folder and its validated settings."""

    root: Path
    filter: FilterSettings


def load_project(directory: Path) -> Project:
    """Read and validate ``directory/meshext.toml``; errors name the field and the fix."""
    directory = directory.resolve()
    config_path = directory / PROJECT_FILE
    if not config_path.is_file():
        raise MeshextError(
            f"no {PROJECT_FILE} in {directory}",
            where=str(directory),
            fix="run `meshext init NAME` to scaffold a filter project, or pass the project folder",
        )
    try:
        data = tomllib.loads(config_path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise MeshextError(f"invalid TOML: {error}", where=str(config_path), fix="correct the syntax") from None
    try:
        settings = FilterSettings.model_validate(data.get("filter", {}))
    except ValidationError as error:
        field, problem = first_validation_problem(error, "filter")
        raise MeshextError(
            f"[filter] {field}: {problem['msg']}",
            where=str(config_path),
            fix=_FIXES.get(field.split(".")[0], "see the [filter] table documented in `meshext init --help`"),
        ) from None
    return Project(root=directory, filter=settings)


_FIXES = {
    "name": "use lower-case letters, digits and '-', e.g. name = \"add-header\"",
    "entry": "point at your RootContext subclass, e.g. entry = \"filter:Root\"",
    "phase": f"use one of {', '.join(MAISTRA_PHASES)}",
    "fail_policy": "use \"open\" (continue on errors) or \"closed\" (reply 500 on errors)",
    "priority": "use an integer; higher runs first within a phase",
    "publisher": "use a string naming who publishes the extension, e.g. publisher = \"example.com\"",
    "dependencies": "list distribution names as pip spells them, e.g. dependencies = [\"humanize\"]; the version "
                    "bundled is the one installed where meshext build runs (pin it with pip)",
}
