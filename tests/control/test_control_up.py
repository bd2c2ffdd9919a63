"""`meshext up` end to end: the commands as processes, on free loopback ports, in a temporary state directory.

One local mesh is brought up for the module (the example builds come from the
meshext cache when an earlier run made them) and the tests run against it in
order: traffic through the three services with the extension's effect, `meshext
get` within 80 columns, an extension update applied live under a bounded load
with no failed request, refused resources leaving the mesh serving, Prometheus
scraping the three sidecars and `meshext graph` reading it, a second `up`, a
killed run recovered, the backing services (the rate limit service on Redis,
the 3scale backend simulator) started by `meshext apply` for the resources that
need them, the shipped rate limit and 3scale resources running in the VMs
telemetry already had (the extensions bundle), and `down` leaving no process (checked by PID, Envoys included).  A
taken port is refused before anything starts.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from control_harness import Load, Response, free_port, wait_until
from cryptography.hazmat.primitives.asymmetric import rsa
from local_mesh_checks import (
    all_pids,
    assert_demo_edges,
    free_mesh_ports,
    free_port_base,
    prometheus_edges,
    prometheus_query,
)
from prometheus_client.parser import text_string_to_metric_families

from meshext.control.local import images
from meshext.control.local.backing import REDIS, needed_services
from meshext.control.local.layout import REDIS_OFFSET, Ports, StateDir
from meshext.control.local.processes import start_time
from meshext.control.local.resources import read_documents
from meshext.control.local.up import LocalMesh, get_productpage, part_names
from meshext.extensions import bundle
from meshext.extensions.ratelimit.filter import ratelimit_metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "local"


def meshext(state: Path, *args: str, timeout: float = 600, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `meshext ARGS --state-dir STATE` as a user would (80-column terminal)."""
    return subprocess.run([sys.executable, "-m", "meshext", *args, "--state-dir", str(state)], capture_output=True,
                          text=True, timeout=timeout, input=stdin, env={**os.environ, "COLUMNS": "80", **(env or {})})


def port_options(ports: Ports) -> list[str]:
    return ports.as_options().split()


@pytest.fixture(scope="module")
def local_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Ports]]:
    state = tmp_path_factory.mktemp("state")
    ports = free_mesh_ports()
    try:
        started = meshext(state, "up", *port_options(ports))
        assert started.returncode == 0, started.stdout + started.stderr
        assert "the local mesh is up after" in started.stdout
        assert f"curl -i http://127.0.0.1:{ports.productpage}/productpage" in started.stdout
        yield state, ports
    finally:
        meshext(state, "down")
        LocalMesh(StateDir(state)).stop(lambda line: None)  # whatever a failed test left


def test_up_serves_the_three_services_with_the_extension(local_mesh):
    state, ports = local_mesh
    status, headers, body = get_productpage(ports)
    assert status == 200
    assert headers["x-meshext-policy"] == "v1"  # header-policy's config, on productpage's sidecar
    assert body["served_by"] == "productpage-v1"
    assert [review["stars"] for review in body["reviews"]] == [5, 4]  # from ratings, over gRPC via reviews
    status, _, body = get_productpage(ports, "/admin")
    assert (status, body["rule"]) == (403, "admin")

    listing = meshext(state, "get")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PRIORITY", "IMAGE", "READY"]
    assert max(len(line) for line in lines) <= 80
    row = next(line for line in lines if line.startswith("sme/header-policy"))
    assert row.split()[1:3] == ["PreAuthZ", "100"] and row.split()[-1] == "True"

    logs = meshext(state, "logs", "control-plane")
    assert "meshext control plane: xDS" in logs.stdout


