"""How a module is laid out changes no filter's behaviour: a randomized comparison.

The cost work (issue #16) changes how a filter's module is made without
changing what it does: several extensions of one publisher in one module
with one CPython (`meshext build A B -o bundle.wasm`), and cold code run by
the interpreter inside the module (`meshext build --cold-code`, profiled on
the examples' own tests, so the random requests below reach code the
profile never saw: it runs interpreted).  Here two example filters that
rewrite headers and bodies, refuse requests and count are each run as
built plainly and in another layout (a root of one bundle; with cold code,
alone and in the bundle), in two test hosts, on the same seeded random
requests (methods, paths, headers, JSON and non-JSON bodies, upstream
answers); everything a client, an upstream and an operator could see must
be the same: what reached the upstream, what reached the client (local
replies included), the module's log and its metrics.  The seed is printed
on failure (``MESHEXT_EQUIVALENCE_SEED`` replays it).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from meshext.sdk.builder import build_filter, build_filters
from meshext.testing import Host, HttpStream

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIGS: dict[str, dict[str, Any]] = {
    "header-policy": {
        "required_headers": ["x-request-id"],
        "request": {"set": {"x-policy": "checked"}, "remove": ["x-debug"]},
        "response": {"set": {"x-content-type-options": "nosniff"}, "remove": ["server"]},
        "rules": [
            {"name": "admin", "prefix": "/admin/", "allowed_methods": ["GET"], "required_headers": ["x-admin-token"],
             "request": {"set": {"x-policy-rule": "admin"}}, "response": {"set": {"cache-control": "no-store"}}},
            {"name": "api", "prefix": "/api/", "allowed_methods": ["GET", "POST"]},
        ],
    },
    "json-transform": {
        "request": {"drop": ["debug", "user.password"], "rename": {"user.mail": "email", "items.qty": "quantity"}},
        "response": {"drop": ["internal_id", "items.cost"], "rename": {"createdAt": "created_at"}},
        "max_body_bytes": 300,
    },
}
REQUESTS = 150
SEED = int(os.environ.get("MESHEXT_EQUIVALENCE_SEED") or random.SystemRandom().randrange(1 << 32))


# The other layouts: the module's name in ``modules`` and the root_id that selects the example in it.
LAYOUTS = {"bundle": ("bundle", True), "cold code": ("{name} cold", False), "cold code bundle": ("bundle cold", True)}


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each example built alone, and both built into one module; each of those also with cold code."""
    folder = tmp_path_factory.mktemp("equivalence")
    built = {}
    for cold_code, suffix in ((False, ""), (True, " cold")):
        for name in CONFIGS:
            built[name + suffix] = build_filter(EXAMPLES / name, folder / f"{name}{suffix}.wasm",
                                                cold_code=cold_code).output
        built["bundle" + suffix] = build_filters([EXAMPLES / name for name in CONFIGS], folder / f"bundle{suffix}.wasm",
                                                 cold_code=cold_code).output
    return built


def _document(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value shaped like the examples' orders (the fields the configurations name, and others)."""
    if depth > 2 or rng.random() < 0.2:
        return rng.choice([None, True, 7, -1.5, "ada@example.com", "", "é\u2603", [1, "x"]])
    names = ["user", "mail", "password", "debug", "items", "qty", "sku", "internal_id", "cost", "createdAt", "id"]
    if rng.random() < 0.25:
        return [_document(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(names): _document(rng, depth + 1) for _ in range(rng.randrange(5))}


def _body(rng: random.Random) -> tuple[bytes, str | None]:
    """A request or response body and its content type (None: no header)."""
    kind = rng.randrange(6)
    if kind == 0:
        return b"", None
    if kind == 1:
        return b"\x00\xff not json", "application/json"
    if kind == 2:
        return rng.randbytes(rng.randrange(1, 400)), rng.choice(["application/octet-stream", "application/json"])
    body = json.dumps(_document(rng)).encode()
    if kind == 3:
        body = body * rng.randrange(1, 30)  # beyond max_body_bytes, and no longer one JSON value
    return body, rng.choice(["application/json", "application/json; charset=utf-8", "text/plain"])


def _exchange(rng: random.Random) -> dict[str, Any]:
    """The arguments of one random round trip (``PluginVM.exchange``)."""
    headers: list[tuple[str, str]] = []
    for name, value in (("x-request-id", "r-1"), ("x-admin-token", "t"), ("x-debug", "1"), ("x-other", "v")):
        if rng.random() < 0.6:
            headers.append((name, value))
    body, content_type = _body(rng)
    if content_type:
        headers.append(("content-type", content_type))
    response_body, response_type = _body(rng)
    response_headers = [("server", "upstream")] + ([("content-type", response_type)] if response_type else [])
    prefix = rng.choice(["/", "/admin/", "/admin", "/api/", "/api/v2/", "/orders", "/ADMIN/"])
    return {
        "method": rng.choice(["GET", "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"]),
        "path": prefix + rng.choice(["", "users", "a/b?x=1", "%2e%2e/x", "?q=/admin/"]),
        "headers": headers, "body": body, "response_status": rng.choice([200, 201, 404, 500]),
        "response_headers": response_headers, "response_body": response_body,
    }


def _seen(stream: HttpStream) -> tuple[Any, ...]:
    """What the upstream and the client got from one round trip."""
    local = stream.local_response
    return (
        None if local is None else (local.status, local.body, local.headers, local.details),
        stream.request.forwarded_headers, bytes(stream.request.forwarded_body), stream.request.complete,
        stream.response.forwarded_headers, bytes(stream.response.forwarded_body), stream.response.complete,
    )


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_filter_does_the_same_in_every_layout(name: str, layout: str, modules: dict[str, Path]) -> None:
    module, in_bundle = LAYOUTS[layout]
    alone_host, bundle_host = Host(), Host()
    alone = alone_host.load(modules[name], config=CONFIGS[name])
    bundled = bundle_host.load(modules[module.format(name=name)], config=CONFIGS[name],
                               root_id=name if in_bundle else "")
    rng = random.Random(SEED)
    refused = forwarded = 0
    for number in range(REQUESTS):
        arguments = _exchange(rng)
        seen = _seen(alone.exchange(**arguments))
        assert _seen(bundled.exchange(**arguments)) == seen, f"seed {SEED}, request {number}: {arguments}"
        refused += seen[0] is not None
        forwarded += seen[0] is None
    assert bundled.log_messages() == alone.log_messages(), f"seed {SEED}"
    assert bundle_host.metric_values() == alone_host.metric_values(), f"seed {SEED}"
    # The requests exercised the filter both ways: some refused or answered locally, some let through.
    assert refused and forwarded, (SEED, refused, forwarded)
