//! Hostile guests, one per limit: each runs in its own keyrealm-host process (the real binary,
//! so its memory is its own), makes the host try to take unbounded memory, and must find the
//! call refused (the guest then lets the request pass: 200) or its instance failed (503). Then a
//! normal request must still be served, and the process's peak resident memory (`VmHWM`) must
//! stay under [`MEMORY_BOUND`].

mod common;

use std::time::{Duration, Instant};

/// The most resident memory a host under attack may ever have used. The instance may use 64
/// MiB (`memory_bytes` below), shared data and queues 16 MiB each, guest buffers and calls 4
/// MiB, the kept log 8 MiB; the
/// rest is the host itself (about 35 MiB) and its compiled code.
const MEMORY_BOUND: u64 = 256 << 20;

/// What the guest does depends on the first letter of the request's `x-attack` header: `t`
/// grows its table, `m` its memory, `l` logs 1 MiB lines, `h` adds 1 KiB headers, `c` makes HTTP
/// calls with 64 KiB bodies, `s` stores 64 KiB shared data values, `q` enqueues 64 KiB items,
/// `k` defines metrics, `a` appends 1 MiB to the request body — each in a loop until the host
/// refuses (then the request continues) or the call's time budget ends it.
const HOSTILE_WAT: &str = r#"
(module
  (import "env" "proxy_get_header_map_value" (func $get_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_hdr (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_sd (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $reg_q (param i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enq (param i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $def_metric (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 17)
  (table $t 1 funcref)
  (global $heap (mut i32) (i32.const 1048576))
  (global $attack (mut i32) (i32.const 0))
  (data (i32.const 100) "x-attack")
  (data (i32.const 120) "upstream")
  (data (i32.const 140) "q")
  (data (i32.const 300) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\01\00\00\00\0a\00\00\00\01\00\00\00:method\00GET\00:path\00/\00:authority\00x\00")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.add (local.get $size) (i32.const 8))))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  ;; Eight letters that name $n, at address 200.
  (func $name (param $n i32)
    (local $i i32)
    (loop $l
      (i32.store8 (i32.add (i32.const 200) (local.get $i))
        (i32.add (i32.const 97)
          (i32.and (i32.shr_u (local.get $n) (i32.mul (local.get $i) (i32.const 4))) (i32.const 15))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 8)))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $n i32) (local $a i32)
    (global.set $heap (i32.const 1048576))
    (global.set $attack (i32.const 0))
    (if (call $get_hdr (i32.const 0) (i32.const 100) (i32.const 8) (i32.const 80) (i32.const 84))
      (then (return (i32.const 0))))
    (local.set $a (i32.load8_u (i32.load (i32.const 80))))
    (global.set $attack (local.get $a))
    (if (i32.eq (local.get $a) (i32.const 116)) (then ;; t
      (block $done (loop $l
        (br_if $done (i32.eq (table.grow $t (ref.null func) (i32.const 10000)) (i32.const -1)))
        (br $l)))))
    (if (i32.eq (local.get $a) (i32.const 109)) (then ;; m
      (block $done (loop $l
        (br_if $done (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
        (br $l)))))
    (if (i32.eq (local.get $a) (i32.const 108)) (then ;; l
      (loop $l
        (drop (call $log (i32.const 2) (i32.const 0) (i32.const 1048576)))
        (br $l))))
    (if (i32.eq (local.get $a) (i32.const 104)) (then ;; h
      (memory.fill (i32.const 1024) (i32.const 97) (i32.const 1024))
      (block $done (loop $l
        (call $name (local.get $n))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br_if $done (call $add_hdr (i32.const 0) (i32.const 200) (i32.const 8) (i32.const 1024) (i32.const 1024)))
        (br $l)))))
    (if (i32.eq (local.get $a) (i32.const 99)) (then ;; c
      (block $done (loop $l
        (br_if $done (call $http_call (i32.const 120) (i32.const 8) (i32.const 300) (i32.const 61)
          (i32.const 0) (i32.const 65536) (i32.const 0) (i32.const 0) (i32.const 5000) (i32.const 88)))
        (br $l)))))
    (if (i32.eq (local.get $a) (i32.const 115)) (then ;; s
      (block $done (loop $l
        (call $name (local.get $n))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br_if $done (call $set_sd (i32.const 200) (i32.const 8) (i32.const 0) (i32.const 65536) (i32.const 0)))
        (br $l)))))
    (if (i32.eq (local.get $a) (i32.const 113)) (then ;; q
      (if (call $reg_q (i32.const 140) (i32.const 1) (i32.const 88)) (then unreachable))
      (block $done (loop $l
        (br_if $done (call $enq (i32.load (i32.const 88)) (i32.const 0) (i32.const 65536)))
        (br $l)))))
    (if (i32.eq (local.get $a) (i32.const 107)) (then ;; k
      (block $done (loop $l
        (call $name (local.get $n))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br_if $done (call $def_metric (i32.const 0) (i32.const 200) (i32.const 8) (i32.const 88)))
        (br $l)))))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    (if (i32.eq (global.get $attack) (i32.const 97)) (then ;; a
      (block $done (loop $l
        (br_if $done (call $set_buf (i32.const 0) (i32.const -1) (i32.const 0) (i32.const 0) (i32.const 1048576)))
        (br $l)))))
    (i32.const 0))
)
"#;

/// Runs one attack: the attacking request gets `expected`; a normal request is served after it
/// (at once, or once a re-created instance is ready); the process stayed under the bound.
async fn attack(letter: &str, body: &str, expected: u16) {
    let upstream = common::spawn_echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let module = dir.path().join("hostile.wat");
    std::fs::write(&module, HOSTILE_WAT).expect("write module");
    let spec = common::FilterSpec::new("hostile", "hostile", &module, "");
    let yaml = common::envoy_yaml(upstream, &[spec], &[]).replace(
        "fail_open: false\n",
        "fail_open: false\n                failure_policy: FAIL_RELOAD\n",
    );
    let host = common::start_process(
        &yaml,
        &[
            "--call-budget-ms",
            "300",
            "--limit",
            "memory_bytes=67108864",
            "--limit",
            "shared_data_bytes=16777216",
            "--limit",
            "queue_bytes=16777216",
            "--limit",
            "buffer_bytes=4194304",
            "--limit",
            "header_map_bytes=32768",
        ],
    );
    let method = if body.is_empty() { "GET" } else { "POST" };
    let r = common::http(host.addr, method, "/attack", &[("x-attack", letter)], body).await;
    assert_eq!(r.status, expected, "attack {letter}: {r:?}");
    let started = Instant::now();
    loop {
        let ok = common::http(host.addr, "GET", "/after", &[], "").await;
        if ok.status == 200 {
            assert!(ok.echoed().is_some(), "reached the upstream");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "after attack {letter} the host serves again: {ok:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peak = host.peak_rss();
    assert!(
        peak < MEMORY_BOUND,
        "attack {letter}: peak RSS {} MiB over the {} MiB bound",
        peak >> 20,
        MEMORY_BOUND >> 20
    );
    let stats = common::get(host.admin, "/stats/prometheus").await.body;
    if expected == 503 {
        assert!(
            stats.contains("keyrealm_host_vm_failures_total 1"),
            "{stats}"
        );
    } else {
        assert!(
            stats.contains("keyrealm_host_vm_failures_total 0"),
            "{stats}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_grow_loop_is_refused_past_table_elements() {
    attack("t", "", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_grow_loop_is_refused_past_memory_bytes() {
    attack("m", "", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_is_cut_per_line_and_ended_by_the_time_budget() {
    attack("l", "", 503).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_flood_is_refused_past_header_pairs_and_bytes() {
    attack("h", "", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_append_flood_is_refused_past_buffer_bytes() {
    attack("a", "x", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_call_flood_is_refused_past_pending_calls_and_their_bytes() {
    attack("c", "", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_data_flood_is_refused_past_shared_data_bytes() {
    attack("s", "", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_queue_flood_is_refused_past_queue_items_and_bytes() {
    attack("q", "", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metric_definition_flood_is_refused_past_metrics() {
    attack("k", "", 200).await;
}

/// A module with two memories is refused at start-up (one memory per instance, so the memory
/// limit is the instance's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_with_two_memories_is_refused() {
    let upstream = common::spawn_echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let module = dir.path().join("two.wat");
    std::fs::write(
        &module,
        r#"(module (memory (export "memory") 1) (memory 1)
             (func (export "proxy_abi_version_0_2_1"))
             (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 8))
             (func (export "proxy_on_context_create") (param i32 i32)))"#,
    )
    .expect("write");
    let spec = common::FilterSpec::new("two", "two", &module, "");
    let cfg = dir.path().join("envoy.yaml");
    std::fs::write(&cfg, common::envoy_yaml(upstream, &[spec], &[])).expect("write");
    let err = keyrealm_host::start(&cfg).await.err().expect("start fails");
    assert!(err.to_string().contains("memor"), "{err}");
}