def test_extension_update_applied_live_under_load(local_mesh, tmp_path):
    state, ports = local_mesh
    document = yaml.safe_load(DEPLOY.joinpath("header-policy.yaml").read_text())
    document["spec"]["config"]["response"]["set"]["x-meshext-policy"] = "v2"
    updated = tmp_path / "header-policy-v2.yaml"
    updated.write_text(yaml.safe_dump(with_registry_document(document, ports)))

    def send() -> Response:
        status, headers, body = get_productpage(ports)
        return Response(status, list(headers.items()), body)

    with Load(send, count=400, seconds=90, pause=0.02) as load:
        wait_until(lambda: load.sent >= 20, 60, "load running")
        applied = meshext(state, "apply", "-f", str(updated), "--wait")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert applied.stdout.strip() == "servicemeshextension.maistra.io/header-policy configured"
        wait_until(lambda: get_productpage(ports)[1].get("x-meshext-policy") == "v2", 60, "the v2 header")
        sent_at_change = load.sent
        wait_until(lambda: load.sent >= sent_at_change + 20, 60, "load after the change")
    assert load.failures == []
    again = meshext(state, "apply", "-f", str(updated))
    assert again.stdout.strip() == "servicemeshextension.maistra.io/header-policy unchanged"


def with_registry_document(document: dict, ports: Ports) -> dict:
    document["spec"]["image"] = document["spec"]["image"].replace("127.0.0.1:15050", f"127.0.0.1:{ports.registry}")
    return document


def test_bad_resources_are_refused_and_the_mesh_keeps_serving(local_mesh, tmp_path):
    state, ports = local_mesh
    resources = StateDir(state).resources_dir
    before = sorted(p.name for p in resources.iterdir())
    typo = tmp_path / "typo.yaml"
    typo.write_text("apiVersion: maistra.io/v1\nkind: ServiceMeshExtension\nmetadata: {name: ok}\n"
                    "spec: {image: 127.0.0.1:1/x:1}\n---\napiVersion: maistra.io/v1\nkind: ServiceMeshExtension\n"
                    "metadata: {name: typo}\nspec: {image: 127.0.0.1:1/x:1, priorty: 3}\n")
    refused = meshext(state, "apply", "-f", str(typo))
    assert refused.returncode == 1
    assert f"{typo} (document 2): ServiceMeshExtension/default/typo: spec.priorty: unknown field" in refused.stderr
    assert "fix: remove spec.priorty or correct its spelling" in refused.stderr
    broken = meshext(state, "apply", "-f", "-", stdin="kind: [unclosed\n")
    assert broken.returncode == 1 and "<stdin>: not YAML" in broken.stderr
    assert sorted(p.name for p in resources.iterdir()) == before  # nothing written, not even the good document

    # Valid, but its image is not in the registry: the control plane refuses it, the rest keeps running.
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"apiVersion": "maistra.io/v1", "kind": "ServiceMeshExtension",
                                       "metadata": {"name": "missing", "namespace": "default"},
                                       "spec": {"image": f"127.0.0.1:{ports.registry}/meshext/nothing-here:1",
                                                "workloadSelector": {"labels": {"app": "productpage"}}}}))
    waited = meshext(state, "apply", "-f", str(missing), "--wait")
    assert waited.returncode == 1
    assert "servicemeshextension.maistra.io/missing: ImagePullFailed" in waited.stderr
    listing = meshext(state, "get")
    assert "ServiceMeshExtension/default/missing: ImagePullFailed" in listing.stdout.replace("\n", " ")
    assert get_productpage(ports)[0] == 200
    deleted = meshext(state, "delete", "-f", str(missing))
    assert deleted.stdout.strip() == "servicemeshextension.maistra.io/missing deleted"
    wait_until(lambda: "missing" not in meshext(state, "get").stdout, 30, "the resource gone from get")


