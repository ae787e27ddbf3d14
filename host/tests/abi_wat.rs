//! Host-function tests with small inline WAT modules: allocator use and memory growth during a
//! call, bad guest pointers, the statuses each call answers, a trapping guest replaced, and an
//! endless loop stopped by the time budget.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyrealm_host::config::{ClusterConfig, DiscoveryType, WasmFilterConfig};
use keyrealm_host::wasm::instance::{Action, VmError, VmInstance};
use keyrealm_host::wasm::{Plugin, RequestInfo, VmLimits};
use keyrealm_host::HostOptions;

/// A module whose allocator grows memory on every allocation (so the host must not keep a
/// slice across it), and one export per host call that answers the call's status.
const ABI_WAT: &str = r#"
(module
  (import "env" "proxy_get_header_map_value" (func $get_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_sd (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_sd (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $def_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc_metric (param i32 i64) (result i32)))
  (import "env" "proxy_get_metric" (func $get_metric (param i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_ctx (param i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $reg_q (param i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enq (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $deq (param i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_call" (func $grpc (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_call_foreign_function" (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_get_log_level" (func $log_level (param i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 65536))
  (global $allocs (mut i32) (i32.const 0))
  (data (i32.const 16) ":path")
  (data (i32.const 32) "x-echo")
  (data (i32.const 48) "missing")
  (data (i32.const 64) "key")
  (data (i32.const 80) "value")
  (data (i32.const 128) "nocluster")
  (data (i32.const 160) "plugin_name")
  (data (i32.const 176) "no_such_property")
  (data (i32.const 192) "metric.a")
  (data (i32.const 208) "q")
  (func (export "proxy_abi_version_0_2_1"))
  ;; Each allocation grows memory by enough pages and hands out the new region.
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $pages i32) (local $p i32)
    (local.set $pages (i32.add (i32.shr_u (local.get $size) (i32.const 16)) (i32.const 1)))
    (if (i32.eq (memory.grow (local.get $pages)) (i32.const -1)) (then (return (i32.const 0))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.shl (local.get $pages) (i32.const 16))))
    (global.set $allocs (i32.add (global.get $allocs) (i32.const 1)))
    (local.get $p))
  (func (export "allocs") (result i32) (global.get $allocs))
  (func (export "proxy_on_context_create") (param i32 i32))
  ;; Copies :path into x-echo through host-allocated memory.
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (call $get_hdr (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 96) (i32.const 100))
      (then unreachable))
    (drop (call $replace_hdr (i32.const 0) (i32.const 32) (i32.const 6) (i32.load (i32.const 96)) (i32.load (i32.const 100))))
    (i32.const 1))
  (func (export "t_missing_header") (result i32)
    (call $get_hdr (i32.const 0) (i32.const 48) (i32.const 7) (i32.const 96) (i32.const 100)))
  (func (export "t_pairs") (result i32)
    (call $get_pairs (i32.const 0) (i32.const 96) (i32.const 100)))
  (func (export "t_bad_key_ptr") (result i32)
    (call $get_hdr (i32.const 0) (i32.const -16) (i32.const 64) (i32.const 96) (i32.const 100)))
  (func (export "t_bad_ret_ptr") (result i32)
    (call $get_hdr (i32.const 0) (i32.const 16) (i32.const 5) (i32.const -4) (i32.const 100)))
  (func (export "t_log_huge") (result i32)
    (call $log (i32.const 2) (i32.const 16) (i32.const 2147483647)))
  (func (export "t_plugin_config") (result i32)
    (call $get_buf (i32.const 7) (i32.const 0) (i32.const -1) (i32.const 96) (i32.const 100)))
  (func (export "t_request_body_in_root") (result i32)
    (call $get_buf (i32.const 0) (i32.const 0) (i32.const -1) (i32.const 96) (i32.const 100)))
  (func (export "t_shared_get") (result i32)
    (call $get_sd (i32.const 64) (i32.const 3) (i32.const 96) (i32.const 100) (i32.const 104)))
  (func (export "t_shared_set") (param $cas i32) (result i32)
    (call $set_sd (i32.const 64) (i32.const 3) (i32.const 80) (i32.const 5) (local.get $cas)))
  (func (export "t_cas") (result i32) (i32.load (i32.const 104)))
  (func (export "t_http_call_unknown_cluster") (result i32)
    (call $http_call (i32.const 128) (i32.const 9) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
      (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 108)))
  (func (export "t_http_call_no_headers") (result i32)
    ;; "upstream" is the first 8 bytes of "nocluster"? no: use offset 130 "cluster" is not a cluster either;
    ;; the test defines a cluster named "cluster".
    (call $http_call (i32.const 130) (i32.const 7) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
      (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 108)))
  (func (export "t_property") (result i32)
    (call $get_prop (i32.const 160) (i32.const 11) (i32.const 96) (i32.const 100)))
  (func (export "t_property_missing") (result i32)
    (call $get_prop (i32.const 176) (i32.const 16) (i32.const 96) (i32.const 100)))
  (func (export "t_define_metric") (result i32)
    (call $def_metric (i32.const 0) (i32.const 192) (i32.const 8) (i32.const 112)))
  (func (export "t_increment_metric") (result i32)
    (call $inc_metric (i32.load (i32.const 112)) (i64.const 5)))
  (func (export "t_decrement_counter") (result i32)
    (call $inc_metric (i32.load (i32.const 112)) (i64.const -1)))
  (func (export "t_increment_unknown_metric") (result i32)
    (call $inc_metric (i32.const 999) (i64.const 1)))
  (func (export "t_get_metric") (result i32)
    (call $get_metric (i32.load (i32.const 112)) (i32.const 120)))
  (func (export "t_metric_value") (result i32) (i32.load (i32.const 120)))
  (func (export "t_bad_effective_context") (result i32) (call $set_ctx (i32.const 9999)))
  (func (export "t_register_queue") (result i32) (call $reg_q (i32.const 208) (i32.const 1) (i32.const 112)))
  (func (export "t_enqueue") (result i32) (call $enq (i32.load (i32.const 112)) (i32.const 80) (i32.const 5)))
  (func (export "t_dequeue") (result i32) (call $deq (i32.load (i32.const 112)) (i32.const 96) (i32.const 100)))
  (func (export "t_grpc") (result i32)
    (call $grpc (i32.const 128) (i32.const 9) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 108)))
  (func (export "t_foreign") (result i32)
    (call $foreign (i32.const 64) (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 96) (i32.const 100)))
  (func (export "t_continue") (result i32) (call $continue (i32.const 0)))
  (func (export "t_continue_other") (param $ctx i32) (result i32)
    (if (call $set_ctx (local.get $ctx)) (then unreachable))
    (call $continue (i32.const 0)))
  (func (export "t_log_level") (result i32) (call $log_level (i32.const 112)))
  (func (export "t_now") (result i32) (call $now (i32.const 120)))
  (func (export "ret_ptr") (result i32) (i32.load (i32.const 96)))
  (func (export "ret_size") (result i32) (i32.load (i32.const 100)))
)
"#;

/// The module fields the misbehaving and the releasing filter share: one page of memory, the ABI
/// version, a bump allocator from 1024 (that starts over near the end of the page), and
/// `on_context_create`.
macro_rules! bump_allocated_module {
    () => {
        r#"
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.add (local.get $size) (i32.const 8))))
    (if (i32.gt_u (global.get $heap) (i32.const 60000)) (then (global.set $heap (i32.const 1024)) (local.set $p (i32.const 1024))))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
"#
    };
}

/// Traps on `x-trap`, spins forever on `x-loop`, otherwise continues.
const MISBEHAVING_WAT: &str = concat!(
    r#"
(module
  (import "env" "proxy_get_header_map_value" (func $get_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (data (i32.const 16) "x-trap")
  (data (i32.const 32) "x-loop")
"#,
    bump_allocated_module!(),
    r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eqz (call $get_hdr (i32.const 0) (i32.const 16) (i32.const 6) (i32.const 96) (i32.const 100)))
      (then unreachable))
    (if (i32.eqz (call $get_hdr (i32.const 0) (i32.const 32) (i32.const 6) (i32.const 96) (i32.const 100)))
      (then (loop $forever (br $forever))))
    (i32.const 0))
)
"#
);

