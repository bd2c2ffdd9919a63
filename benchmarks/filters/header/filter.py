"""The benchmark's header filter: read :path, add one header."""

from meshext.sdk import Action, HttpContext, RootContext


class AddPathLength(HttpContext):
    def on_request_headers(self, end_of_stream):
        headers = self.request.headers
        headers.add("x-path-length", str(len(headers.get(":path") or "")))
        return Action.CONTINUE


class Root(RootContext):
    http_context = AddPathLength
