"""Answers 403 to requests whose path starts with a prefix from the plugin
configuration; ``/boom`` raises (fail policy closed: 500); responses get
``x-guarded``."""

import config

from meshext.sdk import Action, HttpContext, RootContext

SEEN = []


class Guard(HttpContext):
    def on_request_headers(self, end_of_stream):
        SEEN.append(1)
        path = self.request.headers.get(":path", "")
        if path == "/boom":
            raise RuntimeError("guard exploded")
        if path.startswith((self.root.config or {}).get("deny", "/admin")):
            self.send_local_response(config.STATUS, b"denied by guard\n")
            return Action.PAUSE
        return Action.CONTINUE

    def on_response_headers(self, end_of_stream):
        self.response.headers.add("x-guarded", str(len(SEEN)))
        return Action.CONTINUE


class Root(RootContext):
    http_context = Guard
