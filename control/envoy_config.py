"""Translate the mesh model and placed extensions into one proxy's xDS snapshot.

Per sidecar:

* listener ``inbound`` (the workload's endpoint) -> route ``inbound`` ->
  cluster ``inbound|<app port>`` (the local app, HTTP/1.1 or HTTP/2; a TCP
  app gets the bytes through ``tcp_proxy``);
* listener ``outbound`` -> route ``outbound`` (a virtual host per HTTP
  service) -> EDS cluster ``outbound|<port>||<service host>`` whose endpoints
  are the peers' inbound listeners, spoken to over HTTP/2; one listener
  ``tcp-outbound|<port>||<service host>`` per ``tcpOutbound`` entry -> the same
  kind of cluster;
* when the mesh runs with certificates (a trust domain), peers talk mutual
  TLS with their SPIFFE certificates (workload_tls.py);
* the telemetry extension also runs as a network filter (``envoy.filters.network.wasm``)
  ahead of ``tcp_proxy`` on TCP listeners: a second ECDS resource, ``meshext.telemetry.tcp``;
  while it is placed, the routes carry the constant headers of its peer
  metadata exchange (telemetry.py ``with_inbound_exchange``);
* each Wasm extension is one ECDS resource (TypedExtensionConfig holding an
  ``envoy.extensions.filters.http.wasm.v3.Wasm``); the HTTP connection
  managers only *reference* it through ``config_discovery``, so changing an
  extension's config or module never rebuilds a listener;
* the module is a local file that the sidecar's module syncer put in place,
  sha256 verified (see modules.py for why the module travels that way);
* the RequestAuthentication policies selecting a workload become one
  ``envoy.filters.http.jwt_authn`` filter on its inbound listener, in the
  chain's authn slot (placement.py: after PreAuthN, Istio's AUTHN, before
  every later phase), as Istiod places it: a present token must be valid
  (else 401), a request without one passes; each verified payload goes into
  the dynamic metadata under its issuer, where Wasm filters (the 3scale
  filter's ``filter`` credential source) read it.  A ``jwksUri`` gets a
  cluster of its own, ``jwks|<host>|<port>``.

Resources are written as the JSON form of Envoy's API and parsed into the
xds-protos messages, which checks every field name against the real schema.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import urllib.parse
from typing import Any, Literal

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.grpc_stats.v3 import config_pb2 as grpc_stats_pb2  # noqa: F401 - for Any
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_authn_pb2  # noqa: F401 - for Any
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2  # noqa: F401 - for Any (NO_CONFIG_YET)
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 - registers the type for Any
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.filters.network.wasm.v3 import wasm_pb2 as network_wasm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format
from google.protobuf.message import Message

from meshext.control.mesh import Mesh, Service, TcpOutbound, Workload
from meshext.control.placement import PHASES, PlacedExtension, order
from meshext.control.resources import JwtPolicy, JwtRule
from meshext.control.snapshot import CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, Resource, Snapshot
from meshext.control.telemetry import (
    TELEMETRY_KEY,
    TELEMETRY_TCP_FILTER,
    TELEMETRY_TCP_ROOT_ID,
    for_direction,
    peer_metadata_headers,
    services_metadata,
    with_inbound_exchange,
    with_outbound_exchange,
    workload_metadata,
)
from meshext.control.telemetry import (
    node_metadata as telemetry_node_metadata,
)
from meshext.control.workload_tls import (
    UPSTREAM_TLS_TYPE,
    client_certificate_forwarding,
    inbound_filter_chains,
    upstream_socket,
    workload_identity,
)
from meshext.errors import InternalError

WASM_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
NETWORK_WASM_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
GRPC_STATS_TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
PROTOCOL_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
JWT_AUTHN_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
# What a Wasm filter of the chain runs while Envoy holds no accepted config for it: an RBAC
# filter without rules, which lets every request through.  Envoy subscribes to an ECDS config
# only once a listener references it, so a new extension reaches the listener before its config
# does; when Envoy refuses that first config, the filter would otherwise answer every request
# 500 (Envoy's missing-config filter) until the operator has withdrawn the refused extension.
# Withdrawn is where that ends anyway (the last accepted chain keeps serving), so the moment in
# between serves it too.  Istio defaults its Wasm plugins' ECDS the same way (allow-all RBAC).
NO_CONFIG_YET = {"@type": RBAC_TYPE}
JWT_AUTHN_FILTER = "envoy.filters.http.jwt_authn"
ADS = {"ads": {}, "resource_api_version": "V3"}


def _parse(message_class: type[Message], data: dict[str, Any]) -> Message:
    return json_format.ParseDict(data, message_class())


def _socket(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def _protocol_options(http2: bool) -> dict[str, Any]:
    explicit: dict[str, Any] = {"http2_protocol_options": {}} if http2 else {"http_protocol_options": {}}
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": PROTOCOL_OPTIONS_TYPE, "explicit_http_config": explicit}}


def vm_id_for(extension: PlacedExtension) -> str:
    """The extension's Envoy ``vm_id``: plugins with equal vm_id, VM configuration and code share VMs.

    Extensions of one publisher (the same image repository) whose modules are
    byte-identical and built by ``meshext build`` get one vm_id, so a sidecar runs one CPython per thread for
    all of them instead of one each (each plugin keeps its own root context
    and configuration; module globals and shared data are the VM's).  Any
    other extension gets its own: extensions of different publishers never
    read each other's state, and one that traps cannot take another down.
    The VM environment is part of the id because Envoy's VM key does not
    include it."""
    if not extension.publisher:
        return extension.key
    identity = [extension.publisher, extension.module_sha256, list(extension.vm_environment),
                list(extension.vm_host_environment)]
    return "shared:" + hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]


def root_id_for(extension: PlacedExtension, *, network: bool = False) -> str:
    """The extension's Envoy ``root_id``: which root context of its module it runs.

    A module of one project runs it whatever the id: the resource's own
    (WasmPlugin ``pluginName``), ``tcp`` for the telemetry network filter.
    In a module built from several projects the id selects the project
    (sdk/_dispatch.py ``select_root``): the one the resource names, else the
    one named like the resource (a ServiceMeshExtension has no field for
    it); several extensions of such a module in one chain then share its
    ``vm_id`` (:func:`vm_id_for`) and each runs its own root.  A name that
    is none of its roots is passed on: the module refuses it and Envoy
    rejects the filter, which the resource's status shows."""
    if not extension.module_roots:
        return TELEMETRY_TCP_ROOT_ID if network else extension.root_id
    root = extension.root_id or extension.key.rsplit("/", 1)[-1]
    if network:
        return f"{root.partition('/')[0]}/{TELEMETRY_TCP_ROOT_ID}"
    return root


def wasm_filter_config(extension: PlacedExtension, module_path: str, *,
                       network: bool = False) -> wasm_pb2.Wasm | network_wasm_pb2.Wasm:
    """The Envoy Wasm HTTP filter (``network``: network filter, root id ``tcp``) for one extension,
    loading a verified local module."""
    vm_config: dict[str, Any] = {
        "vm_id": vm_id_for(extension),
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": module_path}},
    }
    if extension.vm_environment or extension.vm_host_environment:
        vm_config["environment_variables"] = {
            "key_values": dict(extension.vm_environment),
            "host_env_keys": list(extension.vm_host_environment),
        }
    return _parse(network_wasm_pb2.Wasm if network else wasm_pb2.Wasm, {"config": {
        "name": extension.key,
        "root_id": root_id_for(extension, network=network),
        "vm_config": vm_config,
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": extension.configuration},
        # failure_policy supersedes the deprecated fail_open flag in Envoy >= 1.32.
        "failure_policy": "FAIL_OPEN" if extension.fail_open else "FAIL_CLOSED",
    }})


def _grpc_message_counts() -> dict[str, Any]:
    """Envoy's grpc_stats filter, counting gRPC messages into filter state for the telemetry extension
    (as Istio's sidecars do); it does nothing for other requests."""
    return {"name": "envoy.filters.http.grpc_stats", "typed_config": {
        "@type": GRPC_STATS_TYPE, "emit_filter_state": True, "stats_for_all_methods": False}}


def _jwks_address(uri: str) -> tuple[str, int, bool]:
    """(host, port, TLS) of a validated ``jwksUri``."""
    parsed = urllib.parse.urlsplit(uri)
    tls = parsed.scheme == "https"
    if parsed.hostname is None:
        raise InternalError(f"jwksUri {uri!r} passed validation without a host")
    return parsed.hostname, parsed.port or (443 if tls else 80), tls


def jwks_cluster_name(uri: str) -> str:
    """The cluster a sidecar fetches ``uri`` (a ``jwksUri``) through."""
    host, port, _ = _jwks_address(uri)
    return f"jwks|{host}|{port}"


def _policy_rules(policies: list[JwtPolicy]) -> list[JwtRule]:
    """The rules of ``policies`` in key order, one per issuer (the first policy's, as a key-sorted merge would)."""
    rules: dict[str, JwtRule] = {}
    for policy in sorted(policies, key=lambda p: p.key):
        for rule in policy.rules:
            rules.setdefault(rule.issuer, rule)
    return list(rules.values())


def _jwt_provider(rule: JwtRule) -> dict[str, Any]:
    """One jwt_authn provider, with Istio's translation of a jwtRules entry."""
    provider: dict[str, Any] = {
        "issuer": rule.issuer,
        "audiences": list(rule.audiences),
        "forward": rule.forward_original_token,
        # Under the issuer's name, as Istio puts it: the 3scale filter's documented path is
        # [envoy.filters.http.jwt_authn, "0"], the sole entry.
        "payload_in_metadata": rule.issuer,
        "from_headers": [{"name": name, "value_prefix": prefix} for name, prefix in rule.from_headers],
        "from_params": list(rule.from_params),
        "from_cookies": list(rule.from_cookies),
        "claim_to_headers": [{"header_name": header, "claim_name": claim}
                             for header, claim in rule.output_claim_to_headers],
    }
    if rule.output_payload_to_header:
        provider["forward_payload_header"] = rule.output_payload_to_header
    if rule.jwks is not None:
        provider["local_jwks"] = {"inline_string": rule.jwks}
    elif rule.jwks_uri is not None:
        provider["remote_jwks"] = {
            "http_uri": {"uri": rule.jwks_uri, "cluster": jwks_cluster_name(rule.jwks_uri),
                         "timeout": f"{rule.jwks_timeout_seconds:g}s"},
            "cache_duration": "300s",  # Istio's refresh interval of a fetched key set
            "async_fetch": {},  # fetched when the listener starts, not by the first request
        }
    else:
        raise InternalError(f"jwtRules entry for {rule.issuer!r} passed validation without keys")
    return provider


def jwt_authn_filter(policies: list[JwtPolicy]) -> dict[str, Any] | None:
    """The jwt_authn HTTP filter enforcing ``policies`` as Istio does, or None when they name no issuer.

    A request carrying a token of a listed issuer is let through when the token
    verifies, refused 401 otherwise (as one of an unknown issuer); a request
    without a token passes: RequestAuthentication alone requires none."""
    rules = _policy_rules(policies)
    if not rules:
        return None
    providers = {f"origins-{index}": _jwt_provider(rule) for index, rule in enumerate(rules)}
    requirements: list[dict[str, Any]] = [{"provider_name": name} for name in providers]
    requirements.append({"allow_missing": {}})
    return {"name": JWT_AUTHN_FILTER, "typed_config": {
        "@type": JWT_AUTHN_TYPE, "providers": providers, "bypass_cors_preflight": True,
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": requirements}}}]}}


def jwks_clusters(policies: list[JwtPolicy]) -> list[Resource]:
    """One cluster per ``jwksUri`` host and port of ``policies``: a sidecar fetches the key set directly
    (https: verified against the control plane host's system CA bundle)."""
    clusters: dict[str, Resource] = {}
    for rule in _policy_rules(policies):
        if rule.jwks_uri is None or jwks_cluster_name(rule.jwks_uri) in clusters:
            continue
        host, port, tls = _jwks_address(rule.jwks_uri)
        name = jwks_cluster_name(rule.jwks_uri)
        cluster: dict[str, Any] = {
            "name": name, "type": "STRICT_DNS", "connect_timeout": "5s", "dns_lookup_family": "V4_PREFERRED",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": _socket(host, port)}}]}]},
        }
        if tls:
            paths = ssl.get_default_verify_paths()
            cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": UPSTREAM_TLS_TYPE, "sni": host, "common_tls_context": {"validation_context": {
                    "trusted_ca": {"filename": paths.cafile or paths.openssl_cafile},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": host}}]}}}}
        clusters[name] = Resource.of(name, _parse(cluster_pb2.Cluster, cluster))
    return list(clusters.values())


def _authn_slot(extensions: list[PlacedExtension]) -> int:
    """How many of the (ordered) ``extensions`` run before the mesh's authn filter: the PreAuthN ones."""
    return sum(PHASES.index(e.phase) < PHASES.index("[authn]") for e in extensions)


def _http_connection_manager(direction: str, extensions: list[PlacedExtension],
                             count_grpc_messages: bool = False,
                             jwt_authn: dict[str, Any] | None = None) -> dict[str, Any]:
    http_filters = [_grpc_message_counts()] if count_grpc_messages else []
    wasm_filters = [
        {"name": extension.filter_name, "config_discovery": {
            "config_source": ADS, "type_urls": [WASM_FILTER_TYPE, RBAC_TYPE], "default_config": NO_CONFIG_YET}}
        for extension in extensions
    ]
    if jwt_authn is not None:
        wasm_filters.insert(_authn_slot(extensions), jwt_authn)
    http_filters += wasm_filters
    http_filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}})
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": direction,
            "codec_type": "AUTO",  # HTTP/1.1 and HTTP/2 (prior knowledge) on one port
            "rds": {"route_config_name": direction, "config_source": ADS},
            "http_filters": http_filters,
        },
    }


