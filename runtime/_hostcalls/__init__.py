"""The host functions Envoy links (so far only the WASI subset, in ``wasi``)."""
