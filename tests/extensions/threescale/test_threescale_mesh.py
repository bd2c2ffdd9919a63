"""The 3scale filter deployed by meshext's control plane, as ServiceMeshExtension and as WasmPlugin.

The resources are the OpenShift Service Mesh / 3scale documentation's, with the image reference changed
(here a local ``file://`` module) and the upstream names pointing at this mesh's 3scale backend service,
which is the backend simulator behind its own sidecar.  frontend -> productpage (the filter runs on
productpage's inbound listener) -> the simulator, all on loopback over mutual TLS xDS.  OpenID Connect as
on OpenShift Service Mesh: a RequestAuthentication makes the control plane put Envoy's jwt_authn ahead of
the filter, which takes the app_id from the verified payload.
"""

# mypy: disable-error-code="import-not-found"
# (conftest and control_harness are test folders' modules, on sys.path for pytest)

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    ISSUER,
    OIDC_CREDENTIALS,
    OIDC_SERVICE_ID,
    OIDC_TOKEN,
    SERVICE_ID,
    SIMULATOR,
    documented_config,
)

from meshext.extensions.threescale.backend import Application, Backend, BackendServer, SimulatorConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "control"))
from control_harness import (  # noqa: E402 - the control plane's test harness, reused
    call,
    free_port,
    read_status,
    sme,
    start_app,
    start_control_plane,
    wait_until,
    wasmplugin,
    write_resources,
)

from meshext.control.mesh import load_mesh  # noqa: E402
from meshext.control.pki import PKIDirectory  # noqa: E402
from meshext.control.proxy import sidecar_for  # noqa: E402
from meshext.control.sources import DirectorySource  # noqa: E402

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

BACKEND_CLUSTER = "outbound|8080||threescale.default.svc.cluster.local"
BACKEND_URL = "http://threescale.default.svc.cluster.local:8080/"
# A service of the mesh that no workload serves: its cluster has no endpoints (a 3scale backend that is down).
DOWN_CLUSTER = "outbound|8080||threescale-down.default.svc.cluster.local"
FAILED, MISSING = (403, "Authentication failed\n"), (403, "Authentication parameters missing\n")


class ThreescaleMesh:
    """frontend, productpage and threescale (the simulator), each with its sidecar, and a control plane."""

    def __init__(self, root: Path) -> None:
        self.simulator = BackendServer(Backend(SimulatorConfig.model_validate(SIMULATOR))).start()
        workloads = [{"name": f"{app}-v1", "namespace": "default", "labels": {"app": app},
                      "app": {"port": self.simulator.port if app == "threescale" else free_port()},
                      "inbound": {"port": free_port()}, "outbound": {"port": free_port()}}
                     for app in ("frontend", "productpage", "threescale")]
        mesh_file = root / "mesh.yaml"
        mesh_file.write_text(yaml.safe_dump({
            "controlPlaneNamespace": "meshext-system", "workloads": workloads,
            "services": [{"name": app, "namespace": "default", "selector": {"app": app}, "ports": [{"port": 8080}]}
                         for app in ("frontend", "productpage", "threescale", "threescale-down")]}))
        self.mesh = load_mesh(mesh_file)
        self.apps = [start_app(w.name, w.app.port) for w in self.mesh.workloads if w.name != "threescale-v1"]
        self.pki = pki = PKIDirectory(root / "pki")
        pki.ensure(workloads=[(w.name, w.namespace) for w in self.mesh.workloads])
        self.config_dir = root / "extensions"
        self.source = DirectorySource(self.config_dir, interval=0.1)
        self.running = start_control_plane(self.mesh, root / "cache", source=self.source,
                                           tls=pki.control_plane().load())
        server = self.running.server
        self.sidecars = {w.name: sidecar_for(w, server.xds_address, server.http_address,
                                             tls=pki.workload(w.name, w.namespace).load()).start()
                         for w in self.mesh.workloads}
        assert self.running.state.cache.wait_converged([w.node_id for w in self.mesh.workloads], 30)

    def get(self, path: str, **headers: str) -> tuple[int, str]:
        response = call(self.mesh, "frontend-v1", "productpage", path, headers)
        return response.status, response.body.get("raw", response.body.get("app", ""))

    def deploy(self, name: str, *documents: dict[str, Any]) -> Path:
        path = self.config_dir / f"{name}.yaml"
        write_resources(path, *documents)
        return path

    def close(self) -> None:
        for sidecar in self.sidecars.values():
            sidecar.cleanup()
        self.running.stop()
        for app in self.apps:
            app.shutdown()
            app.server_close()
        self.simulator.stop()


