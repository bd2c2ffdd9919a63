"""meshext: Python-first WebAssembly extensions for Envoy-based service meshes.

Import map (one namespace, folders by architecture):

- ``meshext.sdk``       (sdk/)       filter-author API, native shim, ``meshext build``
- ``meshext.runtime``   (runtime/)   Proxy-Wasm host on wasmtime, test harness
- ``meshext.registry``  (registry/)  OCI push/pull/inspect and the module cache
- ``meshext.control``   (control/)   xDS server and extension operator

Dependencies point one way: control -> registry, runtime; nothing imports control.
"""

__version__ = "0.1.0"
