"""Fixtures of the 3scale extension's integration tests: the built module, the backend simulator, a JWT issuer."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from meshext.extensions.threescale.backend import Backend, BackendServer, SimulatorConfig

FILTER_PROJECT = Path(__file__).resolve().parents[3] / "extensions" / "3scale" / "filter"
SERVICE_ID, SERVICE_TOKEN = "2555417834780", "service-token-780"
OIDC_SERVICE_ID, OIDC_TOKEN = "2555417834781", "service-token-781"
ISSUER = "https://keycloak.example/auth/realms/3scale"
# What the simulator knows: limits per eternity, so no calendar period rolls over during a test.
SIMULATOR: dict[str, Any] = {
    "access_tokens": ["system-read-token"],
    "services": [
        {"id": SERVICE_ID, "token": SERVICE_TOKEN,
         "metrics": [{"name": "hits", "children": ["productpage"]}, {"name": "products"}, {"name": "sales"}],
         "plans": [{"name": "Basic", "limits": [{"metric": "hits", "period": "eternity", "value": 1_000_000}]},
                   {"name": "Trial", "limits": [{"metric": "hits", "period": "eternity", "value": 3}]}],
         "applications": [{"user_key": "user-key-basic", "plan": "Basic"},
                          {"user_key": "user-key-trial", "plan": "Trial"}],
         "mapping_rules": [{"http_method": "GET", "pattern": "/productpage", "metric_system_name": "productpage"}]},
        {"id": OIDC_SERVICE_ID, "token": OIDC_TOKEN, "backend_version": "oidc",
         "plans": [{"name": "Basic"}],
         "applications": [{"id": "my-client", "keys": ["client-secret"], "plan": "Basic"},
                          {"id": "app-basic", "keys": ["key-basic"], "plan": "Basic"}]},
    ],
}

# The module's configuration as the 3scale WebAssembly module's reference documents it
# (threescale-wasm-auth docs/reference.md, and the OpenShift Service Mesh 2.1 ServiceMeshExtension example),
# credentials and mapping rules unchanged; only the upstream names and URLs are this test's.
def documented_config(backend_cluster: str, backend_url: str, **service: Any) -> dict[str, Any]:
    return {
        "api": "v1",
        "backend": {"name": "backend-name", "upstream": {"name": backend_cluster, "url": backend_url, "timeout": 5000},
                    "extensions": ["no_body"]},
        "services": [{
            "id": SERVICE_ID, "token": SERVICE_TOKEN, "authorities": ["*"],
            "credentials": {
                "app_id": [{"header": {"keys": ["app_id"]}}, {"query_string": {"keys": ["app_id", "application_id"]}}],
                "app_key": [{"header": {"keys": ["app_key"]}},
                            {"query_string": {"keys": ["app_key", "application_key"]}}],
                "user_key": [{"query_string": {"keys": ["user_key"]}}, {"header": {"keys": ["user_key"]}}],
            },
            "mapping_rules": [
                {"method": "GET", "pattern": "/", "usages": [{"name": "hits", "delta": 1}]},
                {"method": "GET", "pattern": "/products/", "usages": [{"name": "products", "delta": 1}]},
                {"method": "ANY", "pattern": "/products/{id}/sold",
                 "usages": [{"name": "sales", "delta": 1}, {"name": "products", "delta": 1}]},
            ],
            **service,
        }],
    }


# The credentials of the 3scale documentation's OpenID Connect example: the app_id is the JWT's azp (or aud)
# claim, from the payload Envoy's jwt_authn filter validated and put in the dynamic metadata.
OIDC_CREDENTIALS = {"app_id": [{"filter": {"path": ["envoy.filters.http.jwt_authn", "0"], "keys": ["azp", "aud"],
                                           "ops": [{"take": {"head": 1}}]}}]}


@pytest.fixture(scope="session")
def threescale_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The filter, built once per session with `meshext build`."""
    from meshext.sdk.builder import build_filter

    return build_filter(FILTER_PROJECT, tmp_path_factory.mktemp("threescale") / "threescale.wasm").output


@pytest.fixture
def simulator() -> Iterator[BackendServer]:
    with BackendServer(Backend(SimulatorConfig.model_validate(SIMULATOR))) as server:
        yield server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """An RS256 JWT issuer: its JWKS (for Envoy's jwt_authn) and signed tokens."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.key.public_key().public_numbers()
        self.jwks = json.dumps({"keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": "test",
            "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": _b64url(numbers.e.to_bytes(3, "big"))}]})

    def token(self, **claims: Any) -> str:
        header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "test"}).encode())
        body = _b64url(json.dumps({"iss": ISSUER, "exp": int(time.time()) + 600, **claims}).encode())
        signature = self.key.sign(f"{header}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{header}.{body}.{_b64url(signature)}"


@pytest.fixture(scope="session")
def issuer() -> Issuer:
    return Issuer()
