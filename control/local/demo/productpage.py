"""The product page (HTTP): a product and its reviews, fetched from the reviews service."""

from __future__ import annotations

from typing import Any

from meshext.control.local.demo.http_app import get_json, serve_json

PRODUCT = {"id": 0, "title": "The Comedy of Errors", "author": "William Shakespeare", "year": 1595}


def serve(host: str, port: int, upstream: tuple[str, int]) -> None:
    """Serve ``/productpage`` (and ``/``) on host:port, calling reviews through ``upstream``."""

    def route(path: str, headers: dict[str, str]) -> tuple[int, Any] | None:
        if path.partition("?")[0] not in ("/", "/productpage"):
            return None
        status, reviews = get_json(upstream, "reviews", f"/reviews/{PRODUCT['id']}", headers)
        if status != 200:
            return 503, {"product": PRODUCT, "error": f"reviews answered {status}", "reviews": reviews}
        return 200, {"product": PRODUCT, "reviews": reviews["reviews"], "served_by": "productpage-v1"}

    serve_json(host, port, route)
