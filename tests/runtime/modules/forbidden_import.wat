;; Imports two things Envoy 1.40 does not provide: a WASI call Envoy refuses
;; (path_symlink, declared with a wrong signature in Envoy) and an unknown host call.
(module
  (import "wasi_snapshot_preview1" "path_symlink" (func (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_open_socket" (func (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024)))
