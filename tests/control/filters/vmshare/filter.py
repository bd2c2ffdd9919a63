"""Appends x-meshext-chain: "<the configuration's tag>/<plugins configured in this VM>".

The count lives in a module global, so it is the state two extensions read
only when they share one VM."""

from meshext.sdk import Action, HttpContext, RootContext

configured_tags: set[str] = set()


class Tagger(HttpContext):
    root: "Root"

    def on_request_headers(self, end_of_stream):
        tag = self.root.config["tag"]
        self.request.headers.add("x-meshext-chain", f"{tag}/{len(configured_tags)}")
        return Action.CONTINUE


class Root(RootContext):
    http_context = Tagger

    def on_configure(self, config):
        accepted = super().on_configure(config)
        configured_tags.add(self.config["tag"])
        return accepted