def test_prometheus_scrapes_the_sidecars_and_graph_reads_it(local_mesh):
    state, ports = local_mesh
    prometheus = f"http://127.0.0.1:{ports.prometheus}"

    def query(promql: str) -> list[dict]:
        return prometheus_query(prometheus, promql)

    def sidecars_up() -> set[str]:
        return {series["metric"]["workload"] for series in query("up") if series["value"][1] == "1"}

    def send() -> Response:
        status, headers, body = get_productpage(ports)
        return Response(status, list(headers.items()), body)

    assert wait_until(lambda: sidecars_up() == {"productpage-v1", "reviews-v1", "ratings-v1"}, 60,
                      "Prometheus scraping the three sidecars")
    with Load(send, count=2000, seconds=120, pause=0.1) as load:
        # Every edge the graph is asserted to draw (the two demo edges and the test's own
        # requests into productpage) in Prometheus, from two scrapes at least (a rate needs
        # two samples).
        wait_until(lambda: prometheus_edges(prometheus) >=
                   {("productpage-v1", "reviews-v1"), ("reviews-v1", "ratings-v1"), ("unknown", "productpage-v1")}, 60,
                   "the demo's edges in Prometheus")
        # A terminal wide enough that no cell folds onto a second line (80 columns fold the names).
        from_prometheus = meshext_no_state("graph", "--prometheus", prometheus, columns=120)
        from_sidecars = meshext_no_state("graph", "--mesh", str(StateDir(state).mesh_file), "--interval", "2",
                                         columns=120)
    assert load.failures == []
    assert from_prometheus.returncode == 0, from_prometheus.stderr
    assert prometheus in from_prometheus.stdout
    assert_demo_edges(from_prometheus.stdout)
    assert from_sidecars.returncode == 0, from_sidecars.stderr
    # The mesh file names five sidecars: the three apps' and the backing services' (not started yet).
    assert "5 sidecars' /stats/prometheus" in from_sidecars.stdout
    assert_demo_edges(from_sidecars.stdout)


def meshext_no_state(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshext", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": str(columns)})


def test_second_up_reuses_the_running_mesh(local_mesh):
    state, ports = local_mesh
    pids = LocalMesh(StateDir(state)).running()
    again = meshext(state, "up", *port_options(ports))
    assert again.returncode == 0, again.stderr
    assert "the local mesh is already running" in again.stdout
    assert LocalMesh(StateDir(state)).running() == pids


def test_up_after_a_killed_run_recovers(local_mesh):
    state, ports = local_mesh
    mesh = LocalMesh(StateDir(state))
    sidecar = mesh.parts["productpage-sidecar"]
    orphans = set(sidecar.processes())  # the proxy and its Envoy
    for name in ("control-plane", "productpage-sidecar"):
        pid = mesh.parts[name].pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # the Envoy of the killed proxy is left running
    wait_until(lambda: mesh.parts["control-plane"].pid() is None, 10, "the control plane gone")
    recovered = meshext(state, "up", *port_options(ports))
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert "a previous run did not finish or was stopped in part: stopping" in recovered.stderr
    assert all(start_time(pid) is None for pid in orphans)
    assert get_productpage(ports)[1]["x-meshext-policy"] == "v2"  # the applied update outlived the restart


def shipped_resource(name: str, ports: Ports, directory: Path) -> Path:
    """deploy/local/NAME.yaml with the registry the test's mesh runs."""
    path = directory / f"{name}.yaml"
    path.write_text(DEPLOY.joinpath(f"{name}.yaml").read_text().replace("127.0.0.1:15050",
                                                                         f"127.0.0.1:{ports.registry}"))
    return path


def away_from_a_minute_edge() -> None:
    """Sleep past the next minute boundary when it is less than 10 s away: the example limits count per
    calendar minute (fixed windows), and a count split across two windows would start again at 0."""
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


def productpage_as_new_clients(ports: Ports) -> Callable[..., tuple[int, dict[str, str]]]:
    """GET from productpage, each request from another client (x-forwarded-for), so that the global rate
    limit's per-client counts, if it is applied, never reach its limit: (status, headers)."""
    clients = (f"client-{n}" for n in itertools.count())

    def get(path: str = "/productpage", **headers: str) -> tuple[int, dict[str, str]]:
        status, answer_headers, _ = get_productpage(ports, path, {"x-forwarded-for": next(clients), **headers})
        return status, answer_headers

    return get