@pytest.fixture(scope="module")
def threescale_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreescaleMesh]:
    mesh = ThreescaleMesh(tmp_path_factory.mktemp("threescale-mesh"))
    yield mesh
    mesh.close()


@pytest.fixture
def clean(threescale_mesh: ThreescaleMesh) -> Iterator[ThreescaleMesh]:
    yield threescale_mesh
    for path in threescale_mesh.config_dir.iterdir():
        path.unlink()
    threescale_mesh.source.scan()
    threescale_mesh.running.operator.wait_idle()
    assert threescale_mesh.running.state.cache.wait_converged([w.node_id for w in threescale_mesh.mesh.workloads], 30)


def _ready(path: Path, key: str, generation: int = 1) -> dict[str, Any] | None:
    status = read_status(path).get(key, {})
    return status if status.get("observedGeneration") == generation and status.get("phase") == "Ready" else None


def ossm_2_1_extension(module: Path, config: dict[str, Any], name: str = "threescale-auth") -> dict[str, Any]:
    """OpenShift Service Mesh 2.1's ServiceMeshExtension for the 3scale module (its image swapped for ours)."""
    return sme(name, f"file://{module}", config=config, phase="PostAuthZ", priority=100,
               labels={"app": "productpage"})


def test_service_mesh_extension_authorizes_as_the_module(clean, threescale_module):
    mesh = clean
    resource = mesh.deploy("sme", ossm_2_1_extension(threescale_module,
                                                     documented_config(BACKEND_CLUSTER, BACKEND_URL)))
    status = wait_until(lambda: _ready(resource, "ServiceMeshExtension/default/threescale-auth"), timeout=90,
                        what="the extension Ready")
    assert status["workloads"] == ["productpage-v1.default"]
    assert wait_until(lambda: mesh.get("/productpage?user_key=user-key-basic")[0] == 200, timeout=30,
                      what="an authorized request")
    assert mesh.get("/productpage?user_key=nope") == (403, "Authentication failed\n")
    assert mesh.get("/productpage") == (403, "Authentication parameters missing\n")
    for _ in range(3):
        mesh.get("/?user_key=user-key-trial")
    assert mesh.get("/?user_key=user-key-trial") == (429, "Usage limit exceeded\n")
    # frontend has no 3scale filter: only productpage's inbound traffic is checked
    assert call(mesh.mesh, "productpage-v1", "frontend").status == 200


def test_a_bad_update_is_refused_and_the_last_good_configuration_keeps_serving(clean, threescale_module):
    # The name the first test created and deleted: created again, its last good configuration must still serve.
    mesh, name = clean, "threescale-auth"
    config = documented_config(BACKEND_CLUSTER, BACKEND_URL)
    resource = mesh.deploy("sme", ossm_2_1_extension(threescale_module, config, name))
    wait_until(lambda: _ready(resource, f"ServiceMeshExtension/default/{name}"), timeout=90, what="Ready")
    assert wait_until(lambda: mesh.get("/productpage?user_key=user-key-basic")[0] == 200, timeout=30,
                      what="the good configuration serving")
    # Requests all along the refused update: every one is answered by the last good configuration.
    answers: list[tuple[int, str]] = []
    done = threading.Event()

    def load() -> None:
        while not done.is_set():
            answers.append(mesh.get("/productpage?user_key=user-key-basic"))
            time.sleep(0.02)

    client = threading.Thread(target=load)
    client.start()
    del config["services"][0]["id"]
    write_resources(resource, ossm_2_1_extension(threescale_module, config, name))

    def refused():
        status = read_status(resource).get(f"ServiceMeshExtension/default/{name}", {})
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        error = conditions.get("Error", {})
        return error if error.get("reason") == "RejectedByProxy" else None

    error = wait_until(refused, timeout=60, what="RejectedByProxy")
    assert "Unable to create Wasm plugin" in error["message"]
    # the field and the fix are in the sidecar's Envoy log, where the filter wrote them
    assert "config.services[0].id: required field is missing; fix: give the 3scale service id" in (
        mesh.sidecars["productpage-v1"].envoy.log_text())
    time.sleep(3)   # the control plane has withdrawn the refused version from every snapshot by now
    done.set()
    client.join()
    failed = [answer for answer in answers if answer[0] != 200]
    assert len(answers) > 20 and not failed, f"{len(failed)} of {len(answers)} failed: {failed[:3]}"
    assert mesh.get("/productpage?user_key=nope") == (403, "Authentication failed\n")


