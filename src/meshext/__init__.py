"""meshext: Python-first WebAssembly extensions for Envoy-based service meshes.

The import tree (``src/meshext``), one namespace with the rooms linked in:

- ``meshext.sdk``       (sdk/)       filter-author API (in-VM), native shim, ``meshext build`` (``sdk/builder``)
- ``meshext.runtime``   (runtime/)   Proxy-Wasm test host on wasmtime, pytest plugin, ``meshext test``
- ``meshext.registry``  (registry/)  OCI push/pull/inspect and the verified module cache
- ``meshext.control``   (control/)   xDS server, extension operator, the sidecar
- ``meshext.testing``                the public test API over the test host
- ``meshext.cli``, ``errors``, ``envoy``, ``paths``, ``phases``: the command, the error
  types, the Envoy process launcher, the cache root and the phase table every room shares;
  ``wasm_binary`` (reading and writing the Wasm binary format) and ``compiled_modules``
  (the wasmtime engine and compiled-module cache), shared by the builder, the test host
  and the registry.

What may import what: these core modules import no room; ``sdk`` imports nothing
outside itself (its in-VM part runs inside the Wasm module, which ships this
file too); ``runtime`` may use ``sdk``; ``registry`` may use the SDK's build
metadata; ``control`` may use ``registry``, ``runtime`` and ``envoy``; nothing
imports ``control``.
"""

__version__ = "0.1.0"