/// Refuses its configuration.
const REFUSING_WAT: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 0))
)
"#;

/// Pauses every request, except one with `x-release`, which resumes context 2 (the first
/// request's) through `proxy_set_effective_context` and continues itself.
const RELEASER_WAT: &str = concat!(
    r#"
(module
  (import "env" "proxy_get_header_map_value" (func $get_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_ctx (param i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (data (i32.const 16) "x-release")
"#,
    bump_allocated_module!(),
    r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eqz (call $get_hdr (i32.const 0) (i32.const 16) (i32.const 9) (i32.const 96) (i32.const 100)))
      (then
        (if (call $set_ctx (i32.const 2)) (then unreachable))
        (drop (call $continue (i32.const 0)))
        (return (i32.const 0))))
    (i32.const 1))
)
"#
);

/// Grows its memory on request.
const GROWER_WAT: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "grow") (param $pages i32) (result i32) (memory.grow (local.get $pages)))
)
"#;

fn plugin(wat: &str, limits: VmLimits) -> Arc<Plugin> {
    let config = WasmFilterConfig {
        name: "wat-test".into(),
        root_id: "wat".into(),
        vm_id: "wat-vm".into(),
        configuration: b"{\"hello\":1}".to_vec(),
        ..WasmFilterConfig::default()
    };
    let mut clusters = BTreeMap::new();
    clusters.insert(
        "cluster".to_string(),
        ClusterConfig {
            name: "cluster".into(),
            connect_timeout: Duration::from_secs(1),
            discovery: DiscoveryType::Static,
            endpoints: vec![("127.0.0.1".into(), 9)],
            dns_refresh_rate: Duration::from_secs(5),
        },
    );
    Plugin::from_module_bytes(config, wat.as_bytes(), clusters, limits).expect("module loads")
}

