//! Graceful drain of the keyrealm-host process: on SIGTERM it stops accepting, lets the request
//! in flight finish (its context still ends with `on_log` and `on_done`), and exits 0.
//!
//! Envoy 1.40 does not do this: on SIGTERM it exits at once and the requests in flight get no
//! answer. The last test here checks that, with the same configuration and request, so the
//! difference stays known (an operator drains Envoy with `/drain_listeners` before SIGTERM;
//! keyrealm-host drains on the signal itself).

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The configuration both gateways serve here: the abi-test-filter recording its lifecycle in
/// front of the echo, whose `/slow` answers after 3 s (the route waits for it).
async fn slow_route_yaml() -> String {
    let upstream = common::spawn_echo().await;
    let wasm = common::abi_test_filter_wasm();
    let spec = common::FilterSpec::abi_test("drained", &wasm, r#"{"record_lifecycle": true}"#);
    common::envoy_yaml(upstream, &[spec], &[]).replace("timeout: 2s", "timeout: 10s")
}

/// Sends `signal` (`-TERM`, `-INT`) to process `pid` with the shell's own `kill` (no procps
/// needed).
fn send_signal(signal: &str, pid: u32) {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill {signal} {pid}"))
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

async fn drains_on(signal: &str) {
    let yaml = slow_route_yaml().await;
    let log_dir = tempfile::tempdir().expect("tempdir");
    let log_path = log_dir.path().join("host.log");
    let log_arg = log_path.display().to_string();
    let mut host = common::start_process(&yaml, &["--log-path", &log_arg, "--drain-time-s", "10"]);
    let addr = host.addr;
    let slow = tokio::spawn(async move { common::http(addr, "GET", "/slow", &[], "").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    send_signal(signal, host.child.id());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a draining host accepts no new connection"
    );
    let reply = slow.await.expect("task");
    assert_eq!(
        reply.status, 200,
        "the request in flight finished: {reply:?}"
    );
    assert!(reply.echoed().is_some(), "{reply:?}");
    let exit = common::wait_exit(&mut host.child, Duration::from_secs(10))
        .expect("did not exit after draining");
    assert!(exit.success(), "exit status {exit}");
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(log.contains("abi-test-filter lifecycle: log"), "{log}");
    assert!(log.contains("abi-test-filter lifecycle: done"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish_then_exits_0() {
    drains_on("-TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_too() {
    drains_on("-INT").await;
}

/// The raw bytes a `GET /slow` on a fresh connection gets back before the connection ends (or
/// 10 s pass).
async fn raw_slow_request(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nhost: example.test\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the connection neither answered nor ended in 10 s"
    );
    answer
}

/// The same request and signal in real Envoy: it exits without answering the request in flight,
/// where keyrealm-host (above) finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_on_sigterm_leaves_the_request_in_flight_unanswered() {
    let yaml = slow_route_yaml().await;
    let mut envoy = common::start_envoy(&yaml, &[]).await;
    let addr = envoy.listener;
    let slow = tokio::spawn(raw_slow_request(addr));
    tokio::time::sleep(Duration::from_millis(500)).await;
    send_signal("-TERM", envoy.pid());
    let answer = slow.await.expect("task");
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "Envoy answered the request in flight: {}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        envoy.wait_exit(Duration::from_secs(10)).is_some(),
        "Envoy did not exit on SIGTERM"
    );
}
