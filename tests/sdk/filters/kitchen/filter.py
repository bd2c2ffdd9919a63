"""A test filter exercising most of the SDK; requests choose the behaviour.

Request headers drive it (x-deny, x-upper-body, x-rewrite-response, ...);
the plugin configuration sets a greeting and the fail policy.
"""

import hashlib
import random

from meshext.sdk import Action, Counter, FailPolicy, HttpContext, RootContext, SharedData, log

REQUESTS = Counter("kitchen_requests_total")
# Drawn when the VM starts (the SDK re-seeds `random` per VM): tells VMs apart.
VM_TOKEN = None


class Kitchen(HttpContext):
    root: "Root"

    def on_request_headers(self, end_of_stream):
        global VM_TOKEN
        if VM_TOKEN is None:
            VM_TOKEN = f"{random.getrandbits(64):016x}"
        headers = self.request.headers
        path = headers.get(":path", "")
        REQUESTS.increment()
        self.rewrite_response = "x-rewrite-response" in headers
        self.upper_body = "x-upper-body" in headers

        headers.add("x-added", "yes")
        if "x-replace-me" in headers:
            headers.set("x-replace-me", "replaced")
        headers.remove("x-remove-me")
        greeting = (self.root.config or {}).get("greeting")
        if greeting:
            headers.set("x-greeting", greeting)

        if headers.get("x-deny"):
            return self.send_local_response(
                403, b"denied by the kitchen filter\n", [("x-denied-by", "kitchen"), ("content-type", "text/plain")],
                details="kitchen_denied",
            )
        if path.startswith("/file-data"):
            # Nothing imported these at build time: read now, from the module's passive data segment.
            headers.set("x-codec", b"caf\xe9".decode("cp1252").encode().hex())  # encodings.cp1252
            with open("/app/meshext/sdk/__init__.py", "rb") as file:  # shipped for traceback lines
                headers.set("x-sdk-source-sha256", hashlib.sha256(file.read()).hexdigest())
        if path.startswith("/boom"):
            raise ValueError("the kitchen filter was asked to fail")
        if path.startswith("/shared/set/"):
            SharedData.set("kitchen-value", path.rsplit("/", 1)[1])
        if path.startswith("/shared/get"):
            stored = SharedData.get("kitchen-value")
            self.shared = stored[0].decode() if stored else "(none)"
        if path.startswith("/auth"):
            self.http_call(
                "auth",
                [(":method", "GET"), (":path", "/check"), (":authority", "auth"),
                 ("x-user", headers.get("x-user", ""))],
                callback=self.on_auth_answer,
                timeout_ms=2000,
            )
            return Action.PAUSE
        return Action.CONTINUE

    def on_auth_answer(self, response):
        if self.request.headers.get("x-user") == "crash":
            raise RuntimeError("the kitchen filter could not read the auth answer")
        if response.status == 200:
            self.request.headers.set("x-auth-user", response.header("x-auth-user") or "")
            self.request.resume()
        else:
            self.send_local_response(403, b"auth service said no\n", [("x-auth-status", str(response.status))])

    def on_request_body(self, body_size, end_of_stream):
        if not self.upper_body:
            return Action.CONTINUE
        if not end_of_stream:
            return Action.PAUSE
        body = self.request.body.read()
        self.request.body.replace(body.upper())
        return Action.CONTINUE

    def on_response_headers(self, end_of_stream):
        headers = self.response.headers
        headers.add("x-resp-added", "yes")
        headers.set("x-resp-replace", "replaced")
        headers.remove("x-resp-remove")
        headers.set("x-vm", VM_TOKEN or "")
        if hasattr(self, "shared"):
            headers.set("x-shared", self.shared)
        if self.rewrite_response:
            headers.remove("content-length")
        return Action.CONTINUE

    def on_response_body(self, body_size, end_of_stream):
        if not self.rewrite_response:
            return Action.CONTINUE
        if not end_of_stream:
            return Action.PAUSE
        body = self.response.body.read()
        self.response.body.replace(b"rewritten:" + body)
        return Action.CONTINUE


class Root(RootContext):
    http_context = Kitchen

    def on_configure(self, config):
        if not super().on_configure(config):
            return False
        if (self.config or {}).get("fail_policy") == "closed":
            self.fail_policy = FailPolicy.CLOSED
        log.info(f"kitchen configured: {self.config}")
        return True