def test_global_rate_limit_starts_the_rate_limit_service(local_mesh, tmp_path):
    state, ports = local_mesh
    mesh = LocalMesh(StateDir(state))
    parts = (REDIS, "ratelimit", "ratelimit-sidecar")
    get = productpage_as_new_clients(ports)

    # The rate limit service's port taken: refused naming it and the option, nothing applied or started.
    resource = shipped_resource("ratelimit-global", ports, tmp_path)
    resources_before = sorted(p.name for p in StateDir(state).resources_dir.iterdir())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.app_port("ratelimit", 0)))
        taken.listen()
        refused = meshext(state, "apply", "-f", str(resource))
    assert refused.returncode == 1
    assert (f"port {ports.app_port('ratelimit', 0)} is already in use; the local mesh needs it for the ratelimit "
            "service") in refused.stderr
    assert "or `meshext down`, then `meshext up --port-base PORT` with a free range" in refused.stderr
    assert sorted(p.name for p in StateDir(state).resources_dir.iterdir()) == resources_before
    assert [mesh.parts[name].pid() for name in parts] == [None] * 3

    # Global mode: its configuration names the service's cluster, so apply starts Redis, the RLS and its sidecar.
    applied = meshext(state, "apply", "-f", str(resource), "--wait")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert applied.stdout.strip() == "wasmplugin.extensions.istio.io/ratelimit-global created"
    assert all(mesh.parts[name].pid() for name in parts)
    try:
        # The service answered (its limit in the headers), not the filter's failure mode.
        wait_until(lambda: get()[1].get("x-ratelimit-limit") == "5", 60, "the rate limit service answering")
        away_from_a_minute_edge()
        statuses = [get_productpage(ports, headers={"x-forwarded-for": "10.1.2.3"})[0] for _ in range(7)]
        assert statuses == [200] * 5 + [429] * 2
        import redis
        counters = redis.Redis(port=ports.app_port("ratelimit", REDIS_OFFSET))
        (key,) = counters.keys("productpage_client_10.1.2.3_*")
        assert int(counters.get(key)) == 7  # the RLS counts every request it was asked about
        # The filter's labelled counter, as productpage's sidecar shows it to Prometheus.
        admin = urllib.request.urlopen(f"http://127.0.0.1:{ports.app_port('productpage', 2)}/stats/prometheus",
                                       timeout=10).read().decode()
        outcomes = {sample.labels["outcome"]: sample.value for family in text_string_to_metric_families(admin)
                    for sample in family.samples if sample.name == ratelimit_metrics.REQUESTS
                    and sample.labels.get("rule") == "per-client" and sample.labels.get("domain") == "productpage"}
        assert outcomes["over_limit"] >= 2 and outcomes["ok"] >= 5, outcomes
    finally:
        deleted = meshext(state, "delete", "-f", str(resource))
    assert deleted.stdout.strip() == "wasmplugin.extensions.istio.io/ratelimit-global deleted"
    wait_until(lambda: "x-ratelimit-limit" not in get()[1], 60, "productpage without the rate limit")
    # The service keeps running until `meshext down` (test_down_leaves_no_process stops it with the rest).
    assert all(mesh.parts[name].pid() for name in parts)


