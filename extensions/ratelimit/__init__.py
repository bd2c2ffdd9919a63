"""The ratelimit extension: Mixer's memquota/redisquota reborn as a Python Wasm filter, plus its rate limit service.

What lives here:

- ``filter/``: the filter project (``meshext build extensions/ratelimit/filter``):
  ``filter.py`` (the HTTP filter), ``ratelimit_config.py`` (the configuration
  schema and its checks: the one definition, imported here too as
  ``meshext.extensions.ratelimit.filter.ratelimit_config``), ``buckets.py``
  (local mode: counting in shared data with compare-and-swap),
  ``rls_messages.py`` (global mode: RLS v3 messages with ``meshext.sdk.protowire``)
  and its test-host tests (``meshext test extensions/ratelimit/filter``);
- ``service.py``: ``meshext ratelimit serve``, an Envoy RLS v3 gRPC service
  reading envoyproxy/ratelimit's YAML configuration and counting in Redis
  with that service's fixed-window key scheme;
- ``service_config.py``: that YAML format, parsed and validated;
- ``service_stats.py``: the service's statistics (envoyproxy/ratelimit's names) as Prometheus counters;
- ``mixer.py``: ``meshext ratelimit convert``, Mixer quota configuration to
  this filter's configuration and a ServiceMeshExtension;
- ``cli.py``: the ``meshext ratelimit`` commands.

What it may import: the filter code only ``meshext.sdk`` and its own modules
(it runs in the Wasm VM); the host side ``meshext.sdk`` (the schema),
``meshext.errors``, ``meshext.paths``, the ``filter`` folder's schema module,
grpcio, xds-protos, redis, prometheus-client and PyYAML; never ``meshext.control``.
"""
