"""Adds ``x-greeting: hello NAME`` (NAME from the plugin configuration) and
counts the requests it saw in a module global."""

import config

from meshext.sdk import Action, HttpContext, RootContext

SEEN = []


class Greet(HttpContext):
    def on_request_headers(self, end_of_stream):
        import wording  # a run-time import of a module only this project has

        SEEN.append(1)
        self.request.headers.add(config.HEADER, wording.greeting((self.root.config or {}).get("name", "nobody")))
        self.request.headers.add("x-greeter-seen", str(len(SEEN)))
        return Action.CONTINUE


class Root(RootContext):
    http_context = Greet