fn start(p: &Arc<Plugin>) -> VmInstance {
    VmInstance::start(p.clone(), &p.pre).expect("instance starts")
}

fn call(vm: &mut VmInstance, name: &str, context: u32, args: &[i32]) -> i32 {
    vm.call_export(name, context, args).expect("call succeeds")[0]
}

/// A new HTTP context.
fn http_context(vm: &mut VmInstance) -> u32 {
    vm.create_http_context(RequestInfo::default())
        .expect("context")
}

/// A new HTTP context whose request has `headers`.
fn request_context(vm: &mut VmInstance, headers: &[(&str, &str)]) -> u32 {
    let id = http_context(vm);
    vm.stream_mut(id).expect("stream").request_headers = Some(
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
    );
    id
}

#[test]
fn allocator_is_used_and_memory_may_grow_during_the_call() {
    let p = plugin(ABI_WAT, VmLimits::default());
    let mut vm = start(&p);
    let id = request_context(&mut vm, &[(":path", "/hello/world"), (":method", "GET")]);
    let before = vm.memory_size();
    let action = vm.on_request_headers(id, 2, true).expect("callback runs");
    assert_eq!(
        action,
        Action::Pause,
        "the guest's return value is honoured"
    );
    assert!(
        vm.memory_size() > before,
        "the allocator grew memory during the host call"
    );
    let root = vm.root_context_id();
    assert_eq!(
        call(&mut vm, "allocs", root, &[]),
        1,
        "the value came from the guest allocator"
    );
    let headers = vm
        .stream(id)
        .expect("stream")
        .request_headers
        .clone()
        .expect("headers");
    assert!(
        headers.contains(&("x-echo".to_string(), b"/hello/world".to_vec())),
        "value copied through guest memory: {headers:?}"
    );
}

#[test]
fn bad_guest_pointers_answer_invalid_memory_access_without_host_panic() {
    let p = plugin(ABI_WAT, VmLimits::default());
    let mut vm = start(&p);
    let id = request_context(&mut vm, &[(":path", "/x")]);
    assert_eq!(call(&mut vm, "t_bad_key_ptr", id, &[]), 6);
    assert_eq!(call(&mut vm, "t_bad_ret_ptr", id, &[]), 6);
    assert_eq!(call(&mut vm, "t_log_huge", id, &[]), 6);
    let root = vm.root_context_id();
    assert_eq!(
        call(&mut vm, "allocs", root, &[]),
        0,
        "nothing allocated for a call that failed its checks"
    );
    assert!(!vm.is_broken(), "the instance is still usable");
    assert_eq!(call(&mut vm, "t_missing_header", id, &[]), 1);
}

