"""The local mesh's demo application: three small services that call each other.

- ``productpage`` (HTTP): ``GET /productpage`` asks reviews for the product's reviews
  and answers JSON with them;
- ``reviews`` (HTTP): ``GET /reviews/<product>`` asks ratings, over gRPC, for the stars
  and answers JSON reviews carrying them;
- ``ratings`` (gRPC): ``meshext.demo.Ratings/Get`` takes and returns a
  ``google.protobuf.Struct`` (a well-known type: no .proto file, no protoc step).

Each app sends its calls through its own sidecar's outbound listener, naming the
destination service in the Host header (HTTP) or the authority (gRPC), as an app in a
mesh does.  Run one with ``python -m meshext.control.local.demo NAME --listen HOST:PORT
[--upstream HOST:PORT]``.

The apps are what a user would deploy, not part of meshext: they import only the
standard library, ``grpc``, ``google.protobuf`` and each other.
"""
