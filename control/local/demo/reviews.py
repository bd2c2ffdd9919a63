"""The reviews service (HTTP): reviews of a product, with stars from the ratings service (gRPC)."""

from __future__ import annotations

import re
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from meshext.control.local.demo.http_app import PROPAGATED_HEADERS, serve_json
from meshext.control.local.demo.ratings import GET_METHOD

REVIEWS = [
    {"reviewer": "Reviewer1", "text": "An extremely entertaining play by Shakespeare."},
    {"reviewer": "Reviewer2", "text": "Absolutely fun and entertaining."},
]
PATH = re.compile(r"^/reviews/(\d+)$")


def serve(host: str, port: int, upstream: tuple[str, int]) -> None:
    """Serve ``/reviews/<product>`` on host:port, calling ratings over gRPC through ``upstream``."""
    # The sidecar picks the destination by the authority, as Host does for HTTP.
    channel = grpc.insecure_channel(f"{upstream[0]}:{upstream[1]}", options=[("grpc.default_authority", "ratings")])
    get_ratings = channel.unary_unary(GET_METHOD, request_serializer=struct_pb2.Struct.SerializeToString,
                                      response_deserializer=struct_pb2.Struct.FromString)

    def route(path: str, headers: dict[str, str]) -> tuple[int, Any] | None:
        match = PATH.match(path.partition("?")[0])
        if match is None:
            return None
        request = struct_pb2.Struct()
        request.update({"product_id": int(match[1])})
        metadata = [(name, value) for name, value in headers.items() if name in PROPAGATED_HEADERS]
        try:
            ratings = json_format.MessageToDict(get_ratings(request, timeout=10, metadata=metadata))
        except grpc.RpcError as error:
            return 503, {"error": f"ratings failed: {error.code().name} {error.details()}"}
        stars = ratings.get("ratings", {})
        return 200, {"product_id": int(match[1]), "served_by": "reviews-v1",
                     "reviews": [{**review, "stars": _whole(stars.get(review["reviewer"]))} for review in REVIEWS]}

    serve_json(host, port, route)


def _whole(number: float | None) -> int | None:
    """A Struct's number (protobuf's Value holds doubles) as the whole number of stars it is."""
    return None if number is None else int(number)
