"""Conformance filter written with meshext.sdk.

Request: counts it (a metric, and shared data "hits" with compare-and-swap,
announced on shared queue "events" that the root context drains), logs
method/path, denies requests carrying the configured header with a local
403, otherwise tags the request and moves x-replace-me to a new value.
Request bodies are buffered to the end and suffixed with the tag.
Response: adds x-py-status, or replaces the upstream's answer with a local
502 when the request asked for it; on_log logs the final status.
"""

from dataclasses import dataclass

from meshext.sdk import Action, Counter, Gauge, HttpContext, RootContext, SharedData, SharedQueue, log

REQUESTS = Counter("py_policy_requests_total")
DENIED = Counter("py_policy_denied_total")
BODY_BYTES = Gauge("py_policy_last_body_bytes")


@dataclass
class Config:
    deny_header: str = "x-deny"
    tag: str = "py"


class Policy(HttpContext):
    root: "Root"

    def on_request_headers(self, end_of_stream: bool) -> Action:
        REQUESTS.increment()
        headers = self.request.headers
        hits = SharedData.add("hits")
        self.root.events.enqueue(f"hit {hits}")
        self.fail_response = "x-fail-response" in headers
        log.info(f"request {headers.get(':method')} {headers.get(':path')} end_of_stream={end_of_stream}")
        if self.root.config.deny_header in headers:
            DENIED.increment()
            return self.send_local_response(403, "denied by python\n", [("x-denied-by", self.root.config.tag)],
                                            details="python_policy")
        headers.add("x-py-tag", self.root.config.tag)
        headers.add("x-py-hits", str(hits))
        if "x-replace-me" in headers:
            headers.set("x-replace-me", "from-python")
        headers.remove("x-remove-me")
        if not end_of_stream:
            headers.remove("content-length")
        return Action.CONTINUE

    def on_request_body(self, body_size: int, end_of_stream: bool) -> Action:
        log.debug(f"request body {body_size} end_of_stream={end_of_stream}")
        if not end_of_stream:
            return Action.PAUSE
        BODY_BYTES.set(body_size)
        self.request.body.append("+" + self.root.config.tag)
        return Action.CONTINUE

    def on_response_headers(self, end_of_stream: bool) -> Action:
        if self.fail_response:
            self.fail_response = False
            return self.send_local_response(502, "upstream answer replaced\n", details="python_replaced")
        self.response.headers.add("x-py-status", self.response.headers.get(":status", "?"))
        return Action.CONTINUE

    def on_log(self) -> None:
        log.info(f"done {self.response.headers.get(':status')}")


class Root(RootContext):
    http_context = Policy
    config_class = Config

    def on_configure(self, config: bytes) -> bool:
        self.events = SharedQueue.register("events")
        return super().on_configure(config)

    def on_queue_ready(self, queue_id: int) -> None:
        while (message := self.events.dequeue()) is not None:
            log.info(f"event: {message.decode()}")