/// Each host call answers only statuses the Rust SDK (proxy-wasm 0.2.x hostcalls.rs) accepts
/// for that call; anything else would make the SDK panic.
#[test]
fn statuses_are_the_ones_the_sdk_expects() {
    let p = plugin(ABI_WAT, VmLimits::default());
    let mut vm = start(&p);
    let root = vm.root_context_id();
    let id = request_context(&mut vm, &[(":path", "/x")]);

    // get_header_map_value: Ok | NotFound
    assert_eq!(call(&mut vm, "t_missing_header", id, &[]), 1);
    // get_header_map_pairs: Ok only, also where there is no map (root context)
    assert_eq!(call(&mut vm, "t_pairs", id, &[]), 0);
    assert_eq!(call(&mut vm, "t_pairs", root, &[]), 0);
    // get_buffer_bytes: Ok | NotFound
    assert_eq!(call(&mut vm, "t_plugin_config", root, &[]), 0);
    let (ptr, size) = (
        call(&mut vm, "ret_ptr", root, &[]),
        call(&mut vm, "ret_size", root, &[]),
    );
    assert_eq!(
        vm.read_memory(ptr as u32, size as u32).expect("in bounds"),
        b"{\"hello\":1}"
    );
    assert_eq!(call(&mut vm, "t_request_body_in_root", root, &[]), 1);
    // shared data: get Ok | NotFound; set Ok | CasMismatch
    assert_eq!(call(&mut vm, "t_shared_get", root, &[]), 1);
    assert_eq!(call(&mut vm, "t_shared_set", root, &[0]), 0);
    assert_eq!(call(&mut vm, "t_shared_get", root, &[]), 0);
    let cas = call(&mut vm, "t_cas", root, &[]);
    assert_ne!(cas, 0);
    assert_eq!(
        call(&mut vm, "t_shared_set", root, &[cas.wrapping_add(1000)]),
        8
    );
    assert_eq!(call(&mut vm, "t_shared_set", root, &[cas]), 0);
    assert_eq!(
        call(&mut vm, "t_shared_set", root, &[cas]),
        8,
        "the CAS changed with the write"
    );
    // http_call: Ok | BadArgument | InternalFailure
    assert_eq!(call(&mut vm, "t_http_call_unknown_cluster", id, &[]), 2);
    assert_eq!(call(&mut vm, "t_http_call_no_headers", id, &[]), 2);
    // get_property: Ok | NotFound | SerializationFailure | InternalFailure
    assert_eq!(call(&mut vm, "t_property", root, &[]), 0);
    assert_eq!(call(&mut vm, "t_property_missing", id, &[]), 1);
    // metrics: define Ok; increment Ok | NotFound | BadArgument; get Ok | NotFound | BadArgument
    assert_eq!(call(&mut vm, "t_define_metric", root, &[]), 0);
    assert_eq!(call(&mut vm, "t_increment_metric", root, &[]), 0);
    assert_eq!(call(&mut vm, "t_decrement_counter", root, &[]), 2);
    assert_eq!(call(&mut vm, "t_increment_unknown_metric", root, &[]), 1);
    assert_eq!(call(&mut vm, "t_get_metric", root, &[]), 0);
    assert_eq!(call(&mut vm, "t_metric_value", root, &[]), 5);
    assert!(p.metrics.render_prometheus().contains("\nmetric_a{} 5\n"));
    // set_effective_context: Ok | BadArgument
    assert_eq!(call(&mut vm, "t_bad_effective_context", id, &[]), 2);
    // shared queues: register Ok; enqueue Ok | NotFound; dequeue Ok | Empty | NotFound
    assert_eq!(call(&mut vm, "t_register_queue", root, &[]), 0);
    assert_eq!(call(&mut vm, "t_dequeue", root, &[]), 7);
    assert_eq!(call(&mut vm, "t_enqueue", root, &[]), 0);
    assert_eq!(call(&mut vm, "t_dequeue", root, &[]), 0);
    // gRPC: ParseFailure | InternalFailure are the SDK's error statuses
    assert_eq!(call(&mut vm, "t_grpc", id, &[]), 10);
    // foreign functions: NotFound
    assert_eq!(call(&mut vm, "t_foreign", id, &[]), 1);
    // continue_stream, get_log_level, get_current_time: Ok only
    assert_eq!(call(&mut vm, "t_continue", id, &[]), 0);
    assert_eq!(call(&mut vm, "t_log_level", root, &[]), 0);
    assert_eq!(call(&mut vm, "t_now", root, &[]), 0);
    assert!(vm.stream(id).expect("stream").request_continued);
}

