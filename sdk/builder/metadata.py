"""The project facts `meshext build` records in the module it writes.

``meshext.toml``'s name, version, description, phase and priority travel in
the module, in a custom section named ``meshext.project`` holding JSON, so
that `meshext push --format maistra` writes Maistra's ``manifest.yaml`` from
the project without asking for them again.  Envoy, like every Wasm runtime,
ignores custom sections.

The build adds the section as its last change to the module, after
``prune.py`` (which drops every custom section).  The registry room reads it
(``meshext.registry.cli``), so this module imports nothing of the build
pipeline.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from meshext import wasm_binary as wb
from meshext.errors import MeshextError, first_validation_problem
from meshext.phases import MaistraPhase
from meshext.sdk.builder.project import FilterSettings

SECTION_NAME = "meshext.project"


class ProjectMetadata(BaseModel):
    """What a module says about the project it was built from."""

    # A newer meshext may record more: an older reader takes what it knows.
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    version: str
    description: str
    phase: MaistraPhase
    priority: int

    @classmethod
    def of(cls, settings: FilterSettings) -> ProjectMetadata:
        """The metadata of the project whose ``[filter]`` table is ``settings``."""
        return cls(name=settings.name, version=settings.version, description=settings.description,
                   phase=settings.phase, priority=settings.priority)


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
