"""The Envoy ``stats_config`` that makes encoded metric labels real Prometheus labels.

``meshext.sdk`` metrics with labels carry them in the metric name
(``label=.=value;.;...;.;name``); Envoy's tag extraction cuts them out again
with one ``stats_tags`` regex per label name.  meshext's sidecars get this
in their bootstrap; an Envoy not run by meshext needs it too
(`meshext telemetry stats-config` prints it).  It covers the labels of the
project's own extensions (Istio's standard metrics, the rate limit's
``ratelimit_requests_total``) and those an author names.
"""

from __future__ import annotations

from typing import Any

from meshext.errors import MeshextError
from meshext.extensions.ratelimit.filter import ratelimit_metrics
from meshext.extensions.telemetry.filter.istio_metrics import ALL_LABELS
from meshext.sdk.errors import SdkError
from meshext.sdk.metrics import envoy_stats_tags

EXTENSION_LABELS = (*ALL_LABELS, *ratelimit_metrics.LABELS)
"""The label names of the metrics meshext's own extensions define: Istio's, then the rate limit's."""


def stats_config(extra_label_names: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Bootstrap ``stats_config`` for the labels of meshext's extensions plus ``extra_label_names``.

    Envoy's default tag extractors are off (``use_all_default_tags: false``),
    as in Istio's sidecars: they would cut pieces out of the encoded names."""
    try:
        tags = envoy_stats_tags([*EXTENSION_LABELS, *extra_label_names])
    except SdkError as error:
        raise MeshextError(error.message, where="label names", fix=error.fix) from None
    return {"use_all_default_tags": False, "stats_tags": tags}