#[test]
fn a_trapping_guest_is_reported_unusable_and_a_fresh_instance_works() {
    let p = plugin(MISBEHAVING_WAT, VmLimits::default());
    let mut vm = start(&p);
    let id = request_context(&mut vm, &[("x-trap", "1")]);
    let err = vm
        .on_request_headers(id, 1, true)
        .expect_err("the guest traps");
    assert!(matches!(err, VmError::Trap { .. }), "{err}");
    assert!(!err.instance_usable());
    assert!(vm.is_broken());
    assert!(matches!(
        vm.on_request_headers(id, 1, true),
        Err(VmError::Broken { .. })
    ));
    let mut fresh = start(&p);
    let id = request_context(&mut fresh, &[]);
    assert_eq!(
        fresh
            .on_request_headers(id, 0, true)
            .expect("fresh instance runs"),
        Action::Continue
    );
}

#[test]
fn an_endless_loop_is_stopped_by_the_time_budget() {
    let limits = VmLimits {
        call_budget: Duration::from_millis(100),
        ..VmLimits::default()
    };
    let p = plugin(MISBEHAVING_WAT, limits);
    let mut vm = start(&p);
    let id = request_context(&mut vm, &[("x-loop", "1")]);
    let started = Instant::now();
    let err = vm
        .on_request_headers(id, 1, true)
        .expect_err("the loop is interrupted");
    assert!(matches!(err, VmError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped, not left running"
    );
}

#[test]
fn a_refused_configuration_stops_start_up_with_a_clear_error() {
    let p = plugin(REFUSING_WAT, VmLimits::default());
    let err = VmInstance::start(p.clone(), &p.pre)
        .err()
        .expect("start-up fails");
    assert_eq!(
        err.to_string(),
        "plugin wat-test: on_configure refused the plugin configuration"
    );
}

fn write_module(dir: &std::path::Path, wat: &str) -> std::path::PathBuf {
    let path = dir.join("filter.wat");
    std::fs::write(&path, wat).expect("write module");
    path
}

/// Through the proxy, as Envoy: a request that makes the guest trap or spin gets 503; without a
/// failure policy the filter stays failed (every later request 503, or passes with
/// `fail_open`); with `FAIL_RELOAD` the instance is re-created off the request path once
/// Envoy's jittered interval since the last load has passed; meanwhile requests get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_instances_answer_503_stay_failed_or_are_reloaded_with_back_off() {
    let upstream = common::spawn_echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let module = write_module(dir.path(), MISBEHAVING_WAT);
    let options = HostOptions {
        workers: Some(1),
        limits: VmLimits {
            call_budget: Duration::from_millis(200),
            ..VmLimits::default()
        },
        ..HostOptions::default()
    };
    let stats = |host: &keyrealm_host::RunningHost| {
        let admin = host.admin_addr().expect("admin");
        async move { common::get(admin, "/stats/prometheus").await.body }
    };
    for (fail_open, policy) in [(false, ""), (true, ""), (false, "FAIL_RELOAD")] {
        let spec = common::FilterSpec {
            fail_open,
            ..common::FilterSpec::new("misbehaving", "misbehaving", &module, "")
        };
        let yaml = common::with_failure_policy(common::envoy_yaml(upstream, &[spec], &[]), policy);
        let (host, _cfg) = common::start_host(&yaml, options.clone()).await;
        let addr = host.listener_addrs()[0];
        let trapped = common::http(addr, "GET", "/a", &[("x-trap", "1")], "").await;
        let after = common::http(addr, "GET", "/b", &[], "").await;
        match (fail_open, policy) {
            (true, _) => {
                assert_eq!(trapped.status, 200, "fail_open passes: {trapped:?}");
                assert!(trapped.echoed().is_some(), "reached the upstream");
                assert_eq!(after.status, 200, "and keeps passing: {after:?}");
                let s = stats(&host).await;
                assert!(s.contains("keyrealm_host_wasm_fail_open_total 2"), "{s}");
            }
            (false, "") => {
                assert_eq!(trapped.status, 503, "{trapped:?}");
                assert!(trapped.echoed().is_none(), "did not reach the upstream");
                assert_eq!(after.status, 503, "the filter stays failed: {after:?}");
                let s = stats(&host).await;
                assert!(s.contains("keyrealm_host_vm_failures_total 1"), "{s}");
                assert!(s.contains("keyrealm_host_vm_replacements_total 0"), "{s}");
                assert!(s.contains("keyrealm_host_wasm_fail_stream_total 2"), "{s}");
            }
            _ => {
                assert_eq!(trapped.status, 503, "{trapped:?}");
                // Re-created as Envoy 1.40 does: once a jittered [1 s, 1.5 s) has passed since
                // the last load (the first instance was loaded when the host started).
                let served_again = |limit: Duration| async move {
                    let started = Instant::now();
                    loop {
                        let r = common::http(addr, "GET", "/e", &[], "").await;
                        if r.status == 200 {
                            return Instant::now();
                        }
                        assert_eq!(r.status, 503, "{r:?}");
                        assert!(started.elapsed() < limit, "not re-created in {limit:?}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                };
                let second_loaded = if after.status == 200 {
                    Instant::now()
                } else {
                    served_again(Duration::from_secs(2)).await
                };
                let spun = common::http(addr, "GET", "/c", &[("x-loop", "1")], "").await;
                assert_eq!(spun.status, 503, "{spun:?}");
                let third_loaded = served_again(Duration::from_secs(2)).await;
                // At least the 1 s base after the second load began, less the time it took to
                // see the second instance serve (its start and one poll).
                let between = third_loaded - second_loaded;
                assert!(
                    between >= Duration::from_millis(750),
                    "the third instance came {between:?} after the second: not before the \
                     1 s base interval since the last load"
                );
                let s = stats(&host).await;
                assert!(s.contains("keyrealm_host_vm_failures_total 2"), "{s}");
                assert!(s.contains("keyrealm_host_vm_replacements_total 2"), "{s}");
            }
        }
        host.shutdown().await;
    }
}

/// A configuration the guest refuses stops `start` with the plugin named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_when_on_configure_refuses() {
    let upstream = common::spawn_echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let module = write_module(dir.path(), REFUSING_WAT);
    let spec = common::FilterSpec::new("refuser", "refuser", &module, "{}");
    let yaml = common::envoy_yaml(upstream, &[spec], &[]);
    let cfg = dir.path().join("envoy.yaml");
    std::fs::write(&cfg, yaml).expect("write");
    let err = keyrealm_host::start(&cfg).await.err().expect("start fails");
    assert!(
        err.to_string()
            .contains("plugin refuser: on_configure refused"),
        "{err}"
    );
}

#[test]
fn the_memory_limit_stops_growth_without_killing_the_instance() {
    let limits = VmLimits {
        memory_bytes: 1 << 20,
        ..VmLimits::default()
    };
    let p = plugin(GROWER_WAT, limits);
    let mut vm = start(&p);
    let root = vm.root_context_id();
    assert_eq!(
        call(&mut vm, "grow", root, &[7]),
        1,
        "within the limit: the old size in pages"
    );
    assert_eq!(
        call(&mut vm, "grow", root, &[100]),
        -1,
        "past the 1 MiB limit: refused"
    );
    assert_eq!(vm.memory_size(), 8 << 16);
    assert!(!vm.is_broken());
    assert_eq!(
        call(&mut vm, "grow", root, &[8]),
        8,
        "up to the limit still works"
    );
}

#[test]
fn the_effective_context_decides_which_stream_a_call_acts_on() {
    let p = plugin(ABI_WAT, VmLimits::default());
    let mut vm = start(&p);
    let first = http_context(&mut vm);
    let second = http_context(&mut vm);
    let root = vm.root_context_id();
    // Running on the root context (as an HTTP call answer does), switch to `second`.
    assert_eq!(call(&mut vm, "t_continue_other", root, &[second as i32]), 0);
    assert!(vm.stream(second).expect("second").request_continued);
    assert!(!vm.stream(first).expect("first").request_continued);
    // The next callback starts again on its own context.
    assert_eq!(call(&mut vm, "t_continue", first, &[]), 0);
    assert!(vm.stream(first).expect("first").request_continued);
}

/// A request callback that resumes another paused request (through
/// `proxy_set_effective_context`) releases it at once, not at the next HTTP call answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_may_resume_another_paused_request() {
    let upstream = common::spawn_echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let module = write_module(dir.path(), RELEASER_WAT);
    let spec = common::FilterSpec::new("releaser", "releaser", &module, "");
    let yaml = common::envoy_yaml(upstream, &[spec], &[]);
    let options = common::one_worker();
    let (host, _cfg) = common::start_host(&yaml, options).await;
    let addr = host.listener_addrs()[0];
    let paused = tokio::spawn(async move { common::http(addr, "GET", "/paused", &[], "").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!paused.is_finished(), "the first request waits");
    let started = Instant::now();
    let releaser = common::http(addr, "GET", "/release", &[("x-release", "1")], "").await;
    assert_eq!(releaser.status, 200);
    let first = tokio::time::timeout(Duration::from_secs(5), paused)
        .await
        .expect("released")
        .expect("task");
    assert_eq!(first.status, 200);
    assert!(first.echoed().is_some());
    assert!(started.elapsed() < Duration::from_secs(5));
    host.shutdown().await;
}

/// 1024 iovecs that all point at the same 64 KiB: `fd_write` reports all 64 MiB written but
/// copies (and logs) at most `MAX_WRITE` bytes, instead of 1024 times the guest's memory.
const FD_WRITE_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "write_amplified") (result i32)
    (local $i i32)
    (memory.fill (i32.const 0) (i32.const 97) (i32.const 65536))
    (loop $fill
      (i32.store (i32.add (i32.const 65536) (i32.shl (local.get $i) (i32.const 3))) (i32.const 0))
      (i32.store (i32.add (i32.const 65540) (i32.shl (local.get $i) (i32.const 3))) (i32.const 65536))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 1024))))
    (call $fd_write (i32.const 1) (i32.const 65536) (i32.const 1024) (i32.const 73728)))
  (func (export "write_bad_iovec") (result i32)
    (i32.store (i32.const 65536) (i32.const 0))
    (i32.store (i32.const 65540) (i32.const 1048576))
    (call $fd_write (i32.const 1) (i32.const 65536) (i32.const 1) (i32.const 73728)))
  (func (export "written") (result i32) (i32.load (i32.const 73728)))
)
"#;