def test_3scale_starts_the_backend_simulator(local_mesh, tmp_path):
    state, ports = local_mesh
    mesh = LocalMesh(StateDir(state))
    get = productpage_as_new_clients(ports)
    resource = shipped_resource("3scale", ports, tmp_path)
    applied = meshext(state, "apply", "-f", str(resource), "--wait")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert applied.stdout.strip() == "servicemeshextension.maistra.io/threescale-auth created"
    assert all(mesh.parts[name].pid() for name in ("threescale", "threescale-sidecar"))
    # productpage now needs a key of the example account (deploy/local/services/3scale-backend.yaml).
    wait_until(lambda: get()[0] == 403, 60, "the 3scale filter on productpage")
    status, headers = get()
    assert (status, headers["powered-by"]) == (403, "3scale")
    authorized = 0
    for _ in range(3):
        assert get("/productpage?user_key=demo-user-key")[0] == 200
        authorized += 1
    assert get(user_key="demo-user-key")[0] == 200  # from the header too
    authorized += 1
    assert get("/productpage?user_key=nobody")[0] == 403
    away_from_a_minute_edge()
    assert [get(user_key="trial-user-key")[0] for _ in range(4)] == [200, 200, 200, 429]  # Trial: 3 a minute
    with urllib.request.urlopen(f"http://127.0.0.1:{ports.app_port('threescale', 0)}/_simulator/usage") as answer:
        usage = json.load(answer)["2555417834780"]
    assert usage["user_key:demo-user-key"]["hits"] == authorized  # the backend recorded every authorized request
    assert usage["user_key:trial-user-key"]["hits"] == 3

    deleted = meshext(state, "delete", "-f", str(resource))
    assert deleted.stdout.strip() == "servicemeshextension.maistra.io/threescale-auth deleted"
    wait_until(lambda: get()[0] == 200, 60, "productpage without 3scale")
    assert all(mesh.parts[name].pid() for name in ("threescale", "threescale-sidecar"))  # until `meshext down`


def envoy_admin(ports: Ports, app: str, path: str) -> str:
    """GET ``path`` from the admin listener of ``app``'s sidecar Envoy."""
    with urllib.request.urlopen(f"http://127.0.0.1:{ports.app_port(app, 2)}{path}", timeout=10) as answer:
        return str(answer.read().decode())


def active_wasm_vms(ports: Ports, app: str) -> int:
    """Envoy's count of live V8 Wasm VMs in ``app``'s sidecar (``wasm.envoy.wasm.runtime.v8.active``)."""
    stats = envoy_admin(ports, app, "/stats?filter=^wasm\\.envoy\\.wasm\\.runtime\\.v8\\.active$")
    return int(stats.split(":")[1])


def wasm_vm_ids(ports: Ports, app: str) -> dict[str, str]:
    """ECDS name -> vm_id of every Wasm plugin config in ``app``'s sidecar, from its config dump."""
    dump = json.loads(envoy_admin(ports, app, "/config_dump?resource=ecds_filters"))
    return {entry["ecds_filter"]["name"]: entry["ecds_filter"]["typed_config"]["config"]["vm_config"]["vm_id"]
            for entry in dump["configs"] if "vm_config" in entry["ecds_filter"]["typed_config"].get("config", {})}


HEADER_POLICY = "meshext.servicemeshextension.default.header-policy"  # ECDS names on productpage's sidecar
THREESCALE = "meshext.servicemeshextension.default.threescale-auth"


