;; Pauses each request on a unary gRPC call (echo.Echo/Say with the request's
;; :path as the message) to the cluster named by request header x-grpc-cluster
;; (default "grpc_upstream"), with the timeout in x-grpc-timeout (ms, default
;; 5000).  The answer is added as request header x-grpc-reply and the request
;; continues.  A failed call arrives as proxy_on_grpc_close instead: its status
;; and message (proxy_get_status) are logged and the request continues; a call
;; Envoy refuses to start is logged with the result and the request continues
;; (a close Envoy sends for such a call is logged, and continues nothing).
;; Runs the same in Envoy (real gRPC server) and in the host.
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_call" (func $grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_status" (func $get_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_context (param i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 0x10000))
  (global $stream (mut i32) (i32.const 0))
  (global $waiting (mut i32) (i32.const 0))  ;; a request is paused on a call
  (global $len (mut i32) (i32.const 0))
  (data (i32.const 0x100) "grpc_upstream")
  (data (i32.const 0x110) "echo.Echo")
  (data (i32.const 0x120) "Say")
  (data (i32.const 0x128) ":path")
  (data (i32.const 0x130) "x-grpc-reply")
  (data (i32.const 0x140) "grpc call refused:")
  (data (i32.const 0x160) "grpc closed:")
  (data (i32.const 0x170) "x-grpc-cluster")
  (data (i32.const 0x180) "x-grpc-timeout")
  (data (i32.const 0x190) " ")
  ;; 0x200..0x23f: values the host functions return (pointer, size pairs; token; status)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (if (i32.gt_u (i32.add (local.get $p) (local.get $size)) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.add (i32.shr_u (local.get $size) (i32.const 16)) (i32.const 1))))))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (local.get $p))
  ;; A log line is built at 0x1000 with $put / $num, then written by $flush (info).
  (func $put (param $ptr i32) (param $n i32)
    (memory.copy (i32.add (i32.const 0x1000) (global.get $len)) (local.get $ptr) (local.get $n))
    (global.set $len (i32.add (global.get $len) (local.get $n))))
  (func $num (param $v i32)
    (local $end i32)
    (i32.store8 (i32.add (i32.const 0x1000) (global.get $len)) (i32.const 32))
    (global.set $len (i32.add (global.get $len) (i32.const 1)))
    (local.set $end (i32.const 0x900))
    (loop $digits
      (i32.store8 (local.get $end) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $end (i32.add (local.get $end) (i32.const 1)))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $digits (local.get $v)))
    (loop $copy
      (local.set $end (i32.sub (local.get $end) (i32.const 1)))
      (i32.store8 (i32.add (i32.const 0x1000) (global.get $len)) (i32.load8_u (local.get $end)))
      (global.set $len (i32.add (global.get $len) (i32.const 1)))
      (br_if $copy (i32.gt_u (local.get $end) (i32.const 0x900)))))
  (func $flush
    (drop (call $log (i32.const 2) (i32.const 0x1000) (global.get $len)))
    (global.set $len (i32.const 0)))
  ;; The decimal value of a header of the request, or $default when it is absent.
  (func $header_number (param $name i32) (param $name_size i32) (param $default i32) (result i32)
    (local $p i32) (local $end i32) (local $v i32)
    (if (call $get_header (i32.const 0) (local.get $name) (local.get $name_size) (i32.const 0x228) (i32.const 0x22c))
      (then (return (local.get $default))))
    (local.set $p (i32.load (i32.const 0x228)))
    (local.set $end (i32.add (local.get $p) (i32.load (i32.const 0x22c))))
    (block $done
      (loop $digits
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $v (i32.add (i32.mul (local.get $v) (i32.const 10))
                               (i32.sub (i32.load8_u (local.get $p)) (i32.const 48))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $digits)))
    (local.get $v))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (local $result i32)
    (global.set $stream (local.get $ctx))
    (drop (call $get_header (i32.const 0) (i32.const 0x128) (i32.const 5) (i32.const 0x200) (i32.const 0x204)))
    (if (call $get_header (i32.const 0) (i32.const 0x170) (i32.const 14) (i32.const 0x220) (i32.const 0x224))
      (then (i32.store (i32.const 0x220) (i32.const 0x100)) (i32.store (i32.const 0x224) (i32.const 13))))
    (local.set $result
      (call $grpc_call (i32.load (i32.const 0x220)) (i32.load (i32.const 0x224)) (i32.const 0x110) (i32.const 9)
                       (i32.const 0x120) (i32.const 3) (i32.const 0) (i32.const 0)
                       (i32.load (i32.const 0x200)) (i32.load (i32.const 0x204))
                       (call $header_number (i32.const 0x180) (i32.const 14) (i32.const 5000)) (i32.const 0x208)))
    (if (local.get $result)
      (then
        (call $put (i32.const 0x140) (i32.const 18)) (call $num (local.get $result)) (call $flush)
        (return (i32.const 0))))
    (global.set $waiting (i32.const 1))
    (i32.const 1))
  (func $resume
    (if (global.get $waiting)
      (then
        (global.set $waiting (i32.const 0))
        (drop (call $set_context (global.get $stream)))
        (drop (call $continue (i32.const 0))))))
  (func (export "proxy_on_grpc_receive") (param $root i32) (param $token i32) (param $size i32)
    (drop (call $get_buffer (i32.const 5) (i32.const 0) (local.get $size) (i32.const 0x210) (i32.const 0x214)))
    (drop (call $set_context (global.get $stream)))
    (drop (call $add_header (i32.const 0) (i32.const 0x130) (i32.const 12) (i32.load (i32.const 0x210)) (i32.load (i32.const 0x214))))
    (call $resume))
  (func (export "proxy_on_grpc_close") (param $root i32) (param $token i32) (param $status i32)
    ;; "grpc closed: STATUS MESSAGE", the message as proxy_get_status gives it
    (i32.store (i32.const 0x234) (i32.const 0))
    (i32.store (i32.const 0x238) (i32.const 0))
    (drop (call $get_status (i32.const 0x230) (i32.const 0x234) (i32.const 0x238)))
    (call $put (i32.const 0x160) (i32.const 12))
    (call $num (local.get $status))
    (call $put (i32.const 0x190) (i32.const 1))
    (call $put (i32.load (i32.const 0x234)) (i32.load (i32.const 0x238)))
    (call $flush)
    (call $resume))
)