#[test]
fn fd_write_copies_a_bounded_amount_whatever_the_iovecs_say() {
    let p = plugin(FD_WRITE_WAT, VmLimits::default());
    let mut vm = start(&p);
    let root = vm.root_context_id();
    assert_eq!(call(&mut vm, "write_amplified", root, &[]), 0, "ESUCCESS");
    assert_eq!(
        call(&mut vm, "written", root, &[]),
        64 << 20,
        "everything counts as written, so the guest does not retry"
    );
    let text = p.log.text();
    let longest = text.lines().map(str::len).max().unwrap_or(0);
    // Logged, cut at the log line limit (16 KiB).
    let max = VmLimits::default().log_line_bytes;
    assert!(longest > max, "the write was logged: {longest}");
    assert!(longest <= max + 200, "a log line of {longest} bytes");
    assert!(text.contains("bytes cut)"), "the cut is marked");
    assert_eq!(
        call(&mut vm, "write_bad_iovec", root, &[]),
        21,
        "an iovec past the end of memory is EFAULT"
    );
    assert!(!vm.is_broken());
}

/// The calls the C++ and AssemblyScript SDKs also import, and statuses as Envoy answers them.
const ENVOY_STATUS_WAT: &str = r#"
(module
  (import "env" "proxy_get_header_map_size" (func $map_size (param i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $buf_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_close_stream" (func $close (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x-a")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "map_size") (param $map i32) (result i32) (call $map_size (local.get $map) (i32.const 96)))
  (func (export "buf_status") (param $buf i32) (result i32)
    (call $buf_status (local.get $buf) (i32.const 96) (i32.const 100)))
  (func (export "add") (param $map i32) (result i32)
    (call $add_hdr (local.get $map) (i32.const 16) (i32.const 3) (i32.const 16) (i32.const 3)))
  (func (export "get") (param $map i32) (result i32)
    (call $get_hdr (local.get $map) (i32.const 16) (i32.const 3) (i32.const 104) (i32.const 108)))
  (func (export "continue") (param $t i32) (result i32) (call $continue (local.get $t)))
  (func (export "close") (param $t i32) (result i32) (call $close (local.get $t)))
  (func (export "ret0") (result i32) (i32.load (i32.const 96)))
)
"#;