def _listener(direction: str, address: str, port: int, extensions: list[PlacedExtension],
              count_grpc_messages: bool = False) -> listener_pb2.Listener:
    return _parse(listener_pb2.Listener, {
        "name": direction,
        "address": _socket(address, port),
        # Filters read it as xds.listener_direction (telemetry: which reporter it is).
        "traffic_direction": direction.upper(),
        "filter_chains": [{"filters": [_http_connection_manager(direction, extensions, count_grpc_messages)]}],
    })


def _tcp_filters(stat_prefix: str, cluster: str, telemetry: bool) -> list[dict[str, Any]]:
    """tcp_proxy to ``cluster``, behind the telemetry network filter (referenced through ECDS) if placed."""
    filters: list[dict[str, Any]] = []
    if telemetry:
        filters.append({"name": TELEMETRY_TCP_FILTER, "config_discovery": {
            "config_source": ADS, "type_urls": [NETWORK_WASM_FILTER_TYPE]}})
    filters.append({"name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {"@type": TCP_PROXY_TYPE, "stat_prefix": stat_prefix, "cluster": cluster}})
    return filters


def _inbound_listener(workload: Workload, extensions: list[PlacedExtension], mesh: Mesh,
                      trust_domain: str | None, policies: list[JwtPolicy]) -> listener_pb2.Listener:
    """The workload's endpoint: mutual TLS from peers (and plain text under PERMISSIVE) -> its app."""
    if _app_protocol(mesh, workload) == "TCP":
        # HTTP extensions cannot run here; telemetry runs as a network filter.
        filters = _tcp_filters("inbound", _inbound_cluster_name(workload), _has_telemetry(extensions))
    else:
        manager = _http_connection_manager("inbound", extensions, _has_telemetry(extensions),
                                           jwt_authn_filter(policies))
        manager["typed_config"].update(client_certificate_forwarding(trust_domain))
        filters = [manager]
    listener_filters, chains = inbound_filter_chains(filters, trust_domain, mesh.mtls.mode,
                                                     http=_app_protocol(mesh, workload) != "TCP")
    return _parse(listener_pb2.Listener, {
        "name": "inbound", "address": _socket(workload.inbound.address, workload.inbound.port),
        # Filters read it as xds.listener_direction (telemetry: which reporter it is).
        "traffic_direction": "INBOUND",
        "listener_filters": listener_filters, "filter_chains": chains,
    })


def _tcp_outbound_listener(service: Service, tcp: TcpOutbound, telemetry: bool) -> Resource:
    """The app's local entry to one TCP service port: bytes passed to the service's sidecars."""
    name = f"tcp-{_outbound_cluster_name(service, tcp.port)}"
    return Resource.of(name, _parse(listener_pb2.Listener, {
        "name": name, "address": _socket(tcp.listen.address, tcp.listen.port),
        # Filters read it as xds.listener_direction (telemetry: which reporter it is).
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": _tcp_filters(name, _outbound_cluster_name(service, tcp.port), telemetry)}],
    }))


def _app_protocol(mesh: Mesh, workload: Workload) -> str:
    """How the workload's app speaks: its (first) service's first port's protocol, HTTP if it serves none."""
    own_services = mesh.services_of(workload)
    return own_services[0].ports[0].protocol if own_services else "HTTP"


def _inbound_cluster_name(workload: Workload) -> str:
    return f"inbound|{workload.app.port}"


def _outbound_cluster_name(service: Service, port: int) -> str:
    return f"outbound|{port}||{service.host}"


def _directed(extension: PlacedExtension, direction: Literal["inbound", "outbound"]) -> PlacedExtension:
    """``extension`` as the ``direction`` listener references it: the telemetry extension's own per
    direction (telemetry.py ``for_direction``), any other as it is."""
    return for_direction(extension, direction) if extension.key == TELEMETRY_KEY else extension


def _has_telemetry(extensions: list[PlacedExtension]) -> bool:
    return any(extension.key == TELEMETRY_KEY for extension in extensions)


def _applies(extension: PlacedExtension, direction: str, port: int) -> bool:
    wanted = extension.inbound if direction == "inbound" else extension.outbound
    return wanted and (not extension.ports or port in extension.ports)


class SnapshotBuilder:
    """Builds per-sidecar snapshots, reusing packed resources between builds.

    A mesh-wide change touches every sidecar; what differs between two builds
    is usually one extension config, so the services' clusters, routes and
    endpoints are packed once per workload, listeners once per filter list,
    and each extension config once for all sidecars.
    """

    def __init__(self, mesh: Mesh, trust_domain: str | None = None) -> None:
        """``trust_domain``: the mesh CA's, when sidecars hold workload certificates
        (then they talk mutual TLS to each other); None: plain text."""
        self.mesh = mesh
        self.trust_domain = trust_domain
        # By node id and the peer metadata exchange headers its routes carry (None: no telemetry placed).
        self._base: dict[tuple[str, str | None], dict[str, list[Resource]]] = {}
        self._listeners: dict[tuple[str, tuple[str, ...], tuple[str, ...], tuple[JwtPolicy, ...]],
                              list[Resource]] = {}
        self._extension_configs: dict[tuple[PlacedExtension, str, bool], Resource] = {}

    def snapshot(self, workload: Workload, extensions: list[PlacedExtension], module_dir: str = "",
                 draining: list[PlacedExtension] | None = None, policies: list[JwtPolicy] | None = None,
                 node_metadata: dict[str, Any] | None = None) -> Snapshot:
        """Everything the sidecar of ``workload`` should run; modules are read from ``module_dir``.

        ``draining``: extensions no listener references any more, whose config is
        still served because connections on a draining filter chain use it.
        ``policies``: the RequestAuthentications selecting the workload.
        ``node_metadata``: what its proxy announced (default: the mesh's labels
        for it), sent to its peers while telemetry is placed."""
        ordered = order(extensions)
        inbound = [_directed(e, "inbound") for e in ordered if _applies(e, "inbound", workload.inbound.port)]
        outbound = [_directed(e, "outbound") for e in ordered if _applies(e, "outbound", workload.outbound.port)]
        authentication = tuple(sorted(policies or [], key=lambda p: p.key))
        listener_key = (workload.node_id, tuple(e.filter_name for e in inbound), tuple(e.filter_name for e in outbound),
                        authentication)
        if listener_key not in self._listeners:
            self._listeners[listener_key] = [
                Resource.of("inbound", _inbound_listener(workload, inbound, self.mesh, self.trust_domain,
                                                         list(authentication))),
                Resource.of("outbound", _listener("outbound", workload.outbound.address, workload.outbound.port,
                                                  outbound, _has_telemetry(outbound))),
            ] + [_tcp_outbound_listener(service, tcp, _has_telemetry(outbound)) for tcp in workload.tcpOutbound
                 if (service := self.mesh.tcp_target(workload, tcp)) is not None]
        exchange = None
        if _has_telemetry(ordered):
            metadata = node_metadata or telemetry_node_metadata(workload.name, workload.namespace, workload.labels)
            exchange = peer_metadata_headers(workload.node_id, metadata)
        base_key = (workload.node_id, json.dumps(exchange) if exchange else None)
        if base_key not in self._base:
            self._base[base_key] = self._service_resources(workload, exchange)
        extension_configs = [self._extension_config(e, module_dir) for e in dict.fromkeys([*inbound, *outbound])]
        extension_configs += [self._extension_config(directed, module_dir) for e in draining or []
                              for directed in dict.fromkeys([_directed(e, "inbound"), _directed(e, "outbound")])]
        telemetry = next((e for e in ordered if e.key == TELEMETRY_KEY), None)
        if telemetry is not None and self._runs_tcp(workload):
            extension_configs.append(self._extension_config(telemetry, module_dir, network=True))
        base = self._base[base_key]
        return Snapshot.of_resources({
            **base,
            CLUSTER: base[CLUSTER] + jwks_clusters(list(authentication)),
            LISTENER: self._listeners[listener_key],
            EXTENSION_CONFIG: extension_configs,
        })

    def _runs_tcp(self, workload: Workload) -> bool:
        """Whether the sidecar has a TCP listener: a TCP app behind its inbound, or a tcpOutbound entry."""
        return _app_protocol(self.mesh, workload) == "TCP" or any(
            self.mesh.tcp_target(workload, tcp) is not None for tcp in workload.tcpOutbound)

    def _extension_config(self, extension: PlacedExtension, module_dir: str, *, network: bool = False) -> Resource:
        key = (extension, module_dir, network)
        if key not in self._extension_configs:
            path = f"{module_dir}/{extension.module_sha256}.wasm"
            name = TELEMETRY_TCP_FILTER if network else extension.filter_name
            typed = extension_pb2.TypedExtensionConfig(name=name)
            typed.typed_config.Pack(wasm_filter_config(extension, path, network=network))
            self._extension_configs[key] = Resource.of(name, typed)
        return self._extension_configs[key]

    def _service_resources(self, workload: Workload,
                           exchange: list[dict[str, Any]] | None) -> dict[str, list[Resource]]:
        """Clusters, endpoints and routes of ``workload``'s sidecar; its routes carry the peer metadata
        ``exchange`` (control/telemetry.py) unless None."""
        mesh = self.mesh
        app_protocol = _app_protocol(mesh, workload)
        inbound_cluster = _inbound_cluster_name(workload)
        inbound_cluster_config: dict[str, Any] = {
            "name": inbound_cluster, "type": "STATIC", "connect_timeout": "1s",
            "metadata": services_metadata(mesh.services_of(workload)[:1]),
            "load_assignment": {"cluster_name": inbound_cluster, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": _socket(workload.app.address, workload.app.port)}}]}]},
        }
        if app_protocol != "TCP":
            inbound_cluster_config["typed_extension_protocol_options"] = _protocol_options(app_protocol == "HTTP2")
        clusters = [Resource.of(inbound_cluster, _parse(cluster_pb2.Cluster, inbound_cluster_config))]
        endpoints = []
        virtual_hosts = []
        for service in mesh.services:
            for port in service.ports:
                name = _outbound_cluster_name(service, port.port)
                http = port.protocol != "TCP"
                cluster: dict[str, Any] = {"name": name, "type": "EDS", "connect_timeout": "1s",
                                           "eds_cluster_config": {"eds_config": ADS},
                                           "metadata": services_metadata([service])}
                if http:  # sidecar to sidecar is always HTTP/2 (prior knowledge)
                    cluster["typed_extension_protocol_options"] = _protocol_options(True)
                if self.trust_domain is not None:
                    trust_domain = self.trust_domain
                    cluster["transport_socket"] = upstream_socket(
                        [workload_identity(trust_domain, peer.name, peer.namespace)
                         for peer in mesh.endpoints(service)], http=http)
                clusters.append(Resource.of(name, _parse(cluster_pb2.Cluster, cluster)))
                endpoints.append(Resource.of(name, _parse(endpoint_pb2.ClusterLoadAssignment, {
                    "cluster_name": name,
                    "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": _socket(peer.inbound.address, peer.inbound.port)},
                         "metadata": workload_metadata(peer)}
                        for peer in mesh.endpoints(service)
                    ]}],
                })))
                if not http:
                    continue  # reached through the workloads' tcpOutbound listeners
                short = [service.name, f"{service.name}.{service.namespace}",
                         f"{service.name}.{service.namespace}.svc", service.host]
                virtual_hosts.append({
                    "name": f"{service.host}:{port.port}",
                    "domains": short + [f"{host}:{port.port}" for host in short],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": name, "timeout": "15s"}}],
                })
        inbound_routes: dict[str, Any] = {"name": "inbound", "virtual_hosts": [{
            "name": "inbound", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": inbound_cluster, "timeout": "15s"}}],
        }]}
        outbound_routes: dict[str, Any] = {"name": "outbound", "virtual_hosts": virtual_hosts}
        if exchange is not None:
            inbound_routes = with_inbound_exchange(inbound_routes, exchange)
            outbound_routes = with_outbound_exchange(outbound_routes, exchange)
        routes = [Resource.of("inbound", _parse(route_pb2.RouteConfiguration, inbound_routes)),
                  Resource.of("outbound", _parse(route_pb2.RouteConfiguration, outbound_routes))]
        return {CLUSTER: clusters, ENDPOINT: endpoints, ROUTE: routes}

