//! The native module's panic barrier: a panic in a hook never crosses into Envoy; the request
//! gets a 500 with the filter's error body, the module logs the panic, and Envoy goes on serving.
//!
//! The test builds keyrealm-native with its `test-panic` feature (the request header
//! `x-keyrealm-test-panic` makes the request-headers hook panic) into its own target folder, so
//! that the module of every other test stays the production build. Without the barrier
//! (`catch_unwind` in `abi::guard`), the panic would abort Envoy and every check below fails.

use std::path::PathBuf;
use std::process::Command;

use keyrealm_tests::fixtures::kong;
use keyrealm_tests::gateway::workspace_root;
use keyrealm_tests::{http_client, Checks, EchoUpstream, GatewayKind, GatewaySpec, Reply};
use serde_json::json;

/// Builds the module with the `test-panic` feature; returns the folder holding it.
fn build_panicking_module() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("native-test-panic");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "-p", "keyrealm-native", "--features", "test-panic"])
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("running cargo build for the test-panic module");
    assert!(
        status.success(),
        "building keyrealm-native --features test-panic failed"
    );
    target.join("debug")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_panic_answers_500_and_logs() {
    let module_dir = tokio::task::spawn_blocking(build_panicking_module)
        .await
        .expect("build task");
    let echo = EchoUpstream::start().await.expect("echo upstream");
    let mut spec = GatewaySpec::new(echo.addr());
    spec.native_module_dir = Some(module_dir);
    spec.listener(kong::config(json!({})));
    let gateway = GatewayKind::EnvoyNative
        .start(&spec)
        .await
        .expect("gateway");
    let mut c = Checks::new();
    let send = |panic: bool| {
        let mut request = http_client()
            .get(gateway.url(0, "/request"))
            .header("apikey", kong::BOB_KEY);
        if panic {
            request = request.header("x-keyrealm-test-panic", "1");
        }
        Reply::send("panic", request)
    };

    let r = send(false).await;
    c.status("a valid key, no panic → 200", &r, 200);
    let arrived = echo.requests_arrived();
    let r = send(true).await;
    c.error(
        "the hook panics → 500 with the filter's error body",
        &r,
        500,
        "An unexpected error occurred",
    );
    c.eq(
        "the request whose hook panicked never reached the upstream",
        echo.requests_arrived() - arrived,
        0,
    );
    let line = gateway
        .wait_for_log_line(std::time::Duration::from_secs(5), |line| {
            line.contains("keyrealm: internal error in request_headers")
                && line.contains("asked for a panic")
        })
        .await;
    c.check(
        "the panic is logged, naming the hook",
        line.is_some(),
        || format!("no such log line in:\n{}", gateway.log()),
    );
    let r = send(false).await;
    c.status("Envoy goes on serving after the panic → 200", &r, 200);
    c.finish();
}