#[test]
fn header_map_size_buffer_status_and_envoys_statuses() {
    let p = plugin(ENVOY_STATUS_WAT, VmLimits::default());
    let mut vm = start(&p);
    let root = vm.root_context_id();
    let id = request_context(&mut vm, &[(":path", "/xy")]);
    vm.stream_mut(id).expect("stream").request_body = Some(b"hello".to_vec());
    // Sizes: the names and values of a map (Envoy's byteSize), a buffer's length.
    assert_eq!(call(&mut vm, "map_size", id, &[0]), 0);
    assert_eq!(call(&mut vm, "ret0", id, &[]), 8);
    assert_eq!(call(&mut vm, "buf_status", id, &[0]), 0);
    assert_eq!(call(&mut vm, "ret0", id, &[]), 5);
    assert_eq!(
        call(&mut vm, "buf_status", root, &[0]),
        1,
        "no body: NotFound"
    );
    assert_eq!(
        call(&mut vm, "buf_status", root, &[7]),
        0,
        "plugin configuration"
    );
    // A map that is not available (root context, response headers not there yet): BadArgument.
    assert_eq!(call(&mut vm, "map_size", root, &[0]), 2);
    assert_eq!(call(&mut vm, "add", root, &[0]), 2);
    assert_eq!(call(&mut vm, "get", root, &[0]), 2);
    assert_eq!(call(&mut vm, "add", id, &[2]), 2);
    assert_eq!(call(&mut vm, "add", id, &[0]), 0);
    assert_eq!(call(&mut vm, "get", id, &[0]), 0);
    // Continue / close: Ok for the HTTP streams (on the root context too), continue on the
    // upstream stream Unimplemented, an unknown stream type BadArgument.
    assert_eq!(call(&mut vm, "continue", root, &[0]), 0);
    assert_eq!(call(&mut vm, "close", root, &[1]), 0);
    assert_eq!(call(&mut vm, "continue", id, &[3]), 12);
    assert_eq!(call(&mut vm, "continue", id, &[4]), 2);
    assert_eq!(call(&mut vm, "close", id, &[4]), 2);
    assert!(!vm.is_broken());
}

/// Context ids wrap after 2^32 but never land on the root context or a live context.
#[test]
fn context_ids_never_collide_with_a_live_context() {
    let p = plugin(ENVOY_STATUS_WAT, VmLimits::default());
    let mut vm = start(&p);
    let root = vm.root_context_id();
    let live = http_context(&mut vm);
    vm.set_next_context_id(u32::MAX);
    let last = http_context(&mut vm);
    assert_eq!(last, u32::MAX);
    let wrapped = http_context(&mut vm);
    assert!(
        wrapped != 0 && wrapped != root && wrapped != live,
        "{wrapped} vs root {root}, live {live}"
    );
    assert_eq!(vm.http_context_count(), 3);
}