def test_wasm_plugin_with_rules_and_token_from_system(clean, threescale_module):
    """The 3scale documentation's minimal WasmPlugin: no service token, no mapping rules; system has both."""
    mesh = clean
    plugin_config = {
        "api": "v1",
        "system": {"name": "system-name", "token": "system-read-token",
                   "upstream": {"name": BACKEND_CLUSTER, "url": BACKEND_URL, "timeout": 5000}},
        "backend": {"name": "backend-name", "extensions": ["no_body"],
                    "upstream": {"name": BACKEND_CLUSTER, "url": BACKEND_URL, "timeout": 5000}},
        "services": [{"id": SERVICE_ID, "authorities": ["*"], "credentials": {
            "user_key": [{"query_string": {"keys": ["user_key"]}}, {"header": {"keys": ["user_key"]}}],
            "app_id": [{"query_string": {"keys": ["app_id"]}}, {"header": {"keys": ["app_id"]}}],
            "app_key": [{"query_string": {"keys": ["app_key"]}}, {"header": {"keys": ["app_key"]}}]}}],
    }
    # As printed, the documentation's `selector: labels:` is not Istio's field: WasmPlugin selects with matchLabels.
    resource = mesh.deploy("wasmplugin", wasmplugin(
        "threescale-auth", f"file://{threescale_module}", phase="AUTHZ", priority=100,
        selector={"matchLabels": {"app": "productpage"}}, pluginConfig=plugin_config))
    wait_until(lambda: _ready(resource, "WasmPlugin/default/threescale-auth"), timeout=90, what="Ready")
    # only system's rule (/productpage) is known: the previous tests' filters, still draining, counted any path
    assert wait_until(lambda: mesh.get("/details?user_key=user-key-basic") == (404, "No Mapping Rule matched\n"),
                      timeout=30, what="this plugin alone on productpage")
    assert wait_until(lambda: mesh.get("/productpage?user_key=user-key-basic")[0] == 200, timeout=30,
                      what="rules and token fetched from system")
    before = dict(mesh.simulator.backend.totals()[SERVICE_ID]["user_key:user-key-basic"])
    assert mesh.get("/productpage?user_key=user-key-basic")[0] == 200
    assert mesh.get("/details?user_key=user-key-basic") == (404, "No Mapping Rule matched\n")
    after = mesh.simulator.backend.totals()[SERVICE_ID]["user_key:user-key-basic"]
    # the fetched rule counts metric productpage, whose parent is hits
    assert (after["productpage"] - before["productpage"], after["hits"] - before["hits"]) == (1, 1)


def keycloak_authentication(jwks: str | None = None, *, jwks_uri: str | None = None,
                            name: str = "jwt-example") -> dict[str, Any]:
    """The RequestAuthentication of OpenShift Service Mesh's 3scale OpenID Connect example, its keys inline
    (``jwks``) or at ``jwks_uri``."""
    keys = {"jwks": jwks} if jwks is not None else {"jwksUri": jwks_uri}
    return {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "productpage"}},
                     "jwtRules": [{"issuer": ISSUER, **keys}]}}


