"""Mutual TLS between sidecars, with the mesh CA's SPIFFE workload certificates.

The key never leaves the sidecar: `meshext proxy` puts the workload's
certificate, key and the mesh CA into its bootstrap as two static secrets
(Istio's names, ``default`` and ``ROOTCA``), and the xDS resources the
control plane sends only name them.  So the control plane needs no
workload key, only the trust domain, to configure:

* on the client side (outbound clusters), an UpstreamTlsContext presenting
  the source workload's certificate and accepting only the SPIFFE IDs of the
  destination service's workloads;
* on the server side (inbound listeners), a DownstreamTlsContext asking for a
  certificate from the mesh CA in the trust domain; ``PERMISSIVE`` (the
  default, like Istio's) keeps a plain-text filter chain beside it, chosen by
  the TLS inspector, and ``STRICT`` has none, so plain text finds no chain
  and is closed.

Envoy then knows both peers' certificates, so ``connection.mtls``,
``connection.uri_san_peer_certificate`` and
``upstream.uri_san_peer_certificate`` name real identities for filters
(telemetry's principals), also on TCP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from meshext.control.pki import TLSMaterial, spiffe_id, workload_path

# The names Istio gives the same two secrets (its SDS agent serves them).
CERTIFICATE_SECRET = "default"
ROOT_SECRET = "ROOTCA"
TLS_SOCKET = "envoy.transport_sockets.tls"
UPSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TLS_INSPECTOR_TYPE = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
# ALPN on HTTP connections between sidecars (they always speak HTTP/2 to each other).
HTTP_ALPN = ["h2", "http/1.1"]

MTLSMode = Literal["PERMISSIVE", "STRICT"]


def bootstrap_secrets(tls: TLSMaterial) -> list[dict[str, Any]]:
    """The static secrets of a sidecar's bootstrap: its workload certificate and key, and the mesh CA."""
    return [
        {"name": CERTIFICATE_SECRET, "tls_certificate": {
            "certificate_chain": {"filename": str(Path(tls.files.cert_file).resolve())},
            "private_key": {"filename": str(Path(tls.files.key_file).resolve())}}},
        {"name": ROOT_SECRET, "validation_context": {
            "trusted_ca": {"filename": str(Path(tls.files.ca_file).resolve())}}},
    ]


def workload_identity(trust_domain: str, name: str, namespace: str) -> str:
    """The SPIFFE ID in the certificate of workload ``namespace/name``."""
    return spiffe_id(trust_domain, workload_path(name, namespace))


def _common_context(alpn: list[str], san_matchers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "alpn_protocols": alpn,
        "tls_certificate_sds_secret_configs": [{"name": CERTIFICATE_SECRET}],
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": san_matchers},
            "validation_context_sds_secret_config": {"name": ROOT_SECRET},
        },
    }


def upstream_socket(peer_identities: list[str], *, http: bool) -> dict[str, Any]:
    """The client side of sidecar-to-sidecar mTLS: present our certificate, accept only ``peer_identities``."""
    matchers = [{"san_type": "URI", "matcher": {"exact": identity}} for identity in sorted(set(peer_identities))]
    return {"name": TLS_SOCKET, "typed_config": {
        "@type": UPSTREAM_TLS_TYPE, "common_tls_context": _common_context(["h2"] if http else [], matchers)}}


def downstream_socket(trust_domain: str, *, http: bool) -> dict[str, Any]:
    """The server side: require a certificate from the mesh CA naming a SPIFFE ID in ``trust_domain``."""
    matchers = [{"san_type": "URI", "matcher": {"prefix": f"spiffe://{trust_domain}/"}}]
    return {"name": TLS_SOCKET, "typed_config": {
        "@type": DOWNSTREAM_TLS_TYPE, "require_client_certificate": True,
        "common_tls_context": _common_context(HTTP_ALPN if http else [], matchers)}}


def inbound_filter_chains(network_filters: list[dict[str, Any]], trust_domain: str | None, mode: MTLSMode,
                          *, http: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(listener filters, filter chains) of an inbound listener running ``network_filters``.

    No trust domain: one plain-text chain (the control plane runs without TLS,
    so sidecars have no certificates)."""
    if trust_domain is None:
        return [], [{"filters": network_filters}]
    secure = {"name": "mutual_tls", "filter_chain_match": {"transport_protocol": "tls"},
              "transport_socket": downstream_socket(trust_domain, http=http), "filters": network_filters}
    chains = [secure]
    if mode == "PERMISSIVE":
        chains.append({"name": "plaintext", "filter_chain_match": {"transport_protocol": "raw_buffer"},
                       "filters": network_filters})
    # The inspector sets transport_protocol ("tls" or "raw_buffer") for the chain match; under
    # STRICT a plain-text connection then matches no chain and Envoy closes it.
    inspector = {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR_TYPE}}
    return [inspector], chains


def client_certificate_forwarding(trust_domain: str | None) -> dict[str, Any]:
    """HTTP connection manager settings that tell the app who called: ``x-forwarded-client-cert``.

    SANITIZE_SET: over mTLS Envoy sets the header to the peer's certificate
    details (``By=<our id>;URI=<peer id>``); on plain text it removes any the
    client sent, so an app can trust the header."""
    if trust_domain is None:
        return {}
    return {"forward_client_cert_details": "SANITIZE_SET", "set_current_client_cert_details": {"uri": True}}
