"""The ratings service (gRPC): ``meshext.demo.Ratings/Get``, Struct in, Struct out."""

from __future__ import annotations

from concurrent import futures

import grpc
from google.protobuf import struct_pb2

SERVICE = "meshext.demo.Ratings"
GET_METHOD = f"/{SERVICE}/Get"
STARS = {"Reviewer1": 5, "Reviewer2": 4}


def get(request: struct_pb2.Struct, context: grpc.ServicerContext) -> struct_pb2.Struct:
    """The ratings of the product ``request["product_id"]`` (every product has the same two)."""
    answer = struct_pb2.Struct()
    product = request.fields["product_id"].number_value if "product_id" in request.fields else 0
    answer.update({"product_id": product,
                   "ratings": STARS, "served_by": "ratings-v1"})
    return answer


def serve(host: str, port: int) -> None:
    """Serve the Ratings service on host:port (plain-text HTTP/2; its sidecar does mutual TLS)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.method_handlers_generic_handler(SERVICE, {"Get": grpc.unary_unary_rpc_method_handler(
        get, request_deserializer=struct_pb2.Struct.FromString,
        response_serializer=struct_pb2.Struct.SerializeToString)})
    server.add_generic_rpc_handlers((handler,))
    if not server.add_insecure_port(f"{host}:{port}"):
        raise SystemExit(f"ratings: cannot listen on {host}:{port}")
    server.start()
    server.wait_for_termination()
