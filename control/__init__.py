"""The control plane: xDS server, mesh model and the extension operator.

What lives here:

- ``cli``          `meshext control serve`, `meshext control certs`, `meshext proxy`, `meshext status`;
- ``operator``     resources in, per-proxy snapshots and resource statuses out (``events``: what it is told);
- ``sources``      where resources come from: a watched directory or Kubernetes;
- ``discovery``    the mesh discovered from Kubernetes Services, EndpointSlices and Pods;
- ``resources``    ServiceMeshExtension / WasmPlugin validation; ``images``: their images, pulled and verified;
- ``mesh``         the mesh model; ``placement``: filter-chain order; ``envoy_config``: one proxy's Envoy config;
- ``state``        what the operator publishes and the servers serve: ``snapshot`` + ``cache`` (xDS
                   snapshots and ACK/NACK per proxy) and ``modules`` (module files and demand);
- ``server``       the control plane process: ``xds`` (ADS over gRPC) and an HTTP server;
- ``proxy``        the sidecar: Envoy plus its module syncer; ``pki``: the mesh CA and mutual TLS;
                   ``workload_tls``: mutual TLS between sidecars;
- ``telemetry``    the mesh's telemetry extension: node, cluster and endpoint metadata, placement;
- ``prometheus``, ``graph``, ``graph_render``: the scrape configuration and `meshext graph`;
- ``local``        `meshext up` and friends: the whole mesh on one machine.

It may import ``meshext.registry``, ``meshext.envoy``, ``meshext.errors``,
``meshext.paths``, ``meshext.phases``, ``meshext.wasm_binary``,
``meshext.sdk.builder.metadata`` (what ``meshext build`` recorded in a
module) and ``meshext.extensions`` (the project's own extensions it places
and serves, e.g. telemetry); nothing imports the control plane.
"""
