;; A minimal Proxy-Wasm (ABI 0.2.1) HTTP filter, hand-written so the control-plane
;; tests do not depend on the SDK build: it appends the header `x-meshext-chain`
;; to every request and response, with the plugin configuration as its value.
;; An empty plugin configuration is refused (proxy_on_configure returns false),
;; which lets tests provoke a configuration that Envoy rejects.
(module
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "x-meshext-chain")
  (global $heap_top (mut i32) (i32.const 1024))
  (global $config_ptr (mut i32) (i32.const 0))
  (global $config_len (mut i32) (i32.const 0))

  ;; Bump allocator: the host only allocates for the plugin configuration.
  (func $allocate (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32) (local $end i32)
    (local.set $ptr (global.get $heap_top))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then (if (i32.lt_s (memory.grow (i32.add (i32.shr_u (local.get $size) (i32.const 16)) (i32.const 1)))
                          (i32.const 0))
              (then (return (i32.const 0))))))
    (global.set $heap_top (i32.and (i32.add (local.get $end) (i32.const 7)) (i32.const -8)))
    (local.get $ptr))
  (func (export "malloc") (param i32) (result i32) (call $allocate (local.get 0)))

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (if (i32.eqz (local.get $size)) (then (return (i32.const 0))))
    ;; proxy_get_buffer_bytes(PLUGIN_CONFIGURATION=7, 0, size, &ptr @0, &len @4)
    (if (call $get_buffer_bytes (i32.const 7) (i32.const 0) (local.get $size) (i32.const 0) (i32.const 4))
      (then (return (i32.const 0))))
    (global.set $config_ptr (i32.load (i32.const 0)))
    (global.set $config_len (i32.load (i32.const 4)))
    (i32.const 1))
  (func $append (param $map i32)
    (drop (call $add_header (local.get $map) (i32.const 16) (i32.const 15)
                            (global.get $config_ptr) (global.get $config_len))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $append (i32.const 0)) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $append (i32.const 2)) (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32))
)
