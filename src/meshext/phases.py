"""Where an extension runs in the HTTP filter chain: the one table of phases.

Maistra's ServiceMeshExtension phases (``spec.phase``, and ``phase`` in a
Maistra image's ``manifest.yaml`` and in ``meshext.toml``), and how Istio's
WasmPlugin phases map onto them.  The SDK's project file, the registry's
manifest schema and the control plane's placement all read these names from
here.
"""

from __future__ import annotations

from typing import Literal, get_args

MaistraPhase = Literal["PreAuthN", "PostAuthN", "PreAuthZ", "PostAuthZ", "PreStats", "PostStats"]
"""A Maistra phase name, as pydantic models and type hints spell it."""

MAISTRA_PHASES: tuple[str, ...] = get_args(MaistraPhase)
"""The Maistra phases in chain order (earliest first)."""

DEFAULT_PHASE: MaistraPhase = "PostAuthZ"
"""The phase of a project that names none (meshext.toml's default)."""

DEFAULT_PRIORITY = 100
"""The priority of a project that names none; within a phase a higher priority runs first."""

WASMPLUGIN_PHASES: dict[str, str] = {
    "AUTHN": "PreAuthN", "AUTHZ": "PreAuthZ", "STATS": "PreStats", "UNSPECIFIED_PHASE": "Unspecified",
}
"""Istio WasmPlugin ``spec.phase`` -> the slot it names (before that filter; unspecified: last)."""
