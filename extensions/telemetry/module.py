"""The telemetry filter alone as a module file: built from ``filter/`` once per content, then cached.

The control plane runs telemetry from the project's extensions bundle
(meshext.extensions.bundle: telemetry, ratelimit and 3scale in one module, so
that a sidecar running several of them runs one CPython per thread).  This
module of the one project is what the filter's own tests, the telemetry mesh
tests and benchmarks/telemetry_overhead.py load: the filter as any Envoy or
Istio would run it alone.  Cached like the bundle, by the content of
everything that goes into the build.
"""

from __future__ import annotations

from pathlib import Path

from meshext.extensions.bundle import built_module

FILTER_DIR = Path(__file__).resolve().parent / "filter"


def telemetry_module() -> tuple[Path, str]:
    """(path, sha256) of the built telemetry module, building it if this content was never built."""
    return built_module((FILTER_DIR,), "telemetry")