def test_the_projects_extensions_share_telemetrys_vms_and_a_users_gets_its_own(local_mesh, tmp_path):
    """ratelimit and 3scale, applied from the shipped files, run from `up`'s extensions bundle in the VMs
    productpage's sidecar already runs telemetry in: no VM more, one vm_id for the three; header-policy (an
    image of another repository) keeps its own; both extensions do their work."""
    state, ports = local_mesh
    before = wait_until(lambda: (lambda ids: ids if len(ids) == 3 else None)(wasm_vm_ids(ports, "productpage")),
                        60, "telemetry (inbound, outbound) and header-policy on productpage")
    assert before[HEADER_POLICY] != before["meshext.telemetry"] == before["meshext.telemetry.outbound"]
    vms = active_wasm_vms(ports, "productpage")
    resources = [shipped_resource(name, ports, tmp_path) for name in ("ratelimit", "3scale")]
    applied = meshext(state, "apply", *(option for path in resources for option in ("-f", str(path))), "--wait")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    try:
        ids = wait_until(lambda: (lambda ids: ids if len(ids) == 5 else None)(wasm_vm_ids(ports, "productpage")),
                         60, "ratelimit and 3scale on productpage")
        assert ids["meshext.wasmplugin.default.ratelimit"] == ids[THREESCALE] == ids["meshext.telemetry"] \
            == ids["meshext.telemetry.outbound"] != ids[HEADER_POLICY]
        # The canaries Envoy starts to check each new plugin config are gone again: no VM was added.
        wait_until(lambda: active_wasm_vms(ports, "productpage") == vms, 60, f"{vms} Wasm VMs again")
        status, headers, _ = get_productpage(ports, headers={"x-forwarded-for": "bundle-keyless"})
        assert (status, headers["powered-by"]) == (403, "3scale")  # no key
        # 5 requests per client in 10 s, then 429: 11 in a row, so one window holds 6 of them.
        keyed = {"x-forwarded-for": "bundle-client", "user_key": "demo-user-key"}
        statuses = [get_productpage(ports, headers=keyed)[0] for _ in range(11)]
        assert statuses[0] == 200 and 429 in statuses and set(statuses) == {200, 429}, statuses
    finally:
        deleted = meshext(state, "delete", *(option for path in resources for option in ("-f", str(path))))
    assert deleted.returncode == 0, deleted.stderr
    wait_until(lambda: get_productpage(ports)[0] == 200, 60, "productpage without 3scale and the rate limit")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_request_authentication_is_applied_and_listed_like_the_extensions(local_mesh, tmp_path):
    state, ports = local_mesh
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers()
    jwks = json.dumps({"keys": [{"kty": "RSA", "alg": "RS256", "kid": "k", "e": _b64url(numbers.e.to_bytes(3, "big")),
                                 "n": _b64url(numbers.n.to_bytes(256, "big"))}]})
    resource = tmp_path / "jwt.yaml"
    resource.write_text(yaml.safe_dump({
        "apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "productpage"}},
                 "jwtRules": [{"issuer": "https://issuer.example", "jwks": jwks}]}}))
    applied = meshext(state, "apply", "-f", str(resource), "--wait")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert applied.stdout.strip() == "requestauthentication.security.istio.io/jwt created"
    listed = meshext(state, "get")
    (row,) = [line for line in listed.stdout.splitlines() if "ra/jwt" in line]
    assert row.split()[-1] == "True", listed.stdout
    # A token whose signature the issuer's keys do not verify is refused; no token passes (Istio's rule).
    claims = _b64url(json.dumps({"iss": "https://issuer.example", "exp": int(time.time()) + 600}).encode())
    forged = f"{_b64url(json.dumps({'alg': 'RS256', 'kid': 'k'}).encode())}.{claims}.{_b64url(bytes(256))}"
    bearer = {"authorization": f"Bearer {forged}"}
    assert get_productpage(ports, headers=bearer)[0] == 401
    assert get_productpage(ports)[0] == 200
    deleted = meshext(state, "delete", "-f", str(resource))
    assert deleted.stdout.strip() == "requestauthentication.security.istio.io/jwt deleted"
    wait_until(lambda: get_productpage(ports, headers=bearer)[0] == 200, 60, "productpage without jwt_authn")


def test_a_resource_needs_the_backing_service_whose_cluster_its_configuration_names():
    def needs(path: str, text: str) -> list[str]:
        return [service.name for service in needed_services(read_documents(path, text))]

    shipped = {name: needs(name, DEPLOY.joinpath(name).read_text()) for name in
               ("header-policy.yaml", "ratelimit.yaml", "ratelimit-global.yaml", "3scale.yaml")}
    assert shipped == {"header-policy.yaml": [], "ratelimit.yaml": [], "ratelimit-global.yaml": ["ratelimit"],
                       "3scale.yaml": ["threescale"]}
    # Global mode against a user's own rate limit service: nothing to start.
    elsewhere = yaml.safe_load(DEPLOY.joinpath("ratelimit-global.yaml").read_text())
    elsewhere["spec"]["pluginConfig"]["service"]["cluster"] = "outbound|8081||my-rls.infra.svc.cluster.local"
    assert needs("elsewhere", yaml.safe_dump(elsewhere)) == []
    # Another image (a user's own 3scale build) whose system section calls the local simulator: it is started.
    own = {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
           "metadata": {"name": "my-3scale", "namespace": "default"},
           "spec": {"url": "oci://registry.example/me/auth:1", "pluginConfig": {"system": {"upstream": {
               "name": "outbound|9080||threescale.default.svc.cluster.local"}}}}}
    assert needs("own", yaml.safe_dump(own)) == ["threescale"]


