"""3scale API Management as a meshext extension (``extensions/3scale``, import name ``meshext.extensions.threescale``).

What lives here:

- ``filter/``: the filter project ``meshext build`` turns into the module
  (``meshext.toml``, ``filter.py`` and its modules: ``config``,
  ``credentials``, ``operations``, ``rules``, ``authrep``, ``statusxml``,
  ``cache``, ``system``, ``protobuf``, ``problems``), with its test-host
  tests in ``filter/tests/`` (``meshext test extensions/3scale/filter``).
  It takes the 3scale WebAssembly module's configuration unchanged.  That
  code runs inside the Wasm VM and imports only ``meshext.sdk`` and its own
  modules; it is not importable from here.
- ``backend.py``: a 3scale backend simulator (Apisonator's Service
  Management API subset and System's proxy configuration) on a real HTTP
  server; ``cli.py``: ``meshext 3scale-backend serve``.

The host side imports ``meshext.errors`` and third-party libraries
(``pydantic``, ``yaml``, ``click``), never ``meshext.control``.
"""
