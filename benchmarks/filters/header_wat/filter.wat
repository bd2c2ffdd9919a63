;; The benchmark's header filter written by hand in WebAssembly text: the floor
;; any Wasm filter pays in Envoy.  Same work as filters/header: read :path,
;; add `x-path-length` with its length in decimal.  No allocator beyond a bump
;; pointer, no runtime: only Envoy's Proxy-Wasm plumbing and two host calls.
;; It exports the same per-stream callbacks `meshext build` keeps for the
;; Python filter (context create, request headers, delete), so Envoy enters
;; both modules equally often.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) ":path")
  (data (i32.const 32) "x-path-length")
  (global $heap_top (mut i32) (i32.const 4096))

  ;; Envoy allocates the header value it returns; a bump allocator that
  ;; restarts with every request is enough here.
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap_top))
    (global.set $heap_top (i32.add (local.get $ptr) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (local.get $ptr))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $length i32) (local $end i32) (local $at i32)
    (global.set $heap_top (i32.const 4096))
    ;; proxy_get_header_map_value(REQUEST_HEADERS=0, ":path", &ptr @0, &len @4)
    (drop (call $get_header (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 0) (i32.const 4)))
    (local.set $length (i32.load (i32.const 4)))
    ;; decimal digits of $length, written backwards ending at byte 80
    (local.set $end (i32.const 80))
    (local.set $at (i32.const 80))
    (loop $digits
      (local.set $at (i32.sub (local.get $at) (i32.const 1)))
      (i32.store8 (local.get $at) (i32.add (i32.const 48) (i32.rem_u (local.get $length) (i32.const 10))))
      (local.set $length (i32.div_u (local.get $length) (i32.const 10)))
      (br_if $digits (local.get $length)))
    (drop (call $add_header (i32.const 0) (i32.const 32) (i32.const 13)
                            (local.get $at) (i32.sub (local.get $end) (local.get $at))))
    (i32.const 0))
  (func (export "proxy_on_delete") (param i32))
)
