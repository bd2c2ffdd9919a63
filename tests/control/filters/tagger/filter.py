"""Appends x-meshext-chain: <the plugin configuration's "tag">, like the WAT test filter."""

from meshext.sdk import Action, HttpContext, RootContext


class Tagger(HttpContext):
    root: "Root"

    def on_request_headers(self, end_of_stream):
        self.request.headers.add("x-meshext-chain", (self.root.config or {}).get("tag", "python"))
        return Action.CONTINUE


class Root(RootContext):
    http_context = Tagger