def test_get_keeps_every_column_at_80_columns_with_long_names_and_images():
    from rich.console import Console

    from meshext.control.local.cli import resource_table

    pinned = "oci://127.0.0.1:15050/meshext/extensions:0.1.0-0123456789ab@sha256:" + "a" * 64
    rows = [("wp/ratelimit-global-for-the-productpage-service", "AUTHZ", "0", pinned, "True"),
            ("sme/header-policy", "PreAuthZ", "100", "127.0.0.1:15050/meshext/header-policy:0.1.0-0123456789ab",
             "False")]
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(resource_table(rows))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[0].split() == ["NAME", "PHASE", "PRIORITY", "IMAGE", "READY"]
    assert [line.split()[1:3] + line.split()[-1:] for line in lines if line.startswith(("wp/", "sme/"))] == [
        ["AUTHZ", "0", "True"], ["PreAuthZ", "100", "False"]]
    image_column = "".join(line[lines[0].index("IMAGE"):lines[0].index("READY")].strip() for line in lines[2:])
    assert pinned in image_column  # folded, whole


def test_header_policy_is_built_with_cold_code_and_cached_apart(tmp_path, monkeypatch):
    """`meshext up` builds the example with `--cold-code` (productpage's sidecar compiles it after telemetry,
    the tail of a warm start without it), in a cache entry of its own: a plain build of the same content
    is never taken for it."""
    monkeypatch.setenv("MESHEXT_CACHE_DIR", str(tmp_path / "cache"))
    commands = []

    def fake_build(command: list[str], log: Path, *, what: str) -> None:
        commands.append(command)
        Path(command[command.index("-o") + 1]).write_bytes(b"\0asm\1\0\0\0")

    monkeypatch.setattr(images, "_run", fake_build)
    plain = tmp_path / "cache" / images.BUILD_CACHE / bundle.content_key(images.HEADER_POLICY.projects)
    plain.mkdir(parents=True)
    (plain / "header-policy.wasm").write_bytes(b"a plain build")
    module, cached = images.build(images.HEADER_POLICY, tmp_path / "build.log")
    assert not cached and module.parent != plain
    (command,) = commands
    assert command[3:5] == ["build", str(images.HEADER_POLICY.projects[0])] and command[-1] == "--cold-code"
    assert images.build(images.HEADER_POLICY, tmp_path / "build.log") == (module, True)  # the second up
    assert len(commands) == 1


def test_down_leaves_no_process(local_mesh):
    state, ports = local_mesh
    mesh = LocalMesh(StateDir(state))
    pids = all_pids(mesh)
    assert all(mesh.running().values())  # every part runs, the backing services' too
    assert len(pids) >= len(part_names()) + 5  # every part, and the five Envoys
    stopped = meshext(state, "down")
    assert stopped.returncode == 0 and "the local mesh is down" in stopped.stdout
    assert [pid for pid in pids if start_time(pid) is not None] == []
    assert not list(StateDir(state).run_dir.glob("*.pid"))
    assert meshext(state, "down").stdout.startswith("no local mesh was running")
    missing = meshext(state, "get")
    assert missing.returncode == 3 and "no local mesh is running" in missing.stderr


def test_a_taken_port_is_named_with_its_option(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = Ports(productpage=free_port(), registry=free_port(), control=free_port(), control_http=free_port(),
                      prometheus=port, port_base=free_port_base())
        refused = meshext(tmp_path, "up", *port_options(ports))
    assert refused.returncode == 1
    assert f"port {port} is already in use; the local mesh needs it for Prometheus" in refused.stderr
    assert f"fix: stop what listens on 127.0.0.1:{port}, or pass --prometheus-port with a free port" in refused.stderr
    assert not StateDir(tmp_path).run_dir.exists()  # refused before anything started
