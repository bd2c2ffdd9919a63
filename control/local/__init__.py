"""The local mesh: `meshext up`, `down`, `logs`, `apply`, `delete` and `get`.

`meshext up` runs a whole mesh on loopback as detached processes: Debian's
docker-registry, the control plane (`meshext control serve` on a resources
directory), the three demo services (``demo``) each behind its sidecar
(`meshext proxy`), and Debian's Prometheus scraping the sidecars; it builds the
example header-policy and the project's extensions bundle (images), pushes them
and applies a ServiceMeshExtension.  Then it returns, as `docker compose up -d` does.  The
rate limit service (on Redis) and the 3scale backend simulator start when an
applied resource needs them (``backing``).

What lives here:

- ``layout``     the state directory, the ports, the generated mesh file and Prometheus config;
- ``processes``  detached processes: start, PID files, liveness, stop (by session);
- ``images``     the images `up` pushes (header-policy, the extensions bundle): build (cached by content), push;
- ``backing``    the backing services: which resources need them, their commands;
- ``up``         bringing the mesh up and down, with live progress;
- ``resources``  `apply` / `delete` / `get` on the running mesh's resources directory;
- ``cli``        the commands;
- ``demo``       the demo application (imports only the standard library, grpc and protobuf).

It may import ``meshext.control`` (it lives inside it), ``meshext.registry``,
``meshext.errors`` and ``meshext.paths``; it runs other meshext parts
(`meshext build`, `meshext proxy`, `meshext control serve`) as processes, never
imports ``meshext.sdk``; nothing outside ``meshext.control`` imports it.
"""
