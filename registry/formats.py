"""The three image layouts a Wasm extension travels in, and Maistra's manifest.yaml.

1. ``wasm-oci``: Istio's Wasm OCI artifact - config
   ``application/vnd.module.wasm.config.v1+json`` and exactly one layer
   ``application/vnd.module.wasm.content.layer.v1+wasm`` holding the raw module.
2. ``docker``: a Docker/OCI container image whose layers put ``plugin.wasm`` at
   the root of the file system.
3. ``maistra``: a container image with ``manifest.yaml`` and the ``.wasm`` file it
   names (``module``) at the root.
"""

from __future__ import annotations

import functools
import gzip
import io
import tarfile
from dataclasses import asdict, dataclass
from typing import Any, Literal

from meshext.errors import InternalError, MeshextError, first_validation_problem
from meshext.phases import MAISTRA_PHASES, MaistraPhase

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"

IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
MANIFEST_LIST_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
ACCEPTED_MANIFEST_TYPES = IMAGE_MANIFEST_TYPES + MANIFEST_LIST_TYPES
# Layer types whose content is a (possibly gzip-compressed) tar of files.
TAR_LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    OCI_LAYER_TAR_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
)

FORMATS = ("wasm-oci", "docker", "maistra")
DOCKER_MODULE_FILE = "plugin.wasm"
MAISTRA_MANIFEST_FILE = "manifest.yaml"


@functools.cache
def _maistra_manifest_schema() -> Any:
    """manifest.yaml of a Maistra extension image (unknown keys are tolerated): a pydantic model, defined on
    first use so that importing this module (`meshext push --help` does) loads no pydantic."""
    import pydantic

    class MaistraManifestSchema(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="ignore", strict=False)

        schemaVersion: Literal[1]
        name: str = pydantic.Field(min_length=1)
        description: str = ""
        version: str = ""
        phase: MaistraPhase
        priority: int = 0
        module: str = pydantic.Field(min_length=1, pattern=r"^[^/\\]+\.wasm$")

    return MaistraManifestSchema


@dataclass(frozen=True)
class MaistraManifest:
    """The fields of a Maistra extension image's manifest.yaml."""

    name: str
    description: str
    version: str
    phase: str
    priority: int
    module: str

    @classmethod
    def parse(cls, text: str | bytes, where: str) -> MaistraManifest:
        """Validate manifest.yaml; ``where`` names the image for the error message."""
        import pydantic
        import yaml

        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise MeshextError(f"manifest.yaml is not YAML: {error}", where=where,
                               fix="rebuild the image with a valid manifest.yaml") from None
        if not isinstance(document, dict):
            raise MeshextError("manifest.yaml is not a mapping", where=where,
                               fix="manifest.yaml needs schemaVersion, name, phase, priority and module keys")
        try:
            schema = _maistra_manifest_schema().model_validate(document)
        except pydantic.ValidationError as error:
            field, problem = first_validation_problem(error, "manifest.yaml")
            raise MeshextError(
                f"manifest.yaml field {field!r}: {_explain(field, problem)}",
                where=f"{where} manifest.yaml:{field}",
                fix=_MAISTRA_FIXES.get(field, "correct the field in manifest.yaml and push the image again"),
            ) from None
        return cls(**schema.model_dump(exclude={"schemaVersion"}))

    def to_yaml(self) -> str:
        """The manifest.yaml text (schemaVersion 1 first)."""
        import yaml

        return yaml.safe_dump({"schemaVersion": 1, **asdict(self)}, sort_keys=False)


_MAISTRA_FIXES = {
    "module": "set module: to the file name of the .wasm at the image root, e.g. module: extension.wasm",
    "phase": f"set phase: to one of {', '.join(MAISTRA_PHASES)}",
    "schemaVersion": "set schemaVersion: 1",
    "name": "set name: to the extension's name",
    "priority": "set priority: to an integer (higher runs first within a phase)",
}


def _explain(field: str, problem: dict) -> str:
    if problem["type"] == "missing":
        return "missing"
    return f"{problem.get('input')!r} is invalid ({problem['msg']})"


def read_root_files(layers: list[tuple[str, bytes]], where: str) -> dict[str, bytes]:
    """Regular files at the image root after applying ``(media_type, blob)`` layers
    in order: later layers replace earlier files, as a container runtime would."""
    files: dict[str, bytes] = {}
    for media_type, blob in layers:
        try:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as archive:
                for member in archive:
                    name = member.name.removeprefix("./").lstrip("/")
                    if "/" in name or not name:
                        continue
                    if name.startswith(".wh."):  # OCI whiteout: the file was deleted
                        files.pop(name[len(".wh."):], None)
                    elif member.isfile():
                        content = archive.extractfile(member)
                        if content is None:  # tarfile returns None only for members that are not files
                            raise InternalError(f"tar member {name} is a file but has no content")
                        files[name] = content.read()
        except (tarfile.TarError, EOFError, OSError) as error:
            raise MeshextError(f"a {media_type} layer is not a readable tar archive ({error})", where=where,
                               fix="rebuild and push the image") from None
    return files


def build_root_layer(files: dict[str, bytes]) -> bytes:
    """A gzip-compressed tar with ``files`` at the root, byte-for-byte reproducible
    (fixed owner, mode and timestamps) so pushing the same module twice gives one digest."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)