def deploy_oidc_extension(mesh: ThreescaleMesh, module: Path) -> None:
    """The 3scale filter with the documentation's OpenID Connect credentials, Ready on productpage."""
    config = documented_config(BACKEND_CLUSTER, BACKEND_URL, id=OIDC_SERVICE_ID, token=OIDC_TOKEN,
                               credentials=OIDC_CREDENTIALS)
    # a name of its own: the directory source counts the generations of a name the other tests used
    extension = mesh.deploy("sme", ossm_2_1_extension(module, config, "threescale-oidc"))
    wait_until(lambda: _ready(extension, "ServiceMeshExtension/default/threescale-oidc"), timeout=90, what="Ready")


def test_openid_connect_with_a_request_authentication(clean, threescale_module, issuer):
    mesh = clean
    deploy_oidc_extension(mesh, threescale_module)
    policy = mesh.deploy("jwt", keycloak_authentication(issuer.jwks))
    status = wait_until(lambda: _ready(policy, "RequestAuthentication/default/jwt-example"), timeout=30,
                        what="the RequestAuthentication enforced")
    assert status["workloads"] == ["productpage-v1.default"]
    host, port = mesh.running.server.http_address
    shown = subprocess.run([sys.executable, "-m", "meshext", "status", "--control-http", f"{host}:{port}",
                            "--pki-dir", str(mesh.pki.root)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if "RequestAuthentication/default/jwt-example" in line)
    assert "Ready" in row and "productpage-v1.default" in row
    token = issuer.token(azp="my-client", aud=["account"], sub="alice")
    bearer = {"authorization": f"Bearer {token}"}
    assert wait_until(lambda: mesh.get("/", **bearer)[0] == 200, timeout=30, what="the client id authorized")
    _, path = mesh.simulator.backend.requests[-1]
    assert path == (f"/transactions/authrep.xml?service_id={OIDC_SERVICE_ID}&service_token={OIDC_TOKEN}"
                    "&app_id=my-client&usage[hits]=1")
    unknown = issuer.token(azp="somebody-else")
    assert mesh.get("/", authorization=f"Bearer {unknown}") == (403, "Authentication failed\n")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert mesh.get("/", authorization=f"Bearer {forged}") == (401, "Jwt verification fails")
    assert mesh.get("/") == (403, "Authentication parameters missing\n")   # no token: jwt_authn lets it pass

    # A RequestAuthentication whose keys are not a key set is refused; the last valid one keeps verifying.
    write_resources(policy, keycloak_authentication("{}"))
    refused = wait_until(lambda: read_status(policy).get("RequestAuthentication/default/jwt-example", {}).get(
        "phase") == "Error" and read_status(policy)["RequestAuthentication/default/jwt-example"], timeout=30,
                         what="the bad update refused")
    assert refused["conditions"][1]["message"] == (
        "RequestAuthentication/default/jwt-example: spec.jwtRules[0].jwks: not a JSON Web Key Set\n"
        '  fix: set spec.jwtRules[0].jwks to the issuer\'s key set as JSON, {"keys": [{"kty": ...}]} '
        "(the last valid configuration keeps applying)")
    assert mesh.get("/", authorization=f"Bearer {forged}") == (401, "Jwt verification fails")
    assert mesh.get("/", **bearer)[0] == 200

    policy.unlink()   # no RequestAuthentication: no verification, so no payload for the filter to read
    assert wait_until(lambda: mesh.get("/", authorization=f"Bearer {forged}") == (
        403, "Authentication parameters missing\n"), timeout=30, what="the jwt_authn filter gone")
    assert mesh.get("/", **bearer) == (403, "Authentication parameters missing\n")


class _KeySet(BaseHTTPRequestHandler):
    """The issuer's JWKS endpoint: serves ``server.jwks``, counts the fetches."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = self.server.jwks.encode()  # type: ignore[attr-defined]
        self.server.fetches += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_sidecar_fetches_the_keys_of_a_jwks_uri(clean, threescale_module, issuer):
    mesh = clean
    keys = ThreadingHTTPServer(("127.0.0.1", 0), _KeySet)
    keys.jwks, keys.fetches = issuer.jwks, 0  # type: ignore[attr-defined]
    threading.Thread(target=keys.serve_forever, daemon=True).start()
    try:
        deploy_oidc_extension(mesh, threescale_module)
        policy = mesh.deploy("jwt", keycloak_authentication(
            jwks_uri=f"http://127.0.0.1:{keys.server_address[1]}/realms/3scale/protocol/openid-connect/certs",
            name="jwt-remote"))   # a name of its own, as the extension's
        wait_until(lambda: _ready(policy, "RequestAuthentication/default/jwt-remote"), timeout=30,
                   what="the RequestAuthentication enforced")
        token = issuer.token(azp="my-client")
        assert wait_until(lambda: mesh.get("/", authorization=f"Bearer {token}")[0] == 200, timeout=30,
                          what="a token verified with the fetched keys")
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert mesh.get("/", authorization=f"Bearer {forged}") == (401, "Jwt verification fails")
        assert keys.fetches >= 1  # type: ignore[attr-defined]
    finally:
        keys.shutdown()
        keys.server_close()


def documented_resource(kind: str, module: Path, config: dict[str, Any], name: str) -> dict[str, Any]:
    """The 3scale module's resource as OpenShift Service Mesh documents it, its image swapped for ours:
    2.1's ServiceMeshExtension (``config``), or 2.2+'s WasmPlugin (``pluginConfig``, ``phase: AUTHZ``,
    ``priority: 100``; the selector as Istio spells it, ``matchLabels``, where the docs print ``labels``)."""
    if kind == "ServiceMeshExtension":
        return ossm_2_1_extension(module, config, name)
    return wasmplugin(name, f"file://{module}", phase="AUTHZ", priority=100,
                      selector={"matchLabels": {"app": "productpage"}}, pluginConfig=config)


@pytest.mark.parametrize("kind", ["ServiceMeshExtension", "WasmPlugin"])
def test_the_documented_configuration_authorizes_and_denies_as_the_module(clean, threescale_module, issuer,
                                                                          monkeypatch, kind):
    """Each case of issue 14's list through the control plane, for each resource kind: user_key in the query
    or a header, several mapping rules summing their usages, limits exceeded, app_id/app_key, an app_id
    from a JWT jwt_authn validated, the backend slow, the backend down; each a resource update, as a user
    changes a deployed configuration."""
    mesh, backend = clean, clean.simulator.backend
    name = "threescale-sme" if kind == "ServiceMeshExtension" else "threescale-wasmplugin"  # a name per kind
    key = f"{kind}/default/{name}"
    trial = f"trial-of-{name}"   # a Trial application (3 hits) of this test's own
    backend.config.services[0].applications.append(Application(user_key=trial, plan="Trial"))

    def apply(config: dict[str, Any]) -> Path:
        path = mesh.config_dir / f"{name}.yaml"
        generation = read_status(path).get(key, {}).get("observedGeneration", 0) if path.exists() else 0
        write_resources(path, documented_resource(kind, threescale_module, config, name))
        wait_until(lambda: _ready(path, key, generation + 1), timeout=90, what=f"{key} generation {generation + 1}")
        return path

    def used(application: str) -> dict[str, int]:
        return dict(backend.totals().get(SERVICE_ID, {}).get(application, {}))

    apply(documented_config(BACKEND_CLUSTER, BACKEND_URL))
    assert wait_until(lambda: mesh.get("/productpage?user_key=user-key-basic")[0] == 200, timeout=30,
                      what="an authorized request")
    assert mesh.get("/productpage", user_key="user-key-basic")[0] == 200   # the documented header source
    assert mesh.get("/productpage?user_key=nope") == FAILED                # 403 user_key_invalid
    assert mesh.get("/productpage") == MISSING
    # /products/7/sold matches "/", "/products/" (a prefix) and "/products/{id}/sold": their usages summed
    before = used("user_key:user-key-basic")
    assert mesh.get("/products/7/sold?user_key=user-key-basic")[0] == 200
    after = used("user_key:user-key-basic")
    assert {metric: after.get(metric, 0) - before.get(metric, 0) for metric in ("hits", "products", "sales")} == {
        "hits": 1, "products": 2, "sales": 1}
    assert backend.requests[-1][1].endswith("&user_key=user-key-basic&usage[hits]=1&usage[products]=2"
                                            "&usage[sales]=1")
    assert [mesh.get(f"/?user_key={trial}")[0] for _ in range(4)] == [200, 200, 200, 429]
    assert mesh.get(f"/?user_key={trial}") == (429, "Usage limit exceeded\n")
    assert used(f"user_key:{trial}") == {"hits": 3}

    # app_id and app_key (the OpenID Connect service's applications are identified so)
    apply(documented_config(BACKEND_CLUSTER, BACKEND_URL, id=OIDC_SERVICE_ID, token=OIDC_TOKEN))
    assert wait_until(lambda: mesh.get("/?app_id=app-basic&app_key=key-basic")[0] == 200, timeout=30,
                      what="the app_id configuration serving")
    assert mesh.get("/?application_id=app-basic", app_key="key-basic")[0] == 200
    assert mesh.get("/?app_id=app-basic&app_key=wrong") == FAILED         # 409 application_key_invalid

    # an app_id from a JWT that jwt_authn (placed by a RequestAuthentication) validated
    apply(documented_config(BACKEND_CLUSTER, BACKEND_URL, id=OIDC_SERVICE_ID, token=OIDC_TOKEN,
                            credentials=OIDC_CREDENTIALS))
    policy = mesh.deploy(f"jwt-{name}", keycloak_authentication(issuer.jwks, name=f"jwt-{name}"))
    wait_until(lambda: _ready(policy, f"RequestAuthentication/default/jwt-{name}"), timeout=30,
               what="the RequestAuthentication enforced")
    token = issuer.token(azp="my-client", aud=["account"])
    assert wait_until(lambda: mesh.get("/", authorization=f"Bearer {token}")[0] == 200, timeout=30,
                      what="the JWT's azp authorized")
    assert backend.requests[-1][1].endswith("&app_id=my-client&usage[hits]=1")
    assert mesh.get("/", authorization=f"Bearer {issuer.token(azp='somebody-else')}") == FAILED
    assert mesh.get("/") == MISSING
    policy.unlink()

    # the backend slow: Envoy ends the callout after the upstream timeout (504), and the module denies
    slow = documented_config(BACKEND_CLUSTER, BACKEND_URL)
    slow["backend"]["upstream"]["timeout"] = 500
    answer = backend.authorize

    def slowly(*args: Any) -> tuple[int, list[tuple[str, str]], str]:
        time.sleep(3)
        return answer(*args)

    monkeypatch.setattr(backend, "authorize", slowly)
    apply(slow)
    assert wait_until(lambda: mesh.get("/?user_key=user-key-basic") == FAILED, timeout=30,
                      what="the 500 ms timeout applied")
    started = time.monotonic()
    assert mesh.get("/?user_key=user-key-basic") == FAILED
    assert 0.4 < time.monotonic() - started < 2.5
    monkeypatch.undo()
    assert wait_until(lambda: mesh.get("/?user_key=user-key-basic")[0] == 200, timeout=10, what="fast again")

    # the backend down: its cluster has no endpoints, Envoy answers the callout 503, and the module denies
    down = documented_config(DOWN_CLUSTER, "http://threescale-down.default.svc.cluster.local:8080/")
    apply(down)
    assert wait_until(lambda: mesh.get("/?user_key=user-key-basic") == FAILED, timeout=30,
                      what="the backend down")
    # the callout reached the mesh's cluster of that service, which had no endpoint to connect to
    assert sum(mesh.sidecars["productpage-v1"].envoy.stats(f"cluster.{DOWN_CLUSTER}.upstream_cx_none_healthy")
               .values()) >= 1
