"""Telemetry: Istio's standard metrics from every sidecar, as a meshext extension.

- ``filter/``: the filter project (`meshext build extensions/telemetry/filter`):
  ``filter.py`` records ``istio_requests_total`` and the rest with Istio's
  labels and exchanges peer metadata; ``istio_metrics.py`` is the one table of
  metric and label names (imported by the host side too); ``struct_codec.py``
  reads and writes protobuf Structs inside the VM.
- ``stats_config.py``: the Envoy ``stats_config`` that turns the labels
  encoded into metric names back into Prometheus labels.
- ``module.py``: builds the filter once per content (cached), for the control plane.
- ``cli.py``: `meshext telemetry stats-config`.
"""
