"""The project facts `meshext build` records in the module it writes.

``meshext.toml``'s name, version, description, phase and priority travel in
the module (with its publisher, and for a module built from several
projects the roots it has: one per project, its ``root_id`` the project's
name), in a custom section named ``meshext.project`` holding JSON, so
that `meshext push --format maistra` writes Maistra's ``manifest.yaml`` from
the project without asking for them again.  Envoy, like every Wasm runtime,
ignores custom sections.

The build adds the section as its last change to the module, after
``prune.py`` (which drops every custom section).  The registry room reads it
(``meshext.registry.cli``), so this module imports nothing of the build
pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, ValidationError

from meshext import wasm_binary as wb
from meshext.errors import MeshextError, first_validation_problem
from meshext.phases import MaistraPhase
from meshext.sdk.builder.project import FilterSettings

SECTION_NAME = "meshext.project"


class RootMetadata(BaseModel):
    """One root of a module built from several projects: the project Envoy's ``root_id`` selects."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    root_id: str
    version: str
    description: str
    phase: MaistraPhase
    priority: int


class ProjectMetadata(BaseModel):
    """What a module says about the project(s) it was built from."""

    # A newer meshext may record more: an older reader takes what it knows.
    model_config = ConfigDict(extra="ignore", frozen=True)

    # The (first) project's: what `meshext push --format maistra` writes.
    name: str
    version: str
    description: str
    phase: MaistraPhase
    priority: int
    publisher: str = ""
    # Empty for a module of one project, which serves any root_id.
    roots: tuple[RootMetadata, ...] = ()

    @classmethod
    def of(cls, projects: Sequence[FilterSettings]) -> ProjectMetadata:
        """The metadata of a module built from the projects whose ``[filter]`` tables are ``projects``
        (one publisher: the build checks it)."""
        first = projects[0]
        roots = () if len(projects) == 1 else tuple(
            RootMetadata(root_id=settings.name, version=settings.version, description=settings.description,
                         phase=settings.phase, priority=settings.priority) for settings in projects)
        return cls(name=first.name, version=first.version, description=first.description, phase=first.phase,
                   priority=first.priority, publisher=first.publisher, roots=roots)


def add_project_metadata(module: bytes, metadata: ProjectMetadata) -> bytes:
    """``module`` with ``metadata`` in its ``meshext.project`` section (replacing an earlier one)."""
    name = SECTION_NAME.encode()
    section = wb.Section(wb.CUSTOM, wb.uleb(len(name)) + name + metadata.model_dump_json().encode())
    kept = [s for s in wb.parse_sections(module) if _custom_section_data(s) is None]
    return wb.encode_sections([*kept, section])


def read_project_metadata(module: bytes, where: str) -> ProjectMetadata | None:
    """The metadata `meshext build` recorded in ``module``; None for a module built otherwise
    (or for bytes that are no Wasm module: whoever uses them refuses those).

    ``where`` names the module file in errors."""
    if not module.startswith(wb.MAGIC):
        return None
    try:
        sections = wb.parse_sections(module)
    except IndexError:  # a section runs past the end of the file
        raise MeshextError("the module is truncated", where=where,
                           fix="build it again with `meshext build`") from None
    data = next((d for d in map(_custom_section_data, sections) if d is not None), None)
    if data is None:
        return None
    try:
        return ProjectMetadata.model_validate_json(data)
    except ValidationError as error:
        field, problem = first_validation_problem(error, SECTION_NAME)
        raise MeshextError(f"its {SECTION_NAME} section is unreadable: {field}: {problem['msg']}", where=where,
                           fix="build the module again with `meshext build`") from None


def _custom_section_data(section: wb.Section) -> bytes | None:
    """The data of a ``meshext.project`` section, None for any other section."""
    if section.id != wb.CUSTOM:
        return None
    reader = wb.Reader(section.payload)
    try:
        name = reader.name()
    except (IndexError, UnicodeDecodeError):  # not a tool-conventions name: not ours
        return None
    return section.payload[reader.position:] if name == SECTION_NAME else None
