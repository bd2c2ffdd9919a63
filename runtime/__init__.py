"""Proxy-Wasm host on wasmtime, and the test harness for filter authors."""
