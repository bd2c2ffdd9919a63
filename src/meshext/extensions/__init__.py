"""The project's own extensions, written with ``meshext.sdk``: one folder each under ``extensions/``.

Each extension folder holds the filter project that ``meshext build`` turns
into a module (``filter/``: ``meshext.toml``, the in-VM code and its tests)
and the host-side Python that goes with it (configuration schema, migration
tools, the services the filter talks to, their ``meshext`` subcommands).
The folders are linked here under import names (``extensions/3scale`` is
``meshext.extensions.threescale``: a Python name cannot start with a digit).

What may import what: an extension's filter code imports only ``meshext.sdk``
and its own filter modules (it runs inside the Wasm VM); its host side may
import ``meshext.sdk`` (for the shared configuration schema), ``meshext.errors``,
``meshext.paths``, ``meshext.registry``, ``meshext.envoy`` and
``meshext.extensions`` (the bundle; telemetry's stats configuration names the
rate limit filter's metric labels from that filter's own table); nothing here
imports ``meshext.control``.  tests/core/test_core_layout.py checks every
room's rules.
"""
