"""A Prometheus scrape configuration for the mesh's sidecars.

Every workload whose ``admin`` address the mesh file names is one target,
scraped at Envoy's ``/stats/prometheus`` (where Istio's standard metrics
appear), labelled with its ``namespace`` and ``workload`` (Prometheus keeps a
metric's own label of the same name as ``exported_<name>``; Istio's metrics
have none of these).  Workloads without an ``admin`` address are left out and
named, so a missing target is never silent.
"""

from __future__ import annotations

from typing import Any

from meshext.control.mesh import Mesh

JOB_NAME = "meshext-sidecars"
METRICS_PATH = "/stats/prometheus"


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def scrape_config(mesh: Mesh, *, scrape_interval: str = "15s") -> tuple[dict[str, Any], list[str]]:
    """(the prometheus.yml document, the ``namespace/name`` of workloads left out for want of ``admin``)."""
    static_configs = []
    left_out = []
    for workload in mesh.workloads:
        if workload.admin is None:
            left_out.append(f"{workload.namespace}/{workload.name}")
            continue
        static_configs.append({"targets": [_target(workload.admin.address, workload.admin.port)],
                               "labels": {"namespace": workload.namespace, "workload": workload.name}})
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [{"job_name": JOB_NAME, "metrics_path": METRICS_PATH, "static_configs": static_configs}],
    }
    return config, left_out
