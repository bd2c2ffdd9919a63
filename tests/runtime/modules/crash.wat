;; Traps in proxy_on_request_headers two calls deep, after logging an error, so
;; the harness's WasmTrap can be checked for the backtrace and the last logs.
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "about to divide by zero")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func $divide (param $a i32) (param $b i32) (result i32) (i32.div_u (local.get $a) (local.get $b)))
  (func $compute_quota (param $n i32) (result i32) (call $divide (local.get $n) (i32.const 0)))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $log (i32.const 4) (i32.const 16) (i32.const 23)))
    (call $compute_quota (local.get 1))))
